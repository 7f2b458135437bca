"""CIFAR-10 classifier with no defence: the APR paper's "No Defence" row.

    python run.py --config configs/cifar_baseline.py --workdir workdir/cifar_baseline
    python run.py --config configs/cifar_baseline.py:cpu --workdir workdir/cifar_baseline_cpu
    python run.py --config configs/cifar_baseline.py:test --workdir /tmp/jaxpix_test

Variants (comma-separated after the colon):
  (none) the paper's settings: ResNet-18, Adam lr 1e-3, weight decay 5e-4,
         batch 128, 200 epochs; for accelerators.
  cpu    ResNet-18 at width 0.25 for 8 epochs with a cosine schedule (peak lr
         2e-3, 200 warm-up steps), 5,000 train images held out for validation.
         Measured on this project's 2-core CPU (2026-11-22): 22 min 54 s at
         ~270 images/s, 82.7% validation accuracy, 84.2% clean accuracy on the
         1,000 offline test images (benchmarks/results/cifar_baseline_cpu_*).
  test   a few steps of a tiny CNN on 512 images, for the tests (seconds).
  vgg16  VGG-16 instead of ResNet-18 (the paper's second CIFAR model).
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'vgg16'))
  c = common.base('cifar10')
  common.small(c, variants)
  return c
