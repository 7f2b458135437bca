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


def _top(dtype):
  if jnp.issubdtype(dtype, jnp.floating):
    return jnp.inf
  if dtype == jnp.bool_:
    return True
  return jnp.iinfo(dtype).max


def _select(pred, cases):
  """select_n: the hull of the cases the predicate's range can pick."""
  p_low, p_high = (jnp.asarray(e).astype(jnp.int32) for e in _ends(pred))
  ends = [_ends(c) for c in cases]
  dtype = jnp.result_type(*(e[0] for e in ends))
  top = jnp.asarray(_top(dtype), dtype)
  low, high = top, ~top if dtype == jnp.bool_ else -top
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
  table, n = jnp.asarray(table), table.shape[0]
  low, high = (jnp.clip(e[..., 0], 0, n - 1) for e in (idx.low, idx.high))
  fill = 'FILL' in str(params['mode'])
  known = _concrete(table)  # a constant table (the levels of a bit depth): its order is known now
  steps = None if known is None else np.diff(known)
  if steps is not None and (steps >= 0).all():
    out_low, out_high = table[low], table[high]
  elif steps is not None and (steps <= 0).all():
    out_low, out_high = table[high], table[low]
  else:
    r = jnp.arange(n)
    inside = (r >= low[..., None]) & (r <= high[..., None])
    top = jnp.asarray(_top(table.dtype), table.dtype)
    out_low = jnp.where(inside, table, top).min(-1)
    out_high = jnp.where(inside, table, -top).max(-1)
  if fill:  # out-of-range indices give the fill value (NaN for floats: never certified)
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


def _dtype(a):
  return jnp.result_type(_ends(a)[0])


def apply(prim, params, args) -> Box:
  """The bounds of ``prim(*args)`` where each argument is a constant or a
  :class:`Box` (float bounds passed as their interval). Raises
  :class:`Unsupported` for an operation without a rule here."""
  name = prim.name
  bind = lambda *vs: prim.bind(*vs, **params)  # noqa: E731
  if name == 'convert_element_type':
    (low, high), new = _ends(args[0]), params['new_dtype']
    if new == jnp.bool_:  # nonzero: always when 0 is outside, maybe unless it is 0
      return Box((low > 0) | (high < 0), (low != 0) | (high != 0))
    return Box(bind(low), bind(high))  # truncation and widening are non-decreasing
  if name in _COMPARE:
    return Box(*_compare(name, *args))
  logical = name in ('and', 'or') and all(_dtype(a) == jnp.bool_ for a in args)
  if name in _MONOTONE or logical:
    return Box(bind(*(_ends(a)[0] for a in args)), bind(*(_ends(a)[1] for a in args)))
  if name == 'not' and _dtype(args[0]) == jnp.bool_:
    low, high = _ends(args[0])
    return Box(~high, ~low)
  if name in ('sub', 'neg'):
    (la, ha), (lb, hb) = _ends(args[0]), _ends(args[1] if name == 'sub' else args[0])
    return Box(bind(la, hb), bind(ha, lb)) if name == 'sub' else Box(-ha, -la)
  if name == 'mul':
    (la, ha), (lb, hb) = _ends(args[0]), _ends(args[1])
    cands = jnp.stack(jnp.broadcast_arrays(la * lb, la * hb, ha * lb, ha * hb))
    return Box(cands.min(0), cands.max(0))
  if name in ('div', 'rem') and not is_box(args[1]):
    k, (low, high) = _concrete(args[1]), _ends(args[0])
    if k is not None and (k > 0).all():
      if name == 'div':  # non-decreasing for a positive divisor (truncating or not)
        return Box(bind(low, args[1]), bind(high, args[1]))
      # One period and no sign change: the remainders' ends; else the whole range.
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
    return Box(bind(args[0].low, *args[1:]), bind(args[0].high, *args[1:]))
  if name == 'gather' and is_box(args[1]):
    return _gather(prim, params, args[0], args[1])
  raise Unsupported(f'no interval rule for `{name}` on integer or boolean values')
