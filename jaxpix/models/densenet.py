"""DenseNet-BC-100 with growth rate 12 (Huang et al. 2017), the Keras zoo's DenseNet."""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from jaxpix.models.common import CIFAR10_MEAN, CIFAR10_STD, normalise, scaled


class _BNReLUConv(nnx.Module):
  def __init__(self, cin, cout, kernel, dtype, rngs):
    self.bn = nnx.BatchNorm(cin, momentum=0.9, dtype=dtype, rngs=rngs)
    self.conv = nnx.Conv(cin, cout, (kernel, kernel), use_bias=False, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return self.conv(nnx.relu(self.bn(x)))


class _DenseLayer(nnx.Module):
  """Bottleneck: BN-ReLU-1x1 conv (4k) then BN-ReLU-3x3 conv (k), concatenated."""

  def __init__(self, cin, growth, dtype, rngs):
    self.a = _BNReLUConv(cin, 4 * growth, 1, dtype, rngs)
    self.b = _BNReLUConv(4 * growth, growth, 3, dtype, rngs)

  def __call__(self, x):
    return jnp.concatenate([x, self.b(self.a(x))], axis=-1)


class DenseNetBC(nnx.Module):
  """Three dense blocks of (depth - 4) / 6 bottleneck layers, transitions with
  compression 0.5 and 2x2 average pooling; 0.77 M parameters for depth 100,
  k = 12."""

  def __init__(
    self,
    num_classes=10,
    width=1.0,
    *,
    depth=100,
    growth=12,
    dtype=None,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    rngs: nnx.Rngs,
  ):
    n = (depth - 4) // 6
    k = scaled(growth, width)
    c = 2 * k
    self.stem = nnx.Conv(3, c, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
    blocks, transitions = [], []
    for b in range(3):
      layers = []
      for _ in range(n):
        layers.append(_DenseLayer(c, k, dtype, rngs))
        c += k
      blocks.append(nnx.List(layers))
      if b < 2:
        transitions.append(_BNReLUConv(c, c // 2, 1, dtype, rngs))
        c //= 2
    self.blocks, self.transitions = nnx.List(blocks), nnx.List(transitions)
    self.final_bn = nnx.BatchNorm(c, momentum=0.9, dtype=dtype, rngs=rngs)
    self.head = nnx.Linear(c, num_classes, dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = self.stem(normalise(x, self.mean, self.std, self.dtype))
    for b, block in enumerate(self.blocks):
      for layer in block:
        x = layer(x)
      if b < 2:
        x = nnx.avg_pool(self.transitions[b](x), (2, 2), (2, 2))
    x = nnx.relu(self.final_bn(x))
    return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)
