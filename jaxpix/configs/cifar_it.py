"""CIFAR-10 with input transformations (the APR paper's IT baseline, after Guo et al. 2018).

    python run.py --config configs/cifar_it.py --workdir workdir/cifar_it
    python run.py --config configs/cifar_it.py:cpu --workdir workdir/cifar_it_cpu

Bit-depth reduction to 5 bits, then JPEG at quality 75, both written in JAX
(jaxpix.defences.transforms) and part of the model: training sees transformed
images, and the attack runs compiled through the transformations. The paper
names the two techniques but not their settings; 5 bits is feature
squeezing's CIFAR-10 choice (Xu et al. 2018) and 75 Guo et al.'s JPEG quality.
Variants: cpu, test (as configs/cifar_baseline.py), bits_only, jpeg_only, vgg16.
"""

from jaxpix.configs import common


def get_config(arg=None):
  variants = common.parse_arg(arg, ('cpu', 'test', 'bits_only', 'jpeg_only', 'vgg16'))
  c = common.base('cifar10')
  c.defence.name = 'it'
  c.defence.bit_depth = 0 if 'jpeg_only' in variants else 5
  c.defence.jpeg_quality = 0 if 'bits_only' in variants else 75
  common.small(c, variants)
  return c
