"""Residual networks: ResNet-18 (CIFAR) and ResNet-50 (ImageNet) of the APR
paper, and the Keras zoo's pre-activation ResNet-32 and WRN-16-8."""

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


class _Basic(nnx.Module):
  """Post-activation basic block (He et al. 2016a)."""

  def __init__(self, cin, cout, stride, dtype, rngs):
    self.a = ConvBN(cin, cout, 3, stride, dtype=dtype, rngs=rngs)
    self.b = ConvBN(cout, cout, 3, 1, relu=False, dtype=dtype, rngs=rngs)
    self.short = (
      ConvBN(cin, cout, 1, stride, relu=False, dtype=dtype, rngs=rngs)
      if stride != 1 or cin != cout
      else None
    )

  def __call__(self, x):
    s = x if self.short is None else self.short(x)
    return nnx.relu(self.b(self.a(x)) + s)


class _Bottleneck(nnx.Module):
  """1x1 - 3x3 (strided) - 1x1 x4 bottleneck (torchvision's ResNet v1.5)."""

  def __init__(self, cin, mid, stride, dtype, rngs):
    cout = 4 * mid
    self.a = ConvBN(cin, mid, 1, 1, dtype=dtype, rngs=rngs)
    self.b = ConvBN(mid, mid, 3, stride, dtype=dtype, rngs=rngs)
    self.c = ConvBN(mid, cout, 1, 1, relu=False, dtype=dtype, rngs=rngs)
    self.short = (
      ConvBN(cin, cout, 1, stride, relu=False, dtype=dtype, rngs=rngs)
      if stride != 1 or cin != cout
      else None
    )

  def __call__(self, x):
    s = x if self.short is None else self.short(x)
    return nnx.relu(self.c(self.b(self.a(x))) + s)


class _PreAct(nnx.Module):
  """Pre-activation block (He et al. 2016b): BN-ReLU-conv twice."""

  def __init__(self, cin, cout, stride, dtype, rngs):
    self.bn1 = nnx.BatchNorm(cin, momentum=0.9, dtype=dtype, rngs=rngs)
    self.conv1 = nnx.Conv(
      cin, cout, (3, 3), (stride, stride), use_bias=False, dtype=dtype, rngs=rngs
    )
    self.bn2 = nnx.BatchNorm(cout, momentum=0.9, dtype=dtype, rngs=rngs)
    self.conv2 = nnx.Conv(cout, cout, (3, 3), use_bias=False, dtype=dtype, rngs=rngs)
    self.short = (
      nnx.Conv(cin, cout, (1, 1), (stride, stride), use_bias=False, dtype=dtype, rngs=rngs)
      if stride != 1 or cin != cout
      else None
    )

  def __call__(self, x):
    h = nnx.relu(self.bn1(x))
    s = x if self.short is None else self.short(h)
    return self.conv2(nnx.relu(self.bn2(self.conv1(h)))) + s


class _Residual(nnx.Module):
  """Stem -> stages of blocks -> global average pool -> linear."""

  def __init__(self, stem, stages, out_channels, num_classes, final_bn, mean, std, dtype, rngs):
    self.stem = stem
    self.stages = nnx.List([nnx.List(s) for s in stages])
    self.final_bn = (
      nnx.BatchNorm(out_channels, momentum=0.9, dtype=dtype, rngs=rngs) if final_bn else None
    )
    self.head = nnx.Linear(out_channels, num_classes, dtype=dtype, rngs=rngs)
    self.mean, self.std, self.dtype = mean, std, dtype

  def __call__(self, x):
    x = self.stem(normalise(x, self.mean, self.std, self.dtype))
    for stage in self.stages:
      for block in stage:
        x = block(x)
    if self.final_bn is not None:
      x = nnx.relu(self.final_bn(x))
    return self.head(x.mean(axis=(1, 2))).astype(jnp.float32)


def _stages(block, cin, widths, depths, strides, dtype, rngs, expansion=1):
  stages = []
  for w, n, s in zip(widths, depths, strides, strict=True):
    stage = []
    for i in range(n):
      stage.append(block(cin, w, s if i == 0 else 1, dtype, rngs))
      cin = w * expansion
    stages.append(stage)
  return stages, cin


def ResNet18(
  num_classes=10, width=1.0, *, dtype=None, mean=CIFAR10_MEAN, std=CIFAR10_STD, rngs: nnx.Rngs
):
  """CIFAR ResNet-18: 3x3 stem, no max pool, [2, 2, 2, 2] basic blocks of
  64-512 channels; 11.17 M parameters at width 1 and 10 classes. It takes as
  many input channels as ``mean`` has (randomized ablation's 6)."""
  w = [scaled(c, width) for c in (64, 128, 256, 512)]
  stem = ConvBN(len(mean), w[0], 3, 1, dtype=dtype, rngs=rngs)
  stages, c = _stages(_Basic, w[0], w, [2, 2, 2, 2], [1, 2, 2, 2], dtype, rngs)
  return _Residual(stem, stages, c, num_classes, False, mean, std, dtype, rngs)


class _ImageNetStem(nnx.Module):
  def __init__(self, cout, dtype, rngs):
    self.conv = ConvBN(3, cout, 7, 2, dtype=dtype, rngs=rngs)

  def __call__(self, x):
    return nnx.max_pool(self.conv(x), (3, 3), (2, 2), padding='SAME')


def ResNet50(
  num_classes=1000, width=1.0, *, dtype=None, mean=IMAGENET_MEAN, std=IMAGENET_STD, rngs: nnx.Rngs
):
  """ImageNet ResNet-50 (v1.5): 7x7/2 stem and max pool, [3, 4, 6, 3]
  bottlenecks; 25.56 M parameters at width 1 and 1,000 classes."""
  w = [scaled(c, width) for c in (64, 128, 256, 512)]
  stem = _ImageNetStem(w[0], dtype, rngs)
  stages, c = _stages(_Bottleneck, w[0], w, [3, 4, 6, 3], [1, 2, 2, 2], dtype, rngs, expansion=4)
  return _Residual(stem, stages, c, num_classes, False, mean, std, dtype, rngs)


def _cifar_preact(depth_per_stage, widths, num_classes, dtype, mean, std, rngs):
  stem = nnx.Conv(
    3, 16 if widths[0] >= 16 else widths[0], (3, 3), use_bias=False, dtype=dtype, rngs=rngs
  )
  c0 = stem.out_features
  stages, c = _stages(_PreAct, c0, widths, [depth_per_stage] * 3, [1, 2, 2], dtype, rngs)
  return _Residual(stem, stages, c, num_classes, True, mean, std, dtype, rngs)


def PreActResNet32(
  num_classes=10, width=1.0, *, dtype=None, mean=CIFAR10_MEAN, std=CIFAR10_STD, rngs: nnx.Rngs
):
  """Pre-activation ResNet-32 (the Keras zoo's ResNet): 5 blocks per stage at
  16/32/64 channels; 0.46 M parameters."""
  w = [scaled(c, width) for c in (16, 32, 64)]
  return _cifar_preact(5, w, num_classes, dtype, mean, std, rngs)


def WideResNet16_8(
  num_classes=10, width=1.0, *, dtype=None, mean=CIFAR10_MEAN, std=CIFAR10_STD, rngs: nnx.Rngs
):
  """WRN-16-8 (Zagoruyko & Komodakis 2016): 2 pre-activation blocks per stage
  at 128/256/512 channels after a 16-channel stem; 11.0 M parameters."""
  w = [scaled(c, width) for c in (128, 256, 512)]
  return _cifar_preact(2, w, num_classes, dtype, mean, std, rngs)
