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
schedule of how many of the k pixels each query moves, new pixels drawn
outside the set, a move kept when it lowers the loss), with ``width``
proposals per step from the current set (a (1 + width) search instead of
(1 + 1)), the best of them kept. Where Sparse-RS draws a new pixel and its
corner uniformly, here both are drawn from the one-pixel prior: a corner
with weight exp(STRENGTH * its distance from the pixel's colour), a pixel by
the sum of its corners' weights (``STRENGTH = 0`` is Sparse-RS's uniform
draw).
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
# The k-pixel search draws a new pixel's corner with weight exp(STRENGTH *
# distance from the pixel's colour) (distance in [0, sqrt(C)]) and the pixel
# by the sum of its corners' weights. Chosen among 0 (Sparse-RS's uniform
# draw), 3, 6 and 10 at k = 5 (seed 0) on the benchmark's CNN6 and ResNet-18
# images: 3-10 all fooled more than 0 at every budget from 10 queries on, 6
# the most early (benchmarks/README.md, docs/choices.md).
STRENGTH = 6.0


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


def fresh_pixels(key, taken, log_weight, m: int):
  """``m`` distinct pixels outside ``taken`` [k], pixel i drawn with weight
  exp(log_weight[i]) without replacement (the top ``m`` of log weight plus
  Gumbel noise), in the order drawn: one draw per image and step, from which
  every proposal takes its own ``k``."""
  score = log_weight + jax.random.gumbel(key, log_weight.shape)
  return jax.lax.top_k(score.at[taken].set(-jnp.inf), m)[1].astype(jnp.int32)


def corner_log_weights(colours, strength: float):
  """Log weights [HW, 2^C] of each pixel's corners: ``strength`` x the
  corner's distance from the pixel's colour (``colours`` [HW, C], 8-bit);
  the corner the pixel already is, if it is one, never (-inf)."""
  c = colours.shape[-1]
  cube = jnp.asarray(corners(c), jnp.float32)
  d = (cube[None] - colours[:, None].astype(jnp.float32)) / 255.0
  dist = jnp.sqrt(jnp.sum(d * d, -1))
  return jnp.where(dist > 0, strength * dist, -jnp.inf)


@functools.cache
def sparse_search(
  height: int, width: int, channels: int, pixels: int, p: int, mode: str, strength=STRENGTH
) -> Search:
  """The k-pixel search: a ``fill`` search, at most ``p`` proposals per step.
  ``data`` per image: int32 [H * W * C + 1], the image's 8-bit colours (the
  prior's input), then the budget (data: another budget compiles nothing)."""
  hw, n_corner, k = height * width, 2**channels, pixels
  cube = jnp.asarray(corners(channels), jnp.float32)
  bits = (2 ** np.arange(channels)).astype(np.int32)

  def init(key, data):
    # A distinct placeholder set (the first proposals replace all of it), so
    # that "outside the set" is always well defined.
    pos = jax.lax.top_k(jax.random.uniform(key, (hw,)), k)[1].astype(jnp.int32)
    return pos, jnp.zeros((k,), jnp.int32), jnp.float32(jnp.inf), jnp.int32(0), data

  def one(state, u, gumbel, log_w, q, fresh):
    """A proposal from the set: ``u`` [k] uniforms (which pixels move),
    ``gumbel`` [k, 2^C] (their corners), ``fresh`` [k] new pixels."""
    pos, corner, _, _, data = state
    first = q == 0  # no set yet: a fresh one
    n_move = jnp.where(first, k, moved_pixels(q, data[-1], k))
    order = jnp.argsort(u)  # a random order of the set: its first n_move move
    move = jnp.zeros((k,), bool).at[order].set(jnp.arange(k) < n_move)
    new_pos = jnp.where(move, fresh, pos)
    colour = jnp.argmax(log_w[fresh] + gumbel, axis=-1).astype(jnp.int32)
    new_corner = jnp.where(move, colour, corner)
    coords = jnp.stack([new_pos // width, new_pos % width], 1).astype(jnp.float32) + 0.5
    return jnp.concatenate([coords, cube[new_corner]], 1)  # [k, 2 + C]

  def propose(state, key, step, n):
    del step
    q, data = state[3], state[4]
    n_valid = jnp.clip(jnp.minimum(n, data[-1] - q), 0, p).astype(jnp.int32)
    k_fresh, k_each, k_corner = jax.random.split(key, 3)
    log_w = corner_log_weights(data[:-1].reshape(hw, channels), strength)
    # Proposal j's new pixels: the j-th k of one weighted draw of the free
    # pixels (wrapping when p * k exceed them): distinct within a proposal,
    # outside the set, and disjoint across proposals while they last. One
    # draw of random numbers serves every proposal (a key per proposal made
    # the program slow to compile).
    m = min(p * k, hw - k)
    fresh = fresh_pixels(k_fresh, state[0], jax.nn.logsumexp(log_w, axis=1), m)
    fresh = fresh[(np.arange(p)[:, None] * k + np.arange(k)[None]) % m]  # [p, k]
    u = jax.random.uniform(k_each, (p, k))
    gumbel = jax.random.gumbel(k_corner, (p, k, n_corner))
    genes = jax.vmap(lambda uj, gj, f: one(state, uj, gj, log_w, q, f))(u, gumbel, fresh)
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

  return Search(p, 1, init, propose, update, (hw * channels + 1,), np.int32, fill=True)


def sparse_data(images: np.ndarray, budget: int) -> np.ndarray:
  """:func:`sparse_search`'s data: each image's 8-bit colours, then the
  budget; int32 [N, H * W * C + 1]."""
  colours = np.round(np.asarray(images) * 255).astype(np.int32).reshape(len(images), -1)
  return np.concatenate([colours, np.full((len(images), 1), budget, np.int32)], 1)
