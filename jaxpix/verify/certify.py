"""A sound one-pixel verifier: :func:`certify`.

For each image it proves that no change of one pixel (any position, any
colour in [0, 1]^C: the whole colour cube, not only its corners; this covers
``replace`` and ``add`` with deltas of +-255 alike) changes the predicted
class, or finds a colour that does, or says it could not tell within its
budget. Per position the pixel's colour is a box of C variables, the rest of
the image fixed; :mod:`jaxpix.verify.bounds` (forward) and
:mod:`jaxpix.verify.crown` (backward) bound the margins of the true class
over the box (with ``zonotope_slots``, :mod:`jaxpix.verify.zonotope`
first tightens every ReLU's input bounds, which deep networks need), and a
box they cannot certify is split in two along its widest side (branch and
bound) while the budget lasts. Colours are also
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
from jaxpix.verify import bounds, crown, zonotope

# A margin lower bound must exceed this to certify a box: float32 rounding
# in the bounds (and in the model) is far below it for logits of order 10.
TOLERANCE = 1e-4
# Before each ReLU is relaxed, this many of its inputs (those whose bounds
# straddle zero most widely) get CROWN's backward bounds. Off by default: on
# LeNet they cost ~25x a box's cheaper bounds, and halving a box three times
# (8 boxes) closed more (benchmarks/verify_bounds.py, docs/verification.md).
REFINE_ROWS = 0
# A box split from another keeps its parent's margin bounds (they hold on
# the half too) and gets backward bounds only for the margins its parent
# left open: as many as the batch's box with the most, rounded up to one of
# these (each a compiled variant; K - 1 = all).
MARGIN_COUNTS = (1, 3)


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
    bound: float [N]: the margin's certified lower bound, min over one-pixel
      changes of logit_y - max_{j != y} logit_j >= bound: positive for a
      certified image; for one whose budget ran out, the lowest bound of its
      open boxes (how far it is from a certificate); NaN otherwise.
    seconds: float [N]: wall time spent on the image.
    labels, clean_label, misclassified: the model on the clean images.
  """

  certified: np.ndarray
  fooled: np.ndarray
  position: np.ndarray
  colour: np.ndarray
  boxes: np.ndarray
  bound: np.ndarray
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


def _box_bounds(
  jaxpr, x, y, pos, zl, zu, parent, backward=True, rows=REFINE_ROWS, margins=None, slots=0
):
  """Lower bounds of the margins logit_y - logit_j over the colour box
  [zl, zu] at ``pos`` ([K], +inf at y), and two colours of the box to try
  as counterexamples (images and colours).

  ``parent``: the margins' bounds over a box that contains this one (they
  hold here too; -inf for none). With ``margins``, only that many margins,
  those the parent bounds lowest, get backward bounds (each costs a
  backward pass through the network); the others keep the parent's. With
  ``slots``, zonotope bounds (:mod:`jaxpix.verify.zonotope`, that many new
  symbols per ReLU) tighten every ReLU's input bounds first, and bound the
  margins too.
  """
  h, w, c = x.shape
  base = x.at[pos[0], pos[1]].set(0.0)
  coef = jnp.zeros((c, h, w, c), x.dtype).at[jnp.arange(c), pos[0], pos[1], jnp.arange(c)].set(1)
  centre = jnp.concatenate([coef, base[None]])[:, None]  # [C + 1, 1, H, W, C]
  x_lin = bounds.Lin(centre, jnp.zeros_like(centre))
  tape, known = [], {}
  refine = crown.refiner(tape, x_lin, zl, zu, known, rows) if backward and rows else None
  z_low = None
  if slots:
    mid = x.at[pos[0], pos[1]].set((zl + zu) / 2)[None]
    z_in = zonotope.Zono(mid, (coef * ((zu - zl) / 2)[:, None, None, None])[:, None], 0 * mid)
    (z_out,), recorded = zonotope.propagate(jaxpr, [z_in], slots)
    if isinstance(z_out, zonotope.Zono):
      z_low = _zono_margins(z_out, y)
    queue, inner = list(recorded), refine

    def refine(b, low, high, k):
      zlow, zhigh = queue.pop(0)
      low, high = jnp.maximum(low, zlow), jnp.minimum(high, zhigh)
      return (low, high) if inner is None else inner(b, low, high, k)

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
  low = jnp.where(jnp.arange(k) == y, jnp.inf, jnp.maximum(low, parent))
  if z_low is not None:
    low = jnp.maximum(low, z_low)
  vertex = jnp.broadcast_to((zl + zu) / 2, (k, c))
  if backward:  # the better of the forward and the backward (CROWN) bound, per margin
    js = jnp.arange(k) if margins is None else jax.lax.top_k(-low, min(margins, k - 1))[1]
    spec = (jnp.eye(k)[y][None] - jnp.eye(k)[js])[:, None]  # [m, 1, K]: e_y - e_j
    back, vert = crown.backward(tape, x_lin, out, spec, zl, zu, known)
    low, vertex = low.at[js].max(back), vertex.at[js].set(vert)
  low = jnp.where(jnp.arange(k) == y, jnp.inf, low)
  weakest = jnp.argmin(low)
  # Two colours tried for a counterexample: the box's centre, and the corner
  # where the weakest margin's bound is lowest.
  colours = jnp.stack([(zl + zu) / 2, vertex[weakest]])
  imgs = jax.vmap(lambda z: x.at[pos[0], pos[1]].set(z))(colours)
  return low, imgs, colours


def _zono_margins(z, y):
  """Lower bounds of logit_y - logit_j ([K]) from the logits' zonotope [1, K]."""
  c = z.c[0, y] - z.c[0]
  g = z.g[:, 0, y][:, None] - z.g[:, 0]
  return c - jnp.abs(g).sum(0) - z.rad[0, y] - z.rad[0]


def _padded(run, xi, yi, boxes, batch: int, *static):
  """``run`` on up to ``batch`` boxes (arrays with a leading box axis),
  padded to one compiled shape with copies of the first; numpy results for
  the boxes given."""
  m = len(boxes[0])
  full = (jnp.asarray(np.concatenate([v, np.repeat(v[:1], batch - m, 0)])) for v in boxes)
  out = jax.device_get(run(xi, yi, *full, *static))
  return tuple(np.array(v[:m]) for v in out)


def _halves(p, a, b, low):
  """Each box [a, b] split in two at the middle of its widest side (its
  position and margin bounds ``low`` go to both halves). The widest side:
  on LeNet it closed more boxes per round than the side where the weakest
  margin's bound moves most (ReluVal's "smear"), which kept halving one
  channel."""
  i, side = np.arange(len(a)), np.argmax(b - a, 1)
  mid = (a[i, side] + b[i, side]) / 2
  left_hi, right_lo = b.copy(), a.copy()
  left_hi[i, side] = mid
  right_lo[i, side] = mid
  two = lambda v: np.concatenate([v, v])  # noqa: E731
  return two(p), np.concatenate([a, right_lo]), np.concatenate([left_hi, b]), two(low)


def certify(
  predict,
  images,
  labels,
  *,
  params=None,
  max_boxes: int = 131_072,
  batch: int = 64,
  refine_rows: int = REFINE_ROWS,
  zonotope_slots: int = 64,
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
      budget runs out is neither certified nor fooled. The default is what
      LeNet's robust images needed (71,000 boxes on average without the
      zonotope pass, 29,600 with it; docs/verification.md).
    batch: boxes bounded per compiled call.
    refine_rows: per ReLU, the straddling inputs given backward bounds for
      the boxes the cheaper bounds leave open (0: never).
    zonotope_slots: > 0: zonotope bounds (:mod:`jaxpix.verify.zonotope`)
      with that many new symbols per ReLU tighten every box's intermediate
      bounds, and bound its margins too. Each box costs about
      3 + slots x (ReLU layers) forward passes more; on deep networks
      (ResNet-18) the forward bounds explode without them
      (docs/verification.md). 0: off. The default, 64, certified LeNet's
      robust images in 0.4x the boxes and 0.8x the time of 0.
  """
  x = checks.images(images)
  n, h, w, c = x.shape
  fn, params = forward.with_params(predict, params)
  k = checks.num_classes(functools.partial(fn, params), (h, w, c))
  y = checks.labels('labels', labels, n, k)
  checks.positive_int('max_boxes', max_boxes)
  checks.positive_int('batch', batch)
  for name, v in (('refine_rows', refine_rows), ('zonotope_slots', zonotope_slots)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
      raise ValueError(f'{name} must be an int >= 0, got {v!r}')
  if max_boxes < h * w:
    raise ValueError(
      f'max_boxes must be at least H * W = {h * w} (one box per position), got {max_boxes}'
    )
  model = functools.partial(fn, params)
  jaxpr = jax.make_jaxpr(model)(jnp.zeros((1, h, w, c), jnp.float32))

  @functools.partial(jax.jit, static_argnums=(6, 7))
  def run(xi, yi, pos, zl, zu, parent, rows, margins):
    low, imgs, colours = jax.vmap(
      lambda *box: _box_bounds(
        jaxpr, xi, yi, *box, rows=rows, margins=margins, slots=zonotope_slots
      )
    )(pos, zl, zu, parent)
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
  jax.eval_shape(run, jnp.asarray(x[0]), jnp.int32(0), *probe, jnp.zeros((batch, k)), 0, None)
  clean = forward.batched_logits(fn, x, params=params).argmax(-1).astype(np.int32)
  out = dict(
    certified=np.zeros(n, bool),
    fooled=np.zeros(n, bool),
    position=np.full((n, 2), -1, np.int32),
    colour=np.full((n, c), np.nan, np.float32),
    boxes=np.zeros(n, np.int64),
    bound=np.full(n, np.nan),
    seconds=np.zeros(n),
  )
  cube = search.corners(c).astype(np.float32) / 255.0
  grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2)
  for i in range(n):
    if clean[i] != y[i]:
      continue
    t0 = time.perf_counter()
    xi, yi = jnp.asarray(x[i]), jnp.int32(y[i])
    # The open boxes (position, low and high colour) and the bounds of their
    # margins over their parents: the lowest are bounded first (best first),
    # so a counterexample is met early and the budget goes where
    # certification is hardest.
    pos, zl, zu = grid, np.zeros((h * w, c), np.float32), np.ones((h * w, c), np.float32)
    parent = np.full((h * w, k), -np.inf, np.float32)
    used, closed = 0, np.inf  # the lowest bound of the boxes certified
    while len(pos) and used < max_boxes:
      first = used < h * w  # the first round: every margin, and every corner
      pick = np.argsort(parent.min(1), kind='stable')[: min(batch, max_boxes - used)]
      box = pos[pick], zl[pick], zu[pick], parent[pick]
      rest = np.setdiff1d(np.arange(len(pos)), pick)
      pos, zl, zu, parent = pos[rest], zl[rest], zu[rest], parent[rest]
      margins = None
      if not first:
        most = int((box[3] <= TOLERANCE).sum(1).max())
        margins = next((m for m in MARGIN_COUNTS if m >= most and m < k - 1), None)
      low, label, colours = _padded(run, xi, yi, box, batch, 0, margins)
      p = box[0]
      if first:
        pp = np.concatenate([p, np.repeat(p[:1], batch - len(p), 0)])
        corner = jax.device_get(corner_labels(xi, jnp.asarray(pp)))[: len(p)]
        label = np.concatenate([label, corner], 1)
        colours = np.concatenate([colours, np.broadcast_to(cube, (len(p),) + cube.shape)], 1)
      used += len(p)
      wrong = np.argwhere(label != y[i])
      if len(wrong):
        j, t = wrong[0]
        out['fooled'][i] = True
        out['position'][i] = p[j]
        out['colour'][i] = colours[j, t]
        break
      open_ = ~(low.min(1) > TOLERANCE)
      if open_.any() and refine_rows:
        # Only the boxes the cheaper bounds leave open get the refined (and
        # far costlier) intermediate bounds.
        sel = np.flatnonzero(open_)
        again = tuple(v[sel] for v in box[:3]) + (low[sel],)
        refined = _padded(run, xi, yi, again, batch, refine_rows, margins)
        low[sel] = np.maximum(low[sel], refined[0])
        open_ = ~(low.min(1) > TOLERANCE)
      closed = min(closed, low[~open_].min(initial=np.inf))
      if open_.any():
        halves = _halves(p[open_], box[1][open_], box[2][open_], low[open_])
        pos, zl, zu, parent = (
          np.concatenate(v) for v in zip((pos, zl, zu, parent), halves, strict=True)
        )
    out['certified'][i] = not len(pos) and not out['fooled'][i]
    if not out['fooled'][i]:
      out['bound'][i] = closed if out['certified'][i] else parent.min()
    out['boxes'][i] = used
    out['seconds'][i] = time.perf_counter() - t0
  return Certificate(labels=y, clean_label=clean, misclassified=clean != y, **out)
