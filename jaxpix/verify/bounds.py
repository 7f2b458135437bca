"""Linear bounds of a JAX function over a small input set, from its jaxpr.

The verifier's input set is one pixel's colour: ``d`` = C free variables
``z`` in a box, the rest of the image fixed. Every intermediate value ``v``
of the network is bounded by two affine functions of ``z``,
``lo(z) <= v(z) <= up(z)`` for every ``z`` in the box, stored as
:class:`Lin`: their coefficients and constant, stacked on a leading axis of
``d + 1``. With ``d`` this small the bounds are propagated forward (the
forward mode of linear bound propagation, Xu et al. 2020, "Automatic
perturbation analysis for scalable certified robustness and beyond"),
which costs about 2 (d + 1) forward passes of the network; the final
margins keep the correlation between the logits (both sides are functions
of the same ``z``) before they are minimised over the box.

The rules work on the function's own operations (interpreting its jaxpr, as
jax_verify does), so any pure JAX function of the image is accepted as long
as every operation that depends on ``z`` has a rule: linear operations
(additions, products and convolutions with constants, reshapes, sums,
average pooling, padding, gathers with fixed indices) are exact; ReLU, and
``max``/``min`` with a constant, take the triangle relaxation of CROWN
(Zhang et al. 2018); other monotone functions (sigmoid, tanh, exp, max
pooling, rounding, sorting) and products of two bounded values fall back to interval
bounds, sound but looser; integer and boolean values (a bit depth's table
index, JPEG's conversions, comparisons) are intervals too
(:mod:`jaxpix.verify.steps`). An operation without a rule is an error naming it.
Operations on constants only (batch norm's statistics, a fixed kernel) run
as they are.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.extend import core

from jaxpix.verify import steps


class Lin(NamedTuple):
  """Affine bounds of a value of shape S in d variables: ``c`` and ``r``
  [d + 1, *S], the centre and half-width of the bounds: lo = c - r and
  up = c + r as affine functions (row d the constant). ``r`` is an affine
  function that is >= 0 over the box, not necessarily coefficient-wise."""

  c: jax.Array
  r: jax.Array


class UnsupportedOperation(ValueError):
  """The function uses an operation the verifier cannot bound."""


def concretize(b: Lin, zl, zu):
  """Scalar bounds [S] of ``b`` over the box [zl, zu] (each [d])."""
  d = zl.shape[0]
  lo, up = b.c - b.r, b.c + b.r
  shape = (d,) + (1,) * (lo.ndim - 1)
  zl, zu = zl.reshape(shape), zu.reshape(shape)
  low = lo[d] + jnp.sum(jnp.where(lo[:d] > 0, lo[:d] * zl, lo[:d] * zu), 0)
  high = up[d] + jnp.sum(jnp.where(up[:d] > 0, up[:d] * zu, up[:d] * zl), 0)
  return low, high


def _const(b: Lin, x, shape=None):
  """A constant as bounds with no coefficients, of ``shape`` (default: that
  of ``b``'s values) or of ``x``'s own if it is larger."""
  shape = b.c.shape[1:] if shape is None else shape
  x = jnp.asarray(x, b.c.dtype)
  x = jnp.broadcast_to(x, jnp.broadcast_shapes(x.shape, shape))
  z = jnp.zeros((b.c.shape[0] - 1,) + x.shape, b.c.dtype)
  return Lin(jnp.concatenate([z, x[None]]), jnp.zeros((b.c.shape[0],) + x.shape, b.c.dtype))


def _from_interval(b: Lin, low, high):
  """Constant bounds [low, high] (arrays of the output's shape)."""
  return Lin(_const(b, (low + high) / 2, low.shape).c, _const(b, (high - low) / 2, low.shape).c)


def _rows(fn, *xs):
  """``fn`` applied to each row of the stacked bounds (vmap over the d + 1)."""
  return jax.vmap(fn)(*xs)


def _affine_scale(b: Lin, s):
  """``s * v`` for a constant ``s`` (broadcast against S)."""
  return Lin(b.c * s, b.r * jnp.abs(s))


def _relu(b: Lin, low, high):
  """CROWN's relaxation of max(v, 0) given v's scalar bounds: exact where the
  sign is fixed; else the chord above, and below the identity or zero
  (whichever is closer, by the larger side)."""
  lo, up = b.c - b.r, b.c + b.r
  active, dead = low >= 0, high <= 0
  cross = ~active & ~dead
  slope = jnp.where(cross, high / jnp.where(cross, high - low, 1.0), 0.0)
  up_cross = slope * up
  up_cross = up_cross.at[-1].add(-slope * low)
  lo_cross = jnp.where(high > -low, lo, 0.0)
  new_lo = jnp.where(active, lo, jnp.where(dead, 0.0, lo_cross))
  new_up = jnp.where(active, up, jnp.where(dead, 0.0, up_cross))
  return Lin((new_lo + new_up) / 2, (new_up - new_lo) / 2)


def _max_const(b: Lin, low, high, k):
  """max(v, k) for a constant k: k + relu(v - k)."""
  o = _relu(Lin(b.c.at[-1].add(-k), b.r), low - k, high - k)
  return Lin(o.c.at[-1].add(k), o.r)


def _disjoint(params) -> bool:
  """Whether a pooling's windows do not overlap."""
  dims, strides = params['window_dimensions'], params['window_strides']
  dilated = any(d != 1 for d in (*params['base_dilation'], *params['window_dilation']))
  return not dilated and all(s >= d for s, d in zip(strides, dims, strict=True))


def pool_selection(pool, low, high, disjoint: bool):
  """For max pooling ``pool`` with input bounds [low, high]: ``pick(v)``,
  each window's entry of ``v`` where ``low`` is largest, and where that entry
  is the window's maximum whatever the input (its lower bound reaches every
  other entry's upper bound; only checked for disjoint windows)."""
  out_low, pick = jax.linearize(pool, low)
  if not disjoint:
    return pick, jnp.zeros(out_low.shape, bool)
  _, spread = jax.vjp(pool, low)
  chosen = spread(jnp.ones_like(out_low))[0] > 0  # the picked entries, on the input
  others = pool(jnp.where(chosen, -jnp.inf, high))
  return pick, out_low >= others


def _max_pool(b: Lin, low, high, pool, disjoint: bool):
  """Max pooling: below, the entry with the largest lower bound (the max is
  at least it); above, that entry where it is always the max, else the
  largest upper bound."""
  pick, exact = pool_selection(pool, low, high, disjoint)
  lo, up = b.c - b.r, b.c + b.r
  new_lo = _rows(pick, lo)
  const_up = _const(b, pool(high), exact.shape).c
  new_up = jnp.where(exact, _rows(pick, up), const_up)
  return Lin((new_lo + new_up) / 2, (new_up - new_lo) / 2)


def _is_lin(x):
  return isinstance(x, Lin)


class _Ctx(NamedTuple):
  zl: jax.Array
  zu: jax.Array
  tape: list | None = None  # (eqn, args, out) of every operation on bounds, in order
  # refine(b, low, high, k) -> tighter (low, high) of the input of max(v, k);
  # known: id(bounds) -> the (low, high) a rule used, for the backward pass.
  refine: object = None
  known: dict | None = None


def _linear(prim, params, args, lin_at):
  """A primitive linear in argument ``lin_at`` (the others constant): the
  centre goes through it, the half-width through its absolute value."""
  pos = [a if i != lin_at else None for i, a in enumerate(args)]
  b = args[lin_at]

  def call(v, others):
    full = list(others)
    full[lin_at] = v
    return prim.bind(*full, **params)

  absolute = [jnp.abs(a) if i != lin_at else None for i, a in enumerate(args)]
  c = _rows(lambda v: call(v, pos), b.c)
  r = _rows(lambda v: call(v, absolute), b.r)
  return Lin(c, r)


# Operations that move, sum or select entries with non-negative weights:
# applied to both rows as they are (``pad``'s value and the like go to the
# constant row only).
_STRUCTURAL = {
  'reshape',
  'broadcast_in_dim',
  'transpose',
  'squeeze',
  'expand_dims',
  'slice',
  'reduce_sum',
  'rev',
  'copy',
  'copy_p',
  'reduce_window_sum',
  'gather',
  'dynamic_slice',
}
_MONOTONE = {
  'logistic': jax.nn.sigmoid,
  'tanh': jnp.tanh,
  'exp': jnp.exp,
  'floor': jnp.floor,
  'ceil': jnp.ceil,
  'round': None,  # bound with the primitive itself
  'log1p': jnp.log1p,
  'sqrt': jnp.sqrt,
  'log': jnp.log,
  'erf': jax.scipy.special.erf,
}


STEPS = ('floor', 'ceil', 'round')  # the float step functions among _MONOTONE


_CALLS = (
  'jit',
  'pjit',
  'closed_call',
  'core_call',
  'remat',
  'checkpoint',
  'custom_jvp_call',
  'custom_vjp_call',
  'custom_vjp_call_jaxpr',
)


def _apply(ctx: _Ctx, eqn, args):
  prim, params = eqn.primitive, eqn.params
  name = prim.name
  if not any(_is_lin(a) or steps.is_box(a) for a in args):
    return prim.bind(*args, **params)
  if name in _CALLS[:6]:
    inner = params.get('jaxpr', params.get('call_jaxpr'))
    return _eval(ctx, inner, args)
  if name == 'custom_jvp_call':
    return _eval(ctx, params['call_jaxpr'], args)
  if name == 'custom_vjp_call' or name == 'custom_vjp_call_jaxpr':
    inner = params.get('call_jaxpr', params.get('fun_jaxpr'))
    return _eval(ctx, inner, args)
  if any(steps.is_box(a) for a in args) or steps.starts(name, params):
    out = step_rule(
      prim,
      params,
      [steps.Box(*steps.widen(*concretize(a, ctx.zl, ctx.zu))) if _is_lin(a) else a for a in args],
    )
    if not jnp.issubdtype(out.low.dtype, jnp.floating):
      return out
    d = ctx.zl.shape[0]
    return _from_interval(Lin(jnp.zeros(d + 1, out.low.dtype), None), out.low, out.high)
  lins = [i for i, a in enumerate(args) if _is_lin(a)]
  b = args[lins[0]]
  if name in ('add', 'sub', 'add_any'):
    x, y = (a if _is_lin(a) else _const(b, a) for a in args)
    if name == 'sub':
      return Lin(x.c - y.c, x.r + y.r)
    return Lin(x.c + y.c, x.r + y.r)
  if name == 'neg':
    return Lin(-b.c, b.r)
  if name in ('mul', 'div') and len(lins) == 1 and (name == 'mul' or lins[0] == 0):
    s = args[1 - lins[0]]
    return _affine_scale(b, s if name == 'mul' else 1.0 / s)
  if name in ('dot_general', 'conv_general_dilated') and len(lins) == 1:
    return _linear(prim, params, args, lins[0])
  if name in _STRUCTURAL and len(lins) == 1 and lins[0] == 0:
    rest = args[1:]
    c = _rows(lambda v: prim.bind(v, *rest, **params), b.c)
    r = _rows(lambda v: prim.bind(v, *rest, **params), b.r)
    return Lin(c, r)
  if name == 'pad' and lins == [0]:
    value = args[1]
    c = _rows(lambda v: prim.bind(v, jnp.zeros_like(value), **params), b.c)
    r = _rows(lambda v: prim.bind(v, jnp.zeros_like(value), **params), b.r)
    filled = prim.bind(jnp.zeros(b.c.shape[1:], b.c.dtype), value, **params)
    return Lin(c.at[-1].add(filled), r)
  if name in ('concatenate', 'stack'):  # constants join as bounds without coefficients
    parts = [a if _is_lin(a) else _const(b, a, jnp.shape(a)) for a in args]
    join = lambda *rows: prim.bind(*rows, **params)  # noqa: E731
    return Lin(_rows(join, *[p.c for p in parts]), _rows(join, *[p.r for p in parts]))
  if name == 'select_n' and 0 not in lins:
    cases = [a if _is_lin(a) else _const(b, a) for a in args[1:]]
    pick = lambda *rows: prim.bind(args[0], *rows, **params)  # noqa: E731
    return Lin(_rows(pick, *[x.c for x in cases]), _rows(pick, *[x.r for x in cases]))
  if name == 'convert_element_type' and jnp.issubdtype(params['new_dtype'], jnp.floating):
    return Lin(b.c.astype(params['new_dtype']), b.r.astype(params['new_dtype']))
  low, high = concretize(b, ctx.zl, ctx.zu)
  if name in ('max', 'min') and len(lins) == 1:
    k = args[1 - lins[0]]
    if ctx.refine is not None:
      low, high = ctx.refine(b, low, high, k)
    if ctx.known is not None:
      ctx.known[id(b)] = (low, high)
    if name == 'max':
      return _max_const(b, low, high, k)
    m = _max_const(Lin(-b.c, b.r), -high, -low, -k)  # min(v, k) = -max(-v, -k)
    return Lin(-m.c, m.r)
  if name == 'clamp' and lins == [1]:  # clamp(lo, v, hi) = min(max(v, lo), hi)
    v = _max_const(b, low, high, args[0])
    vl, vh = jnp.maximum(low, args[0]), jnp.maximum(high, args[0])
    m = _max_const(Lin(-v.c, v.r), -vh, -vl, -args[2])
    return Lin(-m.c, m.r)
  if name in ('integer_pow', 'square'):
    n = params.get('y', 2)
    lo_n, hi_n = low**n, high**n
    if n % 2:  # odd: increasing
      return _from_interval(b, lo_n, hi_n)
    across = (low < 0) & (high > 0)
    return _from_interval(
      b, jnp.where(across, 0.0, jnp.minimum(lo_n, hi_n)), jnp.maximum(lo_n, hi_n)
    )
  if name in _MONOTONE:
    f = _MONOTONE[name] or (lambda v: prim.bind(v, **params))
    if name in STEPS:  # a level apart at a tie: read a few ulps wider (steps.widen)
      low, high = steps.widen(low, high)
    return _from_interval(b, f(low), f(high))
  if name == 'reduce_window_max' and lins == [0]:
    return _max_pool(b, low, high, lambda v: prim.bind(v, **params), _disjoint(params))
  if name in ('reduce_window_max', 'reduce_max'):
    return _from_interval(b, prim.bind(low, **params), prim.bind(high, **params))
  if name == 'sort' and len(args) == 1:
    # Every order statistic is non-decreasing in each input (a median
    # filter's, jaxpix.defences.transforms.median_filter): sorting the lower
    # and the upper ends bounds it.
    (s_low,), (s_high,) = prim.bind(low, **params), prim.bind(high, **params)
    return [_from_interval(b, s_low, s_high)]
  if name in ('mul', 'max', 'min'):
    # Two bounded values: interval bounds.
    (l1, h1), (l2, h2) = (concretize(a, ctx.zl, ctx.zu) if _is_lin(a) else (a, a) for a in args)
    if name == 'mul':
      cands = jnp.stack([l1 * l2, l1 * h2, h1 * l2, h1 * h2])
      return _from_interval(b, cands.min(0), cands.max(0))
    f = jnp.maximum if name == 'max' else jnp.minimum
    return _from_interval(b, f(l1, l2), f(h1, h2))
  raise UnsupportedOperation(
    f'the verifier cannot bound the operation `{name}` applied to a value that depends '
    'on the changed pixel (supported: linear operations, ReLU and max/min with a constant, '
    'monotone functions, max pooling, sorting, products, step functions); certify a function '
    'without it, or add a rule for it in jaxpix/verify/bounds.py'
  )


def step_rule(prim, params, args) -> steps.Box:
  """:func:`jaxpix.verify.steps.apply`, its refusal as :class:`UnsupportedOperation`."""
  try:
    return steps.apply(prim, params, args)
  except steps.Unsupported as e:
    raise UnsupportedOperation(
      f'the verifier cannot bound the operation `{prim.name}` applied to an integer or '
      f'boolean value that depends on the changed pixel: {e}; certify a function without '
      'it, or add a rule for it in jaxpix/verify/steps.py'
    ) from None


def interpret(jaxpr, args, step):
  """Runs ``jaxpr`` on ``args`` (arrays or bounds) with ``step(eqn, args) ->
  the equation's results (a list)``: the interpreter both bound passes share."""
  closed = jaxpr if isinstance(jaxpr, core.ClosedJaxpr) else core.ClosedJaxpr(jaxpr, ())
  env = {}

  def read(v):
    return v.val if isinstance(v, core.Literal) else env[v]

  for var, val in zip(closed.jaxpr.constvars, closed.consts, strict=True):
    env[var] = val
  for var, val in zip(closed.jaxpr.invars, args, strict=True):
    env[var] = val
  for eqn in closed.jaxpr.eqns:
    outs = step(eqn, [read(v) for v in eqn.invars])
    for var, val in zip(eqn.outvars, outs, strict=True):
      if not isinstance(var, core.DropVar):
        env[var] = val
  return [read(v) for v in closed.jaxpr.outvars]


def _eval(ctx: _Ctx, jaxpr, args):
  def step(eqn, args):
    out = _apply(ctx, eqn, args)
    outs = out if eqn.primitive.multiple_results else [out]
    if ctx.tape is not None and eqn.primitive.name not in _CALLS:
      # Every result on bounds is recorded (the backward pass must meet each
      # value it gives a coefficient).
      ctx.tape.extend((eqn, args, o) for o in outs if _is_lin(o))
    return outs

  return interpret(jaxpr, args, step)


def propagate(jaxpr, inputs: list, zl, zu, tape=None, refine=None, known=None) -> list:
  """Bounds of ``jaxpr``'s outputs given its inputs (arrays or :class:`Lin`)
  over the box [zl, zu]; ``tape`` (a list) records every operation on
  bounds for :func:`jaxpix.verify.crown.backward`, ``refine`` tightens the
  bounds of each ReLU-like input before its relaxation, and ``known`` (a
  dict) keeps the bounds each used."""
  return _eval(_Ctx(zl, zu, tape, refine, known), jaxpr, inputs)
