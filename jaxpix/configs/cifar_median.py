"""CIFAR-10 behind a 3x3 median filter: the simplest defence against one
changed pixel, the first a reviewer of a one-pixel defence asks about.

    python run.py --config configs/cifar_median.py --workdir workdir/cifar_median
    python run.py --config configs/cifar_median.py:cpu --workdir workdir/cifar_median_cpu

The filter (jaxpix.defences.transforms.median_filter, each channel's 3x3
median, border mirrored) is part of the model, as IT's transformations are:
the classifier trains on filtered images, and every attack's ``predict``
runs through the filter, compiled end to end. Variants: cpu, test (as
configs/cifar_baseline.py), size5 (a 5x5 filter).
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'size5'))
  c = common.base('cifar10')
  c.defence.name = 'median'
  c.defence.median_size = 5 if 'size5' in variants else 3
  common.small(c, variants)
  return c
