"""The first-order view: linearised gains, the first-order adversary (attack.first_order, in
adversaries.py) and the gradient-ranked search (attack.gradient_ranked)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack, models
from jaxpix.attack.adversaries import _spaced_top
from jaxpix.attack.linearised import linearised_gain

import toy_models as toy

R0, C0 = 5, 2


def _planted():
  """Class 1 wins only if pixel (R0, C0) turns magenta (255, 0, 255): the
  input gradient is non-zero there alone, and magenta is the only corner
  that flips the decision (50 * (1 - 0 + 1 - 1.5) = 25 > 0; any other corner
  gives at most 50 * (1 + 0 - 1.5) < 0)."""

  def predict(x):
    p = x[:, R0, C0]
    return jnp.stack([jnp.zeros(x.shape[0]), 50 * (p[:, 0] - p[:, 1] + p[:, 2] - 1.5)], axis=1)

  return predict


def test_finds_a_planted_one_pixel_trigger():
  x = jnp.asarray(toy.gray_images(3, 8, 8))
  res = jax.jit(lambda x, y: attack.first_order(_planted(), x, y, k=1))(x, jnp.zeros(3, int))
  assert bool(res.success.all())
  np.testing.assert_array_equal(np.asarray(res.positions), [[R0, C0]] * 3)
  np.testing.assert_array_equal(np.asarray(res.colors), [[255, 0, 255]] * 3)
  adv = np.array(res.adv_images)
  np.testing.assert_array_equal(adv[:, R0, C0], [[1.0, 0.0, 1.0]] * 3)
  # Nothing else changed.
  adv[:, R0, C0] = toy.GRAY
  np.testing.assert_array_equal(adv, np.asarray(x))
  assert np.all(np.asarray(res.true_prob) < 1e-6)


def _three_pixel_predict(outcomes):
  """Class 0 on gray images; changing pixel (0, i) to a corner with red 255
  adds ``outcomes[i]`` to the logits, one candidate per listed pixel."""
  base = jnp.array([2.0, 0.0, 0.0])
  table = jnp.asarray(outcomes, jnp.float32) - base  # [n, 3]

  def predict(x):
    on = (x[:, 0, : len(outcomes), 0] - toy.GRAY) / (1 - toy.GRAY)  # [B, n] in {0, 1}
    return base + on @ table

  return predict


@pytest.mark.parametrize(
  'outcomes, keep',
  [
    # Fooled (to class 2) with p_0 = 0.45 beats not fooled with p_0 = 0.35.
    ([[1.0, -5.0, 1.2], [0.1, 0.05, 0.0]], 0),
    # Among fooled ones, the lowest true-class probability (0.18 < 0.45).
    ([[1.0, -5.0, 1.2], [0.1, 0.05, 0.0], [0.5, -5.0, 2.0]], 2),
  ],
)
def test_keeps_a_fooling_candidate_first_then_the_lowest_true_probability(outcomes, keep):
  n = len(outcomes)
  x = jnp.asarray(toy.gray_images(1, 4, 4))
  g = np.zeros(x.shape, np.float32)
  g[0, 0, :n, 0] = np.arange(n, 0, -1)  # every listed pixel verified (k = n)
  res = attack.first_order(
    _three_pixel_predict(outcomes), x, jnp.zeros(1, int), k=n, grads=g, radius=0
  )
  np.testing.assert_array_equal(np.asarray(res.positions), [[0, keep]])
  p = np.asarray(jax.nn.softmax(jnp.asarray(outcomes[keep])))[0]
  assert float(res.true_prob[0]) == pytest.approx(p, rel=1e-5)
  assert bool(res.success[0]) == (np.argmax(outcomes[keep]) != 0)


def test_spaced_top_when_more_are_asked_than_fit():
  """2 x 2 pixels, radius 2: every pick pushes all the others, yet all four
  come back, each once, in score order within a tier."""
  score = jnp.array([[0.1, 0.4, 0.3, 0.2]])
  picks = np.asarray(_spaced_top(score, 2, 2, 4, 2))
  np.testing.assert_array_equal(picks, [[1, 2, 3, 0]])
  tiny = jnp.array([[1e-9, 2e-9, 3e-9, 4e-9, 0, 0, 0, 0, 0]])
  picks = np.asarray(_spaced_top(tiny, 3, 3, 9, 5))
  assert list(picks[0][:4]) == [3, 2, 1, 0] and sorted(picks[0]) == list(range(9))


def test_non_finite_logits_keep_the_images_own_candidate():
  x = jnp.asarray(toy.gray_images(2, 8, 8))
  res = attack.first_order(
    lambda im: _planted()(im) * jnp.nan, x, jnp.zeros(2, int), k=2, grads=jnp.ones(x.shape)
  )
  adv = np.asarray(res.adv_images)
  changed = np.any(adv != np.asarray(x), axis=-1).sum(axis=(1, 2))
  assert list(changed) == [1, 1]  # each its own one-pixel image, not another's


def test_linearised_gain_of_every_candidate():
  rng = np.random.default_rng(0)
  x = toy.cifar_like(2, 3, 4)
  g = rng.normal(size=x.shape).astype(np.float32)
  gain = np.asarray(linearised_gain(jnp.asarray(x), jnp.asarray(g)))
  assert gain.shape == (2, 12, 8)
  cube = ((np.arange(8)[:, None] >> np.arange(3)[None]) & 1).astype(np.float32)
  for b, p, j in [(0, 0, 0), (0, 5, 3), (1, 11, 7), (1, 7, 5)]:
    r, c = divmod(p, 4)
    want = np.sum(g[b, r, c] * (cube[j] - x[b, r, c]))
    assert gain[b, p, j] == pytest.approx(want, rel=1e-5, abs=1e-6)


def test_fixed_cost_and_the_given_gradient_is_used():
  """One backward pass (when no gradient is given) and exactly B * k
  candidate evaluations, whatever the images: the cost is fixed."""
  shapes = []
  base = toy.linear(8, 8)

  def predict(x):
    shapes.append(x.shape[0])
    return base(x)

  x = jnp.asarray(toy.cifar_like(5, 8, 8))
  y = jnp.arange(5)
  jax.jit(lambda x, y: attack.first_order(predict, x, y, k=3))(x, y)
  assert shapes == [5, 15]  # the gradient's forward, then the candidates
  shapes.clear()
  g = jnp.asarray(np.random.default_rng(1).normal(size=x.shape).astype(np.float32))
  res = jax.jit(lambda x, y, g: attack.first_order(predict, x, y, k=3, grads=g, radius=0))(x, y, g)
  assert shapes == [15]  # no gradient pass of its own
  # The given gradient decides the candidates: its largest-gain pixels.
  gain = np.asarray(linearised_gain(x, g)).max(-1)
  best3 = np.argsort(-gain, axis=1)[:, :3]
  flat = np.asarray(res.positions) @ np.array([8, 1])
  assert all(flat[b] in best3[b] for b in range(5))


def test_budget_goes_to_the_correctly_classified_images():
  """k = 2 on 4 images, 8 verifications: the 2 misclassified images get one
  each, the 2 correct ones three each (their three best pixels)."""
  seen = []
  base = toy.linear(8, 8)

  def predict(x):
    seen.append(np.asarray(x))
    return base(x)

  x = toy.cifar_like(4, 8, 8, seed=5)
  y = np.array([1, 2, 3, 4])
  logits = np.full((4, 10), -5.0, np.float32)
  logits[[0, 1, 2, 3], [0, 0, 3, 4]] = 5.0  # images 0, 1 wrong; 2, 3 right
  g = np.random.default_rng(2).normal(size=x.shape).astype(np.float32)
  attack.first_order(predict, jnp.asarray(x), jnp.asarray(y), k=2, grads=g, logits=logits, radius=0)
  (cands,) = seen
  assert len(cands) == 8
  owner = [int(np.argmin(np.abs(cands[i][None] - x).sum(axis=(1, 2, 3)))) for i in range(8)]
  assert sorted(owner) == [0, 1, 2, 2, 2, 3, 3, 3]
  gain = np.asarray(linearised_gain(jnp.asarray(x), jnp.asarray(g))).max(-1)
  for i in (2, 3):
    tried = {
      int(np.flatnonzero(np.any(c != x[i], -1).ravel())[0])
      for c, o in zip(cands, owner, strict=True)
      if o == i
    }
    assert tried == set(np.argsort(-gain[i])[:3].tolist())


def test_candidate_pixels_are_spaced():
  """The two best pixels are neighbours: radius 0 verifies both, radius 1
  the best and the next one at least 2 rows or columns away."""
  seen = []
  base = toy.linear(8, 8)

  def predict(x):
    seen.append(np.asarray(x))
    return base(x)

  x = toy.gray_images(1, 8, 8)
  g = np.zeros(x.shape, np.float32)
  g[0, 3, 3, 0], g[0, 3, 4, 0], g[0, 6, 1, 0] = 3.0, 2.0, 1.0  # gains 3, 2, 1 (x 127/255)

  def tried(radius):
    seen.clear()
    attack.first_order(predict, jnp.asarray(x), jnp.zeros(1, int), k=2, grads=g, radius=radius)
    return [tuple(np.argwhere(np.any(c != x[0], -1))[0]) for c in seen[0]]

  assert sorted(tried(0)) == [(3, 3), (3, 4)]
  assert sorted(tried(1)) == [(3, 3), (6, 1)]


@pytest.mark.parametrize('mode', ['replace', 'add'])
def test_one_pixel_on_the_8_bit_grid(mode):
  model = models.create('cnn6', num_classes=10, width=0.125)
  predict = models.as_predict(model)
  x = jnp.asarray(toy.cifar_like(6, 32, 32, seed=3))
  y = jnp.arange(6)
  res = jax.jit(lambda x, y: attack.first_order(predict, x, y, k=4, mode=mode))(x, y)
  adv = np.asarray(res.adv_images)
  changed = np.any(adv != np.asarray(x), axis=-1).sum(axis=(1, 2))
  assert np.all(changed == 1)  # a corner differs from any 8-bit colour but itself
  np.testing.assert_array_equal(np.round(adv * 255) / 255, adv)
  assert adv.min() >= 0 and adv.max() <= 1
  # The kept candidate is the one with the lowest true-class probability
  # among fooling ones, and its reported probability is the model's.
  p = np.asarray(jax.nn.softmax(predict(res.adv_images)))[np.arange(6), np.asarray(y)]
  np.testing.assert_allclose(np.asarray(res.true_prob), p, rtol=1e-5)


def test_bad_arguments():
  x = jnp.asarray(toy.gray_images(1, 8, 8))
  with pytest.raises(ValueError, match='k .* must be in \\[1, 64\\]'):
    attack.first_order(_planted(), x, jnp.zeros(1, int), k=65)
  with pytest.raises(ValueError, match='mode must be one of'):
    attack.first_order(_planted(), x, jnp.zeros(1, int), mode='xor')


# --------------------------------------------------------------------------- #
# The gradient-ranked extreme-colour search (attack.gradient_ranked)
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_gradient_ranked_fools_what_the_exhaustive_search_fools_sooner():
  # A small CNN (ReLU, so the linearisation is rough): with every candidate
  # the ranked order must fool exactly the images the exhaustive search
  # fools, and, ranked by the gradient, find them in fewer evaluations.
  predict = models.as_predict(models.create('cnn6', num_classes=10, width=0.25, seed=3))
  x = toy.cifar_like(12, 8, 8, seed=4)
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  full = attack.extreme_colour(predict, x, y, chunk=64)
  ranked = attack.gradient_ranked(predict, x, y, chunk=64)
  np.testing.assert_array_equal(ranked.success, full.success)
  assert 0 < full.success.sum() < 12  # informative both ways
  assert ranked.queries[ranked.success].sum() < full.queries[full.success].sum()
  np.testing.assert_array_equal(ranked.queries[~ranked.success], 8 * 8 * 8)
  # A fooled image's candidate is a real one-pixel corner change that fools.
  assert np.all(np.isin(ranked.colors, (0, 255)))
  out = np.asarray(jax.jit(predict)(jnp.asarray(ranked.adv_images))).argmax(1)
  np.testing.assert_array_equal(out != y, ranked.success)
  # A budget caps the queries; what it fools, the full order fools too.
  capped = attack.gradient_ranked(predict, x, y, chunk=64, budget=100)
  assert capped.queries.max() <= 100 and not np.any(capped.success & ~full.success)
  # Targeted: ranked by log p(target), the same images reach their targets.
  t = (y + 1) % 10
  ft = attack.extreme_colour(predict, x, y, targets=t, chunk=64)
  rt = attack.gradient_ranked(predict, x, y, targets=t, chunk=64)
  np.testing.assert_array_equal(rt.success, ft.success)
  assert np.all(rt.adv_label[rt.success] == t[rt.success])


@pytest.mark.slow
def test_gradient_ranked_puts_the_planted_trigger_first():
  # The planted trigger is the only candidate with a gradient worth ranking
  # first: found in the first chunk of 8.
  x = toy.gray_images(3, 8, 8)
  r = attack.gradient_ranked(_planted(), x, np.zeros(3, np.int32), chunk=8)
  assert r.success.all() and np.all(r.queries == 8)
  np.testing.assert_array_equal(r.positions[:, 0], [[R0, C0]] * 3)
  np.testing.assert_array_equal(r.colors[:, 0], [[255, 0, 255]] * 3)


def test_gradient_ranked_bad_budget():
  x = toy.gray_images(3, 8, 8)
  for bad in (0, 8 * 8 * 8 + 1, 2.5, True):
    with pytest.raises(ValueError, match=r'budget must be an int in \[1, H \* W \* 2\^C\]'):
      attack.gradient_ranked(_planted(), x, np.zeros(3, np.int32), budget=bad)


def _index(cands, w=4):
  """Candidate numbers (pixel * 8 + corner) of refined_corners proposals."""
  c = np.asarray(cands)
  pos = c[:, 0].astype(int) * w + c[:, 1].astype(int)
  return pos * 8 + ((c[:, 2:] > 127) * [1, 2, 4]).sum(1)


def test_refined_corners_corrects_the_order_by_measured_losses():
  # 4 x 4 images, 128 candidates, 4 per step. The gains rank pixel 0's
  # corners first (10 - j), then everything else lower, pixel 15's lowest.
  # Pixel 0 measures far worse than predicted, so its other corners must drop
  # below the untouched pixels; pixel 15's neighbours (radius 1) are corrected
  # by its errors, the pixels out of its reach are not. Pixel 0's neighbours
  # (1, 4, 5) drop with it.
  from jaxpix.attack import search

  s = search.refined_corners(4, 4, 3, 128, 4, 1, False)
  gain = np.zeros(128, np.float32)
  gain[:8] = 10 - np.arange(8)  # pixel 0: 10, 9, ..., 3
  gain[8:120] = np.linspace(2, 1, 112)
  gain[120:] = 0.0  # pixel 15 (row 3, column 3)
  base = 0.5  # clean objective -log p = 0.5
  state = s.init(None, jnp.asarray(np.append(gain, base)))
  cands, n = s.propose(state, None, jnp.int32(0))
  first = _index(cands)
  np.testing.assert_array_equal(first, [0, 1, 2, 3])
  assert int(n) == 4
  # Measured: p(label) stays 0.6, objective 0.51, predicted 10.5, 9.5, ...
  state = s.update(state, cands, jnp.full(4, 0.6, jnp.float32), jnp.int32(0))
  nxt = _index(s.propose(state, None, jnp.int32(1))[0])
  # Pixel 0's other corners dropped, and its neighbours 1, 4 and 5 with them:
  # the next is pixel 2, the best by gain out of pixel 0's reach.
  np.testing.assert_array_equal(nxt, [16, 17, 18, 19])
  # Pixel 15's first corner (gain 0) measures far better than predicted.
  fake = jnp.asarray([[3.5, 3.5, 255, 255, 255]] * 4, jnp.float32)  # corner 7
  state = s.update(state, fake, jnp.full(4, 1e-3, jnp.float32), jnp.int32(1))
  third = _index(s.propose(state, None, jnp.int32(2))[0])
  assert set(third // 8) <= {15, 10, 11, 14}  # pixel 15 and its neighbours
  assert 127 not in third  # tried candidates are not proposed again
  # Padding: with a budget of 6, the second step counts 2 and repeats the 2nd.
  s6 = search.refined_corners(4, 4, 3, 6, 4, 1, False)
  st6 = s6.init(None, jnp.asarray(np.append(gain, base)))
  st6 = s6.update(st6, s6.propose(st6, None, jnp.int32(0))[0], jnp.full(4, 0.6), jnp.int32(0))
  c6, n6 = s6.propose(st6, None, jnp.int32(1))
  assert int(n6) == 2 and len(set(_index(c6))) == 2 and s6.max_steps == 2


@pytest.mark.slow
def test_gradient_ranked_refined_and_fixed_orders_fool_the_same_images():
  # Both orders try every candidate once with the whole budget: the same
  # images as the exhaustive search, each at most 8 * 8 * 8 queries.
  predict = models.as_predict(models.create('cnn6', num_classes=10, width=0.25, seed=3))
  x = toy.cifar_like(12, 8, 8, seed=4)
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  fixed = attack.gradient_ranked(predict, x, y, chunk=64, refine=False)
  refined = attack.gradient_ranked(predict, x, y, chunk=16, radius=1)
  np.testing.assert_array_equal(fixed.success, refined.success)
  assert 0 < refined.success.sum() < 12
  np.testing.assert_array_equal(refined.queries[~refined.success], 8 * 8 * 8)
  out = np.asarray(jax.jit(predict)(jnp.asarray(refined.adv_images))).argmax(1)
  np.testing.assert_array_equal(out != y, refined.success)
  with pytest.raises(ValueError, match='radius must be an int >= 0'):
    attack.gradient_ranked(predict, x, y, radius=-1)
