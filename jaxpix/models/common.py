"""Pieces shared by the models: input normalisation, conv-BN blocks, ``predict``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

# Training-set statistics of the offline CIFAR-10 copy (its README), 0-1 scale.
CIFAR10_MEAN = (125.306918 / 255, 122.950394 / 255, 113.865383 / 255)
CIFAR10_STD = (62.993219 / 255, 62.088708 / 255, 66.704900 / 255)
# The usual ImageNet statistics (torchvision / Keras "torch" preprocessing).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalise(x: jax.Array, mean, std, dtype=None) -> jax.Array:
  x = (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)
  return x if dtype is None else x.astype(dtype)


def scaled(channels: int, width: float) -> int:
  """A layer's channel count at a width multiplier (at least 1)."""
  return max(1, round(channels * width))


class ConvBN(nnx.Module):
  """Conv -> BatchNorm (-> ReLU): the building block of most of the zoo."""

  def __init__(
    self, cin, cout, kernel=3, stride=1, *, padding='SAME', relu=True, dtype=None, rngs: nnx.Rngs
  ):
    self.conv = nnx.Conv(
      cin,
      cout,
      (kernel, kernel),
      (stride, stride),
      padding=padding,
      use_bias=False,
      dtype=dtype,
      rngs=rngs,
    )
    self.bn = nnx.BatchNorm(cout, momentum=0.9, dtype=dtype, rngs=rngs)
    self.relu = relu

  def __call__(self, x):
    x = self.bn(self.conv(x))
    return nnx.relu(x) if self.relu else x


def as_predict(model: nnx.Module):
  """A pure ``images -> logits`` function of a model in eval mode, for the attack.

  The model's state is captured as arrays (split once), so the function can be
  jitted, vmapped and sharded like any JAX function; the model passed in is not
  changed. Eval mode: batch norm uses its running averages, so the candidates
  of one image do not form a batch with each other. No gradient flows into
  the parameters (``stop_gradient``), so an attack inside a training step's
  loss leaves them alone. Each call makes a new function, and the attack
  compiles once per function: make it once and reuse it.
  """
  graphdef, state = nnx.split(model)
  state = jax.lax.stop_gradient(state)

  def predict(images):
    m = nnx.merge(graphdef, state, copy=True)
    m.eval()
    return m(images)

  return predict


def as_params_predict(model: nnx.Module):
  """``(predict, params)`` of a model in eval mode, for the attack's
  ``params=``: ``predict(params, images) -> logits`` is one function per
  architecture (``graphdef``), ``params`` its state. Another checkpoint of the
  same architecture gives the same ``predict``, so the compiled attack is
  reused with the new parameters.

  Example:
    >>> fn, params = models.as_params_predict(model)
    >>> attack.one_pixel(fn, images, labels, key=key, params=params)
  """
  graphdef, state = nnx.split(model)
  return _params_predict(graphdef), jax.lax.stop_gradient(state)


@functools.lru_cache(maxsize=16)
def _params_predict(graphdef):
  def predict(state, images):
    m = nnx.merge(graphdef, state, copy=True)
    m.eval()
    return m(images)

  return predict
