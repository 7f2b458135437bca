"""One engine step: every image slot's candidates scored and its search advanced.

An engine step asks each slot's search for its P candidates, evaluates them
(those of the slots in flight only, in forward passes of ``per_pass`` whole
slots, or all at once inside a train step), folds them into each slot's best
record and hands their fitness back to the search. ``loop.py`` runs steps in a
compiled loop over a queue of images; ``adversaries.de_fixed_budget`` runs a fixed
number of them inside a caller's jit.

Per-image randomness is ``fold_in(key, global_index)`` and step ``s`` of an
image uses ``fold_in(image_key, s)``, so an image's result depends on the key
and the image only, not on which slot, call or device ran it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxpix.attack import perturb
from jaxpix.attack.search import Search

Predict = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Fitness:
  """The fitness a search minimises (every candidate's, and the ``fitness`` an
  attack reports for its best) and when an image is finished.

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
# fitness: a candidate that meets the stop rule (tier 2) beats a merely
# successful one (tier 1), which beats any unsuccessful one (tier 0); lower
# fitness breaks ties. (Fitness alone would not do: with an L2 penalty a
# candidate past the stop threshold can have the higher fitness.)
_BEST_FIELDS = (
  'vec',
  'fitness',
  'success',
  'stop',
  'true_prob',
  'pred',
  'pred_prob',
  'target_prob',
)


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


def _forward_packed(predict: Predict, images, cands, fit: Fitness, n_valid, rows: int):
  """As :func:`_forward`, but only the first ``n_valid[s]`` candidates of each
  slot are evaluated, packed across slots into forward passes of ``rows``
  candidates: ceil(sum(n_valid) / rows) passes run, each of the one compiled
  shape, so a search that gives few images many candidates each (``fill``)
  costs what it evaluates. Other rows hold zeros."""
  s, p, _ = cands.shape
  n = s * p
  n_pass = -(-n // rows)
  valid = (jnp.arange(p)[None] < n_valid[:, None]).reshape(n)
  # The valid (slot, candidate) entries, in order, then padding that repeats
  # the last one (its writes are dropped).
  at = jnp.where(valid, jnp.cumsum(valid) - 1, n_pass * rows)
  order = (
    jnp.zeros((n_pass * rows,), jnp.int32).at[at].set(jnp.arange(n, dtype=jnp.int32), mode='drop')
  )
  total = jnp.sum(valid)
  order = jnp.where(jnp.arange(n_pass * rows) < total, order, order[jnp.maximum(total - 1, 0)])
  flat = cands.reshape(n, -1)
  probe = jax.ShapeDtypeStruct((rows,) + images.shape[1:], jnp.float32)
  k = jax.eval_shape(predict, probe).shape[-1]

  def one_pass(i, bufs):
    logits, l2 = bufs
    sl = jax.lax.dynamic_slice_in_dim(order, i * rows, rows)
    base = images[sl // p]
    adv = perturb.apply_each(base, flat[sl], fit.mode)
    out = predict(adv).astype(jnp.float32)
    dest = jnp.where(jnp.arange(rows) + i * rows < total, sl, n)  # padding: dropped
    logits = logits.at[dest].set(out, mode='drop')
    if fit.l2_penalty:
      d = adv - base
      l2 = l2.at[dest].set(jnp.sqrt(jnp.sum(d * d, axis=(1, 2, 3))), mode='drop')
    return logits, l2

  bufs = (jnp.zeros((n, k), jnp.float32), jnp.zeros((n,), jnp.float32))
  logits, l2 = jax.lax.fori_loop(0, -(-total // rows), one_pass, bufs)
  return logits.reshape(s, p, k), l2.reshape(s, p) if fit.l2_penalty else None


def score_candidates(
  predict: Predict,
  images,
  cands,
  labels,
  targets,
  fit: Fitness,
  active=None,
  per_pass=None,
  n_valid=None,
):
  """Scores candidates [S, P, D] on images [S, H, W, C]; returns dict of [S, P].

  With ``per_pass`` (and ``active`` [S]), only the active slots are evaluated,
  ``per_pass`` slots per forward pass (:func:`_forward_active`); with
  ``n_valid`` [S] too, only each slot's first ``n_valid`` candidates, packed
  ``per_pass`` candidates per forward pass (:func:`_forward_packed`; the
  others score fitness +inf, never a success); without, all S * P candidates
  in one pass."""
  s, p, _ = cands.shape
  if per_pass is None:
    logits, l2 = _forward(predict, images, cands, fit)
  elif n_valid is not None:
    n_valid = jnp.where(active, n_valid, 0)
    logits, l2 = _forward_packed(predict, images, cands, fit, n_valid, per_pass)
  else:
    logits, l2 = _forward_active(predict, images, cands, fit, active, per_pass)
  probs = jax.nn.softmax(logits, axis=-1)
  pick = lambda y: jnp.take_along_axis(
    probs, jnp.broadcast_to(y[:, None, None], (s, p, 1)), axis=-1
  )[..., 0]
  true_p, tgt_p = pick(labels), pick(targets)
  pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
  if fit.targeted:
    fitness, success = 1.0 - tgt_p, pred == targets[:, None]
  else:
    fitness, success = true_p, pred != labels[:, None]
  if fit.l2_penalty:
    fitness = fitness + fit.l2_penalty * l2
  # A candidate on which the model outputs NaN or +-inf says nothing about the
  # model's decision: never a success, never the best candidate.
  finite = jnp.all(jnp.isfinite(logits), axis=-1)
  if n_valid is not None:
    finite &= jnp.arange(p)[None] < n_valid[:, None]  # the rows not evaluated
  success &= finite
  fitness = jnp.where(finite, fitness, jnp.inf)
  stop = success
  if fit.stop_threshold is not None:
    stop &= (tgt_p >= fit.stop_threshold) if fit.targeted else (true_p <= fit.stop_threshold)
  return dict(
    vec=cands,
    fitness=fitness,
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
  j = jnp.argmin(jnp.where(tier == top, ev['fitness'], jnp.inf), axis=1)
  new = {
    k: jnp.take_along_axis(ev[k], j.reshape((-1,) + (1,) * (ev[k].ndim - 1)), axis=1)[:, 0]
    for k in _BEST_FIELDS
  }
  t_new, t_old = _tier(new), _tier(best)
  better = (t_new > t_old) | ((t_new == t_old) & (new['fitness'] < best['fitness']))
  return {k: _where(better, new[k], best[k]) for k in _BEST_FIELDS}


def _where(mask, a, b):
  return jnp.where(mask.reshape(mask.shape + (1,) * (a.ndim - 1)), a, b)


def empty_best(n: int, dim: int):
  return dict(
    vec=jnp.zeros((n, dim), jnp.float32),
    # Typed: a weakly typed inf here would make the loop's first call compile
    # for a different input type than every later one.
    fitness=jnp.full((n,), jnp.inf, jnp.float32),
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


def widths(active, p: int, rows: int):
  """Candidates per slot this step for a ``fill`` search: the slots in flight
  share ceil(in flight / rows) whole forward passes of ``rows`` candidates,
  as evenly as they can (at most ``p`` each); 0 for a slot not in flight."""
  n_act = jnp.sum(active)
  total = jnp.maximum(-(-n_act // rows), 1) * rows
  per, extra = total // jnp.maximum(n_act, 1), total % jnp.maximum(n_act, 1)
  rank = jnp.cumsum(active) - 1
  return jnp.where(active, jnp.minimum(per + (rank < extra), p), 0).astype(jnp.int32)


def step(search: Search, predict: Predict, fit: Fitness, st, per_pass: int | None = None):
  """One engine step for every slot; inactive slots are left unchanged (and,
  with ``per_pass``, not evaluated: see :func:`score_candidates`).

  For a ``fill`` search ``per_pass`` is the candidates per forward pass
  (required), shared among the slots in flight by :func:`widths`.

  Returns the new state and ``finished`` [S]: slots that completed this step.
  """
  keys = jax.vmap(jax.random.fold_in)(st['key'], st['step'])
  act = st['active']
  if search.fill:
    width = widths(act, search.num_candidates, per_pass)
    cands, n_valid = jax.vmap(search.propose)(st['search'], keys, st['step'], width)
    n_valid = jnp.where(act, n_valid, 0)
    ev = score_candidates(
      predict, st['image'], cands, st['label'], st['target'], fit, act, per_pass, n_valid
    )
    new_search = jax.vmap(search.update)(st['search'], cands, ev['fitness'], st['step'], n_valid)
  else:
    cands, n_valid = jax.vmap(search.propose)(st['search'], keys, st['step'])
    ev = score_candidates(
      predict, st['image'], cands, st['label'], st['target'], fit, act, per_pass
    )
    new_search = jax.vmap(search.update)(st['search'], cands, ev['fitness'], st['step'])
  best = _merge_best(st['best'], ev)
  steps = st['step'] + 1
  queries = st['queries'] + n_valid
  if search.fill:
    finished = n_valid == 0  # the step after its last query: it evaluates nothing
  else:
    finished = steps >= search.max_steps
  if fit.early_stop:
    finished |= best['stop']
  keep = lambda new, old: jax.tree.map(lambda a, b: _where(act, a, b), new, old)
  new = dict(
    st,
    search=keep(new_search, st['search']),
    best=keep(best, st['best']),
    step=jnp.where(act, steps, st['step']),
    queries=jnp.where(act, queries, st['queries']),
    active=act & ~finished,
  )
  return new, act & finished
