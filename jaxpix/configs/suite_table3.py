"""The APR paper's Table 3 (ablation on CIFAR-10) as a suite: full APR and APR
without each of its three parts.

    python run.py --config configs/suite_table3.py:cpu --workdir workdir/table3_cpu

Variants: cpu, test; none = the paper's sizes.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  c = common.suite(
    'apr_table3',
    (
      common.row('Full APR', 'cifar_apr'),
      common.row('w/o Pixel-wise Attention', 'cifar_apr', 'no_attention'),
      common.row('w/o Adversarial Training', 'cifar_apr', 'no_adv'),
      common.row('w/o Regularization', 'cifar_apr', 'no_reg'),
    ),
    variants,
  )
  c.suite.overhead = False  # Table 4 compares APR with no defence: suite_table1
  return c
