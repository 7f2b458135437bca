"""The APR paper's Table 3 (ablation on CIFAR-10) as a suite: full APR and APR
without each of its three parts.

    python run.py --config configs/suite_table3.py:cpu --workdir workdir/table3_cpu

Variants: cpu, test; none = the paper's sizes.
"""

from configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  c = common.suite(
    'apr_table3',
    (
      'Full APR=cifar_apr.py:{size}',
      'w/o Pixel-wise Attention=cifar_apr.py:{size},no_attention',
      'w/o Adversarial Training=cifar_apr.py:{size},no_adv',
      'w/o Regularization=cifar_apr.py:{size},no_reg',
    ),
    variants,
  )
  c.suite.overhead = False  # Table 4 compares APR with no defence: suite_table1
  return c
