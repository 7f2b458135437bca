"""Zonotope bounds (affine arithmetic; DeepZ, Singh et al. 2018) of a JAX
function over one pixel's colour box: the intermediate bounds the forward
linear bounds of :mod:`jaxpix.verify.bounds` lose with depth.

Every value is ``c + sum_j g_j e_j + rad * d`` with ``e_j`` in [-1, 1]
shared symbols (one per colour channel of the pixel, then one per relaxed
ReLU neuron) and ``d`` in [-1, 1] an independent symbol per entry. A ReLU
whose input straddles zero is replaced by ``lam v + mu`` plus a new symbol
of weight ``mu`` (the minimal-area parallelogram), and, unlike the forward
bounds' half-width, that symbol then crosses every later layer through the
signed weights: the gaps of different paths can cancel, as in CROWN's
backward pass, at the cost of one row per symbol. Each ReLU gives new
symbols to its ``slots`` widest gaps; the others go to ``rad``, which
crosses the layers through the weights' absolute values (the forward
bounds' behaviour, sound, looser). Operations that are not affine or
ReLU-like (max pooling where no entry is always the max, monotone
functions, products of two bounded values, sorting) give interval bounds,
as in :mod:`jaxpix.verify.bounds`.

:func:`propagate` also records, for every ``max``/``min`` with a constant,
its input's bounds, in the order the forward bound pass meets them: the
verifier passes them to that pass as tighter intermediate bounds.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jaxpix.verify import bounds, steps


class Zono(NamedTuple):
  """``c`` [*S], ``g`` [E, *S] (E symbols so far), ``rad`` [*S] >= 0."""

  c: jax.Array
  g: jax.Array
  rad: jax.Array


def interval(z: Zono):
  spread = jnp.abs(z.g).sum(0) + z.rad
  return z.c - spread, z.c + spread


def _is(x):
  return isinstance(x, Zono)


def _const(x, like: Zono) -> Zono:
  x = jnp.asarray(x, like.c.dtype)
  zero = jnp.zeros_like(x)
  return Zono(x, jnp.zeros((like.g.shape[0],) + x.shape, x.dtype), zero)


def _widen(z: Zono, e: int) -> Zono:
  """``z`` with rows for ``e`` symbols (older values lack the newer ones)."""
  if z.g.shape[0] == e:
    return z
  pad = jnp.zeros((e - z.g.shape[0],) + z.g.shape[1:], z.g.dtype)
  return Zono(z.c, jnp.concatenate([z.g, pad]), z.rad)


def _bcast(z: Zono, shape) -> Zono:
  if z.c.shape == tuple(shape):
    return z
  return Zono(
    jnp.broadcast_to(z.c, shape),
    jnp.broadcast_to(
      z.g.reshape(z.g.shape[:1] + (1,) * (len(shape) - z.c.ndim) + z.c.shape),
      z.g.shape[:1] + tuple(shape),
    ),
    jnp.broadcast_to(z.rad, shape),
  )


def _common(args):
  """Every argument as a Zono with the same symbols and shape."""
  zs = [a for a in args if _is(a)]
  e = max(z.g.shape[0] for z in zs)
  shape = jnp.broadcast_shapes(*(a.c.shape if _is(a) else jnp.shape(a) for a in args))
  like = zs[0]
  return [_bcast(_widen(a if _is(a) else _const(a, like), e), shape) for a in args]


def _box(low, high, e: int) -> Zono:
  return Zono((low + high) / 2, jnp.zeros((e,) + low.shape, low.dtype), (high - low) / 2)


def _map(fn, z: Zono, rad_fn=None) -> Zono:
  """An affine map ``fn`` (no constant term) on the symbols; ``rad`` through
  ``rad_fn`` (its absolute-value version; default ``fn``, for maps with
  non-negative weights)."""
  return Zono(fn(z.c), jax.vmap(fn)(z.g), (rad_fn or fn)(z.rad))


class _Ctx:
  def __init__(self, slots: int, symbols: int):
    self.slots = slots
    self.record: list = []  # (low, high) of each max/min-with-constant input
    # Symbols given out so far: a new one is numbered after every other, so
    # two branches' relaxations never share one (their errors are independent).
    self.symbols = symbols


def _relu(ctx: _Ctx, z: Zono, k) -> Zono:
  """max(v, k): exact where the sign of v - k is fixed; else the
  parallelogram ``lam (v - k) + mu +- mu`` (lam = u / (u - l), mu = -lam l / 2)."""
  low, high = interval(z)
  ctx.record.append((low, high))
  k = jnp.broadcast_to(jnp.asarray(k, low.dtype), low.shape)
  lo, hi = low - k, high - k
  active, dead = lo >= 0, hi <= 0
  cross = ~active & ~dead
  lam = jnp.where(cross, hi / jnp.where(cross, hi - lo, 1.0), jnp.where(active, 1.0, 0.0))
  mu = jnp.where(cross, -lam * lo / 2, 0.0)
  c = jnp.where(dead, k, lam * (z.c - k) + mu + k)
  return _new_symbols(ctx, Zono(c, z.g * lam, z.rad * lam), mu)


def _new_symbols(ctx: _Ctx, z: Zono, extra) -> Zono:
  """``z`` plus an independent error of half-width ``extra`` (>= 0) per
  entry: new symbols for the ``slots`` widest, ``rad`` for the rest."""
  m = min(ctx.slots, extra.size)
  if not m:
    return z._replace(rad=z.rad + extra)
  _, idx = jax.lax.top_k(extra.reshape(-1), m)
  hot = jax.nn.one_hot(idx, extra.size, dtype=extra.dtype) * extra.reshape(-1)[idx][:, None]
  new = hot.reshape((m,) + extra.shape)
  z = _widen(z, ctx.symbols)
  ctx.symbols += m
  return Zono(z.c, jnp.concatenate([z.g, new]), z.rad + extra - new.sum(0))


def _max_pool(ctx: _Ctx, z: Zono, pool, params) -> Zono:
  """Max pooling over disjoint windows: each window's entry with the largest
  centre, v*, plus [0, U], U the largest upper bound of v_j - v* over the
  window (bounded with the symbols v_j and v* share, so it is 0 wherever v*
  is provably the max: then exact)."""
  _, pick = jax.linearize(pool, z.c)  # selects each window's entry with the largest centre
  star = _map(pick, z)
  window_sum = lambda v: jax.lax.reduce_window_sum_p.bind(v, **_window_params(params))  # noqa: E731
  spread = jax.linear_transpose(window_sum, z.c)  # each window's value to its entries
  back = _map(lambda v: spread(v)[0], _widen(star, z.g.shape[0]))
  diff_up = (z.c - back.c) + jnp.abs(z.g - back.g).sum(0) + z.rad + back.rad
  u = pool(jnp.maximum(diff_up, 0.0))
  # Where the windows' interval bounds are narrower, they are kept instead
  # (max(x, 1 - x) over x in [0.3, 0.9]: v* = x, U = 0.4, width 1.0; the
  # intervals give [0.3, 0.9]).
  low, high = interval(z)
  p_low, p_high = pool(low), pool(high)
  s_low, s_high = interval(star)
  narrower = p_high - p_low < s_high + u - s_low
  star = Zono(
    jnp.where(narrower, (p_low + p_high) / 2, star.c + u / 2),
    jnp.where(narrower, 0.0, star.g),
    jnp.where(narrower, 0.0, star.rad),
  )
  return _new_symbols(ctx, star, jnp.where(narrower, (p_high - p_low) / 2, u / 2))


def _window_params(params):
  keep = ('window_dimensions', 'window_strides', 'padding', 'base_dilation', 'window_dilation')
  return {k: params[k] for k in keep}


def _apply(ctx: _Ctx, eqn, args):
  prim, params = eqn.primitive, eqn.params
  name = prim.name
  if not any(_is(a) or steps.is_box(a) for a in args):
    return prim.bind(*args, **params)
  if name in bounds._CALLS:
    inner = params.get('jaxpr', params.get('call_jaxpr', params.get('fun_jaxpr')))
    return _eval(ctx, inner, args)
  if any(steps.is_box(a) for a in args) or steps.starts(name, params):
    ends = [steps.Box(*steps.widen(*interval(a))) if _is(a) else a for a in args]
    out = bounds.step_rule(prim, params, ends)
    if not jnp.issubdtype(out.low.dtype, jnp.floating):
      return out
    # Back to float (a table of levels): the widest entries (the changed
    # pixel's channels) get symbols of their own, so the layers after keep
    # their correlation.
    mid = (out.low + out.high) / 2
    return _new_symbols(ctx, _box(mid, mid, 0), (out.high - out.low) / 2)
  zi = [i for i, a in enumerate(args) if _is(a)]
  z = args[zi[0]]
  if name in ('add', 'sub', 'add_any'):
    x, y = _common(args)
    sign = -1.0 if name == 'sub' else 1.0
    return Zono(x.c + sign * y.c, x.g + sign * y.g, x.rad + y.rad)
  if name == 'neg':
    return Zono(-z.c, -z.g, z.rad)
  if name in ('mul', 'div') and len(zi) == 1 and (name == 'mul' or zi[0] == 0):
    s = args[1 - zi[0]]
    s = s if name == 'mul' else 1.0 / s
    z = _bcast(z, jnp.broadcast_shapes(z.c.shape, jnp.shape(s)))
    return Zono(z.c * s, z.g * s, z.rad * jnp.abs(s))
  if name in ('dot_general', 'conv_general_dilated') and len(zi) == 1:
    i = zi[0]

    def call(v, absolute=False):
      full = [jnp.abs(a) if absolute and not _is(a) else a for a in args]
      full[i] = v
      return prim.bind(*full, **params)

    return _map(call, z, lambda v: call(v, True))
  if name in bounds._STRUCTURAL and zi == [0]:
    return _map(lambda v: prim.bind(v, *args[1:], **params), z)
  if name == 'pad' and zi == [0]:
    zero = jnp.zeros_like(args[1])
    out = _map(lambda v: prim.bind(v, zero, **params), z)
    return out._replace(c=prim.bind(z.c, args[1], **params))
  if name in ('concatenate', 'stack'):  # each part keeps its own shape
    e = max(a.g.shape[0] for a in args if _is(a))
    parts = [_widen(a if _is(a) else _const(a, z), e) for a in args]
    join = lambda *vs: prim.bind(*vs, **params)  # noqa: E731
    return Zono(
      join(*[p.c for p in parts]),
      jax.vmap(join)(*[p.g for p in parts]),
      join(*[p.rad for p in parts]),
    )
  if name == 'select_n' and 0 not in zi:
    cases = _common(args[1:])
    pick = lambda *vs: prim.bind(args[0], *vs, **params)  # noqa: E731
    return Zono(
      pick(*[p.c for p in cases]),
      jax.vmap(pick)(*[p.g for p in cases]),
      pick(*[p.rad for p in cases]),
    )
  if name == 'convert_element_type' and jnp.issubdtype(params['new_dtype'], jnp.floating):
    return Zono(*(v.astype(params['new_dtype']) for v in z))
  e = z.g.shape[0]
  if name in ('max', 'min') and len(zi) == 1:
    k = args[1 - zi[0]]
    if name == 'max':
      return _relu(ctx, z, k)
    m = _relu(ctx, Zono(-z.c, -z.g, z.rad), -k)  # min(v, k) = -max(-v, -k)
    ctx.record[-1] = (-ctx.record[-1][1], -ctx.record[-1][0])  # the bounds of v itself
    return Zono(-m.c, -m.g, m.rad)
  if name == 'clamp' and zi == [1]:
    lo_k, hi_k = args[0], args[2]
    low, high = interval(z)
    return _box(jnp.clip(low, lo_k, hi_k), jnp.clip(high, lo_k, hi_k), e)
  if name == 'reduce_window_max' and zi == [0]:
    pool = lambda v: prim.bind(v, **params)  # noqa: E731
    if bounds._disjoint(params):
      return _max_pool(ctx, z, pool, params)
    low, high = interval(z)
    return _box(pool(low), pool(high), e)
  low, high = interval(z)
  if name in bounds._MONOTONE:
    f = bounds._MONOTONE[name] or (lambda v: prim.bind(v, **params))
    if name in bounds.STEPS:
      low, high = steps.widen(low, high)
    return _box(f(low), f(high), e)
  if name in ('reduce_window_max', 'reduce_max'):
    return _box(prim.bind(low, **params), prim.bind(high, **params), e)
  if name == 'sort' and len(args) == 1:
    (s_low,), (s_high,) = prim.bind(low, **params), prim.bind(high, **params)
    return [_box(s_low, s_high, e)]
  if name in ('integer_pow', 'square'):
    n = params.get('y', 2)
    lo_n, hi_n = low**n, high**n
    across = (low < 0) & (high > 0) & (n % 2 == 0)
    return _box(jnp.where(across, 0.0, jnp.minimum(lo_n, hi_n)), jnp.maximum(lo_n, hi_n), e)
  if name in ('mul', 'max', 'min'):
    (l1, h1), (l2, h2) = (interval(a) if _is(a) else (a, a) for a in args)
    if name == 'mul':
      cands = jnp.stack([l1 * l2, l1 * h2, h1 * l2, h1 * h2])
      return _box(cands.min(0), cands.max(0), e)
    f = jnp.maximum if name == 'max' else jnp.minimum
    return _box(f(l1, l2), f(h1, h2), e)
  raise bounds.UnsupportedOperation(
    f'the verifier cannot bound the operation `{name}` applied to a value that depends '
    'on the changed pixel; certify a function without it, or add a rule for it in '
    'jaxpix/verify/bounds.py and jaxpix/verify/zonotope.py'
  )


def _eval(ctx: _Ctx, jaxpr, args):
  def step(eqn, args):
    out = _apply(ctx, eqn, args)
    return out if eqn.primitive.multiple_results else [out]

  return bounds.interpret(jaxpr, args, step)


def propagate(jaxpr, inputs: list, slots: int):
  """(the outputs' bounds, the recorded max/min input bounds) of ``jaxpr``
  given its inputs (arrays or :class:`Zono`); ``slots`` new symbols per
  ReLU-like operation."""
  ctx = _Ctx(slots, max((a.g.shape[0] for a in inputs if _is(a)), default=0))
  return _eval(ctx, jaxpr, inputs), ctx.record
