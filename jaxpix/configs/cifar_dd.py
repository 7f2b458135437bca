"""CIFAR-10 with defensive distillation (the APR paper's DD baseline; Papernot et al. 2016).

    python run.py --config configs/cifar_dd.py --workdir workdir/cifar_dd
    python run.py --config configs/cifar_dd.py:cpu --workdir workdir/cifar_dd_cpu

One command trains the teacher at temperature T into <workdir>/teacher (or
uses --config.defence.teacher=DIR), then the student at T on the teacher's
soft labels into <workdir>; the student is deployed at T = 1. T = 100 is
Papernot et al.'s CIFAR-10 setting (the APR paper gives none).
Variants: cpu, test (as configs/cifar_baseline.py), vgg16.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'vgg16'))
  c = common.base('cifar10')
  c.defence.name = 'dd'
  c.defence.temperature = 100.0
  common.small(c, variants)
  return c
