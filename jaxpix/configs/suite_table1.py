"""The APR paper's Table 1 (defences on CIFAR-10) as a suite: no defence, AT,
IT, DD and APR, each trained, attacked and tabulated beside the paper.

    python run.py --config configs/suite_table1.py:cpu --workdir workdir/table1_cpu
    python run.py --config configs/suite_table1.py:cpu --config.suite.seeds='(0, 1, 2)' \\
        --config.suite.set='eval.num_images=100' --workdir workdir/table1_cpu
    python run.py --config configs/suite_table1.py:cpu --config.suite.only='No Defence,APR' ...

Variants: cpu, test (passed to every row's config); none = the paper's sizes.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test'))
  return common.suite(
    'apr_table1',
    (
      common.row('No Defence', 'cifar_baseline'),
      common.row('AT', 'cifar_at'),
      common.row('IT', 'cifar_it'),
      common.row('DD', 'cifar_dd'),
      common.row('APR', 'cifar_apr'),
    ),
    variants,
  )
