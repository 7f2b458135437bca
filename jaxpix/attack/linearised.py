"""The first-order view of a one-pixel change: every candidate scored from one gradient.

Linearise the per-example loss ``l(x) = -log p(y | x)`` around the image:
setting pixel p to colour v changes it by about ``sum_c g[p, c] (v_c - x[p, c])``
with ``g`` the input gradient. A linear function over the colour cube peaks
at a corner, so the 2^C extreme colours (the 8 RGB corners) are the only
colours worth scoring at each pixel: H * W * 2^C scores from one gradient, an
einsum (:func:`linearised_gain`). Two adversaries use it: ``first_order``
(``adversaries.py``, for training: the best few verified) and
``gradient_ranked`` (``attacks.py``: every candidate, best first); the per-image
tables the latter's searches take are made here.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import search
from jaxpix.attack.engine import Predict


def true_class_loss_grad(predict: Predict, images: jax.Array, labels: jax.Array):
  """``grad_x sum_b -log p(y_b | x_b)`` [B, H, W, C] and the logits [B, K]:
  per-example input gradients when ``predict`` treats examples independently
  (eval mode)."""

  def total(x):
    logits = predict(x).astype(jnp.float32)
    logp = jax.nn.log_softmax(logits)
    return -jnp.take_along_axis(logp, labels[:, None], axis=1).sum(), logits

  return jax.grad(total, has_aux=True)(images)


def linearised_gain(images: jax.Array, grads: jax.Array) -> jax.Array:
  """The first-order loss increase of every one-pixel candidate, [B, H * W, 2^C].

  ``gain[b, p, j] = sum_c grads[b, p, c] * (corner_j[c] - images[b, p, c])``.
  """
  b, h, w, c = images.shape
  cube = jnp.asarray(search.corners(c), jnp.float32) / 255.0  # [2^C, C]
  g = grads.reshape(b, h * w, c).astype(jnp.float32)
  x = images.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum('bpc,jc->bpj', g, cube) - jnp.sum(g * x, -1, keepdims=True)


# --------------------------------------------------------------------------- #
# Per-image tables for gradient_ranked's searches (``search_data`` of the run)
# --------------------------------------------------------------------------- #


def _batched(f, x, cls, batch: int = 256) -> np.ndarray:
  """``f(x, cls)`` over pieces of ``batch`` images, all of one shape (the last
  piece is padded), concatenated."""
  size = min(batch, len(x))
  out = []
  for i in range(0, len(x), size):
    xb, cb = x[i : i + size], cls[i : i + size]
    pad = size - len(xb)
    if pad:
      xb = np.concatenate([xb, np.repeat(xb[-1:], pad, 0)])
      cb = np.concatenate([cb, np.repeat(cb[-1:], pad, 0)])
    out.append(np.asarray(f(xb, cb))[: size - pad])
  return np.concatenate(out)


def candidate_gains(fn, params, x, y, t) -> np.ndarray:
  """Each image's predicted objective increase for every candidate, then its
  clean objective: float32 [N, H * W * 2^C + 1] (``search.refined_corners``'s
  data). ``fn(params, images) -> logits``; ``t``: targets or None."""
  gains = _gains_fn(fn, t is not None)
  return _batched(functools.partial(gains, params), x, y if t is None else t)


@functools.lru_cache(maxsize=16)
def _gains_fn(fn, targeted: bool):
  def gains(params, x, cls):
    g, logits = true_class_loss_grad(functools.partial(fn, params), x, cls)
    gain = linearised_gain(x, g).reshape(x.shape[0], -1)  # of -log p(cls)
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits.astype(jnp.float32)), cls[:, None], 1)
    if targeted:  # the objective is log p(target): the gains change sign
      return jnp.concatenate([-gain, logp], 1)
    return jnp.concatenate([gain, -logp], 1)

  return jax.jit(gains)


def candidate_ranking(fn, params, x, y, t, *, budget: int) -> np.ndarray:
  """Each image's ``budget`` best candidates by first-order gain, int32
  [N, budget] (``search.ranked_corners``'s data)."""
  rank = _rank_fn(fn, budget, t is not None)
  return _batched(functools.partial(rank, params), x, y if t is None else t)


@functools.lru_cache(maxsize=16)
def _rank_fn(fn, budget: int, targeted: bool):
  def rank(params, x, cls):
    g, _ = true_class_loss_grad(functools.partial(fn, params), x, cls)
    gain = linearised_gain(x, g).reshape(x.shape[0], -1)  # candidate p * 2^C + corner
    return jax.lax.top_k(-gain if targeted else gain, budget)[1].astype(jnp.int32)

  return jax.jit(rank)
