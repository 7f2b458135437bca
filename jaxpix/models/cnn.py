"""Plain CNNs: the benchmark CNN6 and the Keras reference zoo's LeNet, Pure CNN
(All-CNN-C) and Network in Network."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpix.models.common import CIFAR10_MEAN, CIFAR10_STD, ConvBN, normalise, scaled


class CNN6(nnx.Module):
  """Three stages of two 3x3 conv-BN-ReLU (32, 64, 128 channels at width 1) with
  2x2 max pooling, global average pooling, linear: ~70 MFLOP per 32x32 image by
  XLA's count, the size of DESIGN.md's throughput figures."""

  def __init__(
    self,
    num_classes=10,
    width=1.0,
    *,
    dtype=None,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    rngs: nnx.Rngs,
  ):
    chans = [scaled(c, width) for c in (32, 32, 64, 64, 128, 128)]
    self.blocks = nnx.List(
      [
        ConvBN(i, o, dtype=dtype, rngs=rngs)
        for i, o in zip([len(mean)] + chans[:-1], chans, strict=True)
      ]
    )
    self.head = nnx.Linear(chans[-1], num_classes, dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x = normalise(x, self.mean, self.std, self.dtype)  # [B, 32, 32, 3]
    for i, block in enumerate(self.blocks):
      x = block(x)
      if i % 2 == 1:
        x = nnx.max_pool(x, (2, 2), (2, 2))
    return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)


class LeNet(nnx.Module):
  """LeNet-5 as in the reference Keras zoo: conv 6@5x5, pool, conv 16@5x5, pool,
  dense 120, 84, classes (ReLU, valid padding): 62,006 parameters at width 1."""

  def __init__(
    self,
    num_classes=10,
    width=1.0,
    *,
    dtype=None,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    image_size=32,
    rngs: nnx.Rngs,
  ):
    c1, c2, f1, f2 = (scaled(c, width) for c in (6, 16, 120, 84))
    self.conv1 = nnx.Conv(3, c1, (5, 5), padding='VALID', dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(c1, c2, (5, 5), padding='VALID', dtype=dtype, rngs=rngs)
    side = ((image_size - 4) // 2 - 4) // 2
    self.fc1 = nnx.Linear(c2 * side * side, f1, dtype=dtype, rngs=rngs)
    self.fc2 = nnx.Linear(f1, f2, dtype=dtype, rngs=rngs)
    self.fc3 = nnx.Linear(f2, num_classes, dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = normalise(x, self.mean, self.std, self.dtype)
    x = nnx.max_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.max_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    x = nnx.relu(self.fc2(nnx.relu(self.fc1(x))))
    return self.fc3(x).astype(jnp.float32)


class PureCNN(nnx.Module):
  """All-CNN-C (Springenberg et al. 2015), the Keras zoo's "Pure CNN": only
  convolutions, strided convs instead of pooling. Batch norm added after every
  conv (the reference uses dropout) so it trains in few epochs."""

  def __init__(
    self,
    num_classes=10,
    width=1.0,
    *,
    dtype=None,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    rngs: nnx.Rngs,
  ):
    a, b = scaled(96, width), scaled(192, width)
    spec = [
      (3, a, 3, 1),
      (a, a, 3, 1),
      (a, a, 3, 2),
      (a, b, 3, 1),
      (b, b, 3, 1),
      (b, b, 3, 2),
      (b, b, 3, 1),
      (b, b, 1, 1),
    ]
    self.blocks = nnx.List([ConvBN(i, o, k, s, dtype=dtype, rngs=rngs) for i, o, k, s in spec])
    self.head = nnx.Conv(b, num_classes, (1, 1), dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = normalise(x, self.mean, self.std, self.dtype)
    for block in self.blocks:
      x = block(x)
    return self.head(x).mean(axis=(1, 2)).astype(jnp.float32)


class NiN(nnx.Module):
  """Network in Network (Lin et al. 2014), CIFAR-10 layout of the Keras zoo:
  three mlpconv blocks (5x5/5x5/3x3 then two 1x1), global average pooling."""

  def __init__(
    self,
    num_classes=10,
    width=1.0,
    *,
    dtype=None,
    mean=CIFAR10_MEAN,
    std=CIFAR10_STD,
    rngs: nnx.Rngs,
  ):
    w = lambda c: scaled(c, width)
    spec = [
      [(3, w(192), 5), (w(192), w(160), 1), (w(160), w(96), 1)],
      [(w(96), w(192), 5), (w(192), w(192), 1), (w(192), w(192), 1)],
      [(w(192), w(192), 3), (w(192), w(192), 1)],
    ]
    self.stages = nnx.List(
      [nnx.List([ConvBN(i, o, k, dtype=dtype, rngs=rngs) for i, o, k in s]) for s in spec]
    )
    self.head = nnx.Conv(w(192), num_classes, (1, 1), dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = normalise(x, self.mean, self.std, self.dtype)
    for i, stage in enumerate(self.stages):
      for block in stage:
        x = block(x)
      if i == 0:
        x = nnx.max_pool(x, (3, 3), (2, 2), padding='SAME')
      elif i == 1:
        x = nnx.avg_pool(x, (3, 3), (2, 2), padding='SAME')
    return self.head(x).mean(axis=(1, 2)).astype(jnp.float32)
