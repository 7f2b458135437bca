"""The black-box searches of :func:`jaxpix.attack.random_search`: one pixel
and k pixels, extreme colours only, ``fill`` searches (the engine hands each
image as many candidates per step as fill the forward passes).

One pixel (:func:`corner_search`): the H * W * 2^C extreme-colour candidates
(every pixel set to a corner of the colour cube), never one twice, best first
by an estimate that starts from a prior and that the measured losses correct:
the prior ranks a corner by how far it lies from the pixel's own colour (a
bigger change moves the model more), plus noise from the image's key to break
ties; each measured candidate corrects the estimate of its pixel's untried
corners and of the pixels around it (``search.CornerRefiner``, the machinery
of the white-box ``gradient_ranked``, here without a gradient). Sparse-RS at
one pixel (Croce et al. 2022) draws a random pixel and corner per query, so
what it learns never steers it; here every query steers the next ones.

k pixels (:func:`sparse_search`): Sparse-RS's L0 random search (the same
schedule of how many of the k pixels each query moves, new pixels at random
positions outside the set with random corner colours, a move kept when it
lowers the loss), with ``width`` proposals per step from the current set (a
(1 + width) search instead of (1 + 1)), the best of them kept.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack.search import CornerRefiner, Search, corners

# The one-pixel prior: ALPHA * (distance from the pixel's colour to the
# corner, in [0, sqrt(C)]), in units of the loss the measurements correct it
# in (-log p). Chosen with RADIUS by replaying the search on full candidate
# tables of two models (CNN6 and the :cpu ResNet-18, 64 test images each from
# index 600 on, disjoint from the benchmark's images): alpha 0.1-1 and radius
# 1-2 all within one image of each other; the prior alone already beat
# random order, the correction on top of it more (benchmarks/README.md).
ALPHA = 0.3
RADIUS = 1
# Ties in the prior are broken by uniform noise this small.
_NOISE = 1e-3


def corner_prior(images: np.ndarray) -> np.ndarray:
  """The distance of every corner from each pixel's colour, float32
  [N, H * W * 2^C] (candidate p * 2^C + j), ``images`` in [0, 1]."""
  n, h, w, c = images.shape
  cube = corners(c).astype(np.float32) / 255.0
  x = images.reshape(n, h * w, 1, c)
  return np.sqrt(np.sum((cube[None, None] - x) ** 2, -1)).reshape(n, -1).astype(np.float32)


def _colour_genes(cands, mode):
  """Corner colours (0 or 255) as the genes of ``mode``: ``add`` reaches the
  same corner with a delta of -255 or +255 (clipped)."""
  if mode == 'replace':
    return cands
  return cands.at[:, 2:].set(2 * cands[:, 2:] - 255)


def _corner_colours(cands, mode):
  if mode == 'replace':
    return cands
  return cands.at[:, 2:].set((cands[:, 2:] + 255) / 2)


@functools.cache
def corner_search(
  height: int, width: int, channels: int, p: int, targeted: bool, mode: str
) -> Search:
  """The one-pixel search: a ``fill`` search, at most ``p`` candidates per
  step. ``data`` per image: float32 [T + 2], the prior's distances
  (:func:`corner_prior`), the clean objective (-log p(label), or log
  p(target)), then the budget (<= T): data, not a static argument, so that
  another budget compiles nothing."""
  total = height * width * 2**channels
  refine = CornerRefiner(height, width, channels, RADIUS, targeted)

  def init(key, data):
    gain = ALPHA * data[:total] + _NOISE * jax.random.uniform(key, (total,))
    return refine.init(gain, data[total]), jnp.int32(0), data[total + 1].astype(jnp.int32)

  def propose(state, key, step, n):
    del key, step
    rs, q, budget = state
    n_valid = jnp.clip(jnp.minimum(n, budget - q), 0, p).astype(jnp.int32)
    cands, n_valid = refine.propose(rs, p, n_valid)
    return _colour_genes(cands, mode), n_valid

  def update(state, cands, fitness, step, n_valid):
    del step
    rs, q, budget = state
    rs = refine.update(rs, _corner_colours(cands, mode), fitness, n_valid)
    return rs, q + n_valid, budget

  return Search(p, total, init, propose, update, (total + 2,), np.float32, fill=True)


def moved_pixels(queries, budget: int, pixels: int, p_init: float = 0.8):
  """How many of the ``pixels`` a proposal moves after ``queries``: Sparse-RS's
  L0 schedule (``p_selection``, its query count rescaled to a budget of
  10,000 as its default ``resc_schedule`` does), at least one."""
  it = jnp.floor(jnp.asarray(queries, jnp.float32) * 10000 / budget)
  edges = jnp.array([0, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])
  div = jnp.array([1.0, 2, 4, 5, 6, 8, 10, 12, 15, 20])
  frac = p_init / div[jnp.sum(it[..., None] > edges, -1)]
  return jnp.maximum(jnp.floor(frac * pixels), 1).astype(jnp.int32)


def fresh_pixels(key, taken, hw: int, m: int):
  """``m`` distinct pixels in [0, hw) outside ``taken`` [k], in random order
  (the top ``m`` of uniform scores, ``taken`` scored below all): one ranking
  per image and step, from which every proposal takes its own ``k``."""
  score = jax.random.uniform(key, (hw,)).at[taken].set(-1.0)
  return jax.lax.top_k(score, m)[1].astype(jnp.int32)


@functools.cache
def sparse_search(height: int, width: int, channels: int, pixels: int, p: int, mode: str) -> Search:
  """The k-pixel search: a ``fill`` search, at most ``p`` proposals per step.
  ``data`` per image: int32 [H * W + 1], the corner each pixel already has
  (-1 if none), so that a proposal that moves one pixel never proposes its
  own colour (as Sparse-RS), then the budget (data: another budget compiles
  nothing)."""
  hw, n_corner, k = height * width, 2**channels, pixels
  cube = jnp.asarray(corners(channels), jnp.float32)
  bits = (2 ** np.arange(channels)).astype(np.int32)

  def init(key, data):
    # A distinct placeholder set (the first proposals replace all of it), so
    # that "outside the set" is always well defined.
    pos = jax.lax.top_k(jax.random.uniform(key, (hw,)), k)[1].astype(jnp.int32)
    return pos, jnp.zeros((k,), jnp.int32), jnp.float32(jnp.inf), jnp.int32(0), data

  def one(state, u, q, fresh):
    """A proposal from the set: ``u`` [k, 3] uniforms (which pixels move, their
    corners, the other corner), ``fresh`` [k] new pixels."""
    pos, corner, _, _, data = state
    own, budget = data[:hw], data[hw]
    first = q == 0  # no set yet: a fresh random one
    n_move = jnp.where(first, k, moved_pixels(q, budget, k))
    order = jnp.argsort(u[:, 0])  # a random order of the set: its first n_move move
    move = jnp.zeros((k,), bool).at[order].set(jnp.arange(k) < n_move)
    new_pos = jnp.where(move, fresh, pos)
    colour = jnp.minimum(u[:, 1] * n_corner, n_corner - 1).astype(jnp.int32)
    # A single moved pixel never gets the colour it already has.
    other = jnp.minimum(u[:, 2] * (n_corner - 1), n_corner - 2).astype(jnp.int32)
    alt = (colour + 1 + other) % n_corner
    colour = jnp.where((n_move == 1) & (colour == own[fresh]), alt, colour)
    new_corner = jnp.where(move, colour, corner)
    coords = jnp.stack([new_pos // width, new_pos % width], 1).astype(jnp.float32) + 0.5
    return jnp.concatenate([coords, cube[new_corner]], 1)  # [k, 2 + C]

  def propose(state, key, step, n):
    del step
    q, budget = state[3], state[4][hw]
    n_valid = jnp.clip(jnp.minimum(n, budget - q), 0, p).astype(jnp.int32)
    k_fresh, k_each = jax.random.split(key)
    # Proposal j's new pixels: the j-th k of one random ranking of the free
    # pixels (wrapping when p * k exceed them): distinct within a proposal,
    # outside the set, and disjoint across proposals while they last. One
    # draw of uniforms serves every proposal (a key per proposal made the
    # program slow to compile).
    m = min(p * k, hw - k)
    fresh = fresh_pixels(k_fresh, state[0], hw, m)
    fresh = fresh[(np.arange(p)[:, None] * k + np.arange(k)[None]) % m]  # [p, k]
    u = jax.random.uniform(k_each, (p, k, 3))
    genes = jax.vmap(lambda uj, f: one(state, uj, q, f))(u, fresh)  # [p, k, 2 + C]
    genes = jax.vmap(lambda g: _colour_genes(g, mode))(genes)
    return genes.reshape(p, -1), n_valid

  def update(state, cands, fitness, step, n_valid):
    del step
    pos, corner, fit, q, data = state
    fitness = jnp.where(jnp.arange(p) < n_valid, fitness, jnp.inf)
    j = jnp.argmin(fitness)
    genes = _corner_colours(cands[j].reshape(k, -1), mode)
    better = fitness[j] < fit  # Sparse-RS keeps a move only if it lowers the loss
    new_pos = genes[:, 0].astype(jnp.int32) * width + genes[:, 1].astype(jnp.int32)
    new_corner = jnp.sum((genes[:, 2:] > 127).astype(jnp.int32) * bits, axis=1)
    return (
      jnp.where(better, new_pos, pos),
      jnp.where(better, new_corner, corner),
      jnp.where(better, fitness[j], fit),
      q + n_valid,
      data,
    )

  return Search(p, 1, init, propose, update, (hw + 1,), np.int32, fill=True)


def own_corners(images: np.ndarray) -> np.ndarray:
  """The corner each pixel's colour is (-1 if it is none), int32 [N, H * W]."""
  n, h, w, c = images.shape
  v = np.round(images.reshape(n, h * w, c) * 255).astype(np.int32)
  is_corner = np.all((v == 0) | (v == 255), -1)
  idx = np.sum((v == 255) * (2 ** np.arange(c)), -1)
  return np.where(is_corner, idx, -1).astype(np.int32)
