"""The batched attack engine: image slots, one forward pass per step.

Every device holds ``S`` image slots. One engine step asks each slot's search
for its P candidates, builds the S * P perturbed images and evaluates them in
a single call of ``predict``. A slot whose image is finished (fooled, or out of
budget) writes its result to an output buffer and takes the next image from a
queue inside the same compiled ``while_loop``, so no forward pass is spent on a
finished image. The host refills each device's queue between calls; memory is
bounded by the slot and queue sizes, never by the number of images.

Per-image randomness is ``fold_in(key, global_index)`` and step ``s`` of an
image uses ``fold_in(image_key, s)``, so an image's result depends on the key
and the image only, not on which slot, call or device ran it. Bitwise equality
across slot counts, device counts and the tail compaction (which halves the
forward batch) also needs ``predict`` to give each example the same logits
whatever the size of its batch. XLA's CPU convolutions do (tested with a
CNN); GPU libraries may pick other algorithms for other batch sizes, and then
results agree to float rounding, which a ``<=`` selection can amplify into a
different trajectory. A rerun of the same call is reproducible either way.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix.attack import perturb
from jaxpix.attack.search import Search

Predict = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Fitness:
  """What the search minimises and when an image is finished.

  Attributes:
    targeted: minimise 1 - p(target) instead of p(true class).
    l2_penalty: lambda of the APR paper's fitness f_t(x + d) - lambda ||d||_2,
      with d the change of the image in [0, 1] units (0 disables it).
    stop_threshold: ``None`` stops an image once it is misclassified (hits its
      target). A float also requires p(true) <= threshold (untargeted) or
      p(target) >= threshold (targeted), e.g. Su et al.'s 5% on ImageNet.
    early_stop: stop an image at its first success; ``False`` spends the whole
      budget (the exhaustive search as a robustness certificate).
    mode: the perturbation model, ``'replace'`` or ``'add'``.
  """

  targeted: bool = False
  l2_penalty: float = 0.0
  stop_threshold: float | None = None
  early_stop: bool = True
  mode: perturb.Mode = 'replace'


# Per-image record of the best candidate seen so far. Ranked by tier, then
# energy: a candidate that meets the stop rule (tier 2) beats a merely
# successful one (tier 1), which beats any unsuccessful one (tier 0); lower
# energy breaks ties. (Energy alone would not do: with an L2 penalty a
# candidate past the stop threshold can have the higher energy.)
_BEST_FIELDS = ('vec', 'energy', 'success', 'stop', 'true_prob', 'pred', 'pred_prob', 'target_prob')


def score_candidates(predict: Predict, images, cands, labels, targets, fit: Fitness):
  """Scores candidates [S, P, D] on images [S, H, W, C]; returns dict of [S, P]."""
  s, p, _ = cands.shape
  adv = jax.vmap(perturb.apply_vectors, in_axes=(0, 0, None))(images, cands, fit.mode)
  logits = predict(adv.reshape((s * p,) + images.shape[1:]))
  logits = logits.astype(jnp.float32).reshape(s, p, -1)
  probs = jax.nn.softmax(logits, axis=-1)
  pick = lambda y: jnp.take_along_axis(
    probs, jnp.broadcast_to(y[:, None, None], (s, p, 1)), axis=-1
  )[..., 0]
  true_p, tgt_p = pick(labels), pick(targets)
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if fit.targeted:
    energy, success = 1.0 - tgt_p, pred == targets[:, None]
  else:
    energy, success = true_p, pred != labels[:, None]
  if fit.l2_penalty:
    d = adv - images[:, None]
    energy = energy + fit.l2_penalty * jnp.sqrt(jnp.sum(d * d, axis=(2, 3, 4)))
  # A candidate on which the model outputs NaN or +-inf says nothing about the
  # model's decision: never a success, never the best candidate.
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  success &= finite
  energy = jnp.where(finite, energy, jnp.inf)
  stop = success
  if fit.stop_threshold is not None:
    stop &= (tgt_p >= fit.stop_threshold) if fit.targeted else (true_p <= fit.stop_threshold)
  return dict(
    vec=cands,
    energy=energy,
    success=success,
    stop=stop,
    true_prob=true_p,
    pred=pred,
    pred_prob=jnp.max(probs, axis=-1),
    target_prob=tgt_p,
  )


def _tier(rec):
  return rec['stop'].astype(jnp.int32) + rec['success'].astype(jnp.int32)  # stop => success


def _merge_best(best, ev):
  """Folds this step's candidates [S, P] into the per-slot best record [S]."""
  tier = _tier(ev)
  top = jnp.max(tier, axis=1, keepdims=True)
  j = jnp.argmin(jnp.where(tier == top, ev['energy'], jnp.inf), axis=1)
  new = {
    k: jnp.take_along_axis(ev[k], j.reshape((-1,) + (1,) * (ev[k].ndim - 1)), axis=1)[:, 0]
    for k in _BEST_FIELDS
  }
  t_new, t_old = _tier(new), _tier(best)
  better = (t_new > t_old) | ((t_new == t_old) & (new['energy'] < best['energy']))
  return {k: _where(better, new[k], best[k]) for k in _BEST_FIELDS}


def _where(mask, a, b):
  return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def empty_best(n: int, dim: int):
  return dict(
    vec=jnp.zeros((n, dim), jnp.float32),
    energy=jnp.full((n,), jnp.inf),
    success=jnp.zeros((n,), bool),
    stop=jnp.zeros((n,), bool),
    true_prob=jnp.ones((n,)),
    pred=jnp.full((n,), -1, jnp.int32),
    pred_prob=jnp.zeros((n,)),
    target_prob=jnp.zeros((n,)),
  )


def init_slots(search: Search, key, images, labels, targets, gidx, dim: int):
  """Fresh per-slot state for images [S, ...] with global indices gidx [S]."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(gidx)
  init_keys, step_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  n = images.shape[0]
  return dict(
    image=images,
    label=labels,
    target=targets,
    gidx=gidx,
    key=step_keys,
    search=jax.vmap(search.init)(init_keys),
    best=empty_best(n, dim),
    step=jnp.zeros((n,), jnp.int32),
    queries=jnp.zeros((n,), jnp.int32),
    active=jnp.ones((n,), bool),
  )


def step(search: Search, predict: Predict, fit: Fitness, st):
  """One engine step for every slot; inactive slots are evaluated but unchanged.

  Returns the new state and ``finished`` [S]: slots that completed this step.
  """
  keys = jax.vmap(jax.random.fold_in)(st['key'], st['step'])
  cands, n_valid = jax.vmap(search.propose)(st['search'], keys, st['step'])
  ev = score_candidates(predict, st['image'], cands, st['label'], st['target'], fit)
  new_search = jax.vmap(search.update)(st['search'], cands, ev['energy'], st['step'])
  best = _merge_best(st['best'], ev)
  steps = st['step'] + 1
  finished = steps >= search.max_steps
  if fit.early_stop:
    finished |= best['stop']
  act = st['active']
  keep = lambda new, old: jax.tree.map(lambda a, b: _where(act, a, b), new, old)
  new = dict(
    st,
    search=keep(new_search, st['search']),
    best=keep(best, st['best']),
    step=jnp.where(act, steps, st['step']),
    queries=jnp.where(act, st['queries'] + n_valid, st['queries']),
    active=act & ~finished,
  )
  return new, act & finished


# --------------------------------------------------------------------------- #
# The slot loop (per device) and its host driver
# --------------------------------------------------------------------------- #

_OUT_FIELDS = _BEST_FIELDS + ('gidx', 'queries')


def _device_loop(
  search, predict, fit, steps_per_call, dim, st, queue, queue_len, queue_pos, more, key, params
):
  """Runs one device's slots until its queue needs refilling, all are done, or
  ``steps_per_call`` steps have passed. Shapes are per device. ``predict`` is
  ``(params, images) -> logits``; ``params`` is an argument of the compiled
  program, so new parameters of the same shapes reuse it."""
  model = functools.partial(predict, params)
  s = st['active'].shape[0]
  q = queue['label'].shape[0]
  cap = q + s  # at most S in-flight plus Q loaded images can finish per call
  qlen, more = queue_len[0], more[0]
  out = {
    k: jnp.zeros((cap,) + v.shape[1:], v.dtype)
    for k, v in dict(st['best'], gidx=st['gidx'], queries=st['queries']).items()
  }

  def cond(c):
    st, qpos, _, n_out, it = c
    free = ~st['active']
    can_load = qpos < qlen
    refill = jnp.any(free) & ~can_load & more
    idle = ~jnp.any(st['active']) & ~can_load
    return ~refill & ~idle & (it < steps_per_call) & (n_out + s <= cap)

  def body(c):
    st, qpos, out, n_out, it = c
    free = ~st['active']
    qi = qpos + jnp.cumsum(free) - 1
    load = free & (qi < qlen)
    qi = jnp.clip(qi, 0, q - 1)
    fresh = init_slots(
      search,
      key,
      queue['image'][qi],
      queue['label'][qi],
      queue['target'][qi],
      queue['gidx'][qi],
      dim,
    )
    fresh['active'] = load
    st = jax.tree.map(lambda a, b: _where(load, a, b), fresh, st)
    qpos = qpos + jnp.sum(load)
    st, finished = step(search, model, fit, st)
    rec = dict(st['best'], gidx=st['gidx'], queries=st['queries'])
    at = jnp.where(finished, n_out + jnp.cumsum(finished) - 1, cap)
    out = {k: out[k].at[at].set(rec[k], mode='drop') for k in out}
    return st, qpos, out, n_out + jnp.sum(finished), it + 1

  st, qpos, out, n_out, _ = jax.lax.while_loop(cond, body, (st, queue_pos[0], out, 0, 0))
  return st, qpos[None], out, n_out[None]


# Keyed on the predict function (``(params, images) -> logits``), not on the
# parameters, which are an argument: one compilation serves every parameter set
# of the same shapes. A closure ``images -> logits`` is wrapped once per
# object (attacks.py), so it compiles once per closure, its captured arrays
# baked in as constants; the small cache bounds what those can pin.
@functools.lru_cache(maxsize=8)
def _compiled(search, predict, fit, steps_per_call, dim, mesh):
  fn = functools.partial(_device_loop, search, predict, fit, steps_per_call, dim)
  d = P('data')
  fn = jax.shard_map(
    fn, mesh=mesh, in_specs=(d, d, d, d, d, P(), P()), out_specs=(d, d, d, d), check_vma=False
  )
  return jax.jit(fn, donate_argnums=(0,))


def run(
  search: Search,
  predict,
  params,
  fit: Fitness,
  images: np.ndarray,
  labels: np.ndarray,
  targets: np.ndarray,
  indices: np.ndarray,
  key: jax.Array,
  *,
  dim: int,
  slots: int,
  devices,
  steps_per_call: int = 10,
  progress: Callable[[dict], None] | None = None,
):
  """Attacks every image; returns per-image numpy arrays of the best records.

  ``predict(params, images) -> logits``; ``params`` (any pytree, replicated
  on every device) is an argument of the compiled loop.

  Images are split into contiguous blocks, one per device; each device runs
  its own slots over its block. ``progress`` (optional) is called with the
  records finished after every compiled call.
  """
  n = images.shape[0]
  nd = len(devices)
  mesh = Mesh(np.asarray(devices), ('data',))
  per_dev = -(-n // nd)
  s = max(1, min(slots, per_dev))
  q = 4 * s
  start = np.minimum(np.arange(nd) * per_dev, n)
  end = np.minimum(start + per_dev, n)
  nxt = start.copy()
  qlen = np.zeros(nd, np.int32)
  qpos = np.zeros(nd, np.int32)
  shard = NamedSharding(mesh, P('data'))
  img_shape = images.shape[1:]

  def put(x):
    return jax.device_put(x, shard)

  queue = dict(
    image=np.zeros((nd, q) + img_shape, np.float32),
    label=np.zeros((nd, q), np.int32),
    target=np.zeros((nd, q), np.int32),
    gidx=np.zeros((nd, q), np.int32),
  )
  zeros_img = jnp.zeros((nd * s,) + img_shape, jnp.float32)
  zi = jnp.zeros((nd * s,), jnp.int32)
  st = init_slots(search, key, zeros_img, zi, zi, zi, dim)
  st['active'] = jnp.zeros((nd * s,), bool)
  # Copy: fields that share a buffer (the zero labels) must not be donated twice.
  st = jax.tree.map(lambda a: put(jnp.copy(a)), st)
  fn = _compiled(search, predict, fit, steps_per_call, dim, mesh)
  keyed = jax.device_put(key, NamedSharding(mesh, P()))
  params = jax.device_put(params, NamedSharding(mesh, P()))

  results = {k: None for k in _OUT_FIELDS}
  done = 0
  while done < n:
    for d in range(nd):
      if qpos[d] == qlen[d] and nxt[d] < end[d]:
        c = min(q, end[d] - nxt[d])
        sl = slice(nxt[d], nxt[d] + c)
        queue['image'][d, :c] = images[sl]
        queue['label'][d, :c] = labels[sl]
        queue['target'][d, :c] = targets[sl]
        queue['gidx'][d, :c] = indices[sl]
        nxt[d] += c
        qlen[d], qpos[d] = c, 0
    more = nxt < end
    flat = {k: v.reshape((nd * q,) + v.shape[2:]) for k, v in queue.items()}
    st, qpos_dev, out, n_out = fn(
      st, jax.tree.map(put, flat), put(qlen), put(qpos), put(more), keyed, params
    )
    qpos = np.array(qpos_dev, np.int32)
    out, n_out = jax.device_get((out, n_out))
    finished = {}
    for d in range(nd):
      sel = slice(d * (q + s), d * (q + s) + int(n_out[d]))  # each device's buffer is q + s
      for k in _OUT_FIELDS:
        finished.setdefault(k, []).append(out[k][sel])
    finished = {k: np.concatenate(v) for k, v in finished.items()}
    if (
      not len(finished['gidx'])
      and not np.any(more)
      and np.all(qpos == qlen)
      and not np.any(jax.device_get(st['active']))
    ):
      raise RuntimeError('attack engine made no progress; this is a bug in jaxpix')
    if results['gidx'] is None:
      results = {k: np.zeros((n,) + v.shape[1:], v.dtype) for k, v in finished.items()}
    rows = _rows_of(indices, finished['gidx'])
    for k, v in finished.items():
      results[k][rows] = v
    done += len(rows)
    if progress is not None and len(rows):
      progress(finished)
    if done < n and not more.any() and np.all(qpos == qlen):
      st, s = _compact(st, s, nd, put)
  return results


def _compact(st, s, nd, put):
  """The tail of a run: no image is left to load, so move the images still in
  flight into fewer slots (halving, so at most log2(S) shapes get compiled)
  rather than spend forward passes on empty slots. Results are unchanged: an
  image's computation never depends on its slot."""
  act = np.asarray(jax.device_get(st['active'])).reshape(nd, s)
  need = int(act.sum(axis=1).max())
  new = s
  while new > 1 and new // 2 >= need:
    new //= 2
  if new == s:
    return st, s
  # Per device: its active slots first, then enough idle ones to fill new slots.
  idx = np.concatenate([d * s + np.argsort(~act[d], kind='stable')[:new] for d in range(nd)])
  return jax.tree.map(lambda a: put(a[idx]), st), new


def _rows_of(indices: np.ndarray, gidx: np.ndarray) -> np.ndarray:
  """Positions in ``indices`` (unique global indices) of the entries ``gidx``."""
  order = np.argsort(indices, kind='stable')
  return order[np.searchsorted(indices[order], gidx)]
