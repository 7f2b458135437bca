"""Confidence intervals and summaries (jaxpix.stats), against values computed by hand."""

import math

import pytest

from jaxpix import stats


def test_wilson_interval_hand_values():
  # 8/10: p = .8, z^2 = 3.8415; centre = (.8 + .19207) / 1.38415 = .71674,
  # half = 1.96 sqrt(.016 + .0096036) / 1.38415 = .22658.
  lo, hi = stats.wilson(8, 10)
  assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
  # 0/10: [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415].
  assert stats.wilson(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-4))
  assert stats.wilson(10, 10) == (pytest.approx(0.72247, abs=1e-4), 1.0)
  assert all(math.isnan(v) for v in stats.wilson(0, 0))
  with pytest.raises(ValueError, match='successes'):
    stats.wilson(11, 10)


def test_t_interval_hand_values():
  # [1, 2, 3]: mean 2, s = 1, t_{.975, 2} = 4.302653 -> half 4.302653 / sqrt(3) = 2.48414.
  mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
  assert mean == 2 and lo == pytest.approx(2 - 2.48414, abs=1e-4)
  assert hi == pytest.approx(2 + 2.48414, abs=1e-4)
  # [.5, .7]: mean .6, s = .141421, t_{.975, 1} = 12.7062 -> half 1.27062.
  assert stats.t_interval([0.5, 0.7])[2] == pytest.approx(0.6 + 1.27062, abs=1e-4)
  m, lo, hi = stats.t_interval([0.25])
  assert m == 0.25 and math.isnan(lo) and math.isnan(hi)


def test_summarise_picks_the_interval_and_says_which():
  one = stats.summarise([0.8], [(8, 10)])
  assert one['interval'] == 'Wilson 95% over 10 images'
  assert (one['low'], one['high']) == pytest.approx(stats.wilson(8, 10))
  three = stats.summarise([1.0, 2.0, 3.0], [(1, 2)] * 3)
  assert three['interval'] == 'Student t 95% over 3 seeds' and three['mean'] == 2
  clipped = stats.summarise([0.9, 1.0], bounds=(0, 1))
  assert clipped['high'] == 1.0 and 'clipped' in clipped['interval']
  assert stats.fmt_percent(one) == '80.0% [49.0, 94.3]'


def test_mcnemar_exact_hand_values():
  # Discordant pairs: 2 robust only under a, 0 only under b -> p = 2 * (1/2)^2.
  t = stats.mcnemar([1, 1, 1, 0], [0, 0, 1, 0])
  assert (t['only_a'], t['only_b'], t['n']) == (2, 0, 4) and t['p'] == pytest.approx(0.5)
  # 8 vs 1 of 9 discordant: p = 2 * (1 + 9) / 512.
  a = [1] * 8 + [0] + [1] * 5
  b = [0] * 8 + [1] + [1] * 5
  assert stats.mcnemar(a, b)['p'] == pytest.approx(20 / 512)
  assert stats.mcnemar([1, 0], [1, 0])['p'] == 1.0  # no discordant pair
  with pytest.raises(ValueError, match='same shape'):
    stats.mcnemar([1, 0], [1])
