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

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import attacks, checks, perturb, search
from jaxpix.attack.engine import Predict


class FirstOrderResult(NamedTuple):
  adv_images: jax.Array  # [B, H, W, C], under stop_gradient, on the 8-bit grid
  success: jax.Array  # bool [B]: the kept candidate is misclassified
  true_prob: jax.Array  # [B]: the true-class probability of the kept candidate
  positions: jax.Array  # int [B, 2]: (row, column) of the changed pixel
  colours: jax.Array  # int [B, C]: its new 8-bit colour


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

  Returns:
    A :class:`FirstOrderResult`.

  Example:
    >>> res = jax.jit(lambda x, y: first_order(predict, x, y, k=4))(images, labels)
  """
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


def gradient_ranked(
  predict: Predict,
  images,
  labels,
  *,
  targets=None,
  budget: int | None = None,
  chunk: int = 200,
  early_stop: bool = True,
  slots: int | None = None,
  batch: int | None = None,
  devices=None,
  indices=None,
  steps_per_call: int = 16,
  progress: bool | Callable[[dict], None] = False,
  params=None,
  refine: bool = True,
  radius: int = 2,
) -> attacks.AttackResult:
  """The extreme-colour search in the order the input gradient ranks it.

  Every (pixel, colour-cube corner) candidate of :func:`extreme_colour` is
  scored by the first-order change of the loss (:func:`linearised_gain`, one
  gradient per image), and the candidates are evaluated best first, ``chunk``
  per step, until one fools the model or ``budget`` have been tried. With
  ``refine`` (the default) the order adapts to what the model answers: after
  each step the measured losses correct the estimates of the untried corners
  of the same pixel and of the pixels within ``radius`` of it
  (:func:`jaxpix.attack.search.refined_corners`), which matters where the
  linearisation is poor (a full-range colour change on a deep network). No
  candidate is tried twice, so with the whole budget (the default, H * W * 2^C)
  it fools exactly the images the exhaustive search fools, only sooner; a
  smaller budget trades that guarantee for time. It needs ``predict`` to be
  differentiable JAX (the gradient is free then: one backward pass per image,
  not counted in ``queries``); for a black-box model use :func:`one_pixel`.

  Args:
    predict, images, labels, targets, slots, batch, devices, indices,
    progress, params: as in :func:`one_pixel`. Targeted: ranked by the
      first-order increase of log p(target).
    budget: candidates tried per image at most (default all).
    early_stop: stop an image at the first chunk that fools the model.
    chunk: candidates per image per step (with ``refine``, the order is
      corrected between steps: smaller chunks adapt sooner).
    refine: correct the order by the measured losses (False: the fixed
      gradient order).
    radius: with ``refine``, a measured pixel's error also corrects the
      estimates of unmeasured pixels up to ``radius`` rows and columns away.

  Returns:
    An :class:`AttackResult` (``positions`` [N, 1, 2], ``colors`` in {0, 255}).

  Example:
    >>> r = attack.gradient_ranked(predict, images, labels, budget=4400)
  """
  x = checks.images(images)
  n, h, w, c = x.shape
  total = h * w * 2**c
  budget = total if budget is None else budget
  if (
    isinstance(budget, bool)
    or not isinstance(budget, (int, np.integer))
    or not 1 <= budget <= total
  ):
    raise ValueError(
      f'budget must be an int in [1, H * W * 2^C] = [1, {total}] (candidates per image), '
      f'got {budget!r}'
    )
  checks.positive_int('chunk', chunk)
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f'radius must be an int >= 0 (pixels), got {radius!r}')
  budget, targeted = int(budget), targets is not None
  if refine:
    strategy = search.refined_corners(h, w, c, budget, chunk, int(radius), targeted)
    data = _gains
  else:
    strategy = search.ranked_corners(h, w, c, budget, chunk)
    data = functools.partial(_ranking, budget=budget)
  return attacks._attack(
    strategy,
    predict,
    x,
    labels,
    targets=targets,
    key=jax.random.key(0),  # the order is the search: nothing is drawn
    pixels=1,
    mode='replace',
    early_stop=early_stop,
    slots=slots,
    batch=batch,
    devices=devices,
    indices=indices,
    steps_per_call=steps_per_call,
    progress=progress,
    params=params,
    search_data=data,
  )


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


def _gains(fn, params, x, y, t) -> np.ndarray:
  """Each image's predicted objective increase for every candidate, then its
  clean objective: float32 [N, H * W * 2^C + 1] (see ``refined_corners``)."""
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


def _ranking(fn, params, x, y, t, *, budget: int) -> np.ndarray:
  """Each image's ``budget`` best candidates by first-order gain, int32 [N, budget]."""
  rank = _rank_fn(fn, budget, t is not None)
  return _batched(functools.partial(rank, params), x, y if t is None else t)


@functools.lru_cache(maxsize=16)
def _rank_fn(fn, budget: int, targeted: bool):
  def rank(params, x, cls):
    g, _ = true_class_loss_grad(functools.partial(fn, params), x, cls)
    gain = linearised_gain(x, g).reshape(x.shape[0], -1)  # candidate p * 2^C + corner
    return jax.lax.top_k(-gain if targeted else gain, budget)[1].astype(jnp.int32)

  return jax.jit(rank)
