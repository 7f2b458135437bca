"""Per-image search strategies: differential evolution and the extreme-colour sweep.

A strategy is a :class:`Search`: three pure per-image functions that the engine
``vmap``s over image slots. Each engine step asks every slot for
``num_candidates`` candidate vectors, evaluates them all in one forward pass and
hands their fitness (lower is better) back. Step 0 of differential evolution
evaluates the initial population; steps 1..maxiter evaluate trial vectors, so a
full run costs exactly ``popsize * (maxiter + 1)`` model evaluations.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import perturb


class Search(NamedTuple):
  """A per-image search, run by the engine for ``max_steps`` steps at most.

  Attributes:
    num_candidates: candidates evaluated per image per step (P).
    max_steps: steps per image, the initial evaluation included.
    init: ``key -> state``, the per-image search state; with ``data_shape``,
      ``(key, data) -> state``, ``data`` the image's own input to the search
      (e.g. its candidates in ranked order), given to the attack per image.
    propose: ``(state, key, step) -> (candidates [P, D], n_valid)``; only the
      first ``n_valid`` candidates count as queries (the rest are padding).
    update: ``(state, candidates, fitness [P], step) -> state``.
    data_shape, data_dtype: the shape and dtype of one image's ``data``
      (None: the search takes none).
    fill: the engine gives each image ``width`` in [1, P] candidates a step
      so that the images in flight fill whole forward passes; ``propose`` is
      ``(state, key, step, width) -> (candidates [P, D], n_valid <= width)``,
      ``update`` also takes ``n_valid``; only the first ``n_valid`` are
      evaluated (the rest: fitness +inf) and an image ends at its first step
      with ``n_valid`` 0 (``max_steps`` is unused).
  """

  num_candidates: int
  max_steps: int
  init: Callable[..., Any]
  propose: Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, jax.Array]]
  update: Callable[[Any, jax.Array, jax.Array, jax.Array], Any]
  data_shape: tuple[int, ...] | None = None
  data_dtype: Any = np.int32
  fill: bool = False


# --------------------------------------------------------------------------- #
# Differential evolution
# --------------------------------------------------------------------------- #


@dataclasses.dataclass(frozen=True)
class DEConfig:
  """Differential-evolution settings. The defaults are Su et al. (2019).

  Attributes:
    popsize: population size (candidates per generation).
    maxiter: generations after the initial population.
    strategy: ``'rand1'`` (v = x_r1 + F (x_r2 - x_r3), Su et al.) or ``'best1'``
      (v = x_best + F (x_r1 - x_r2), scipy's best1bin as used by the reference
      Keras implementation).
    mutation: F, or a ``(low, high)`` pair to draw F uniformly per generation
      ("dithering", as scipy does).
    crossover: ``None`` for no crossover (the trial is the mutant, Su et al.),
      or a binomial crossover rate CR in [0, 1].
    init: ``'normal'`` (coordinates uniform, colours N(128, 127) clipped, Su et
      al.) or ``'latin'`` (Latin hypercube over the bounds, scipy's default).
    boundary: what happens to a gene a mutation pushes out of bounds:
      ``'clip'`` it to the bound, or ``'resample'`` it uniformly within the
      bounds (scipy). Su et al. do not say; clipping makes the extreme colours
      0 and 255, the strongest one-pixel values, reachable.
  """

  popsize: int = 400
  maxiter: int = 100
  strategy: Literal['rand1', 'best1'] = 'rand1'
  mutation: float | tuple[float, float] = 0.5
  crossover: float | None = None
  init: Literal['normal', 'latin'] = 'normal'
  boundary: Literal['clip', 'resample'] = 'clip'

  def __post_init__(self):
    if self.strategy not in ('rand1', 'best1'):
      raise ValueError(f"strategy must be 'rand1' or 'best1', got {self.strategy!r}")
    need = 4 if self.strategy == 'rand1' else 3
    if not isinstance(self.popsize, int) or self.popsize < need:
      raise ValueError(
        f'popsize must be an int >= {need} for {self.strategy} (the mutation '
        f'needs {need - 1} distinct other members), got {self.popsize!r}'
      )
    if not isinstance(self.maxiter, int) or self.maxiter < 0:
      raise ValueError(f'maxiter must be an int >= 0, got {self.maxiter!r}')
    f = self.mutation
    if isinstance(f, tuple):
      if len(f) != 2 or not 0 <= f[0] <= f[1] <= 2:
        raise ValueError(
          f'mutation dither must be (low, high) with 0 <= low <= high <= 2, got {f!r}'
        )
    elif not 0 < f <= 2:
      raise ValueError(f'mutation F must be in (0, 2], got {f!r}')
    if self.crossover is not None and not 0 <= self.crossover <= 1:
      raise ValueError(f'crossover must be None or a rate in [0, 1], got {self.crossover!r}')
    if self.init not in ('normal', 'latin'):
      raise ValueError(f"init must be 'normal' or 'latin', got {self.init!r}")
    if self.boundary not in ('clip', 'resample'):
      raise ValueError(f"boundary must be 'clip' or 'resample', got {self.boundary!r}")


#: Su, Vargas and Sakurai (2019): rand/1, F = 0.5, no crossover, 400 x 100.
SU = DEConfig()
#: The reference Keras implementation (one-pixel-attack-keras): scipy's
#: best1bin, F dithered in [0.5, 1), recombination 1, Latin hypercube init,
#: 75 generations, out-of-bounds genes resampled as scipy does.
KERAS = DEConfig(
  maxiter=75,
  strategy='best1',
  mutation=(0.5, 1.0),
  crossover=1.0,
  init='latin',
  boundary='resample',
)
PRESETS = {'su': SU, 'keras': KERAS}


def _distinct_others(key: jax.Array, popsize: int, n: int) -> jax.Array:
  """For each member i, n distinct indices != i, uniformly. Returns int [P, n]."""
  excluded = jnp.arange(popsize)[:, None]
  picks = []
  for j in range(n):
    a = jax.random.randint(jax.random.fold_in(key, j), (popsize,), 0, popsize - 1 - j)
    # Map a to the a-th integer not yet excluded: walk the sorted exclusions.
    ex = jnp.sort(excluded, axis=1)
    for m in range(ex.shape[1]):
      a = a + (a >= ex[:, m])
    picks.append(a)
    excluded = jnp.concatenate([excluded, a[:, None]], axis=1)
  return jnp.stack(picks, axis=1)


def _init_population(key, cfg: DEConfig, lo, hi, pixels, channels, mode):
  p, d = cfg.popsize, lo.shape[0]
  if cfg.init == 'latin':
    ku, kp = jax.random.split(key)
    strata = (jnp.arange(p, dtype=jnp.float32)[:, None] + jax.random.uniform(ku, (p, d))) / p
    perms = jax.vmap(lambda k: jax.random.permutation(k, p), out_axes=1)(jax.random.split(kp, d))
    u = jnp.take_along_axis(strata, perms, axis=0)
    return lo + u * (hi - lo)
  ku, kn = jax.random.split(key)
  pop = lo + jax.random.uniform(ku, (p, d)) * (hi - lo)
  if mode == 'replace':
    # Su et al.: colours ~ N(128, 127), clipped to the valid range.
    colours = jnp.clip(128 + 127 * jax.random.normal(kn, (p, d)), 0, 255)
    is_colour = np.tile([False, False] + [True] * channels, pixels)
    pop = jnp.where(is_colour, colours, pop)
  # 'add' deltas stay uniform on [-255, 255]: no paper gives a prior for them.
  return pop


@functools.cache
def differential_evolution(
  cfg: DEConfig, pixels: int, height: int, width: int, channels: int, mode: perturb.Mode
) -> Search:
  """The DE search for a k-pixel attack on [height, width, channels] images.

  Cached, so equal arguments give the same (hashable) object and the engine's
  compiled loop is reused across calls.
  """
  lo, hi = perturb.bounds(pixels, height, width, channels, mode)
  upper = _upper(lo, hi, channels, pixels)  # inclusive, for clipping
  p, d = cfg.popsize, lo.shape[0]

  def init(key):
    pop = _init_population(key, cfg, lo, hi, pixels, channels, mode)
    # Fitness starts at +inf so that step 0 (which proposes the population
    # itself) "selects" every member: the same update serves both phases.
    return pop, jnp.full((p,), jnp.inf, jnp.float32)

  def trials(pop, fit, key):
    k_idx, k_f, k_cr, k_j, k_b = jax.random.split(key, 5)
    if isinstance(cfg.mutation, tuple):
      f = jax.random.uniform(k_f, (), minval=cfg.mutation[0], maxval=cfg.mutation[1])
    else:
      f = cfg.mutation
    if cfg.strategy == 'rand1':
      r = _distinct_others(k_idx, p, 3)
      mutant = pop[r[:, 0]] + f * (pop[r[:, 1]] - pop[r[:, 2]])
    else:
      r = _distinct_others(k_idx, p, 2)
      mutant = pop[jnp.argmin(fit)][None] + f * (pop[r[:, 0]] - pop[r[:, 1]])
    if cfg.crossover is None:
      trial = mutant
    else:
      take = jax.random.uniform(k_cr, (p, d)) < cfg.crossover
      take |= jnp.arange(d)[None] == jax.random.randint(k_j, (p, 1), 0, d)
      trial = jnp.where(take, mutant, pop)
    if cfg.boundary == 'clip':
      return jnp.clip(trial, lo, upper)
    out = (trial < lo) | (trial > upper)
    fresh = lo + jax.random.uniform(k_b, (p, d)) * (hi - lo)
    return jnp.where(out, fresh, trial)

  def propose(state, key, step):
    pop, fit = state
    cands = jax.lax.cond(step == 0, lambda: pop, lambda: trials(pop, fit, key))
    return cands, jnp.int32(p)

  def update(state, cands, fitness, step):
    del step
    pop, fit = state
    # "<=" lets the population drift across plateaus of equal fitness.
    better = fitness <= fit
    return jnp.where(better[:, None], cands, pop), jnp.where(better, fitness, fit)

  return Search(p, cfg.maxiter + 1, init, propose, update)


def _upper(lo, hi, channels, pixels):
  """Inclusive upper bounds: coordinates are floored, so H itself is out of range."""
  is_coord = np.tile([True, True] + [False] * channels, pixels)
  return np.where(is_coord, hi - np.float32(1e-3), hi).astype(np.float32)


# --------------------------------------------------------------------------- #
# Exhaustive extreme-colour search
# --------------------------------------------------------------------------- #


def corners(channels: int) -> jax.Array:
  """The 2^C corners of the colour cube, int [2^C, C] (numpy); channel c is bit c."""
  k = np.arange(2**channels)[:, None]
  return ((k >> np.arange(channels)[None]) & 1) * 255


@functools.cache
def exhaustive_corners(height: int, width: int, channels: int, chunk: int) -> Search:
  """Every position x every colour-cube corner, ``chunk`` candidates per step.

  Candidate number i is position i // 2^C (row-major) with corner i % 2^C. The
  last step is padded with copies of the last candidate; padding is not
  counted as queries.
  """
  n_corner = 2**channels
  total = height * width * n_corner
  cube = corners(channels).astype(np.float32)

  def init(key):
    del key
    return jnp.zeros((), jnp.int32)

  def propose(state, key, step):
    del key
    idx = step * chunk + jnp.arange(chunk)
    n_valid = jnp.clip(total - step * chunk, 0, chunk).astype(jnp.int32)
    idx = jnp.minimum(idx, total - 1)
    pos, corner = idx // n_corner, idx % n_corner
    # +0.5 puts the coordinate inside its pixel, far from the floor boundary.
    coords = jnp.stack([pos // width, pos % width], axis=1).astype(jnp.float32) + 0.5
    return jnp.concatenate([coords, jnp.asarray(cube)[corner]], axis=1), n_valid

  def update(state, cands, fitness, step):
    return state

  return Search(chunk, math.ceil(total / chunk), init, propose, update)


@functools.cache
def ranked_corners(height: int, width: int, channels: int, budget: int, chunk: int) -> Search:
  """Extreme-colour candidates in each image's own order, ``chunk`` per step.

  The image's ``data`` is int32 [budget]: candidate numbers of
  :func:`exhaustive_corners` (position i // 2^C, corner i % 2^C), best first,
  e.g. ranked by the input gradient (:func:`jaxpix.attack.gradient_ranked`).
  With every candidate listed it is the exhaustive search in another order:
  the same images are fooled, sooner. Padding as in ``exhaustive_corners``.
  """
  n_corner = 2**channels
  cube = corners(channels).astype(np.float32)

  def init(key, order):
    del key
    return order

  def propose(order, key, step):
    del key
    i = step * chunk + jnp.arange(chunk)
    n_valid = jnp.clip(budget - step * chunk, 0, chunk).astype(jnp.int32)
    idx = order[jnp.minimum(i, budget - 1)]
    pos, corner = idx // n_corner, idx % n_corner
    coords = jnp.stack([pos // width, pos % width], axis=1).astype(jnp.float32) + 0.5
    return jnp.concatenate([coords, jnp.asarray(cube)[corner]], axis=1), n_valid

  def update(state, cands, fitness, step):
    return state

  return Search(chunk, math.ceil(budget / chunk), init, propose, update, (budget,), np.int32)


@functools.cache
def refined_corners(
  height: int, width: int, channels: int, budget: int, chunk: int, radius: int, targeted: bool
) -> Search:
  """Extreme-colour candidates, best first by a first-order estimate that the
  measured losses correct as the search goes, ``chunk`` per step.

  The image's ``data`` is float32 [H * W * 2^C + 1]: the predicted increase of
  the objective for every candidate of :func:`exhaustive_corners` (the
  linearised gain), then the objective of the clean image. The objective is
  ``-log p(label)`` (untargeted) or ``log p(target)`` (targeted), read from the
  engine's fitness (``p(label)``, or ``1 - p(target)``).

  Each step proposes the ``chunk`` untried candidates of highest estimate; the
  estimate of candidate (pixel q, corner j) is its gain plus a correction
  ``d_q``: the mean error (measured objective minus predicted) of the
  candidates already tried at q, or where none was, the mean of the measured
  pixels' corrections within ``radius`` rows and columns of q (0 where none
  is). The linearisation is poor for a full-range colour change (on the
  ``:cpu`` ResNet-18 the fixed gradient order reached two images' only fooling
  candidates around the 6,000th and 8,000th of 8,192: benchmarks/README.md),
  but its errors are shared by a pixel's corners and by neighbouring pixels,
  so a pixel that measured better than predicted has its other corners and
  its neighbours raised, and one that measured worse is dropped. (Radius 2
  and 200 candidates a step were chosen by replaying the order on full
  candidate tables of the CNN6's and the ResNet-18's first 48 test images, a
  scratch study not kept; benchmarks/one_pixel_search.py checks them on
  models not used to choose.)
  No candidate is tried twice: with ``budget = H * W * 2^C`` it tries every
  one, so it fools exactly the images :func:`exhaustive_corners` fools.
  """
  total = height * width * 2**channels
  refine = CornerRefiner(height, width, channels, radius, targeted)

  def init(key, data):
    del key
    return refine.init(data[:total], data[total])

  def valid(step):
    return jnp.clip(budget - step * chunk, 0, chunk).astype(jnp.int32)

  def propose(state, key, step):
    del key
    return refine.propose(state, chunk, valid(step))

  def update(state, cands, fitness, step):
    return refine.update(state, cands, fitness, valid(step))

  return Search(chunk, math.ceil(budget / chunk), init, propose, update, (total + 1,), np.float32)


class CornerRefiner(NamedTuple):
  """One image's extreme-colour candidates best first by an estimate that
  measured losses correct (:func:`refined_corners`; ``random_search`` starts
  it from a prior, not a gradient). State: (gain [T], base, tried [T], err
  [HW], cnt [HW]): each candidate's estimated objective increase, the clean
  objective, which were tried, per pixel the summed error (measured minus
  estimated) and how many were measured."""

  height: int
  width: int
  channels: int
  radius: int
  targeted: bool

  def init(self, gain, base):
    hw = self.height * self.width
    z = jnp.zeros((hw,), jnp.float32)
    return gain, base, jnp.zeros(gain.shape, bool), z, z

  def _box(self, v):  # the sum over each pixel's (2r + 1)^2 neighbourhood, [HW]
    k = 2 * self.radius + 1
    v = v.reshape(self.height, self.width)
    s = jax.lax.reduce_window(v, 0.0, jax.lax.add, (k, k), (1, 1), 'SAME')
    return s.reshape(-1)

  def propose(self, state, p: int, n_valid):
    """The ``p`` untried candidates of highest estimate [p, 2 + C]; those past
    ``n_valid`` repeat the last counted one (padding finds nothing new)."""
    gain, _, tried, err, cnt = state
    n_corner = 2**self.channels
    own = err / jnp.maximum(cnt, 1.0)
    has = (cnt > 0).astype(jnp.float32)
    if self.radius > 0:
      near_sum, near_cnt = self._box(own * has), self._box(has)
      near = jnp.where(near_cnt > 0, near_sum / jnp.maximum(near_cnt, 1.0), 0.0)
    else:
      near = jnp.zeros_like(own)
    delta = jnp.where(cnt > 0, own, near)
    est = gain + jnp.repeat(delta, n_corner)
    _, idx = jax.lax.top_k(jnp.where(tried, -jnp.inf, est), p)
    idx = jnp.where(jnp.arange(p) < n_valid, idx, idx[jnp.maximum(n_valid - 1, 0)])
    pos, corner = idx // n_corner, idx % n_corner
    coords = jnp.stack([pos // self.width, pos % self.width], 1).astype(jnp.float32) + 0.5
    cube = jnp.asarray(corners(self.channels), jnp.float32)
    return jnp.concatenate([coords, cube[corner]], axis=1), n_valid

  def update(self, state, cands, fitness, n_valid):
    """Folds the measured fitness of the first ``n_valid`` candidates in."""
    gain, base, tried, err, cnt = state
    bits = (2 ** np.arange(self.channels)).astype(np.int32)
    pos = cands[:, 0].astype(jnp.int32) * self.width + cands[:, 1].astype(jnp.int32)
    idx = pos * 2**self.channels + jnp.sum((cands[:, 2:] > 127).astype(jnp.int32) * bits, axis=1)
    p = 1.0 - fitness if self.targeted else fitness
    measured = jnp.log(jnp.maximum(p, 1e-30))
    measured = measured if self.targeted else -measured
    # A non-finite fitness (non-finite logits) teaches nothing; padding is not counted.
    ok = jnp.isfinite(fitness) & (jnp.arange(cands.shape[0]) < n_valid)
    e = jnp.where(ok, measured - base - gain[idx], 0.0)
    err = err.at[pos].add(e)
    cnt = cnt.at[pos].add(ok.astype(jnp.float32))
    return gain, base, tried.at[idx].set(True), err, cnt  # padding repeats a counted one
