"""The attack engine against hand-made models with known answers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack
from jaxpix.attack import engine, forward, loop, perturb, search

import toy_models as toy


def _changed_pixels(a, b):
  """Sorted (row, col) pairs where images [H, W, C] differ."""
  return sorted(map(tuple, np.argwhere(np.any(a != b, axis=-1)).tolist()))


def _assert_valid_uint8(x):
  assert np.all((x >= 0) & (x <= 1))
  np.testing.assert_array_equal(np.round(x * 255) / 255, x)


# --------------------------------------------------------------------------- #
# Known answers
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize('strategy', ['su', 'keras'])
@pytest.mark.slow
def test_de_finds_the_single_fooling_position_and_colour(strategy):
  h = w = 12
  pos, colour = (7, 2), (0.9, 0.1, 0.8)
  predict = toy.needle(h, w, pos, colour)
  x = toy.gray_images(4, h, w)
  y = np.zeros(4, np.int32)
  popsize, maxiter = 100, 40
  r = attack.one_pixel(
    predict, x, y, key=jax.random.key(1), popsize=popsize, maxiter=maxiter, strategy=strategy
  )
  assert r.success.all()
  np.testing.assert_array_equal(r.positions[:, 0], np.tile(pos, (4, 1)))
  dist = np.linalg.norm(r.colors[:, 0] / 255 - np.array(colour), axis=1)
  assert np.all(dist < predict.radius)
  # The reported images really fool the model and carry the reported fields.
  logits = np.asarray(predict(jnp.asarray(r.adv_images)))
  np.testing.assert_array_equal(logits.argmax(1), r.adv_label)
  np.testing.assert_array_equal(r.adv_label, 1)
  probs = np.asarray(jax.nn.softmax(logits))
  np.testing.assert_allclose(r.true_prob, probs[:, 0], rtol=1e-5)
  np.testing.assert_allclose(r.adv_prob, probs[:, 1], rtol=1e-5)
  assert np.all(r.queries <= popsize * (maxiter + 1))
  assert np.all(r.queries % popsize == 0)
  np.testing.assert_array_equal(r.clean_label, 0)


def test_extreme_colour_finds_corner_trigger_exactly():
  h, w = 8, 6
  pos, corner = (5, 4), (255, 0, 255)
  predict = toy.exact_corner(pos, corner)
  x = toy.cifar_like(3, h, w)
  x[:, pos[0], pos[1]] = 128 / 255  # make sure the clean image is not the trigger
  chunk = 16
  r = attack.extreme_colour(predict, x, np.zeros(3, np.int32), chunk=chunk)
  assert r.success.all()
  np.testing.assert_array_equal(r.positions[:, 0], np.tile(pos, (3, 1)))
  np.testing.assert_array_equal(r.colors[:, 0], np.tile(corner, (3, 1)))
  # Candidate index of the trigger: position-major, corner k has channel c = bit c.
  idx = (pos[0] * w + pos[1]) * 8 + 5
  np.testing.assert_array_equal(r.queries, (idx // chunk + 1) * chunk)
  for i in range(3):
    assert _changed_pixels(r.adv_images[i], x[i]) == [pos]


def test_extreme_colour_full_sweep_is_a_certificate():
  h, w = 4, 5
  x = toy.cifar_like(2, h, w)
  # 4 * 5 * 8 = 160 candidates; chunk 64 leaves a padded last step of 32.
  r = attack.extreme_colour(
    toy.never_fooled(), x, np.zeros(2, np.int32), early_stop=False, chunk=64
  )
  assert not r.success.any()
  np.testing.assert_array_equal(r.queries, 160)
  # Without early stop the trigger is still found, after the whole sweep.
  r = attack.extreme_colour(
    toy.exact_corner((3, 1), (0, 255, 0)), x, np.zeros(2, np.int32), early_stop=False, chunk=64
  )
  assert r.success.all()
  np.testing.assert_array_equal(r.queries, 160)
  np.testing.assert_array_equal(r.colors[:, 0], [[0, 255, 0]] * 2)


# --------------------------------------------------------------------------- #
# Images the model already gets wrong
# --------------------------------------------------------------------------- #


def test_images_already_misclassified_are_not_attacked():
  # Gray is class 8 of corner_classes: images 1 and 4, labelled otherwise, are
  # wrong before any change. Count the images every forward pass sees: the
  # clean pass, then only the populations of the three attacked images.
  model = toy.corner_classes()
  seen = []

  def predict(images):
    jax.debug.callback(lambda n: seen.append(int(n)), images.shape[0])
    return model(images)

  x = toy.gray_images(5, 6, 6)
  y = np.array([8, 3, 8, 8, 0], np.int32)
  wrong = np.array([False, True, False, False, True])
  reports = []
  r = attack.one_pixel(
    predict, x, y, key=jax.random.key(2), popsize=40, maxiter=30, batch=40, progress=reports.append
  )
  np.testing.assert_array_equal(r.misclassified, wrong)
  np.testing.assert_array_equal(r.success, ~wrong)  # every image attacked is fooled
  np.testing.assert_array_equal(r.queries[wrong], 0)
  assert np.all(r.queries[~wrong] > 0) and np.all(r.queries % 40 == 0)
  assert seen[0] == 5 and sum(seen[1:]) == r.queries.sum()  # no pass for images 1 and 4
  assert r.success_rate == 1.0 and r.success.mean() == pytest.approx(0.6)
  # An image not attacked is reported as it is: unchanged, the model's outputs on it.
  np.testing.assert_array_equal(r.adv_images[wrong], x[wrong])
  np.testing.assert_array_equal(r.adv_label[wrong], 8)
  np.testing.assert_allclose(r.true_prob[wrong], r.clean_true_prob[wrong])
  np.testing.assert_allclose(r.fitness[wrong], r.true_prob[wrong])
  np.testing.assert_array_equal(r.positions[wrong], 0)
  np.testing.assert_array_equal(r.colors[wrong], 128)  # pixel (0, 0) keeps its own colour
  # Progress: the two first, in one report, then the others, each once.
  np.testing.assert_array_equal(reports[0]['gidx'], [1, 4])
  assert reports[0]['misclassified'].all() and not reports[0]['queries'].any()
  rest = np.concatenate([f['gidx'] for f in reports[1:]])
  np.testing.assert_array_equal(np.sort(rest), [0, 2, 3])
  assert not np.concatenate([f['misclassified'] for f in reports[1:]]).any()


@pytest.mark.parametrize('run', ['extreme_colour', 'gradient_ranked'])
def test_misclassified_images_in_the_sweeps_untargeted_and_targeted(run):
  # Two classes: 0 unless pixel (1, 2) is magenta. Images 1 and 3 are
  # labelled 1: the model gets them wrong before any change.
  predict = toy.exact_corner((1, 2), (255, 0, 255))
  x = toy.cifar_like(4, 4, 5)
  x[:, 1, 2] = 128 / 255
  y = np.array([0, 1, 0, 1], np.int32)
  wrong = y == 1
  attack_fn = getattr(attack, run)
  r = attack_fn(predict, x, y, key=jax.random.key(0), chunk=16)
  np.testing.assert_array_equal(r.misclassified, wrong)
  np.testing.assert_array_equal(r.success, ~wrong)
  assert np.all(r.queries[~wrong] > 0) and not r.queries[wrong].any()
  assert r.success_rate == 1.0
  # Targeted: images 1 and 3 are already classified as their target (0), but
  # they are misclassified, so they are left out all the same.
  t = 1 - y
  rt = attack_fn(predict, x, y, targets=t, chunk=16)
  np.testing.assert_array_equal(rt.misclassified, wrong)
  np.testing.assert_array_equal(rt.success, ~wrong)
  np.testing.assert_array_equal(rt.adv_label[~wrong], 1)
  assert not rt.queries[wrong].any() and rt.success_rate == 1.0
  np.testing.assert_allclose(rt.fitness[wrong], 1 - rt.target_prob[wrong])
  # Nothing to attack: no search runs at all.
  none = attack_fn(predict, x, np.ones(4, np.int32), chunk=16)
  assert none.misclassified.all() and not none.queries.any() and not none.success.any()
  assert np.isnan(none.success_rate)
  np.testing.assert_array_equal(none.adv_images, x)


def test_a_result_rebuilt_without_the_flag_derives_it():
  r = attack.AttackResult(
    *([np.zeros(3)] * 10),
    labels=np.array([0, 1, 2]),
    targets=None,
    clean_label=np.array([0, 2, 2]),
    clean_true_prob=np.zeros(3),
  )
  np.testing.assert_array_equal(r.misclassified, [False, True, False])


# --------------------------------------------------------------------------- #
# Budget and query accounting
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize('strategy', ['su', 'keras'])
@pytest.mark.slow
def test_never_fooled_spends_exactly_the_budget(strategy):
  x = toy.cifar_like(5, 6, 6)
  r = attack.one_pixel(
    toy.never_fooled(),
    x,
    np.zeros(5, np.int32),
    key=jax.random.key(0),
    popsize=8,
    maxiter=7,
    strategy=strategy,
    slots=2,
  )
  assert not r.success.any()
  np.testing.assert_array_equal(r.queries, 8 * (7 + 1))


@pytest.mark.slow
def test_budget_bound_and_early_stop_on_a_real_classifier():
  h = w = 8
  x = toy.cifar_like(12, h, w, seed=3)
  predict = toy.linear(h, w)
  y = np.asarray(predict(jnp.asarray(x))).argmax(1).astype(np.int32)
  popsize, maxiter = 20, 15
  r = attack.one_pixel(
    predict, x, y, key=jax.random.key(0), popsize=popsize, maxiter=maxiter, slots=3
  )
  assert np.all(r.queries <= popsize * (maxiter + 1))
  assert np.all(r.queries % popsize == 0)
  # Early stop: a fooled image spent less than the whole budget unless it was
  # fooled in the very last generation; an unfooled one spent all of it.
  np.testing.assert_array_equal(r.queries[~r.success], popsize * (maxiter + 1))
  assert 0 < r.success.sum() < 12  # the test is informative both ways
  np.testing.assert_array_equal(r.adv_label != y, r.success)


# --------------------------------------------------------------------------- #
# Determinism
# --------------------------------------------------------------------------- #


def _attack_linear(x, y, predict, **kw):
  return attack.one_pixel(predict, x, y, key=jax.random.key(7), popsize=12, maxiter=6, **kw)


def _assert_same(a, b):
  for f in ('success', 'queries', 'positions', 'colors', 'adv_label', 'adv_images'):
    np.testing.assert_array_equal(getattr(a, f), getattr(b, f), err_msg=f)
  np.testing.assert_allclose(a.fitness, b.fitness, rtol=1e-6)


@pytest.mark.slow
def test_same_result_whatever_the_slot_count_and_split():
  h = w = 6
  x = toy.cifar_like(7, h, w, seed=5)
  predict = toy.linear(h, w, seed=2)
  y = np.asarray(predict(jnp.asarray(x))).argmax(1).astype(np.int32)
  one = _attack_linear(x, y, predict, slots=1, devices=jax.devices()[:1])
  three = _attack_linear(x, y, predict, slots=3, devices=jax.devices()[:1])
  _assert_same(one, three)
  assert 0 < one.success.sum() < 7 and len(set(one.queries)) > 1  # slots really rotate
  # Attacking a piece of the data set with its global indices gives its rows.
  part = _attack_linear(
    x[2:5], y[2:5], predict, slots=2, devices=jax.devices()[:1], indices=np.arange(2, 5)
  )
  for f in ('success', 'queries', 'positions', 'colors'):
    np.testing.assert_array_equal(getattr(part, f), getattr(one, f)[2:5])


@pytest.mark.slow
def test_same_result_whatever_the_slot_count_with_a_cnn():
  # A real convolutional network: XLA's CPU convolutions give an example the
  # same logits whatever the batch size and its other examples, so neither
  # the slot count nor the images per forward pass change any result.
  from jaxpix import models as zoo

  predict = zoo.as_predict(zoo.create('cnn6', num_classes=10, width=0.25, seed=1))
  x = toy.cifar_like(6, 16, 16, seed=2)
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  kw = dict(key=jax.random.key(3), popsize=16, maxiter=8, devices=jax.devices()[:1])
  one = attack.one_pixel(predict, x, y, slots=1, **kw)
  four = attack.one_pixel(predict, x, y, slots=4, **kw)
  _assert_same(one, four)
  assert len(set(one.queries)) > 1  # images finish at different times: slots rotate
  # Four slots, forward passes of one slot (16 images) or three (48).
  _assert_same(one, attack.one_pixel(predict, x, y, slots=4, batch=16, **kw))
  _assert_same(one, attack.one_pixel(predict, x, y, slots=4, batch=48, **kw))


@pytest.mark.slow
def test_only_images_in_flight_are_evaluated_and_the_tail_compiles_nothing():
  # Count the images each forward pass sees: a run whose images finish at
  # different times must evaluate just the candidates of those in flight, in
  # passes of one shape, and compile its loop once.

  h = w = 6
  x = toy.cifar_like(7, h, w, seed=5)
  model = toy.linear(h, w, seed=2)
  y = np.asarray(model(jnp.asarray(x))).argmax(1).astype(np.int32)
  seen = []

  def predict(images):
    jax.debug.callback(lambda n: seen.append(int(n)), images.shape[0])
    return model(images)

  loop._compiled.cache_clear()
  r = _attack_linear(x, y, predict, slots=4, batch=12, devices=jax.devices()[:1])
  assert loop._compiled.cache_info().misses == 1
  assert 0 < r.success.sum() < 7 and len(set(r.queries)) > 1
  assert seen[0] == 7  # the clean pass
  passes = seen[1:]
  assert set(passes) == {12}  # one slot's population per pass, always
  # One pass per image in flight per step: exactly the queries, nothing
  # spent on finished images or empty slots in the tail.
  assert sum(passes) == r.queries.sum()
  # All four slots per pass: the same result, the tail evaluating empty slots.
  seen.clear()
  r4 = _attack_linear(x, y, predict, slots=4, batch=48, devices=jax.devices()[:1])
  _assert_same(r, r4)
  assert set(seen[1:]) == {48} and sum(seen[1:]) > r.queries.sum()


@pytest.mark.slow
def test_progress_reports_every_image_once_as_it_finishes():
  h = w = 6
  x = toy.cifar_like(9, h, w, seed=8)
  predict = toy.linear(h, w, seed=1)
  y = np.asarray(predict(jnp.asarray(x))).argmax(1).astype(np.int32)
  seen = []
  r = _attack_linear(
    x,
    y,
    predict,
    slots=2,
    indices=np.arange(100, 109),
    steps_per_call=2,
    progress=lambda fin: seen.append(fin),
  )
  assert len(seen) > 1  # reported in pieces, not all at the end
  gidx = np.concatenate([f['gidx'] for f in seen])
  np.testing.assert_array_equal(np.sort(gidx), np.arange(100, 109))
  queries = dict(
    zip(gidx.tolist(), np.concatenate([f['queries'] for f in seen]).tolist(), strict=True)
  )
  np.testing.assert_array_equal([queries[i] for i in range(100, 109)], r.queries)
  # The bar variant runs the same attack.
  _assert_same(
    r, _attack_linear(x, y, predict, slots=2, indices=np.arange(100, 109), progress=True)
  )


@pytest.mark.slow
def test_same_result_on_one_and_four_devices():
  assert jax.device_count() >= 4, 'conftest sets four fake CPU devices'
  h = w = 6
  x = toy.cifar_like(10, h, w, seed=6)
  predict = toy.linear(h, w, seed=4)
  y = np.asarray(predict(jnp.asarray(x))).argmax(1).astype(np.int32)
  one = _attack_linear(x, y, predict, slots=2, devices=jax.devices()[:1])
  four = _attack_linear(x, y, predict, slots=2, devices=jax.devices()[:4])
  _assert_same(one, four)
  e1 = attack.extreme_colour(predict, x, y, chunk=48, devices=jax.devices()[:1])
  e4 = attack.extreme_colour(predict, x, y, chunk=48, devices=jax.devices()[:4])
  _assert_same(e1, e4)


# --------------------------------------------------------------------------- #
# Targeted, k pixels, perturbation models, fitness options
# --------------------------------------------------------------------------- #


def test_targeted_hits_the_target():
  predict = toy.corner_classes()
  x = toy.gray_images(6, 8, 8)
  y = np.full(6, 8, np.int32)  # gray is class 8
  targets = np.array([0, 1, 3, 5, 6, 7], np.int32)
  r = attack.one_pixel(
    predict, x, y, targets=targets, key=jax.random.key(2), popsize=40, maxiter=30
  )
  assert r.success.all()
  np.testing.assert_array_equal(r.adv_label, targets)
  assert np.all(r.target_prob > 0.5)
  np.testing.assert_array_equal(np.asarray(predict(jnp.asarray(r.adv_images))).argmax(1), targets)


@pytest.mark.parametrize('mode', ['replace', 'add'])
@pytest.mark.slow
def test_k_pixels_change_only_the_reported_pixels(mode):
  h = w = 8
  k = 3
  x = toy.cifar_like(6, h, w, seed=9)
  predict = toy.never_fooled()  # spend the whole budget: many candidates tried
  r = attack.one_pixel(
    predict,
    x,
    np.zeros(6, np.int32),
    key=jax.random.key(3),
    pixels=k,
    popsize=10,
    maxiter=3,
    mode=mode,
  )
  assert r.positions.shape == (6, k, 2) and r.colors.shape == (6, k, 3)
  _assert_valid_uint8(r.adv_images)
  lo = 0 if mode == 'replace' else -255
  assert r.colors.min() >= lo and r.colors.max() <= 255
  for i in range(6):
    changed = _changed_pixels(r.adv_images[i], x[i])
    assert len(changed) <= k
    assert set(changed) <= set(map(tuple, r.positions[i].tolist()))
    # Rebuild the image from the reported pixels (applied in order).
    want = np.round(x[i] * 255).astype(np.int64)
    for (row, col), v in zip(r.positions[i], r.colors[i], strict=True):
      want[row, col] = v if mode == 'replace' else np.clip(want[row, col] + v, 0, 255)
    np.testing.assert_array_equal(np.round(r.adv_images[i] * 255), want)


def test_add_mode_fools_with_a_delta():
  predict = toy.corner_classes()
  x = toy.gray_images(3, 6, 6)
  r = attack.one_pixel(
    predict, x, np.full(3, 8, np.int32), key=jax.random.key(4), popsize=30, maxiter=20, mode='add'
  )
  assert r.success.all()
  assert np.any(np.abs(r.colors) > 100)  # gray is far from every corner


def test_l2_penalised_fitness_value():
  predict = toy.corner_classes()
  x = toy.gray_images(3, 6, 6)
  lam = 0.05
  r = attack.one_pixel(
    predict,
    x,
    np.full(3, 8, np.int32),
    key=jax.random.key(5),
    popsize=20,
    maxiter=5,
    l2_penalty=lam,
  )
  probs = np.asarray(jax.nn.softmax(predict(jnp.asarray(r.adv_images))))
  d = np.sqrt(((r.adv_images - x) ** 2).sum(axis=(1, 2, 3)))
  np.testing.assert_allclose(r.fitness, probs[:, 8] + lam * d, rtol=1e-5)
  np.testing.assert_allclose(r.true_prob, probs[:, 8], rtol=1e-5)


@pytest.mark.slow
def test_stop_threshold_keeps_searching_until_confident():
  predict = toy.corner_classes()
  x = toy.gray_images(4, 6, 6)
  y = np.full(4, 8, np.int32)
  plain = attack.one_pixel(predict, x, y, key=jax.random.key(6), popsize=20, maxiter=30)
  strict = attack.one_pixel(
    predict, x, y, key=jax.random.key(6), popsize=20, maxiter=30, stop_threshold=0.01
  )
  assert plain.success.all() and strict.success.all()
  # The model's floor is 1 / (1 + e^5) = 0.0067, so 1% is reachable but not easily.
  assert np.all(strict.true_prob <= 0.01) and np.any(plain.true_prob > 0.01)
  assert np.all(strict.queries >= plain.queries)


# --------------------------------------------------------------------------- #
# The fixed-budget core inside a caller's jit
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_fixed_budget_runs_inside_jit_and_differentiates_after():
  h = w = 8
  pos, colour = (2, 6), (0.1, 0.9, 0.2)
  needle = toy.needle(h, w, pos, colour)
  cfg = attack.DEConfig(popsize=64, maxiter=25)

  @jax.jit
  def train_like_step(scale, images, labels, key):
    predict = lambda im: scale * needle(im)
    res = attack.de_fixed_budget(predict, images, labels, key, de=cfg)
    loss = lambda s: -jnp.mean(jax.nn.log_softmax(s * needle(res.adv_images))[:, 0])
    return res, jax.grad(loss)(scale)

  x = toy.gray_images(4, h, w)
  res, g = train_like_step(1.0, x, jnp.zeros(4, jnp.int32), jax.random.key(0))
  assert bool(res.success.all())
  assert np.isfinite(float(g)) and float(g) != 0
  for i in range(4):
    assert _changed_pixels(np.asarray(res.adv_images[i]), x[i]) == [pos]
  # Same images and key as the batched attack: the same adversarial images.
  full = attack.one_pixel(
    needle, x, np.zeros(4, np.int32), key=jax.random.key(0), popsize=64, maxiter=25
  )
  np.testing.assert_array_equal(full.adv_images, np.asarray(res.adv_images))
  np.testing.assert_array_equal(full.queries, np.asarray(res.queries))
  assert np.all(full.queries < 64 * 26)  # they stopped early, in both


# --------------------------------------------------------------------------- #
# DE internals
# --------------------------------------------------------------------------- #


def test_mutation_indices_are_distinct_exclude_self_and_uniform():
  p, draws = 7, 3000
  keys = jax.random.split(jax.random.key(0), draws)
  r = np.asarray(jax.vmap(lambda k: search._distinct_others(k, p, 3))(keys))  # [draws, P, 3]
  members = np.broadcast_to(np.arange(p)[None, :, None], (draws, p, 1))
  rows = np.concatenate([members, r], axis=2).reshape(-1, 4)
  assert all(len(set(row)) == 4 for row in rows.tolist())
  # Each of r1, r2, r3 of every member is uniform over the 6 others: a
  # chi-square over all 7 x 3 x 6 cells (500 expected per cell).
  chi2 = 0.0
  for i in range(p):
    for j in range(3):
      counts = np.bincount(r[:, i, j], minlength=p)
      assert counts[i] == 0
      others = np.delete(counts, i)
      chi2 += ((others - draws / 6) ** 2 / (draws / 6)).sum()
  # 21 cells' worth of 5 degrees of freedom: 105 dof, 99.9th percentile ~ 157.
  assert chi2 < 157, chi2
  # And jointly uniform: the 6*5*4 = 120 ordered triples of member 0 (25
  # expected each); 119 dof, 99.9th percentile ~ 174.
  codes = (r[:, 0, 0] * p + r[:, 0, 1]) * p + r[:, 0, 2]
  counts = np.bincount(codes, minlength=p**3)
  seen = counts[counts > 0]
  assert len(seen) == 120
  assert ((seen - draws / 120) ** 2 / (draws / 120)).sum() < 174


def test_best_candidate_ranking():
  def rec(success, stop, fitness):
    n = len(fitness)
    return dict(
      vec=jnp.arange(n, dtype=jnp.float32)[None, :, None],
      fitness=jnp.array([fitness]),
      success=jnp.array([success]),
      stop=jnp.array([stop]),
      true_prob=jnp.array([fitness]),
      pred=jnp.zeros((1, n), jnp.int32),
      pred_prob=jnp.zeros((1, n)),
      target_prob=jnp.zeros((1, n)),
    )

  best = engine.empty_best(1, 1)
  # Stopping beats merely successful even at a higher (L2-penalised) fitness,
  # which beats unsuccessful even at a lower one.
  ev = rec([True, True, False], [True, False, False], [0.9, 0.5, 0.1])
  best = engine._merge_best(best, ev)
  assert float(best['vec'][0, 0]) == 0 and bool(best['stop'][0])
  # A later, lower-fitness but non-stopping candidate does not replace it...
  best = engine._merge_best(best, rec([True], [False], [0.01]))
  assert float(best['fitness'][0]) == pytest.approx(0.9)
  # ...a lower-fitness stopping one does.
  best = engine._merge_best(best, rec([True], [True], [0.2]))
  assert float(best['fitness'][0]) == pytest.approx(0.2)


def test_latin_hypercube_init_has_one_member_per_stratum():
  lo = np.array([0.0, 0.0, 0, 0, 0], np.float32)
  hi = np.array([32.0, 32.0, 255, 255, 255], np.float32)
  pop = np.asarray(
    search._init_population(jax.random.key(0), attack.KERAS, lo, hi, 1, 3, 'replace')
  )
  u = (pop - np.asarray(lo)) / np.asarray(hi - lo)
  for d in range(5):
    np.testing.assert_array_equal(np.sort(np.floor(u[:, d] * 400)), np.arange(400))


def test_su_init_colours_follow_the_paper():
  lo, hi = perturb.bounds(1, 32, 32, 3, 'replace')
  pop = np.asarray(
    search._init_population(
      jax.random.key(0), search.DEConfig(popsize=4000), lo, hi, 1, 3, 'replace'
    )
  )
  col = pop[:, 2:]
  assert col.min() >= 0 and col.max() <= 255
  # N(128, 127) clipped to [0, 255]: P(clip at 0) = P(Z < -128/127) ~ 15.7%.
  np.testing.assert_allclose(np.mean(col == 0), 0.157, atol=0.02)
  np.testing.assert_allclose(np.median(col), 128, atol=6)
  assert abs(pop[:, 0].mean() - 16) < 0.6 and pop[:, :2].max() < 32


# --------------------------------------------------------------------------- #
# Host-side helpers
# --------------------------------------------------------------------------- #


def test_batched_probs_is_softmax_of_predict_in_batches():
  predict = toy.linear(5, 4, k=6)
  x = toy.cifar_like(7, 5, 4)  # 7 = 3 + 3 + 1: a ragged last batch
  probs = attack.batched_probs(predict, x, batch=3)
  assert probs.shape == (7, 6) and probs.dtype == np.float32
  want = np.asarray(jax.nn.softmax(predict(jnp.asarray(x)), axis=-1))
  np.testing.assert_allclose(probs, want, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(probs.sum(-1), 1, rtol=1e-5)


@pytest.mark.parametrize('mode', ['replace', 'add'])
def test_apply_candidates_matches_apply_vectors_per_image(mode):
  h, w, c = 5, 4, 3
  x = toy.cifar_like(7, h, w)
  lo, hi = perturb.bounds(2, h, w, c, mode)
  u = np.random.default_rng(1).uniform(size=(7, lo.shape[0])).astype(np.float32)
  vecs = lo + u * (hi - lo - 1e-3)  # [N, D], two pixels per image
  adv = attack.apply_candidates(x, vecs, mode, batch=3)
  assert adv.shape == x.shape and adv.dtype == np.float32
  for i in range(len(x)):
    want = np.asarray(perturb.apply_vectors(jnp.asarray(x[i]), jnp.asarray(vecs[i][None]), mode))
    np.testing.assert_array_equal(adv[i], want[0])
    assert len(_changed_pixels(adv[i], x[i])) <= 2
  assert np.mean(adv != x) > 0
  _assert_valid_uint8(adv)


@pytest.mark.slow  # several compilations: seconds, kept out of the quick loop
def test_params_are_an_argument_of_the_compiled_attack():
  # predict(params, images): the same function with two parameter sets.
  h = w = 6
  x = toy.cifar_like(5, h, w, seed=4)
  rng = np.random.default_rng(0)
  p1, p2 = ({'w': jnp.asarray(rng.normal(size=(h, w, 3, 4)).astype(np.float32))} for _ in range(2))

  traced = []

  def fn(params, images):  # a per-example reduction: batch-independent, bitwise
    traced.append(images.shape[0])
    return jnp.sum(images[..., None] * params['w'], axis=(1, 2, 3))

  y = np.asarray(fn(p1, jnp.asarray(x))).argmax(1).astype(np.int32)  # p1 gets all right
  kw = dict(key=jax.random.key(1), popsize=8, maxiter=3, devices=jax.devices()[:1])
  # The same numbers as the closure over the same parameters.
  a = attack.one_pixel(fn, x, y, params=p1, **kw)
  b = attack.one_pixel(lambda im: fn(p1, im), x, y, **kw)
  np.testing.assert_array_equal(a.success, b.success)
  np.testing.assert_array_equal(a.queries, b.queries)
  np.testing.assert_allclose(a.true_prob, b.true_prob, rtol=1e-6)
  # New parameters of the same shapes: nothing compiles again.
  before = (loop._compiled.cache_info().misses, forward._logits_fn.cache_info().misses)
  loop_traces = traced.count(40)  # passes of 5 slots x 8 candidates: the loop's
  c = attack.one_pixel(fn, x, y, params=p2, **kw)
  after = (loop._compiled.cache_info().misses, forward._logits_fn.cache_info().misses)
  assert after == before
  # Not even for another number of images attacked: p2 gets some wrong (not
  # attacked), and the loop's shapes are those of the five images.
  assert 0 < c.misclassified.sum() < 5 and not a.misclassified.any()
  assert traced.count(40) == loop_traces
  d = attack.one_pixel(lambda im: fn(p2, im), x, y, **kw)
  np.testing.assert_allclose(c.true_prob, d.true_prob, rtol=1e-6)
  assert not np.allclose(a.clean_true_prob, c.clean_true_prob)  # the parameters did change


@pytest.mark.slow  # 14 s; the quick loop keeps test_params_are_an_argument_of_the_compiled_attack
def test_two_checkpoints_of_one_architecture_share_the_compiled_attack():
  from jaxpix import models as zoo

  one, two = (zoo.create('cnn6', num_classes=10, width=0.125, seed=s) for s in (1, 2))
  (f1, p1), (f2, p2) = zoo.as_params_predict(one), zoo.as_params_predict(two)
  assert f1 is f2  # one function per architecture
  x = toy.cifar_like(3, 16, 16, seed=2)
  y = np.zeros(3, np.int32)
  kw = dict(key=jax.random.key(3), popsize=8, maxiter=1, devices=jax.devices()[:1])
  r1 = attack.one_pixel(f1, x, y, params=p1, **kw)
  misses = loop._compiled.cache_info().misses
  r2 = attack.one_pixel(f2, x, y, params=p2, **kw)
  assert loop._compiled.cache_info().misses == misses
  ref = attack.one_pixel(zoo.as_predict(two), x, y, **kw)
  np.testing.assert_allclose(r2.true_prob, ref.true_prob, rtol=1e-5)
  assert not np.allclose(r1.clean_true_prob, r2.clean_true_prob)
