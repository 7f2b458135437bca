"""The training adversaries: pure, jittable, fixed cost, for inside a train step.

``de_fixed_budget``: differential evolution on a batch for exactly ``maxiter``
generations, the same search as :func:`jaxpix.attack.one_pixel`.

``first_order``: every one-pixel candidate scored from one input gradient
(:func:`jaxpix.attack.linearised.linearised_gain`: the 2^C extreme colours at
each pixel), the ``k`` best per image verified with real forward passes, and
the one that fools the model (or, if none does, lowers the true-class
probability most) kept. Modes: in ``'replace'`` the pixel is set to the
corner. In ``'add'`` with the APR paper's delta range [-255, 255] (clipped to
[0, 255]) every colour is reachable from every pixel, so the reachable set,
the linearised optimum and the returned image are the same as in
``'replace'``: the candidate is the delta ``corner - pixel``. Both are
accepted so a config's attack mode carries over unchanged. Cost: one backward
pass for the gradient (none when the caller passes one it computed anyway, as
APR's gradient penalty does) plus ``k`` forward passes per image; compare
differential evolution's ``popsize * (maxiter + 1)``.

Neither skips an image the model already gets wrong: a train step's batch has
fixed shapes (``first_order`` gives such images a smaller share of its
verifications instead).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpix.attack import checks, engine, perturb, search
from jaxpix.attack.engine import Fitness, Predict
from jaxpix.attack.linearised import linearised_gain, true_class_loss_grad

# --------------------------------------------------------------------------- #
# Differential evolution for a fixed budget
# --------------------------------------------------------------------------- #


class FixedBudgetResult(NamedTuple):
  adv_images: jax.Array  # [B, H, W, C]
  success: jax.Array  # bool [B]
  queries: jax.Array  # int [B]
  fitness: jax.Array  # [B], the best reached (lower is better), as AttackResult's


def de_fixed_budget(
  predict: Predict,
  images: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  *,
  de: search.DEConfig,
  pixels: int = 1,
  targets: jax.Array | None = None,
  mode: perturb.Mode = 'replace',
  l2_penalty: float = 0.0,
  indices: jax.Array | None = None,
) -> FixedBudgetResult:
  """Differential evolution on a batch for exactly ``de.maxiter`` generations.

  Pure and jittable (no host syncs; only what shapes and dtypes show is
  checked, at trace time: values, such as labels in range, are not): a train
  step calls it on its mini-batch with the current parameters inside
  ``predict``. Every image
  of the batch is one slot; an image stops updating once fooled (its forward
  passes are still spent, as shapes are fixed), so it costs
  ``B * popsize * (maxiter + 1)`` evaluations in ``maxiter + 1`` forward passes.
  The adversarial images are returned under ``stop_gradient``: the search is
  not differentiated, only the loss on its result.

  Args:
    predict: ``images -> logits``, traced inside the caller's jit.
    images: [B, H, W, C] float in [0, 1]; labels: int [B].
    key: typed key; image b uses ``fold_in(key, indices[b])``.
    de: a :class:`DEConfig` with a small budget (e.g. popsize 32, maxiter 5).
    pixels, targets, mode, l2_penalty: as in :func:`jaxpix.attack.one_pixel`.
    indices: per-image indices for the keys (default ``arange(B)``).

  Returns:
    A :class:`FixedBudgetResult`.
  """
  checks.traced_batch(images, labels, targets, indices)
  b, h, w, c = images.shape
  srch = search.differential_evolution(de, pixels, h, w, c, mode)
  fit = Fitness(targeted=targets is not None, l2_penalty=l2_penalty, mode=mode)
  labels = labels.astype(jnp.int32)
  idx = jnp.arange(b, dtype=jnp.int32) if indices is None else indices.astype(jnp.int32)
  st = engine.init_slots(
    srch, key, images, labels, labels if targets is None else targets, idx, pixels * (2 + c)
  )
  st = jax.lax.fori_loop(0, srch.max_steps, lambda _, s: engine.step(srch, predict, fit, s)[0], st)
  best = st['best']
  adv = jax.lax.stop_gradient(perturb.apply_each(images, best['vec'], mode))
  return FixedBudgetResult(adv, best['success'], st['queries'], best['fitness'])


# --------------------------------------------------------------------------- #
# The first-order adversary
# --------------------------------------------------------------------------- #


class FirstOrderResult(NamedTuple):
  adv_images: jax.Array  # [B, H, W, C], under stop_gradient, on the 8-bit grid
  success: jax.Array  # bool [B]: the kept candidate is misclassified
  true_prob: jax.Array  # [B]: the true-class probability of the kept candidate
  positions: jax.Array  # int [B, 2]: (row, column) of the changed pixel
  colors: jax.Array  # int [B, C]: its new 8-bit colour (AttackResult's name)


def _spaced_top(score: jax.Array, h: int, w: int, m: int, radius: int) -> jax.Array:
  """Greedy non-maximum suppression: the ``m`` best positions [B, m] of
  ``score`` [B, H * W], each taken pixel pushing its (2r + 1)^2 neighbours
  behind every position pushed fewer times (they are taken later, not never,
  so ``m`` may exceed what fits on the image); within a tier, by score."""
  if radius <= 0:
    return jax.lax.top_k(score, m)[1]
  rows, cols = jnp.arange(h * w) // w, jnp.arange(h * w) % w
  big = jnp.iinfo(jnp.int32).max

  def pick(carry, _):
    pushed, free = carry  # int [B, HW] times pushed; bool [B, HW] not taken yet
    tier = jnp.min(jnp.where(free, pushed, big), -1, keepdims=True)
    p = jnp.argmax(jnp.where(free & (pushed == tier), score, -jnp.inf), -1)  # [B]
    near = (jnp.abs(rows[None] - (p // w)[:, None]) <= radius) & (
      jnp.abs(cols[None] - (p % w)[:, None]) <= radius
    )
    free = free & (jnp.arange(h * w)[None] != p[:, None])
    return (pushed + near, free), p

  init = (jnp.zeros(score.shape, jnp.int32), jnp.ones(score.shape, bool))
  _, picks = jax.lax.scan(pick, init, None, length=m)
  return picks.T


def first_order(
  predict: Predict,
  images: jax.Array,
  labels: jax.Array,
  *,
  k: int = 4,
  grads: jax.Array | None = None,
  logits: jax.Array | None = None,
  mode: perturb.Mode = 'replace',
  spread: int = 4,
  radius: int = 2,
  key: jax.Array | None = None,
) -> FirstOrderResult:
  """First-order one-pixel attack on a batch (pure, jittable, fixed cost).

  Exactly ``B * k`` candidates are verified, in one forward pass. Every image
  gets its best candidate verified; the other ``B * (k - 1)`` verifications go
  to the images the model still classifies correctly (by ``logits``), their
  2nd, 3rd, ... best candidates in turn, at most ``spread * k`` per image: an
  image already misclassified needs no search, so early in training, when
  many are, the correct ones get a larger share of the same budget. Without
  ``logits`` every image gets ``k``.

  Args:
    predict: ``images -> logits`` (eval mode: examples independent).
    images: [B, H, W, C] in [0, 1], on the 8-bit grid; labels: int [B].
    k: verified candidates per image on average (distinct pixels per image).
    grads: the input gradient of the per-example cross-entropy, [B, H, W, C],
      if the caller has it (it is not differentiated); computed here otherwise,
      together with the logits.
    logits: the clean logits [B, K] that go with ``grads``, for the budget
      split above; ignored when the gradient is computed here.
    mode: ``'replace'`` or ``'add'`` (same candidates, see the module docstring).
    spread: the most candidates one image can get, as a multiple of ``k``.
    radius: an image's candidate pixels are at least ``radius + 1`` apart
      (rows or columns) while the image has room; 0 = the plain top pixels.
    key: unused (the candidates are ranked, nothing is drawn); accepted so
      that the training adversaries take the same keywords.

  Returns:
    A :class:`FirstOrderResult`.

  Example:
    >>> res = jax.jit(lambda x, y: first_order(predict, x, y, k=4))(images, labels)
  """
  del key
  perturb.value_bounds(mode)  # validates the mode
  b, h, w, c = images.shape
  if not 1 <= k <= h * w:
    raise ValueError(f'k (candidates verified per image) must be in [1, {h * w}], got {k}')
  if spread < 1:
    raise ValueError(f'spread must be >= 1, got {spread}')
  labels = labels.astype(jnp.int32)
  if grads is None:
    grads, logits = true_class_loss_grad(predict, images, labels)
  gain = linearised_gain(images, jax.lax.stop_gradient(grads))  # [B, HW, 2^C]
  # One candidate per pixel (its best corner), then the best pixels, kept
  # apart: the linearisation is rough for a full-range colour change, and
  # neighbouring pixels tend to fail together, so spread the verifications.
  # Measured on 512 training images, a 1-epoch ResNet-18 (train-mode accuracy
  # 58.6%), k = 4: the 4 best pixels lowered it to 51.8%, pixels >= 3 apart
  # (radius 2) to 50.6%, radius 3 50.4%; k = 16 without spacing 49.8%; the 4
  # best (pixel, corner) pairs, often one pixel, about as the 4 best pixels.
  m = min(h * w, spread * k)
  best_corner = jnp.argmax(gain, -1)  # [B, HW]
  pix = _spaced_top(jnp.max(gain, -1), h, w, m, radius)  # [B, m], best first
  corner = jnp.take_along_axis(best_corner, pix, 1)  # [B, m]
  # The budget: rank 0 of every image first, then rank 1 of every correctly
  # classified image, then rank 2, ... (a fixed-size top_k).
  correct = (
    jnp.ones((b,), bool)
    if logits is None
    else jnp.argmax(jax.lax.stop_gradient(logits), -1) == labels
  )
  rank = jnp.arange(m)[None, :]
  level = jnp.where(rank == 0, m, jnp.where(correct[:, None], m - rank, 0))  # [B, m]
  priority = level * b + (b - jnp.arange(b))[:, None]
  _, sel = jax.lax.top_k(priority.reshape(-1), b * k)  # [S]
  img, r = sel // m, sel % m
  p = pix[img, r]
  colours = jnp.asarray(search.corners(c), jnp.int32)[corner[img, r]]  # [S, C]
  pos = jnp.stack([p // w, p % w], -1)  # [S, 2]
  cand = jax.vmap(lambda i, pp, vv: perturb.apply(images[i], pp[None], vv[None], 'replace'))(
    img, pos, colours
  )  # [S, H, W, C]
  out = predict(cand).astype(jnp.float32)
  tp = jnp.take_along_axis(jax.nn.softmax(out, -1), labels[img][:, None], axis=1)[:, 0]
  fooled = jnp.argmax(out, -1) != labels[img]
  score = jnp.where(fooled, tp - 2.0, tp)  # fooling candidates first
  best = jnp.full((b,), jnp.inf).at[img].min(score)
  s = b * k
  slot = jnp.arange(s)
  win = jnp.full((b,), s).at[img].min(jnp.where(score == best[img], slot, s))
  # Non-finite logits match nothing: fall back to the image's own best candidate.
  first = jnp.full((b,), s).at[img].min(jnp.where(r == 0, slot, s))
  win = jnp.where(win == s, first, win)
  return FirstOrderResult(
    jax.lax.stop_gradient(cand[win]), fooled[win], tp[win], pos[win], colours[win]
  )
