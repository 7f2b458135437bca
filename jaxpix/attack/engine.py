"""The batched attack engine: image slots, forward passes of one shape.

Every device holds ``S`` image slots. One engine step asks each slot's search
for its P candidates and evaluates the candidates of the slots in flight in
forward passes of ``per_pass`` whole slots (``per_pass * P`` images): the
active slots are gathered to the front and only as many passes run as they
fill. A slot whose image is finished (fooled, or out of budget) writes its
result to an output buffer and takes the next image from a queue inside the
same compiled ``while_loop``, so no forward pass is spent on a finished image,
and a run's tail (fewer images left than slots) costs only what its images
need, with nothing compiled for it. The host refills each device's queue
between calls; memory is bounded by the slot and queue sizes, never by the
number of images.

Per-image randomness is ``fold_in(key, global_index)`` and step ``s`` of an
image uses ``fold_in(image_key, s)``, so an image's result depends on the key
and the image only, not on which slot, call or device ran it. Bitwise equality
across slot counts and device counts also needs ``predict`` to give each
example the same logits whatever the size of its batch and the other examples
in it. XLA's CPU convolutions do (tested with a CNN); GPU libraries may pick
other algorithms for other batch sizes, and then results agree to float
rounding, which a ``<=`` selection can amplify into a different trajectory. A
rerun of the same call is reproducible either way.
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


def _perturbed(images, cands, mode):
  """[S, P, H, W, C]: each slot's candidates applied to its image."""
  return jax.vmap(perturb.apply_vectors, in_axes=(0, 0, None))(images, cands, mode)


def _forward(predict: Predict, images, cands, fit: Fitness):
  """Logits [S, P, K] (float32) and the L2 size of each change [S, P] (only
  if ``fit`` has an L2 penalty, else None), in one forward pass of S * P."""
  s, p, _ = cands.shape
  adv = _perturbed(images, cands, fit.mode)
  logits = predict(adv.reshape((s * p,) + images.shape[1:])).astype(jnp.float32)
  return logits.reshape(s, p, -1), _l2(adv, images) if fit.l2_penalty else None


def _l2(adv, images):
  d = adv - images[:, None]
  return jnp.sqrt(jnp.sum(d * d, axis=(2, 3, 4)))


def _forward_active(predict: Predict, images, cands, fit: Fitness, active, per_pass: int):
  """As :func:`_forward`, but only the ``active`` slots are evaluated, in
  forward passes of ``per_pass`` whole slots (``per_pass * P`` images): the
  active slots are gathered to the front and ceil(active / per_pass) passes
  run, so the cost follows the images still in flight and every pass has the
  one compiled shape. The rows of inactive slots hold zeros (the caller
  discards them)."""
  s, p, _ = cands.shape
  m = per_pass
  n_pass = -(-s // m)
  order = jnp.argsort(~active, stable=True)  # active slots first, in slot order
  order = jnp.concatenate([order, jnp.full((n_pass * m - s,), order[-1], order.dtype)])
  probe = jax.ShapeDtypeStruct((m * p,) + images.shape[1:], jnp.float32)
  k = jax.eval_shape(predict, probe).shape[-1]

  def one_pass(i, bufs):
    logits, l2 = bufs
    sl = jax.lax.dynamic_slice_in_dim(order, i * m, m)
    adv = _perturbed(images[sl], cands[sl], fit.mode)
    out = predict(adv.reshape((m * p,) + images.shape[1:])).astype(jnp.float32)
    logits = jax.lax.dynamic_update_slice_in_dim(logits, out.reshape(m, p, k), i * m, 0)
    if fit.l2_penalty:
      l2 = jax.lax.dynamic_update_slice_in_dim(l2, _l2(adv, images[sl]), i * m, 0)
    return logits, l2

  bufs = (jnp.zeros((n_pass * m, p, k), jnp.float32), jnp.zeros((n_pass * m, p), jnp.float32))
  n_active = -(-jnp.sum(active) // m)
  logits, l2 = jax.lax.fori_loop(0, n_active, one_pass, bufs)
  back = jnp.argsort(order[:s])  # slot -> its row in the gathered order
  return logits[back], l2[back] if fit.l2_penalty else None


def score_candidates(
  predict: Predict, images, cands, labels, targets, fit: Fitness, active=None, per_pass=None
):
  """Scores candidates [S, P, D] on images [S, H, W, C]; returns dict of [S, P].

  With ``per_pass`` (and ``active`` [S]), only the active slots are evaluated,
  ``per_pass`` slots per forward pass (:func:`_forward_active`); without, all
  S * P candidates in one pass."""
  s, p, _ = cands.shape
  if per_pass is None:
    logits, l2 = _forward(predict, images, cands, fit)
  else:
    logits, l2 = _forward_active(predict, images, cands, fit, active, per_pass)
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
    energy = energy + fit.l2_penalty * l2
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
    # Typed: a weakly typed inf here would make the loop's first call compile
    # for a different input type than every later one.
    energy=jnp.full((n,), jnp.inf, jnp.float32),
    success=jnp.zeros((n,), bool),
    stop=jnp.zeros((n,), bool),
    true_prob=jnp.ones((n,), jnp.float32),
    pred=jnp.full((n,), -1, jnp.int32),
    pred_prob=jnp.zeros((n,), jnp.float32),
    target_prob=jnp.zeros((n,), jnp.float32),
  )


def init_slots(search: Search, key, images, labels, targets, gidx, dim: int, data=None):
  """Fresh per-slot state for images [S, ...] with global indices gidx [S]
  (and, for a search that takes it, each image's ``data`` [S, ...])."""
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(gidx)
  init_keys, step_keys = jnp.moveaxis(jax.vmap(jax.random.split)(keys), 1, 0)
  n = images.shape[0]
  init = jax.vmap(search.init)
  return dict(
    image=images,
    label=labels,
    target=targets,
    gidx=gidx,
    key=step_keys,
    search=init(init_keys) if search.data_shape is None else init(init_keys, data),
    best=empty_best(n, dim),
    step=jnp.zeros((n,), jnp.int32),
    queries=jnp.zeros((n,), jnp.int32),
    active=jnp.ones((n,), bool),
  )


def step(search: Search, predict: Predict, fit: Fitness, st, per_pass: int | None = None):
  """One engine step for every slot; inactive slots are left unchanged (and,
  with ``per_pass``, not evaluated: see :func:`score_candidates`).

  Returns the new state and ``finished`` [S]: slots that completed this step.
  """
  keys = jax.vmap(jax.random.fold_in)(st['key'], st['step'])
  cands, n_valid = jax.vmap(search.propose)(st['search'], keys, st['step'])
  ev = score_candidates(
    predict, st['image'], cands, st['label'], st['target'], fit, st['active'], per_pass
  )
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
  search,
  predict,
  fit,
  steps_per_call,
  dim,
  per_pass,
  st,
  queue,
  queue_len,
  queue_pos,
  more,
  key,
  params,
):
  """Runs one device's slots until its queue needs refilling, all are done, or
  ``steps_per_call`` steps have passed. Shapes are per device. ``predict`` is
  ``(params, images) -> logits``; ``params`` is an argument of the compiled
  program, so new parameters of the same shapes reuse it. Each step evaluates
  only the slots in flight, ``per_pass`` slots per forward pass."""
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
      queue['data'][qi] if 'data' in queue else None,
    )
    fresh['active'] = load
    st = jax.tree.map(lambda a, b: _where(load, a, b), fresh, st)
    qpos = qpos + jnp.sum(load)
    st, finished = step(search, model, fit, st, per_pass)
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
# baked in as constants; the small cache bounds what those can pin. The
# program has one shape per (slots, per_pass): the tail of a run, when fewer
# images are in flight, runs fewer forward passes of the same shape instead
# of compiling smaller ones.
@functools.lru_cache(maxsize=8)
def _compiled(search, predict, fit, steps_per_call, dim, per_pass, mesh):
  fn = functools.partial(_device_loop, search, predict, fit, steps_per_call, dim, per_pass)
  d = P('data')
  fn = jax.shard_map(
    fn, mesh=mesh, in_specs=(d, d, d, d, d, P(), P()), out_specs=(d, d, d, d), check_vma=False
  )
  return jax.jit(fn, donate_argnums=(0,))


def _empty_state(search, dim, n, img_shape, key, put):
  """The slots' state before any image is loaded: zeros of the right shapes
  and types (an inactive slot's contents are never used), made on the host
  so that a first run compiles nothing for it."""
  z = jax.ShapeDtypeStruct((n,), jnp.int32)
  img = jax.ShapeDtypeStruct((n,) + img_shape, jnp.float32)
  data = None
  if search.data_shape is not None:
    data = jax.ShapeDtypeStruct((n,) + tuple(search.data_shape), search.data_dtype)
  shapes = jax.eval_shape(
    lambda k, x, y, d: init_slots(search, k, x, y, y, y, dim, d),
    jax.ShapeDtypeStruct((), key.dtype),
    img,
    z,
    data,
  )
  impl = jax.random.key_impl(key)
  data_shape = jax.random.key_data(key).shape

  def zeros(sd):
    if jax.dtypes.issubdtype(sd.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(np.zeros(sd.shape + data_shape, np.uint32), impl=impl)
    return np.zeros(sd.shape, sd.dtype)

  return jax.tree.map(
    lambda sd: put(zeros(sd)), dict(shapes, active=jax.ShapeDtypeStruct((n,), bool))
  )


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
  per_pass: int,
  devices,
  steps_per_call: int = 10,
  progress: Callable[[dict], None] | None = None,
  data: np.ndarray | None = None,
):
  """Attacks every image; returns per-image numpy arrays of the best records.

  ``predict(params, images) -> logits``; ``params`` (any pytree, replicated
  on every device) is an argument of the compiled loop.

  Images are split into contiguous blocks, one per device; each device runs
  ``slots`` images at a time over its block (fewer if its block is smaller),
  evaluating ``per_pass`` of them (``per_pass * P`` candidates) per forward
  pass. ``progress`` (optional) is called with the records finished after
  every compiled call. ``data`` [N, ...]: each image's input to a search that
  takes one (``search.data_shape``).
  """
  n = images.shape[0]
  nd = len(devices)
  mesh = Mesh(np.asarray(devices), ('data',))
  per_dev = -(-n // nd)
  s = max(1, min(slots, per_dev))
  per_pass = min(per_pass, s)
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
  if search.data_shape is not None:
    if data is None or data.shape != (n,) + tuple(search.data_shape):
      raise ValueError(
        f'this search takes per-image data of shape {search.data_shape}: pass data [N, ...]'
      )
    queue['data'] = np.zeros((nd, q) + tuple(search.data_shape), search.data_dtype)
  keyed = jax.device_put(key, NamedSharding(mesh, P()))
  st = _empty_state(search, dim, nd * s, img_shape, key, put)
  fn = _compiled(search, predict, fit, steps_per_call, dim, per_pass, mesh)
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
        if data is not None:
          queue['data'][d, :c] = data[sl]
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
  return results


def _rows_of(indices: np.ndarray, gidx: np.ndarray) -> np.ndarray:
  """Positions in ``indices`` (unique global indices) of the entries ``gidx``."""
  order = np.argsort(indices, kind='stable')
  return order[np.searchsorted(indices[order], gidx)]
