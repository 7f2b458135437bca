"""Backward linear bounds (CROWN, Zhang et al. 2018) of a linear function of
the network's output, over the operations the forward pass recorded.

The forward pass (:func:`jaxpix.verify.bounds.propagate` with a ``tape``)
gives every intermediate value affine bounds, and the bounds of the inputs
of its non-linear operations. Going back from the output, a row of
coefficients ``lam`` crosses each affine operation exactly (its transpose,
by ``jax.vjp``) and each ReLU-like operation through the linear bound that
suits its sign (the chord above, the identity or zero below, per neuron);
an operation bounded only by an interval adds its worst end and stops
there. Unlike the forward pass, which adds up the gaps of every relaxed
neuron through the absolute values of the weights, the gaps here meet the
signed coefficients of what follows them, so they can cancel: the bounds of
deep networks are much tighter. Both are sound; the verifier takes the
better of the two for each margin.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxpix.verify import bounds, steps
from jaxpix.verify.bounds import Lin


def _affine(name: str, lins: list[int]) -> bool:
  """Whether the forward rule of ``name`` (with bounds at ``lins``) is exact
  and affine in those arguments."""
  if name == 'mul':
    return len(lins) == 1
  if name == 'div':
    return lins == [0]
  if name == 'select_n':
    return 0 not in lins
  if name in bounds._STRUCTURAL:
    return lins == [0]
  if name in ('dot_general', 'conv_general_dilated'):
    return len(lins) == 1
  return name in ('add', 'add_any', 'sub', 'neg', 'pad', 'concatenate', 'stack')


def _sum_rest(v):
  return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _max_const(lam, low, high, k):
  """``lam`` [S, ...] on max(v, k): the coefficients on v and the constant."""
  k = jnp.broadcast_to(jnp.asarray(k, low.dtype), low.shape)
  active, dead = low >= k, high <= k
  width = jnp.where(active | dead, 1.0, high - low)
  chord = (high - k) / width
  # Below: the identity (from k) where more of the range lies above k, else
  # the constant k (CROWN's adaptive choice); above: the chord.
  a_lo = jnp.where(active, 1.0, jnp.where(dead, 0.0, (high - k > k - low).astype(low.dtype)))
  a_up = jnp.where(active, 1.0, jnp.where(dead, 0.0, chord))
  b_lo = k * (1.0 - a_lo)
  b_up = jnp.where(active, 0.0, jnp.where(dead, k, k - chord * low))
  pos = lam >= 0
  return jnp.where(pos, lam * a_lo, lam * a_up), _sum_rest(jnp.where(pos, lam * b_lo, lam * b_up))


def backward(tape: list, x: Lin, out: Lin, spec, zl, zu, known=None):
  """Lower bounds [S] of ``spec[s] . out`` over the box [zl, zu], for
  ``spec`` [S, *out's shape], from the ``tape`` of the forward pass that
  took ``x`` (exact input bounds: ``x.r`` = 0) to ``out``; and for each the
  corner of the box [S, d] where its linear bound is lowest. ``known``: the
  bounds the forward pass used for each ReLU-like input (the relaxations
  must be the same ones)."""
  cot = {id(out): spec}
  bias = jnp.zeros(spec.shape[0], spec.dtype)

  def add(v, g):
    cot[id(v)] = cot[id(v)] + g if id(v) in cot else g

  for eqn, args, res in reversed(tape):
    lam = cot.pop(id(res), None)
    if lam is None:
      continue
    name = eqn.primitive.name
    lins = [i for i, a in enumerate(args) if isinstance(a, Lin)]
    boxed = any(steps.is_box(a) for a in args)  # a step function's interval
    if _affine(name, lins) and not boxed:

      def f(*vs, args=args, lins=lins, eqn=eqn):
        full = list(args)
        for i, v in zip(lins, vs, strict=True):
          full[i] = v
        return eqn.primitive.bind(*full, **eqn.params)

      zeros = [jnp.zeros(args[i].c.shape[1:], args[i].c.dtype) for i in lins]
      f0, vjp = jax.vjp(f, *zeros)
      bias = bias + _sum_rest(lam * f0)
      for i, g in zip(lins, jax.vmap(vjp)(lam), strict=True):
        add(args[i], g)
    elif name in ('max', 'min') and len(lins) == 1 and not boxed:
      v, k = args[lins[0]], args[1 - lins[0]]
      low, high = (known or {}).get(id(v)) or bounds.concretize(v, zl, zu)
      if name == 'max':
        g, b = _max_const(lam, low, high, k)
      else:  # min(v, k) = -max(-v, -k)
        g, b = _max_const(-lam, -high, -low, -jnp.asarray(k))
        g = -g
      bias = bias + b
      add(v, g)
    elif name == 'reduce_window_max' and lins == [0]:
      v = args[0]
      low, high = bounds.concretize(v, zl, zu)
      pool = lambda t, eqn=eqn: eqn.primitive.bind(t, **eqn.params)  # noqa: E731
      pick, exact = bounds.pool_selection(pool, low, high, bounds._disjoint(eqn.params))
      _, route = jax.vjp(pick, low)  # each window's coefficient to its picked entry
      # Below (lam >= 0) the picked entry; above, it too where it is always
      # the max, else the window's largest upper bound.
      keep = (lam >= 0) | exact
      bias = bias + _sum_rest(jnp.where(keep, 0.0, lam * pool(high)))
      add(v, jax.vmap(lambda t, route=route: route(t)[0])(jnp.where(keep, lam, 0.0)))
    else:  # bounded by an interval only: its worst end, nothing further back
      low, high = bounds.concretize(res, zl, zu)
      bias = bias + _sum_rest(jnp.where(lam >= 0, lam * low, lam * high))
  d = zl.shape[0]
  lam_x = cot.pop(id(x), None)
  if cot:  # a value with a coefficient that no recorded operation made
    raise RuntimeError(
      f'{len(cot)} bounded values were not met going back through the tape: their '
      'coefficients would be lost (a bound rule left its result off the tape)'
    )
  if lam_x is None:  # the output does not depend on the input
    return bias, jnp.broadcast_to((zl + zu) / 2, (spec.shape[0], d))
  coef = jnp.einsum('s...,d...->sd', lam_x, x.c[:d])
  const = _sum_rest(lam_x * x.c[d]) + bias
  # The corner of the box where the bound is lowest: where to look for a
  # counterexample.
  vertex = jnp.where(coef > 0, zl, zu)
  return const + jnp.sum(jnp.minimum(coef * zl, coef * zu), axis=1), vertex


def refiner(tape: list, x: Lin, zl, zu, known: dict, rows: int):
  """``refine`` for :func:`jaxpix.verify.bounds.propagate`: before a ReLU-like
  operation max(v, k) is relaxed, the ``rows`` entries of v whose bounds
  straddle k most widely get backward bounds (CROWN's intermediate bounds,
  from the operations recorded so far), the others keep the forward ones."""

  def refine(b: Lin, low, high, k):
    k = jnp.broadcast_to(jnp.asarray(k, low.dtype), low.shape)
    straddle = jnp.where((low < k) & (high > k), high - low, -1.0).reshape(-1)
    m = min(rows, straddle.shape[0])
    _, idx = jax.lax.top_k(straddle, m)
    eye = jax.nn.one_hot(idx, straddle.shape[0], dtype=low.dtype).reshape((m,) + low.shape)
    lower, _ = backward(tape, x, b, jnp.concatenate([eye, -eye]), zl, zu, known)
    flat_low, flat_high = low.reshape(-1), high.reshape(-1)
    flat_low = flat_low.at[idx].max(lower[:m])
    flat_high = flat_high.at[idx].min(-lower[m:])
    return flat_low.reshape(low.shape), flat_high.reshape(high.shape)

  return refine
