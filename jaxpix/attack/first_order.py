"""A first-order one-pixel adversary for training: every candidate scored, the best verified.

One-pixel candidates are few enough to score exhaustively. Linearise the
per-example loss ``l(x) = -log p(y | x)`` around the image: setting pixel p to
colour v changes it by about ``sum_c g[p, c] (v_c - x[p, c])`` with ``g`` the
input gradient. A linear function over the colour cube peaks at a corner, so
the 2^C extreme colours (the 8 RGB corners) are the only colours worth scoring
at each pixel: H * W * 2^C scores from one gradient, an einsum. The ``k``
best candidates per image are then verified with real forward passes, and the
one that fools the model (or, if none does, lowers the true-class probability
most) is kept.

Modes: in ``'replace'`` the pixel is set to the corner. In ``'add'`` with the
APR paper's delta range [-255, 255] (clipped to [0, 255]) every colour is
reachable from every pixel, so the reachable set, the linearised optimum and
the returned image are the same as in ``'replace'``: the candidate is the
delta ``corner - pixel``. Both are accepted so a config's attack mode carries
over unchanged.

Cost: one backward pass for the gradient (none when the caller passes one it
computed anyway, as APR's gradient penalty does) plus ``k`` forward passes per
image; fixed, so it runs inside a jitted train step. Compare differential
evolution's ``popsize * (maxiter + 1)`` forward passes.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpix.attack import perturb, search
from jaxpix.attack.engine import Predict


class FirstOrderResult(NamedTuple):
  adv_images: jax.Array  # [B, H, W, C], under stop_gradient, on the 8-bit grid
  success: jax.Array  # bool [B]: the kept candidate is misclassified
  true_prob: jax.Array  # [B]: the true-class probability of the kept candidate
  positions: jax.Array  # int [B, 2]: (row, column) of the changed pixel
  colours: jax.Array  # int [B, C]: its new 8-bit colour


def true_class_loss_grad(predict: Predict, images: jax.Array, labels: jax.Array) -> jax.Array:
  """``grad_x sum_b -log p(y_b | x_b)`` [B, H, W, C]: per-example input
  gradients when ``predict`` treats examples independently (eval mode)."""

  def total(x):
    logp = jax.nn.log_softmax(predict(x).astype(jnp.float32))
    return -jnp.take_along_axis(logp, labels[:, None], axis=1).sum()

  return jax.grad(total)(images)


def linearised_gain(images: jax.Array, grads: jax.Array) -> jax.Array:
  """The first-order loss increase of every one-pixel candidate, [B, H * W, 2^C].

  ``gain[b, p, j] = sum_c grads[b, p, c] * (corner_j[c] - images[b, p, c])``.
  """
  b, h, w, c = images.shape
  cube = jnp.asarray(search.corners(c), jnp.float32) / 255.0  # [2^C, C]
  g = grads.reshape(b, h * w, c).astype(jnp.float32)
  x = images.reshape(b, h * w, c).astype(jnp.float32)
  return jnp.einsum('bpc,jc->bpj', g, cube) - jnp.sum(g * x, -1, keepdims=True)


def first_order(
  predict: Predict,
  images: jax.Array,
  labels: jax.Array,
  *,
  k: int = 4,
  grads: jax.Array | None = None,
  mode: perturb.Mode = 'replace',
) -> FirstOrderResult:
  """First-order one-pixel attack on a batch (pure, jittable, fixed cost).

  Args:
    predict: ``images -> logits`` (eval mode: examples independent).
    images: [B, H, W, C] in [0, 1], on the 8-bit grid; labels: int [B].
    k: candidates verified per image with a forward pass (distinct pixels).
    grads: the input gradient of the per-example cross-entropy, [B, H, W, C],
      if the caller has it (it is not differentiated); computed here otherwise.
    mode: ``'replace'`` or ``'add'`` (same candidates, see the module docstring).

  Returns:
    A :class:`FirstOrderResult`.

  Example:
    >>> res = jax.jit(lambda x, y: first_order(predict, x, y, k=4))(images, labels)
  """
  perturb.value_bounds(mode)  # validates the mode
  b, h, w, c = images.shape
  if not 1 <= k <= h * w:
    raise ValueError(f'k (candidates verified per image) must be in [1, {h * w}], got {k}')
  labels = labels.astype(jnp.int32)
  if grads is None:
    grads = true_class_loss_grad(predict, images, labels)
  gain = linearised_gain(images, jax.lax.stop_gradient(grads))  # [B, HW, 2^C]
  # One candidate per pixel (its best corner), then the k best pixels: the
  # linearisation is rough for a full-range colour change, and k different
  # pixels hedge that error better than k corners of the same pixel.
  best_corner = jnp.argmax(gain, -1)  # [B, HW]
  _, pix = jax.lax.top_k(jnp.max(gain, -1), k)  # [B, k]
  corner = jnp.take_along_axis(best_corner, pix, 1)  # [B, k]
  colours = jnp.asarray(search.corners(c), jnp.int32)[corner]  # [B, k, C]
  pos = jnp.stack([pix // w, pix % w], -1)  # [B, k, 2]
  cand = jax.vmap(
    lambda im, p, v: jax.vmap(lambda pp, vv: perturb.apply(im, pp[None], vv[None], 'replace'))(p, v)
  )(images, pos, colours)  # [B, k, H, W, C]
  logits = predict(cand.reshape((b * k, h, w, c))).astype(jnp.float32).reshape(b, k, -1)
  tp = jnp.take_along_axis(jax.nn.softmax(logits, -1), labels[:, None, None], axis=2)[..., 0]
  fooled = jnp.argmax(logits, -1) != labels[:, None]
  pick_idx = jnp.argmin(jnp.where(fooled, tp - 2.0, tp), axis=1)  # fooling ones first
  pick = lambda a: jnp.take_along_axis(a, pick_idx.reshape((b,) + (1,) * (a.ndim - 1)), 1)[:, 0]
  return FirstOrderResult(
    jax.lax.stop_gradient(pick(cand)), pick(fooled), pick(tp), pick(pos), pick(colours)
  )
