"""A sound one-pixel verifier: :func:`certify`.

For each image it proves that no change of one pixel (any position, any
colour in [0, 1]^C: the whole colour cube, not only its corners; this covers
``replace`` and ``add`` with deltas of +-255 alike) changes the predicted
class, or finds a colour that does, or says it could not tell within its
budget. Per position the pixel's colour is a box of C variables, the rest of
the image fixed; :mod:`jaxpix.verify.bounds` (forward) and
:mod:`jaxpix.verify.crown` (backward) bound the margins of the true class
over the box, and a box they cannot certify is split in two along its
widest side (branch and bound) while the budget lasts. Colours are also
evaluated: every box's centre and the corner where its weakest margin's
bound is lowest, and in the first round every corner of the cube at every
position; one that changes the class ends the image as ``fooled``, with
that colour (in [0, 1], not necessarily 8-bit) as the counterexample.

Sound up to float rounding: the bounds are computed in float32 like the
model's own forward pass, so a box counts as certified only when its margin
lower bound exceeds ``TOLERANCE``.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import checks, forward, search
from jaxpix.verify import bounds, crown

# A margin lower bound must exceed this to certify a box: float32 rounding
# in the bounds (and in the model) is far below it for logits of order 10.
TOLERANCE = 1e-4
# Before each ReLU is relaxed, this many of its inputs (those whose bounds
# straddle zero most widely) get CROWN's backward bounds.
REFINE_ROWS = 64


@dataclasses.dataclass
class Certificate:
  """Per image (numpy arrays).

  Attributes:
    certified: bool [N]: no one-pixel change alters the predicted class
      (False for an image the model already gets wrong).
    fooled: bool [N]: a one-pixel change found that alters it.
    position: int [N, 2], colour: float [N, C] in [0, 1]: that change
      (-1 and NaN where none was found).
    boxes: int [N]: colour boxes bounded (1 per position at least).
    seconds: float [N]: wall time spent on the image.
    labels, clean_label, misclassified: the model on the clean images.
  """

  certified: np.ndarray
  fooled: np.ndarray
  position: np.ndarray
  colour: np.ndarray
  boxes: np.ndarray
  seconds: np.ndarray
  labels: np.ndarray
  clean_label: np.ndarray
  misclassified: np.ndarray

  @property
  def status(self) -> np.ndarray:
    """'certified', 'fooled', 'unknown' (the budget ran out) or
    'misclassified', per image."""
    s = np.full(len(self.labels), 'unknown', dtype=object)
    s[self.certified] = 'certified'
    s[self.fooled] = 'fooled'
    s[self.misclassified] = 'misclassified'
    return s

  @property
  def certified_accuracy(self) -> float:
    """Certified images over all images: a lower bound on the robust
    accuracy against one changed pixel."""
    return float(np.mean(self.certified))


def _box_bounds(jaxpr, x, y, pos, zl, zu, backward=True, rows=REFINE_ROWS):
  """Lower bound of min_{j != y} (logit_y - logit_j) over the colour box
  [zl, zu] at ``pos``, and the label the model gives the box's centre."""
  h, w, c = x.shape
  base = x.at[pos[0], pos[1]].set(0.0)
  coef = jnp.zeros((c, h, w, c), x.dtype).at[jnp.arange(c), pos[0], pos[1], jnp.arange(c)].set(1)
  centre = jnp.concatenate([coef, base[None]])[:, None]  # [C + 1, 1, H, W, C]
  x_lin = bounds.Lin(centre, jnp.zeros_like(centre))
  tape, known = [], {}
  refine = crown.refiner(tape, x_lin, zl, zu, known, rows) if backward and rows else None
  (out,) = bounds.propagate(jaxpr, [x_lin], zl, zu, tape, refine, known)
  if not isinstance(out, bounds.Lin):  # the output does not depend on the pixel
    out = bounds.Lin(
      jnp.zeros((c + 1,) + out.shape, out.dtype).at[-1].set(out),
      jnp.zeros((c + 1,) + out.shape, out.dtype),
    )
  lo, up = (out.c - out.r)[:, 0], (out.c + out.r)[:, 0]  # [C + 1, K]
  margin = bounds.Lin(lo[:, y][:, None] - up, jnp.zeros_like(lo))  # logit_y - logit_j >= this
  low, _ = bounds.concretize(margin, zl, zu)
  k = low.shape[0]
  vertex = jnp.broadcast_to((zl + zu) / 2, (k, c))
  if backward:  # the better of the forward and the backward (CROWN) bound, per margin
    spec = (jnp.eye(k)[y][None] - jnp.eye(k))[:, None]  # [K, 1, K]: e_y - e_j
    back, vertex = crown.backward(tape, x_lin, out, spec, zl, zu, known)
    low = jnp.maximum(low, back)
  low = jnp.where(jnp.arange(k) == y, jnp.inf, low)
  # Two colours tried for a counterexample: the box's centre, and the corner
  # where the weakest margin's bound is lowest.
  colours = jnp.stack([(zl + zu) / 2, vertex[jnp.argmin(low)]])
  imgs = jax.vmap(lambda z: x.at[pos[0], pos[1]].set(z))(colours)
  return jnp.min(low), imgs, colours


def _padded(run, xi, yi, p, a, b, batch: int, rows: int):
  """``run`` on up to ``batch`` boxes, padded to one compiled shape with
  copies of the first; numpy results for the boxes given."""
  m = len(p)
  pp, aa, bb = (np.concatenate([v, np.repeat(v[:1], batch - m, 0)]) for v in (p, a, b))
  out = jax.device_get(run(xi, yi, jnp.asarray(pp), jnp.asarray(aa), jnp.asarray(bb), rows))
  return tuple(np.array(v[:m]) for v in out)


def certify(
  predict,
  images,
  labels,
  *,
  params=None,
  max_boxes: int = 4096,
  batch: int = 64,
) -> Certificate:
  """Certifies each image against every one-pixel change, or finds one.

  Args:
    predict: ``images [B, H, W, C] in [0, 1] -> logits [B, K]``, a pure JAX
      function (``predict(params, images)`` with ``params``), as the attacks
      take it. Every operation on the image must have a bound rule
      (:mod:`jaxpix.verify.bounds`): others raise an error naming them.
    images: [N, H, W, C] in [0, 1]; labels: [N] ints.
    params: the parameters of a two-argument ``predict``.
    max_boxes: colour boxes bounded per image at most (H * W to start, one
      per position): the budget of the branch and bound. An image whose
      budget runs out is neither certified nor fooled.
    batch: boxes bounded per compiled call.
  """
  x = checks.images(images)
  n, h, w, c = x.shape
  fn, params = forward.with_params(predict, params)
  k = checks.num_classes(functools.partial(fn, params), (h, w, c))
  y = checks.labels('labels', labels, n, k)
  checks.positive_int('max_boxes', max_boxes)
  checks.positive_int('batch', batch)
  if max_boxes < h * w:
    raise ValueError(
      f'max_boxes must be at least H * W = {h * w} (one box per position), got {max_boxes}'
    )
  model = functools.partial(fn, params)
  jaxpr = jax.make_jaxpr(model)(jnp.zeros((1, h, w, c), jnp.float32))

  @functools.partial(jax.jit, static_argnums=5)
  def run(xi, yi, pos, zl, zu, rows):
    low, imgs, colours = jax.vmap(lambda p, a, b: _box_bounds(jaxpr, xi, yi, p, a, b, rows=rows))(
      pos, zl, zu
    )
    labels = jnp.argmax(model(imgs.reshape((-1, h, w, c))), -1).reshape(-1, 2)
    return low, labels, colours

  @jax.jit
  def corner_labels(xi, pos):
    # Every corner of the colour cube at each position, as the exhaustive
    # sweep tries them: the first round's counterexamples.
    cube = jnp.asarray(search.corners(c), jnp.float32) / 255.0
    imgs = jax.vmap(lambda p: jax.vmap(lambda z: xi.at[p[0], p[1]].set(z))(cube))(pos)
    return jnp.argmax(model(imgs.reshape((-1, h, w, c))), -1).reshape(len(pos), -1)

  # Traced once here, so that an operation without a bound rule is named
  # before any image is verified (and whatever the images).
  probe = (jnp.zeros((batch, 2), jnp.int32), jnp.zeros((batch, c)), jnp.ones((batch, c)))
  jax.eval_shape(run, jnp.asarray(x[0]), jnp.int32(0), *probe, 0)
  clean = forward.batched_logits(fn, x, params=params).argmax(-1).astype(np.int32)
  out = dict(
    certified=np.zeros(n, bool),
    fooled=np.zeros(n, bool),
    position=np.full((n, 2), -1, np.int32),
    colour=np.full((n, c), np.nan, np.float32),
    boxes=np.zeros(n, np.int64),
    seconds=np.zeros(n),
  )
  for i in range(n):
    if clean[i] != y[i]:
      continue
    t0 = time.perf_counter()
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2)
    queue = [(grid, np.zeros((h * w, c), np.float32), np.ones((h * w, c), np.float32))]
    used = 0
    xi, yi = jnp.asarray(x[i]), jnp.int32(y[i])
    while queue and not out['fooled'][i]:
      pos, zl, zu = (np.concatenate(a) for a in zip(*queue, strict=True))
      if used + len(pos) > max_boxes:
        break  # the budget cannot bound this round: not certified
      queue = []
      for s in range(0, len(pos), batch):
        p, a, b = pos[s : s + batch], zl[s : s + batch], zu[s : s + batch]
        m = len(p)
        low, label, colours = _padded(run, xi, yi, p, a, b, batch, 0)
        if used < h * w:  # the first round: also every corner
          pp = np.concatenate([p, np.repeat(p[:1], batch - m, 0)])
          corner = jax.device_get(corner_labels(xi, jnp.asarray(pp)))[:m]
          label = np.concatenate([label, corner], 1)
          cube = search.corners(c).astype(np.float32) / 255.0
          colours = np.concatenate([colours, np.broadcast_to(cube, (m,) + cube.shape)], 1)
        used += m
        wrong = np.argwhere(label != y[i])
        if len(wrong):
          j, t = wrong[0]
          out['fooled'][i] = True
          out['position'][i] = p[j]
          out['colour'][i] = colours[j, t]
          break
        open_ = ~(low > TOLERANCE)
        if open_.any() and REFINE_ROWS:
          # Only the boxes the cheaper bounds leave open get the refined
          # (and far costlier) intermediate bounds.
          idx = np.flatnonzero(open_)
          for t in range(0, len(idx), batch):
            sel = idx[t : t + batch]
            low[sel] = _padded(run, xi, yi, p[sel], a[sel], b[sel], batch, REFINE_ROWS)[0]
          open_ = ~(low > TOLERANCE)
        if open_.any():
          # Split each open box in two along its widest side.
          pa, aa, bb = p[open_], a[open_], b[open_]
          side = np.argmax(bb - aa, 1)
          mid = (aa[np.arange(len(aa)), side] + bb[np.arange(len(bb)), side]) / 2
          left_hi, right_lo = bb.copy(), aa.copy()
          left_hi[np.arange(len(aa)), side] = mid
          right_lo[np.arange(len(aa)), side] = mid
          queue.append(
            (
              np.concatenate([pa, pa]),
              np.concatenate([aa, right_lo]),
              np.concatenate([left_hi, bb]),
            )
          )
    out['certified'][i] = not queue and not out['fooled'][i]
    out['boxes'][i] = used
    out['seconds'][i] = time.perf_counter() - t0
  return Certificate(labels=y, clean_label=clean, misclassified=clean != y, **out)
