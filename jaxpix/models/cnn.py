"""A plain 6-convolution CIFAR CNN, the reference model of the benchmarks.

Three stages of two 3x3 convolutions (32, 64, 128 channels at width 1) with
batch norm, ReLU and 2x2 max pooling, then a linear classifier: about 77
MFLOP per 32x32 image at width 1 (2 x multiply-adds), the size DESIGN.md
quotes for this machine's throughput figures.
"""

from __future__ import annotations

import jax
from flax import nnx

from jaxpix.models.common import CIFAR10_MEAN, CIFAR10_STD, normalise


class CNN6(nnx.Module):

  def __init__(self, num_classes: int = 10, width: float = 1.0, *, rngs: nnx.Rngs,
               mean=CIFAR10_MEAN, std=CIFAR10_STD):
    chans = [max(1, round(c * width)) for c in (32, 32, 64, 64, 128, 128)]
    cin = [3] + chans[:-1]
    self.convs = nnx.List([nnx.Conv(i, o, (3, 3), use_bias=False, rngs=rngs)
                           for i, o in zip(cin, chans, strict=True)])
    self.norms = nnx.List([nnx.BatchNorm(o, momentum=0.9, rngs=rngs) for o in chans])
    self.head = nnx.Linear(chans[-1], num_classes, rngs=rngs)
    self.mean, self.std = mean, std

  def __call__(self, x: jax.Array) -> jax.Array:
    x = normalise(x, self.mean, self.std)  # [B, 32, 32, 3]
    for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
      x = nnx.relu(norm(conv(x)))
      if i % 2 == 1:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(x.mean(axis=(1, 2)))  # global average pool, [B, classes]
