"""Interval rules for the step functions of input transformations.

Bit-depth reduction and JPEG (:mod:`jaxpix.defences.transforms`) turn the
image into integers and back: ``round(x * 15)`` becomes an int32 index into
a table of levels, jnp's indexing wraps negative indices with a comparison
and a select, and JPEG rounds, clips and floors. A value computed that way
is not an affine function of the pixel's colour, so it is bounded by an
interval only, a :class:`Box` of its lowest and highest value over the
colour box. Every rule here is monotone reasoning on those ends: exact for
a box that stays inside one step of the function (one level of the bit
depth), and the hull of the levels it spans otherwise. What is certified is
the transformed classifier on every colour of the cube: the step function
is part of the function bounded, not approximated.

A float result (a gather from the table of levels, a conversion back to
float) leaves this module as ordinary float bounds (interval bounds, no
coefficients): the caller's :mod:`jaxpix.verify.bounds` or
:mod:`jaxpix.verify.zonotope` turns it into its own kind.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Box(NamedTuple):
  """An integer or boolean value known only to lie in [low, high] (False < True)."""

  low: jax.Array
  high: jax.Array


class Unsupported(Exception):
  """Raised with the reason when a step operation has no interval rule here."""


_COMPARE = ('lt', 'le', 'gt', 'ge', 'eq', 'ne')
# Non-decreasing in each argument.
_MONOTONE = ('floor', 'ceil', 'round', 'max', 'min', 'clamp', 'add', 'add_any')
# Moving entries or summing them with weight one: both ends go through as they are.
_STRUCTURAL = (
  'reshape', 'broadcast_in_dim', 'transpose', 'squeeze', 'expand_dims', 'slice', 'rev',
  'copy', 'copy_p', 'reduce_sum', 'reduce_max', 'reduce_min', 'dynamic_slice',
)  # fmt: skip


def starts(name: str, params) -> bool:
  """Whether ``name`` applied to float bounds makes a :class:`Box`: a
  conversion to an integer or boolean type, or a comparison."""
  if name == 'convert_element_type':
    return not jnp.issubdtype(params['new_dtype'], jnp.floating)
  return name in _COMPARE


def is_box(x) -> bool:
  """Whether ``x`` is an interval of this module (not an array or float bounds)."""
  return isinstance(x, Box)


def _ends(a):
  return (a.low, a.high) if is_box(a) else (a, a)


def _compare(name, a, b):
  """(always, maybe): whether ``a name b`` holds for every value / for some."""
  (la, ha), (lb, hb) = _ends(a), _ends(b)
  if name in ('gt', 'ge'):  # a > b is b < a
    (la, ha), (lb, hb) = (lb, hb), (la, ha)
  if name in ('lt', 'gt'):
    return ha < lb, la < hb
  if name in ('le', 'ge'):
    return ha <= lb, la <= hb
  point = (la == ha) & (lb == hb) & (la == lb)
  meet = (la <= hb) & (lb <= ha)
  return (point, meet) if name == 'eq' else (~meet, ~point)


def _compare_checked(name, a, b):
  """:func:`_compare`, unknown (False, True) where an end is NaN."""
  always, maybe = _compare(name, a, b)
  nan = jnp.zeros(jnp.shape(always), bool)
  for e in (*_ends(a), *_ends(b)):
    if jnp.issubdtype(jnp.result_type(e), jnp.floating):
      nan = nan | jnp.isnan(e)
  return always & ~nan, maybe | nan


def _range(dtype):
  """The least and the greatest value of ``dtype``."""
  if jnp.issubdtype(dtype, jnp.floating):
    return -jnp.inf, jnp.inf
  if dtype == jnp.bool_:
    return False, True
  info = jnp.iinfo(dtype)
  return info.min, info.max


def _full(like, dtype) -> Box:
  """Every value of ``dtype``, in the shape of ``like``."""
  bottom, top = _range(dtype)
  shape = jnp.shape(like)
  return Box(jnp.full(shape, bottom, dtype), jnp.full(shape, top, dtype))


def _fits(low, high, dtype):
  """Where [low, high] (any real type; NaN never fits) lies in ``dtype``'s range."""
  bottom, top = _range(dtype)
  low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
  return (low >= float(bottom)) & (high <= float(top))


def _checked(low, high, exact: Box, dtype) -> Box:
  """``exact`` where the true ends [low, high] (computed in float32) fit
  ``dtype`` with room for float32's rounding, else its whole range: integer
  arithmetic that may wrap."""
  if not jnp.issubdtype(dtype, jnp.integer):
    return exact
  low, high = jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32)
  # float32 holds every integer below 2^24 exactly; above, its rounding.
  slack = lambda v: jnp.where(jnp.abs(v) < 2.0**24, 0.0, jnp.abs(v) * 2.0**-20 + 1)  # noqa: E731
  ok = _fits(low - slack(low), high + slack(high), dtype)
  full = _full(exact.low, dtype)
  return Box(jnp.where(ok, exact.low, full.low), jnp.where(ok, exact.high, full.high))


def widen(low, high):
  """Float ends moved out by a few ulps before a step function reads them.

  The bounds compute a value in another order than the model does (and XLA
  may fuse differently), which moves it by some ulps: nothing for a
  continuous function, a whole level for ``round`` at a tie. Widening by
  2^-20 of the magnitude keeps such a value inside. Ends that are whole
  numbers are left as they are: they come from exact operations (a
  rounding, small integers' sums and products), which the model computes
  alike, and widening them would put every level of a bit depth one level
  wider.
  """

  def out(v, sign):
    whole = v == jnp.round(v)
    return jnp.where(whole, v, v + sign * (jnp.abs(v) * 2.0**-20 + 2.0**-40))

  return out(low, -1.0), out(high, 1.0)


def _select(pred, cases):
  """select_n: the hull of the cases the predicate's range can pick."""
  p_low, p_high = (jnp.asarray(e).astype(jnp.int32) for e in _ends(pred))
  ends = [_ends(c) for c in cases]
  dtype = jnp.result_type(*(e[0] for e in ends))
  bottom, top = _range(dtype)
  low, high = jnp.asarray(top, dtype), jnp.asarray(bottom, dtype)
  for i, (c_low, c_high) in enumerate(ends):
    can = (p_low <= i) & (i <= p_high)
    low = jnp.where(can, jnp.minimum(low, c_low), low)
    high = jnp.where(can, jnp.maximum(high, c_high), high)
  return Box(low, high)


def _gather(prim, params, table, idx: Box):
  """``table[idx]`` for a constant 1-D table (jnp indexing's gather): its
  values at the ends where the table is monotone, else its least and
  greatest entry over the index range."""
  dn = params['dimension_numbers']
  pattern = (dn.collapsed_slice_dims, dn.start_index_map, dn.offset_dims) == ((0,), (0,), ())
  if is_box(table) or jnp.ndim(table) != 1 or not pattern or params['slice_sizes'] != (1,):
    raise Unsupported(
      'a gather with indices that depend on the changed pixel is bounded only from a '
      'constant 1-D table indexed one entry at a time (``table[index]``)'
    )
  mode = str(params['mode'])
  if not any(m in mode for m in ('PROMISE_IN_BOUNDS', 'CLIP', 'FILL_OR_DROP')):
    raise Unsupported(f'a gather in mode {mode} has no interval rule')
  table, n = jnp.asarray(table), table.shape[0]
  low, high = (jnp.clip(e[..., 0], 0, n - 1) for e in (idx.low, idx.high))
  known = _concrete(table)  # a constant table (the levels of a bit depth): its order is known now
  steps = None if known is None else np.diff(known.astype(np.float64))
  if steps is not None and (steps >= 0).all():
    out_low, out_high = table[low], table[high]
  elif steps is not None and (steps <= 0).all():
    out_low, out_high = table[high], table[low]
  else:
    r = jnp.arange(n)
    inside = (r >= low[..., None]) & (r <= high[..., None])
    bottom, top = _range(table.dtype)
    out_low = jnp.where(inside, table, jnp.asarray(top, table.dtype)).min(-1)
    out_high = jnp.where(inside, table, jnp.asarray(bottom, table.dtype)).max(-1)
  if 'FILL' in mode:  # out-of-range indices give the fill value (NaN for floats: never certified)
    outside = (idx.low[..., 0] < 0) | (idx.high[..., 0] > n - 1)
    value = params['fill_value']
    value = jnp.asarray(jnp.nan if value is None else value, table.dtype)
    out_low = jnp.where(outside, jnp.minimum(out_low, value), out_low)
    out_high = jnp.where(outside, jnp.maximum(out_high, value), out_high)
  return Box(out_low, out_high)


def _concrete(x):
  """``x`` as a NumPy array, or None where it is only known at run time."""
  try:
    return np.asarray(x)
  except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError, TypeError):
    return None


def apply(prim, params, args) -> Box:
  """The bounds of ``prim(*args)`` where each argument is a constant or a
  :class:`Box` (float bounds passed as their interval, which the caller
  has :func:`widen`-ed). Raises :class:`Unsupported` for an operation
  without a rule here; integer arithmetic that may wrap gives the type's
  whole range."""
  name = prim.name
  bind = lambda *vs: prim.bind(*vs, **params)  # noqa: E731
  if name == 'convert_element_type':
    (low, high), new = _ends(args[0]), params['new_dtype']
    if new == jnp.bool_:  # nonzero: always when 0 is outside, maybe unless it is 0
      return Box((low > 0) | (high < 0), (low != 0) | (high != 0))
    out = Box(bind(low), bind(high))  # truncation and widening are non-decreasing
    if jnp.issubdtype(new, jnp.integer):  # out of range (or NaN): wraps or saturates
      ok = _fits(low, high, new)
      full = _full(out.low, new)
      out = Box(jnp.where(ok, out.low, full.low), jnp.where(ok, out.high, full.high))
    return out
  if name in _COMPARE:
    return Box(*_compare_checked(name, *args))
  dtype = jnp.result_type(*(_ends(a)[0] for a in args))
  logical = name in ('and', 'or') and dtype == jnp.bool_
  if name in _MONOTONE or logical:
    lows, highs = [_ends(a)[0] for a in args], [_ends(a)[1] for a in args]
    out = Box(bind(*lows), bind(*highs))
    if name in ('add', 'add_any'):
      f32 = [jnp.asarray(v, jnp.float32) for v in (*lows, *highs)]
      return _checked(f32[0] + f32[1], f32[2] + f32[3], out, dtype)
    return out
  if name == 'not' and dtype == jnp.bool_:
    low, high = _ends(args[0])
    return Box(~high, ~low)
  if name in ('sub', 'neg'):
    (la, ha), (lb, hb) = _ends(args[0]), _ends(args[1] if name == 'sub' else args[0])
    f = lambda v: jnp.asarray(v, jnp.float32)  # noqa: E731
    if name == 'sub':
      return _checked(f(la) - f(hb), f(ha) - f(lb), Box(bind(la, hb), bind(ha, lb)), dtype)
    return _checked(-f(ha), -f(la), Box(-ha, -la), dtype)
  if name == 'mul':
    (la, ha), (lb, hb) = _ends(args[0]), _ends(args[1])
    cands = jnp.stack(jnp.broadcast_arrays(la * lb, la * hb, ha * lb, ha * hb))
    f = [jnp.asarray(v, jnp.float32) for v in (la, ha, lb, hb)]
    real = jnp.stack(jnp.broadcast_arrays(f[0] * f[2], f[0] * f[3], f[1] * f[2], f[1] * f[3]))
    return _checked(real.min(0), real.max(0), Box(cands.min(0), cands.max(0)), dtype)
  integer = jnp.issubdtype(dtype, jnp.integer)
  if name in ('div', 'rem') and integer and not is_box(args[1]):
    k, (low, high) = _concrete(args[1]), _ends(args[0])
    if k is not None and (k > 0).all():
      if name == 'div':  # non-decreasing for a positive divisor (truncating or not)
        return Box(bind(low, args[1]), bind(high, args[1]))
      # One period and no sign change: the remainders' ends; else the whole
      # range of a remainder (its sign follows the dividend's).
      same = (low >= 0) & (jnp.floor_divide(low, k) == jnp.floor_divide(high, k))
      span = jnp.where(low >= 0, 0, 1 - k).astype(low.dtype)
      top = jnp.asarray(k - 1, low.dtype)
      return Box(
        jnp.where(same, bind(low, args[1]), span), jnp.where(same, bind(high, args[1]), top)
      )
  if name == 'select_n':
    return _select(args[0], args[1:])
  if name in ('concatenate', 'stack'):
    return Box(bind(*(_ends(a)[0] for a in args)), bind(*(_ends(a)[1] for a in args)))
  if name in _STRUCTURAL and is_box(args[0]) and not any(is_box(a) for a in args[1:]):
    if name == 'reduce_sum':
      f32 = lambda v: prim.bind(jnp.asarray(v, jnp.float32), *args[1:], **params)  # noqa: E731
      exact = Box(bind(args[0].low, *args[1:]), bind(args[0].high, *args[1:]))
      return _checked(f32(args[0].low), f32(args[0].high), exact, dtype)
    return Box(bind(args[0].low, *args[1:]), bind(args[0].high, *args[1:]))
  if name == 'gather' and is_box(args[1]):
    return _gather(prim, params, args[0], args[1])
  raise Unsupported(f'no interval rule for `{name}` on integer or boolean values')
