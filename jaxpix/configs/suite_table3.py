"""The APR paper's Table 3 (ablation on CIFAR-10) as a suite: full APR, APR
without each of its three parts, and (not in the paper) attention alone and
the penalty alone, to tell which part carries APR's gain. Every row is
attacked on the same fixed test images (common.paired_eval).

    python run.py --config configs/suite_table3.py:cpu --workdir workdir/table3_cpu

Variants: cpu, test; none = the paper's sizes.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  paired = common.paired_eval(variants)  # every row on the same fixed test images
  c = common.suite(
    'apr_table3',
    (
      common.row('Full APR', 'cifar_apr', **paired),
      common.row('w/o Pixel-wise Attention', 'cifar_apr', 'no_attention', **paired),
      common.row('w/o Adversarial Training', 'cifar_apr', 'no_adv', **paired),
      common.row('w/o Regularization', 'cifar_apr', 'no_reg', **paired),
      # Not in the paper: which part carries APR's gain.
      common.row('Attention only', 'cifar_apr', 'no_adv', 'no_reg', **paired),
      common.row('Penalty only', 'cifar_apr', 'no_attention', 'no_adv', **paired),
    ),
    variants,
  )
  c.suite.overhead = False  # Table 4 compares APR with no defence: suite_table1
  return c
