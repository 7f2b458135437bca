"""Pieces shared by the models: input normalisation and the pure ``predict``."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

# Training-set statistics of the offline CIFAR-10 copy (its README), 0-1 scale.
CIFAR10_MEAN = (125.306918 / 255, 122.950394 / 255, 113.865383 / 255)
CIFAR10_STD = (62.993219 / 255, 62.088708 / 255, 66.704900 / 255)


def normalise(x: jax.Array, mean, std) -> jax.Array:
  return (x - jnp.asarray(mean, x.dtype)) / jnp.asarray(std, x.dtype)


def as_predict(model: nnx.Module):
  """A pure ``images -> logits`` function of a model in eval mode, for the attack.

  The model's state is captured as arrays (split once), so the function can be
  jitted, vmapped and sharded like any JAX function.
  """
  model.eval()
  graphdef, state = nnx.split(model)

  def predict(images):
    return nnx.merge(graphdef, state)(images)

  return predict
