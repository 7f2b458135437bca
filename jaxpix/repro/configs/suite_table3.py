"""The APR paper's Table 3 (ablation on CIFAR-10) as a suite: full APR, APR
without each of its three parts, and (not in the paper) attention alone and
the penalty alone, to tell which part carries APR's gain. Every row is
attacked on the same fixed test images (rows.paired_eval).

    python run.py --config jaxpix/repro/configs/suite_table3.py:cpu --workdir workdir/table3_cpu

Variants: cpu, test; none = the paper's sizes.
"""

from jaxpix.configs import common
from jaxpix.repro.configs import rows


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  paired = rows.paired_eval(variants)  # every row on the same fixed test images
  c = rows.suite(
    'apr_table3',
    (
      rows.row('Full APR', 'cifar_apr', **paired),
      rows.row('w/o Pixel-wise Attention', 'cifar_apr', 'no_attention', **paired),
      rows.row('w/o Adversarial Training', 'cifar_apr', 'no_adv', **paired),
      rows.row('w/o Regularization', 'cifar_apr', 'no_reg', **paired),
      # Not in the paper: which part carries APR's gain.
      rows.row('Attention only', 'cifar_apr', 'no_adv', 'no_reg', **paired),
      rows.row('Penalty only', 'cifar_apr', 'no_attention', 'no_adv', **paired),
    ),
    variants,
  )
  c.suite.overhead = False  # Table 4 compares APR with no defence: suite_table1
  return c
