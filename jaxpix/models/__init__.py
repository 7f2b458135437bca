"""Classifiers (Flax NNX). Each takes float images in [0, 1] [B, H, W, 3],
normalises inside (dataset mean / std) and returns float32 logits.

``create(name, ...)`` builds one by the name used in configs
(``config.model.name``); ``width`` scales every hidden layer's channel count,
for CPU runs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
from flax import nnx

from jaxpix.models.cnn import CNN6, LeNet, NiN, PureCNN
from jaxpix.models.common import (
  CIFAR10_MEAN,
  CIFAR10_STD,
  IMAGENET_MEAN,
  IMAGENET_STD,
  as_params_predict,
  as_predict,
)
from jaxpix.models.densenet import DenseNetBC
from jaxpix.models.resnet import PreActResNet32, ResNet18, ResNet50, WideResNet16_8
from jaxpix.models.vgg import VGG16, VGG19

REGISTRY = {
  # name: (constructor, dataset it is laid out for)
  'cnn6': (CNN6, 'cifar10'),
  'resnet18': (ResNet18, 'cifar10'),
  'vgg16': (VGG16, 'cifar10'),
  'lenet': (LeNet, 'cifar10'),
  'pure_cnn': (PureCNN, 'cifar10'),
  'nin': (NiN, 'cifar10'),
  'resnet32': (PreActResNet32, 'cifar10'),
  'densenet_bc100': (DenseNetBC, 'cifar10'),
  # The same layout, 6 bottleneck layers per block instead of 16: the 2-core
  # CPU's stand-in for DenseNet-BC-100 (configs/cifar_autoencoder.py).
  'densenet_bc40': (functools.partial(DenseNetBC, depth=40), 'cifar10'),
  'wrn16_8': (WideResNet16_8, 'cifar10'),
  'resnet50': (ResNet50, 'imagenet'),
  'vgg19': (VGG19, 'imagenet'),
}


# The models whose first layer takes as many channels as their normalisation
# statistics have (``in_channels`` other than 3: randomized ablation's encoding).
ANY_CHANNELS = ('cnn6', 'resnet18')


def create(
  name: str,
  *,
  num_classes: int,
  width: float = 1.0,
  dtype=None,
  seed: int = 0,
  in_channels: int = 3,
) -> nnx.Module:
  """Builds model ``name`` with fresh parameters from ``seed``. With
  ``in_channels`` other than 3 the input is not an image: it is passed on
  unnormalised (mean 0, std 1; the first batch norm scales it)."""
  if name not in REGISTRY:
    raise ValueError(f'unknown model {name!r}; expected one of {sorted(REGISTRY)}')
  if not width > 0:
    raise ValueError(f'model width must be > 0, got {width!r}')
  ctor, _ = REGISTRY[name]
  kw = {}
  if in_channels != 3:
    if name not in ANY_CHANNELS:
      raise ValueError(
        f'model {name!r} takes 3 input channels; {in_channels} need one of {ANY_CHANNELS}'
      )
    kw = dict(mean=(0.0,) * in_channels, std=(1.0,) * in_channels)
  return initialise(
    lambda: ctor(num_classes=num_classes, width=width, dtype=dtype, rngs=nnx.Rngs(seed), **kw)
  )


def initialise(build: Callable[[], nnx.Module]) -> nnx.Module:
  """``build()``, with every parameter drawn in one compiled program.

  Built eagerly, each initialiser call compiles a random-number program of
  its own for each parameter shape: on the CPU (jax 0.10) 1.5-2.5 s apiece
  at XLA's default optimisation level, so ``create('cnn6', ...)`` took 12 s
  and ResNet-18 7.5 s before a single image was seen. One program compiled
  at optimisation level 0 (on the CPU; it runs once, so its speed does not
  matter) takes 0.8 and 2.2 s (benchmarks/model_init.py). The values are the
  same draws (the same keys and initialisers), equal to the eager ones up to
  float32 rounding (differences under 1e-7 measured).
  """
  if isinstance(jax.numpy.zeros(()), jax.core.Tracer):
    return build()  # already inside a traced function (jit, eval_shape): nothing compiles here
  graphdef, _ = nnx.split(nnx.eval_shape(build))
  options = {'xla_backend_optimization_level': 0} if jax.default_backend() == 'cpu' else None
  state = jax.jit(lambda: nnx.state(build()), compiler_options=options)()
  return nnx.merge(graphdef, state)


__all__ = [
  'CIFAR10_MEAN',
  'CIFAR10_STD',
  'IMAGENET_MEAN',
  'IMAGENET_STD',
  'REGISTRY',
  'CNN6',
  'DenseNetBC',
  'LeNet',
  'NiN',
  'PreActResNet32',
  'PureCNN',
  'ResNet18',
  'ResNet50',
  'VGG16',
  'VGG19',
  'WideResNet16_8',
  'as_params_predict',
  'as_predict',
  'create',
  'initialise',
]
