"""The user's model, called: ``predict(images)`` or ``predict(params, images)``
brought to the one form the engine compiles, and forward passes over host
arrays in batches (the clean pass of every attack, eval mode's accuracy)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack.engine import Predict


def with_params(predict, params):
  """(``fn(params, images)``, params): the form the engine compiles. A closure
  ``images -> logits`` (no ``params``) gets one wrapper per object, so that
  the compiled attack is reused when the same closure comes again."""
  if params is not None:
    return predict, params
  return _closure(predict), ()


@functools.lru_cache(maxsize=16)
def _closure(predict):
  return lambda _, images: predict(images)


@functools.lru_cache(maxsize=16)
def _logits_fn(fn):
  return jax.jit(lambda params, images: fn(params, images).astype(jnp.float32))


def batched_logits(predict: Predict, images, batch: int = 1024, *, params=None) -> np.ndarray:
  """``predict``'s float32 logits on numpy images, ``batch`` at a time (one
  compilation per ``predict`` object and batch shape; with ``params``,
  ``predict(params, images)``, the parameters an argument)."""
  fn, params = with_params(predict, params)
  run = _logits_fn(fn)
  return np.concatenate(
    [np.asarray(run(params, images[i : i + batch])) for i in range(0, len(images), batch)]
  )


def batched_probs(predict: Predict, images, batch: int = 1024, *, params=None) -> np.ndarray:
  """The softmax probabilities of ``predict`` on numpy images, ``batch`` at a time.

  Args:
    predict: ``images [B, H, W, C] -> logits [B, K]`` (with ``params``:
      ``predict(params, images)``).
    images: [N, H, W, C], sliced on the host.
    batch: images per forward pass; bounds device memory.
    params: as the attacks take it (:class:`jaxpix.attack.RunOptions`).

  Returns:
    float32 [N, K] numpy.

  Example:
    >>> probs = attack.batched_probs(predict, images)
    >>> accuracy = np.mean(probs.argmax(-1) == labels)
  """
  logits = batched_logits(predict, images, batch, params=params)
  return np.asarray(jax.nn.softmax(logits, axis=-1))
