"""Confidence intervals for the reported figures.

Two cases, and every table says which one it used:

- several seeds (independent training + evaluation runs): the mean over seeds
  and a Student t interval, ``mean +- t_{0.975, n-1} * s / sqrt(n)`` with ``s``
  the sample standard deviation; it covers the run-to-run variation the papers'
  "mean over 5 runs, 95% CI" describes.
- one seed, a rate over images (attack success, accuracy): the Wilson score
  interval over the images; it covers only the sampling of the images.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats as _st  # a dependency of jax itself

Z95 = 1.959963984540054  # the standard normal's 0.975 quantile


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
  """Wilson score interval of a binomial rate ``successes / n``."""
  if n <= 0:
    return (math.nan, math.nan)
  if not 0 <= successes <= n:
    raise ValueError(f'successes must lie in [0, n] = [0, {n}], got {successes}')
  p = successes / n
  denom = 1 + z * z / n
  centre = (p + z * z / (2 * n)) / denom
  half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
  # At 0 or n successes the bound is exactly 0 (1); avoid rounding residue.
  lo = 0.0 if successes == 0 else max(0.0, centre - half)
  hi = 1.0 if successes == n else min(1.0, centre + half)
  return (lo, hi)


def t_interval(values, confidence: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student t interval of the mean of ``values``. With a
  single value the interval is (nan, nan): there is no spread to estimate."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if not len(v):
    return (math.nan, math.nan, math.nan)
  mean = float(v.mean())
  if len(v) < 2:
    return (mean, math.nan, math.nan)
  half = float(_st.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
  return (mean, mean - half, mean + half)


def summarise(
  values, counts: list[tuple[int, int]] | None = None, bounds: tuple[float, float] | None = None
) -> dict:
  """A figure over seeds: ``{'mean', 'low', 'high', 'n', 'interval'}``.

  ``values`` holds one value per seed. With one seed and ``counts`` (its
  ``(successes, n)``), the interval is Wilson's over images instead of t's.
  ``bounds``: the range the figure cannot leave (a rate's [0, 1]); a t
  interval reaching past it is clipped there (and says so).
  """
  vals = [float(x) for x in values]
  if len(vals) == 1 and counts:
    k, n = counts[0]
    lo, hi = wilson(k, n)
    return dict(mean=vals[0], low=lo, high=hi, n=1, interval=f'Wilson 95% over {n} images')
  mean, lo, hi = t_interval(vals)
  n = int(np.isfinite(vals).sum())
  kind = f'Student t 95% over {n} seeds' if n > 1 else 'none (one value)'
  if bounds and math.isfinite(lo) and (lo < bounds[0] or hi > bounds[1]):
    lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    kind += f', clipped to [{bounds[0]:g}, {bounds[1]:g}]'
  return dict(mean=mean, low=lo, high=hi, n=n, interval=kind)


def fmt_percent(s: dict, digits: int = 1) -> str:
  """``'84.2% [81.9, 86.3]'`` (or just the mean when there is no interval)."""
  ok = lambda v: v is not None and math.isfinite(v)  # None: NaN read back from JSON
  if s is None or not ok(s.get('mean')):
    return 'n/a'
  m = f'{100 * s["mean"]:.{digits}f}%'
  if ok(s.get('low')) and ok(s.get('high')):
    m += f' [{100 * s["low"]:.{digits}f}, {100 * s["high"]:.{digits}f}]'
  return m


def mcnemar(a, b) -> dict:
  """Exact McNemar test of paired binary outcomes (e.g. robust or not, per
  image, for two defences on the same images): ``only_a`` and ``only_b``
  count the discordant pairs; ``p`` is the two-sided exact binomial p-value
  of ``only_a`` among them at 1/2 (1 when there are none)."""
  from scipy import stats as st

  a, b = np.asarray(a, bool), np.asarray(b, bool)
  if a.shape != b.shape:
    raise ValueError(f'paired outcomes must have the same shape, got {a.shape} and {b.shape}')
  only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
  n = only_a + only_b
  p = 1.0 if n == 0 else min(1.0, 2 * float(st.binom.cdf(min(only_a, only_b), n, 0.5)))
  return dict(only_a=only_a, only_b=only_b, n=int(a.size), p=p)
