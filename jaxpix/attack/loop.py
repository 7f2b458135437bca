"""The slot loop: images through a compiled loop of engine steps, per device,
and its host driver.

Every device holds ``S`` image slots. Each step evaluates the candidates of
the slots in flight, ``per_pass`` slots per forward pass of one compiled
shape: the active slots are gathered to the front and only as many passes run
as they fill. A slot whose image is finished (fooled, or out of budget) writes
its result to an output buffer and takes the next image from a queue inside
the same compiled ``while_loop``, so no forward pass is spent on a finished
image, and a run's tail (fewer images left than slots) costs only what its
images need, with nothing compiled for it. The host refills each device's
queue between calls; memory is bounded by the slot and queue sizes, never by
the number of images.

Bitwise equality across slot counts and device counts needs ``predict`` to
give each example the same logits whatever the size of its batch and the
other examples in it. XLA's CPU convolutions do (tested with a CNN); GPU
libraries may pick other algorithms for other batch sizes, and then results
agree to float rounding, which a ``<=`` selection can amplify into a
different trajectory. A rerun of the same call is reproducible either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix.attack.engine import _BEST_FIELDS, Fitness, _where, init_slots, step
from jaxpix.attack.search import Search

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

    def refill(st):
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
      return jax.tree.map(lambda a, b: _where(load, a, b), fresh, st)

    # Most steps load nothing: the new slots' state (a population, a table of
    # candidates) is made only in the steps that do.
    st = jax.lax.cond(jnp.any(load), refill, lambda st: st, st)
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
# object (forward.py), so it compiles once per closure, its captured arrays
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
  ``slots`` images at a time over its block, evaluating ``per_pass`` of them
  (``per_pass * P`` candidates) per forward pass. The caller sizes both
  (``runner.run`` sizes them by all the images of the attack, so that the
  shapes, and the compiled program, do not depend on how many of them reach
  the loop). ``progress`` (optional) is called with the records finished
  after every compiled call. ``data`` [N, ...]: each image's input to a search that
  takes one (``search.data_shape``).
  """
  n = images.shape[0]
  nd = len(devices)
  mesh = Mesh(np.asarray(devices), ('data',))
  per_dev = -(-n // nd)
  s = slots
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


class ProgressBar:
  """tqdm bar for ``run``'s ``progress``: images done, success rate so far and
  model evaluations/s."""

  def __init__(self, total):
    from tqdm.auto import tqdm

    self.bar = tqdm(total=total, unit='img', desc='attack')
    self.attacked = self.fooled = self.queries = 0

  def __call__(self, finished):
    # The rate is over the images attacked, as AttackResult.success_rate.
    wrong = finished.get('misclassified')
    self.attacked += len(finished['gidx']) - (0 if wrong is None else int(np.sum(wrong)))
    self.fooled += int(finished['success'].sum())
    self.queries += int(finished['queries'].sum())
    rate = self.queries / max(self.bar.format_dict['elapsed'], 1e-9)
    asr = self.fooled / self.attacked if self.attacked else float('nan')
    self.bar.set_postfix(asr=f'{asr:.3f}', evals_s=f'{rate:.0f}')
    self.bar.update(len(finished['gidx']))

  def close(self):
    self.bar.close()
