"""The APR paper's Table 1 (defences on CIFAR-10) as a suite: no defence, AT,
IT, DD and APR (and, not in the paper, a 3x3 median filter and randomized
ablation), each trained, attacked and tabulated beside the paper. Every
row is attacked on the same fixed test images (rows.paired_eval), so robust
accuracy pairs across rows and each row is tested against No Defence and APR
(exact McNemar).

    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --workdir workdir/table1_cpu
    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --config.suite.seeds='(0, 1, 2)' \\
        --config.suite.set='eval.maxiter=100' --workdir workdir/table1_cpu
    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --config.suite.only='No Defence,APR' ...

Variants: cpu, test (passed to every row's config); none = the paper's sizes.
"""

from jaxpix.configs import common
from jaxpix.repro.configs import rows


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  paired = rows.paired_eval(variants)  # every row on the same fixed test images
  return rows.suite(
    'apr_table1',
    (
      rows.row('No Defence', 'cifar_baseline', **paired),
      rows.row('AT', 'cifar_at', **paired),
      rows.row('IT', 'cifar_it', **paired),
      rows.row('DD', 'cifar_dd', **paired),
      rows.row('APR', 'cifar_apr', **paired),
      # Not in the paper: the simplest defence against one changed pixel
      # (a 3x3 median filter, trained with it), for scale.
      rows.row('Median filter', 'cifar_median', **paired),
      # Not in the paper: a certified defence (randomized ablation, Levine &
      # Feizi 2020), certified and attacked as a smoothed classifier.
      rows.row('Randomized ablation', 'cifar_ablation', **paired),
    ),
    variants,
  )
