"""VGG-16 (CIFAR) and VGG-19 (ImageNet) of the APR paper, with batch norm."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxpix.models.common import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  IMAGENET_MEAN,
  IMAGENET_STD,
  ConvBN,
  normalise,
  scaled,
)

_CFG = {
  16: [64, 64, 'M', 128, 128, 'M', 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M'],
  19: [
    64,
    64,
    'M',
    128,
    128,
    'M',
    256,
    256,
    256,
    256,
    'M',
    512,
    512,
    512,
    512,
    'M',
    512,
    512,
    512,
    512,
    'M',
  ],
}


class VGG(nnx.Module):
  """Conv-BN-ReLU stacks with max pooling, then a classifier.

  ``hidden=None`` (CIFAR, as in the common CIFAR VGG-16): one linear layer on
  the 512 features left after five poolings of a 32x32 image. ``hidden=4096``
  (ImageNet, Simonyan & Zisserman): two 4096-unit layers with dropout 0.5 on
  the flattened 7x7x512 map of a 224x224 image.
  """

  def __init__(
    self, depth, num_classes, width, hidden, image_size, *, dtype, mean, std, rngs: nnx.Rngs
  ):
    layers, cin = [], 3
    for v in _CFG[depth]:
      if v == 'M':
        layers.append('M')
      else:
        layers.append(ConvBN(cin, scaled(v, width), 3, 1, dtype=dtype, rngs=rngs))
        cin = scaled(v, width)
    self.features = nnx.List([layer for layer in layers if layer != 'M'])
    self.layout = ['M' if layer == 'M' else 'C' for layer in layers]
    side = image_size // 32
    flat = cin * side * side
    if hidden is None:
      self.classifier = nnx.List([nnx.Linear(flat, num_classes, dtype=dtype, rngs=rngs)])
      self.dropout = None
    else:
      h = scaled(hidden, width)
      self.classifier = nnx.List(
        [
          nnx.Linear(flat, h, dtype=dtype, rngs=rngs),
          nnx.Linear(h, h, dtype=dtype, rngs=rngs),
          nnx.Linear(h, num_classes, dtype=dtype, rngs=rngs),
        ]
      )
      self.dropout = nnx.Dropout(0.5, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = normalise(x, self.mean, self.std, self.dtype)
    convs = iter(self.features)
    for kind in self.layout:
      x = nnx.max_pool(x, (2, 2), (2, 2)) if kind == 'M' else next(convs)(x)
    x = x.reshape(x.shape[0], -1)
    for i, fc in enumerate(self.classifier):
      if i:
        x = nnx.relu(x)
        x = self.dropout(x) if self.dropout is not None else x
      x = fc(x)
    return x.astype(jnp.float32)


def VGG16(
  num_classes=10, width=1.0, *, dtype=None, mean=CIFAR10_MEAN, std=CIFAR10_STD, rngs: nnx.Rngs
):
  """CIFAR VGG-16 with batch norm: 13 convs, one linear layer; 14.7 M parameters."""
  return VGG(16, num_classes, width, None, 32, dtype=dtype, mean=mean, std=std, rngs=rngs)


def VGG19(
  num_classes=1000, width=1.0, *, dtype=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, rngs: nnx.Rngs
):
  """ImageNet VGG-19 with batch norm, 224x224: 16 convs, 4096-4096 classifier;
  143.7 M parameters."""
  return VGG(19, num_classes, width, 4096, 224, dtype=dtype, mean=mean, std=std, rngs=rngs)
