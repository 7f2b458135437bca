"""attack.random_search: the black-box search, one pixel and k pixels, and the
engine's fill steps it runs on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack, models
from jaxpix.attack import blackbox, engine, forward, loop

import toy_models as toy

ONE_DEVICE = dict(devices=jax.devices()[:1])


def _small_cnn():
  return models.as_predict(models.create('cnn6', num_classes=10, width=0.25, seed=3))


@pytest.mark.slow  # compiles several attacks; the quick loop keeps the planted-corner test
def test_one_pixel_tries_every_corner_once_and_fools_what_the_sweep_fools():
  # With the whole budget (every corner of every pixel: 8 * 8 * 8) the search
  # is the exhaustive sweep in another order: the same images fooled.
  predict = _small_cnn()
  x = toy.cifar_like(12, 8, 8, seed=4)
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  full = attack.extreme_colour(predict, x, y, chunk=64)
  r = attack.random_search(predict, x, y, key=jax.random.key(0), **ONE_DEVICE)
  np.testing.assert_array_equal(r.success, full.success)
  assert 0 < full.success.sum() < 12  # informative both ways
  np.testing.assert_array_equal(r.queries[~r.success], 8 * 8 * 8)
  assert np.all(r.queries[r.success] <= 512) and np.all(r.queries >= 1)
  assert np.all(np.isin(r.colors, (0, 255)))
  out = np.asarray(jax.jit(predict)(jnp.asarray(r.adv_images))).argmax(1)
  np.testing.assert_array_equal(out != y, r.success)
  changed = np.any(r.adv_images != x, axis=-1).reshape(12, -1).sum(1)
  assert changed.max() <= 1
  # Steered by what it measures, it needs fewer queries than the raster sweep.
  assert r.queries[r.success].sum() < full.queries[full.success].sum()


@pytest.mark.slow  # compiles several attacks; the quick loop keeps the planted-corner test
def test_query_counts_are_exact_and_within_the_budget():
  x = toy.cifar_like(5, 6, 6, seed=1)
  y = np.zeros(5, np.int32)
  for pixels, budget in ((1, 77), (3, 130)):
    r = attack.random_search(
      toy.never_fooled(), x, y, key=jax.random.key(1), pixels=pixels, budget=budget
    )
    np.testing.assert_array_equal(r.queries, budget)
    assert not r.success.any()
  # One pixel: at most H * W * 2^C distinct candidates, then it stops.
  r = attack.random_search(toy.never_fooled(), x, y, key=jax.random.key(1), budget=10_000)
  np.testing.assert_array_equal(r.queries, 6 * 6 * 8)


POS, CORNER = (5, 4), (255, 0, 255)


def _planted():
  """The exact-corner toy on 3 gray 8 x 6 images, and the whole budget."""
  x, y = toy.gray_images(3, 8, 6), np.zeros(3, np.int32)
  return toy.exact_corner(POS, CORNER), x, y, dict(key=jax.random.key(2), budget=8 * 6 * 8)


def test_finds_the_planted_corner_and_is_reproducible():
  predict, x, y, kw = _planted()
  r = attack.random_search(predict, x, y, **kw)
  assert r.success.all()
  np.testing.assert_array_equal(r.positions[:, 0], [POS] * 3)
  np.testing.assert_array_equal(r.colors[:, 0], [CORNER] * 3)
  again = attack.random_search(predict, x, y, **kw)
  np.testing.assert_array_equal(again.queries, r.queries)


@pytest.mark.slow  # two more attacks compiled; the quick loop keeps the test above
def test_add_mode_and_targeted_reach_the_planted_corner():
  predict, x, y, kw = _planted()
  r = attack.random_search(predict, x, y, **kw)
  # 'add' reaches the same corners with deltas of +-255: the same images.
  add = attack.random_search(predict, x, y, mode='add', **kw)
  np.testing.assert_array_equal(add.adv_images, r.adv_images)
  np.testing.assert_array_equal(add.queries, r.queries)
  assert np.all(np.isin(add.colors, (-255, 255)))
  # Targeted: towards class 1, the same trigger.
  t = attack.random_search(predict, x, y, targets=np.ones(3, np.int32), **kw)
  assert t.success.all() and np.all(t.adv_label == 1)


def _white_count(n_white):
  """Class 1 wins when at least ``n_white`` pixels are exactly white: only a
  k >= n_white pixel attack can fool it, and its loss falls with each white
  pixel (a search has something to follow)."""

  def predict(x):
    white = jnp.all(x > 1 - 1e-6, axis=-1).reshape(x.shape[0], -1).sum(1).astype(jnp.float32)
    return jnp.stack([jnp.full_like(white, n_white - 0.5), white], axis=1)

  return predict


@pytest.mark.slow  # two attacks compiled per mode
@pytest.mark.parametrize('mode', ['replace', 'add'])
def test_k_pixels_fool_what_needs_k_and_change_at_most_k(mode):
  x = toy.gray_images(4, 6, 6)
  y = np.zeros(4, np.int32)
  predict = _white_count(3)
  r = attack.random_search(
    predict, x, y, key=jax.random.key(0), pixels=3, budget=3000, mode=mode, **ONE_DEVICE
  )
  assert r.success.all() and np.all(r.queries <= 3000)
  changed = np.any(r.adv_images != x, axis=-1).reshape(4, -1).sum(1)
  np.testing.assert_array_equal(changed, 3)
  assert np.all(np.isin(r.colors, (0, 255) if mode == 'replace' else (-255, 255)))
  # Two pixels cannot reach three white ones.
  two = attack.random_search(predict, x, y, key=jax.random.key(0), pixels=2, budget=200)
  assert not two.success.any()
  np.testing.assert_array_equal(two.queries, 200)


def test_moved_pixels_follow_sparse_rs_schedule():
  # Sparse-RS's p_selection (p_init 0.8) at its own budget of 10,000.
  q = jnp.array([0, 50, 51, 200, 201, 500, 1000, 2000, 4000, 6000, 8000, 8001, 9999])
  got = blackbox.moved_pixels(q, 10_000, 10)
  frac = np.array(
    [0.8, 0.4, 0.2, 0.2, 0.16, 0.16, 0.8 / 6, 0.1, 0.08, 0.8 / 12, 0.8 / 15, 0.04, 0.04]
  )
  np.testing.assert_array_equal(got, np.maximum(np.floor(frac * 10), 1))
  # Rescaled to another budget: the same fraction of it.
  np.testing.assert_array_equal(blackbox.moved_pixels(q * 2, 20_000, 10), got)


def test_new_pixels_are_distinct_outside_the_set_and_drawn_by_weight():
  taken = jnp.array([3, 0, 7], jnp.int32)
  # Equal weights: each free pixel equally often (Sparse-RS's uniform draw).
  draw = jax.jit(lambda k, lw: blackbox.fresh_pixels(k, taken, lw, 4))
  flat, heavy = jnp.zeros(10), jnp.zeros(10).at[5].set(3.0).at[0].set(9.0)
  counts, first = np.zeros(10), np.zeros(10)
  for i in range(2000):
    d = np.asarray(draw(jax.random.key(i), flat))
    assert len(set(d.tolist())) == 4 and not set(d.tolist()) & {0, 3, 7}
    counts[d] += 1
    first[np.asarray(draw(jax.random.key(i), heavy))[0]] += 1
  free = counts[[1, 2, 4, 5, 6, 8, 9]]
  assert np.all(np.abs(free / 2000 - 4 / 7) < 0.05)  # each free pixel drawn 4/7 of the time
  # Pixel 5 weighs e^3 against 1 for the six other free ones (pixel 0, the
  # heaviest, is taken): drawn first with probability e^3 / (e^3 + 6) = 0.77.
  assert abs(first[5] / 2000 - np.e**3 / (np.e**3 + 6)) < 0.03 and first[0] == 0


def test_corner_weights_grow_with_distance_and_skip_the_pixels_own_corner():
  colours = jnp.array([[0, 0, 0], [128, 128, 128], [255, 0, 255]], jnp.int32)
  lw = np.asarray(blackbox.corner_log_weights(colours, 2.0))
  # Corner j has bit i set when channel i is 255 (search.corners' order).
  assert lw[0, 0] == -np.inf and np.argmax(lw[0]) == 7
  np.testing.assert_allclose(lw[0, 7], 2.0 * np.sqrt(3.0), rtol=1e-6)
  np.testing.assert_allclose(lw[1], 2.0 * np.sqrt(3 * (127.5 / 255) ** 2), rtol=0.02)
  assert lw[2, 5] == -np.inf and np.argmax(lw[2]) == 2  # magenta: green is farthest


def test_widths_fill_whole_passes():
  act = jnp.array([True, False, True, True, False, True])
  w = np.asarray(engine.widths(act, 50, 10))  # 4 in flight share one pass of 10
  np.testing.assert_array_equal(w, [3, 0, 3, 2, 0, 2])
  w = np.asarray(engine.widths(act, 2, 10))  # capped at p per image
  np.testing.assert_array_equal(w, [2, 0, 2, 2, 0, 2])
  many = jnp.ones(15, bool)  # more in flight than a pass: two passes
  assert np.asarray(engine.widths(many, 4, 10)).sum() == 20
  assert np.asarray(engine.widths(jnp.zeros(3, bool), 4, 10)).sum() == 0


def test_packed_forward_scores_only_the_counted_candidates():
  predict = toy.linear(4, 4, k=5)
  rng = np.random.default_rng(0)
  images = jnp.asarray(toy.cifar_like(3, 4, 4))
  cands = jnp.asarray(
    np.concatenate([rng.uniform(0, 4, (3, 6, 2)), rng.integers(0, 256, (3, 6, 3))], -1),
    jnp.float32,
  )
  labels = jnp.array([0, 1, 2], jnp.int32)
  fit = engine.Fitness()
  full = engine.score_candidates(predict, images, cands, labels, labels, fit)
  n_valid = jnp.array([6, 0, 4], jnp.int32)
  active = jnp.array([True, True, True])
  packed = engine.score_candidates(predict, images, cands, labels, labels, fit, active, 4, n_valid)
  valid = np.arange(6)[None] < np.asarray(n_valid)[:, None]
  np.testing.assert_allclose(
    np.asarray(packed['fitness'])[valid], np.asarray(full['fitness'])[valid], rtol=1e-5
  )
  assert np.all(np.isinf(np.asarray(packed['fitness'])[~valid]))
  assert not np.asarray(packed['success'])[~valid].any()


@pytest.mark.slow  # compiles several attacks; the quick loop keeps the planted-corner test
def test_new_parameters_compile_nothing_and_bad_arguments_are_named():
  h = w = 6
  x = toy.cifar_like(5, h, w, seed=4)
  rng = np.random.default_rng(0)
  p1, p2 = ({'w': jnp.asarray(rng.normal(size=(h, w, 3, 4)).astype(np.float32))} for _ in range(2))

  def fn(params, images):
    return jnp.sum(images[..., None] * params['w'], axis=(1, 2, 3))

  y = np.asarray(fn(p1, jnp.asarray(x))).argmax(1).astype(np.int32)
  kw = dict(key=jax.random.key(1), budget=50, **ONE_DEVICE)
  a = attack.random_search(fn, x, y, params=p1, **kw)
  before = (loop._compiled.cache_info().misses, forward._logits_fn.cache_info().misses)
  attack.random_search(fn, x, y, params=p2, **kw)
  attack.random_search(fn, x, y, params=p2, **dict(kw, budget=70))  # the budget is data
  assert (loop._compiled.cache_info().misses, forward._logits_fn.cache_info().misses) == before
  b = attack.random_search(lambda im: fn(p1, im), x, y, **kw)
  np.testing.assert_array_equal(a.queries, b.queries)
  for bad, match in (
    (dict(budget=0), 'budget must be an int >= 1'),
    (dict(budget=True), 'budget must be an int >= 1'),
    (dict(pixels=0), 'pixels'),
    (dict(mode='swap'), 'mode'),
    (dict(popsize=3), "unexpected keyword argument 'popsize'"),
  ):
    with pytest.raises((ValueError, TypeError), match=match):
      attack.random_search(fn, x, y, params=p1, key=jax.random.key(0), **bad)


@pytest.mark.slow  # compiles several attacks; the quick loop keeps the planted-corner test
def test_runs_sharded_over_four_devices():
  assert jax.device_count() >= 4, 'conftest sets four fake CPU devices'
  predict = toy.exact_corner((2, 3), (0, 255, 0))
  x = toy.gray_images(8, 5, 5)
  r = attack.random_search(predict, x, np.zeros(8, np.int32), key=jax.random.key(0), budget=200)
  assert r.success.all() and np.all(r.queries <= 200)
  np.testing.assert_array_equal(r.positions[:, 0], [(2, 3)] * 8)
