"""The one-pixel verifier: a certificate is never contradicted (by the
exhaustive corner sweep, by a dense grid of colours, by every 8-bit colour
on a model small enough), a planted interior colour is never certified, and
an operation without a bound rule is an error that names it."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack, defences, verify
from jaxpix.verify import bounds, crown

DN = ('NHWC', 'HWIO', 'NHWC')


def _small_cnn(h, w, seed=0, classes=4):
  rng = np.random.default_rng(seed)
  k1 = jnp.asarray(rng.normal(size=(3, 3, 3, 8)) * 0.5, jnp.float32)
  k2 = jnp.asarray(rng.normal(size=(3, 3, 8, 8)) * 0.3, jnp.float32)
  wd = jnp.asarray(rng.normal(size=(h * w * 8 // 4, classes)) * 0.1, jnp.float32)

  def predict(x):
    a = jax.nn.relu(jax.lax.conv_general_dilated(x, k1, (1, 1), 'SAME', dimension_numbers=DN))
    a = jax.nn.relu(jax.lax.conv_general_dilated(a, k2, (1, 1), 'SAME', dimension_numbers=DN))
    a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return a.reshape(a.shape[0], -1) @ wd

  return predict


def _images(n, h, w, seed=1):
  return (np.round(np.random.default_rng(seed).random((n, h, w, 3)) * 255) / 255).astype(np.float32)


def _with_pixel(x, pos, colours):
  imgs = np.repeat(x[None], len(colours), 0)
  imgs[:, pos[0], pos[1]] = colours
  return imgs


@pytest.mark.slow  # a dense grid at every position of every certified image
def test_certificates_hold_against_the_corner_sweep_and_a_dense_grid():
  h = w = 6
  predict = _small_cnn(h, w, classes=3)
  x = _images(30, h, w)
  y = np.asarray(predict(jnp.asarray(x))).argmax(-1).astype(np.int32)
  y[0] = (y[0] + 1) % 3  # one image the model gets wrong
  cert = verify.certify(predict, x, y, max_boxes=8 * h * w * 8)
  assert cert.misclassified[0] and cert.status[0] == 'misclassified' and not cert.certified[0]
  sweep = attack.extreme_colour(predict, x, y)
  assert not np.any(cert.certified & sweep.success)  # soundness against the corners
  # Neither vacuous nor only ever failing: both outcomes occur (the few
  # others ran out of budget: unknown, neither).
  assert cert.certified.sum() >= 10 and cert.fooled.sum() >= 3
  assert not np.any(cert.certified & cert.fooled)
  # Every counterexample changes the class (it is a real one-pixel change).
  for i in np.flatnonzero(cert.fooled):
    img = _with_pixel(x[i], cert.position[i], cert.colour[i][None])
    assert np.asarray(predict(jnp.asarray(img))).argmax() != y[i]
  # A certified image keeps its class over a dense grid of colours at
  # every position.
  grid = np.stack(np.meshgrid(*[np.linspace(0, 1, 17)] * 3, indexing='ij'), -1).reshape(-1, 3)
  f = jax.jit(predict)
  for i in np.flatnonzero(cert.certified):
    for pos in np.ndindex(h, w):
      labels = np.asarray(f(jnp.asarray(_with_pixel(x[i], pos, grid)))).argmax(-1)
      assert np.all(labels == y[i]), (i, pos)


def test_a_planted_interior_colour_is_found_not_certified():
  # Class 1 wins only where some pixel is near the colour (0.3, 0.6, 0.45),
  # inside the cube: no corner of any pixel gets there.
  target = jnp.array([0.3, 0.6, 0.45])

  def predict(x):
    near = 0.02 - jnp.sum((x - target) ** 2, -1)  # > 0 within ~0.14 of it
    score = jax.lax.reduce_window(near, -jnp.inf, jax.lax.max, (1, 4, 4), (1, 4, 4), 'VALID')
    return jnp.stack([jnp.zeros(x.shape[0]), 50.0 * score.max((1, 2))], -1)

  x = np.full((2, 4, 4, 3), 0.8, np.float32)
  y = np.zeros(2, np.int32)
  assert not attack.extreme_colour(predict, x, y).success.any()
  cert = verify.certify(predict, x, y, max_boxes=4096)
  assert not cert.certified.any() and cert.fooled.all()
  assert np.all(np.sum((cert.colour - np.asarray(target)) ** 2, -1) < 0.02)


@pytest.mark.slow  # 16.7 million evaluations per position
def test_certificates_hold_for_every_8_bit_colour_on_a_tiny_model():
  h = w = 3
  rng = np.random.default_rng(5)
  w1 = jnp.asarray(rng.normal(size=(h * w * 3, 12)), jnp.float32)
  w2 = jnp.asarray(rng.normal(size=(12, 3)), jnp.float32)

  def predict(x):  # class 0 leads by a margin of the order of one pixel's effect
    return 0.3 * jax.nn.relu(x.reshape(x.shape[0], -1) @ w1) @ w2 + jnp.array([1.5, 0.0, 0.0])

  x = _images(12, h, w, seed=6)
  y = np.asarray(predict(jnp.asarray(x))).argmax(-1).astype(np.int32)
  cert = verify.certify(predict, x, y, max_boxes=20_000)
  assert cert.certified.sum() >= 2 and (cert.fooled | ~cert.certified).any()
  levels = np.arange(256, dtype=np.float32) / 255
  f = jax.jit(lambda im: predict(im).argmax(-1))
  for i in np.flatnonzero(cert.certified)[:2]:
    for pos in ((0, 0), (1, 2)):
      for r in levels[::1]:  # every red level, every green and blue level
        gb = np.stack(np.meshgrid(levels, levels, indexing='ij'), -1).reshape(-1, 2)
        colours = np.concatenate([np.full((len(gb), 1), r, np.float32), gb], 1)
        assert np.all(np.asarray(f(jnp.asarray(_with_pixel(x[i], pos, colours)))) == y[i])


@pytest.mark.slow  # seconds of compilation: kept out of the quick loop (< 3 min)
def test_bounds_are_exact_at_a_point_and_enclose_the_function():
  predict = _small_cnn(6, 6, seed=3)
  x = jnp.asarray(_images(1, 6, 6, seed=2))
  jaxpr = jax.make_jaxpr(predict)(x)
  rng = np.random.default_rng(0)
  for _ in range(3):  # random boxes (each propagation runs eagerly: ~1.5 s)
    zl = jnp.asarray(rng.random(3) * 0.5, jnp.float32)
    zu = zl + jnp.asarray(rng.random(3) * 0.5, jnp.float32)
    base = x.at[0, 2, 3].set(0.0)
    coef = jnp.zeros((3, 1, 6, 6, 3)).at[jnp.arange(3), 0, 2, 3, jnp.arange(3)].set(1.0)
    c = jnp.concatenate([coef, base[None]])
    x_lin, tape, known = bounds.Lin(c, jnp.zeros_like(c)), [], {}
    refine = crown.refiner(tape, x_lin, zl, zu, known, rows=8)
    (out,) = bounds.propagate(jaxpr, [x_lin], zl, zu, tape, refine, known)
    low, high = bounds.concretize(out, zl, zu)
    z = zl + rng.random((200, 3)).astype(np.float32) * (zu - zl)
    vals = np.asarray(predict(jnp.asarray(_with_pixel(np.asarray(x[0]), (2, 3), z))))
    assert np.all(vals >= np.asarray(low)[0] - 1e-4) and np.all(vals <= np.asarray(high)[0] + 1e-4)
    # The backward (CROWN) bound of each margin logit_0 - logit_j holds too,
    # and is at least as tight as the forward one on this small model.
    spec = (jnp.eye(4)[0][None] - jnp.eye(4))[:, None]
    back, vertex = crown.backward(tape, x_lin, out, spec, zl, zu, known)
    margins = vals[:, :1] - vals
    assert np.all(np.asarray(back)[None] <= margins + 1e-4)
    forward_margin = np.asarray(low)[0, 0] - np.asarray(high)[0]
    assert np.all(np.asarray(back)[1:] >= forward_margin[1:] - 1e-4)
    assert np.all((np.asarray(vertex) == np.asarray(zl)) | (np.asarray(vertex) == np.asarray(zu)))
    (point,) = bounds.propagate(jaxpr, [bounds.Lin(c, jnp.zeros_like(c))], zl, zl)
    lp, hp = bounds.concretize(point, zl, zl)
    exact = predict(jnp.asarray(_with_pixel(np.asarray(x[0]), (2, 3), np.asarray(zl)[None])))
    np.testing.assert_allclose(np.asarray(lp), np.asarray(exact), atol=1e-4)
    np.testing.assert_allclose(np.asarray(hp), np.asarray(exact), atol=1e-4)


@pytest.mark.slow  # 11-15 s: the quick loop's budget
def test_certificates_through_a_median_filter_hold_against_every_corner():
  h = w = 6
  inner = _small_cnn(h, w, classes=3)
  predict = lambda im: inner(defences.median_filter(im))  # noqa: E731
  x = _images(8, h, w)
  y = np.asarray(predict(jnp.asarray(x))).argmax(-1).astype(np.int32)
  cert = verify.certify(predict, x, y, max_boxes=128 * h * w)
  sweep = attack.extreme_colour(predict, x, y)
  assert not np.any(cert.certified & sweep.success)
  assert cert.certified.sum() >= 2 and np.all(cert.bound[cert.certified] > 0)
  # The bounds of a 5x5 median (a sort; 3x3 is a min/max network) enclose
  # the filtered values of sampled colours.
  zl, zu = jnp.array([0.2, 0.1, 0.5]), jnp.array([0.7, 0.4, 0.9])
  median5 = functools.partial(defences.median_filter, size=5)
  jaxpr = jax.make_jaxpr(median5)(jnp.asarray(x[:1]))
  assert 'sort' in str(jaxpr)
  c = jnp.zeros((4, 1, h, w, 3)).at[jnp.arange(3), 0, 0, 0, jnp.arange(3)].set(1.0)
  c = c.at[3].set(jnp.asarray(x[:1]).at[0, 0, 0].set(0.0))
  (out,) = bounds.propagate(jaxpr, [bounds.Lin(c, jnp.zeros_like(c))], zl, zu)
  low, high = (np.asarray(v) for v in bounds.concretize(out, zl, zu))
  z = np.asarray(zl) + np.random.default_rng(0).random((64, 3)) * np.asarray(zu - zl)
  vals = np.asarray(median5(jnp.asarray(_with_pixel(x[0], (0, 0), z))))
  assert np.all(vals >= low - 1e-6) and np.all(vals <= high + 1e-6)
  assert np.any(high - low > 0.05)  # the corner's windows move with it


def test_an_operation_without_a_rule_and_bad_arguments_are_named():
  x = _images(2, 4, 4)
  y = np.zeros(2, np.int32)

  def waves(im):  # sin is not monotone: no bound rule
    return jnp.sin(3 * im.reshape(im.shape[0], -1))[:, :3]

  with pytest.raises(bounds.UnsupportedOperation, match='`sin`'):
    verify.certify(waves, x, y)
  predict = _small_cnn(4, 4)
  with pytest.raises(ValueError, match='max_boxes must be at least H \\* W = 16'):
    verify.certify(predict, x, y, max_boxes=8)
  with pytest.raises(ValueError, match='labels'):
    verify.certify(predict, x, np.zeros(3, np.int32))
  with pytest.raises(ValueError, match='refine_rows must be an int >= 0'):
    verify.certify(predict, x, y, refine_rows=-1)


@pytest.mark.slow  # LeNet, three attacks and the verifier on real images
def test_the_interval_benchmark_brackets_robust_accuracy(shared_data, tmp_path):
  from benchmarks import certify_models

  out = tmp_path / 'certify.json'
  argv = ['--model', 'LeNet=zoo:lenet-none', '--images', '3', '--max-boxes', '1024']
  argv += ['--de-popsize', '8', '--de-maxiter', '2', '--rs-budget', '32']
  certify_models.main([*argv, '--data-dir', str(shared_data / 'cifar10'), '--json', str(out)])
  r = json.loads(out.read_text())['LeNet']
  status = np.array(r['status'])
  assert len(status) == r['images'] == 3
  assert r['certified_accuracy'] == np.mean(status == 'certified')
  assert r['clean_accuracy'] == np.mean(status != 'misclassified')
  # Certified <= not fooled by any attack <= correct.
  assert r['certified_accuracy'] <= r['attacked_accuracy'] <= r['clean_accuracy']
  assert r['unknown'] == np.sum(status == 'unknown') and r['max_boxes'] == 1024


def _residual_net(seed=7, depth=6, ch=6, gain=0.4):
  """Conv, batch-norm-like affine maps, ReLUs, residual additions, max and
  average pooling, dense: ``predict`` and ``pre`` (every ReLU's input, in order)."""
  rng = np.random.default_rng(seed)
  k0 = jnp.asarray(rng.normal(size=(3, 3, 3, ch)) * 0.5, jnp.float32)
  ks = [jnp.asarray(rng.normal(size=(3, 3, ch, ch)) * gain, jnp.float32) for _ in range(depth)]
  sc = [jnp.asarray(rng.uniform(0.5, 1.5, ch), jnp.float32) for _ in range(depth)]
  sh = [jnp.asarray(rng.normal(size=ch) * 0.1, jnp.float32) for _ in range(depth)]
  wd = jnp.asarray(rng.normal(size=(ch, 5)), jnp.float32)
  conv = functools.partial(jax.lax.conv_general_dilated, window_strides=(1, 1), padding='SAME')

  def run(x):
    pres = []
    a = conv(x, k0, dimension_numbers=DN)
    for i in range(depth):
      z = conv(a, ks[i], dimension_numbers=DN) * sc[i] + sh[i]
      pres.append(z)
      a = a + jax.nn.relu(z)  # residual
      if i == depth // 2:
        a = jax.lax.reduce_window(a, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return a.mean((1, 2)) @ wd, pres

  return (lambda x: run(x)[0]), (lambda x: run(x)[1])


def _zono_input(x, pos, zl, zu):
  from jaxpix.verify import zonotope

  h, w, c = x.shape[1:]
  mid = x.at[0, pos[0], pos[1]].set((zl + zu) / 2)
  gens = (
    jnp.zeros((c,) + x.shape).at[jnp.arange(c), 0, pos[0], pos[1], jnp.arange(c)].set((zu - zl) / 2)
  )
  return zonotope.Zono(mid, gens, jnp.zeros_like(mid))


@pytest.mark.parametrize('slots', [0, 3, 64])
def test_zonotope_bounds_enclose_the_network_and_every_relu_input(slots):
  from jaxpix.verify import zonotope

  predict, pre = _residual_net()
  x = jnp.asarray(_images(1, 8, 8, seed=4))
  jaxpr = jax.make_jaxpr(predict)(x)
  rng = np.random.default_rng(1)
  run = jax.jit(lambda zl, zu: zonotope.propagate(jaxpr, [_zono_input(x, (3, 4), zl, zu)], slots))
  for side in (0.05, 0.5):
    zl = jnp.asarray(rng.random(3) * (1 - side), jnp.float32)
    zu = zl + side
    (out,), record = run(zl, zu)
    z = np.asarray(zl) + rng.random((300, 3)).astype(np.float32) * side
    imgs = jnp.asarray(_with_pixel(np.asarray(x[0]), (3, 4), z))
    low, high = zonotope.interval(out)
    vals = np.asarray(predict(imgs))
    assert np.all(vals >= np.asarray(low) - 1e-4) and np.all(vals <= np.asarray(high) + 1e-4)
    assert len(record) == 6
    for (lo, hi), v in zip(record, pre(imgs), strict=True):
      assert np.all(np.asarray(v) >= np.asarray(lo) - 1e-4)
      assert np.all(np.asarray(v) <= np.asarray(hi) + 1e-4)
  # Exact at a point.
  zl = jnp.asarray([0.2, 0.7, 0.4])
  (out,), _ = run(zl, zl)
  exact = np.asarray(predict(jnp.asarray(_with_pixel(np.asarray(x[0]), (3, 4), zl[None]))))
  for v in zonotope.interval(out):
    np.testing.assert_allclose(np.asarray(v), exact, atol=1e-4)


def test_zonotope_keeps_a_deep_network_tight_where_forward_bounds_explode():
  # On a deep residual network and a small box the forward bounds add every
  # relaxed ReLU's gap through |W|; the zonotope's symbols cancel.
  from jaxpix.verify import zonotope

  predict, _ = _residual_net(seed=3, depth=12, ch=8, gain=0.15)
  x = jnp.asarray(_images(1, 8, 8, seed=5))
  jaxpr = jax.make_jaxpr(predict)(x)
  zl = jnp.asarray([0.40, 0.40, 0.40])
  zu = zl + 0.02
  base = x.at[0, 3, 4].set(0.0)
  coef = jnp.zeros((3, 1, 8, 8, 3)).at[jnp.arange(3), 0, 3, 4, jnp.arange(3)].set(1.0)
  c = jnp.concatenate([coef, base[None]])
  lin_width = jax.jit(
    lambda: jnp.subtract(
      *bounds.concretize(
        bounds.propagate(jaxpr, [bounds.Lin(c, jnp.zeros_like(c))], zl, zu)[0], zl, zu
      )[::-1]
    )
  )()
  z_width = jax.jit(
    lambda: jnp.subtract(
      *zonotope.interval(zonotope.propagate(jaxpr, [_zono_input(x, (3, 4), zl, zu)], 16)[0][0])[
        ::-1
      ]
    )
  )()
  lin_width, z_width = np.asarray(lin_width), np.asarray(z_width)
  grid = np.stack(np.meshgrid(*[np.linspace(0.40, 0.42, 5)] * 3, indexing='ij'), -1).reshape(-1, 3)
  vals = np.asarray(predict(jnp.asarray(_with_pixel(np.asarray(x[0]), (3, 4), grid))))
  true_width = vals.max(0) - vals.min(0)
  assert np.all(z_width >= true_width - 1e-4)
  assert np.all(z_width < 6 * true_width)  # within 1.9-4.6x of the truth
  assert np.all(lin_width > 100 * z_width)  # ~1,000x


@pytest.mark.slow  # seconds of compilation: kept out of the quick loop (< 3 min)
def test_certificates_with_zonotope_bounds_hold_against_the_corner_sweep():
  h = w = 4
  predict = _small_cnn(h, w, seed=2, classes=3)
  x = _images(12, h, w, seed=8)
  y = np.asarray(predict(jnp.asarray(x))).argmax(-1).astype(np.int32)
  cert = verify.certify(predict, x, y, max_boxes=4 * h * w * 8, zonotope_slots=8)
  sweep = attack.extreme_colour(predict, x, y)
  assert not np.any(cert.certified & sweep.success)
  assert cert.certified.sum() >= 3 and cert.fooled.sum() >= 1
  with pytest.raises(ValueError, match='zonotope_slots'):
    verify.certify(predict, x, y, zonotope_slots=-1)


def test_zonotope_max_pooling_keeps_what_the_windows_share():
  from jaxpix.verify import zonotope

  def pooled(x, other):  # a 2x2 window of the pixel's red value, `other` of it, and two -1s
    r = x[:, 0, 0, 0]
    win = jnp.stack([r, other(r), -jnp.ones_like(r), -jnp.ones_like(r)], -1).reshape(-1, 2, 2, 1)
    m = jax.lax.reduce_window(win, -jnp.inf, jax.lax.max, (1, 2, 2, 1), (1, 2, 2, 1), 'VALID')
    return m.reshape(-1, 1) - r[:, None]  # the max minus the pixel itself

  x = jnp.zeros((1, 1, 1, 3))
  zl, zu = jnp.asarray([0.3, 0.0, 0.0]), jnp.asarray([0.9, 0.0, 0.0])
  # The pixel is always its window's max: the max minus itself is exactly 0,
  # which interval bounds (max in [0.3, 0.9]) cannot see.
  jaxpr = jax.make_jaxpr(lambda v: pooled(v, lambda r: r - 0.1))(x)
  (out,), _ = zonotope.propagate(jaxpr, [_zono_input(x, (0, 0), zl, zu)], 4)
  low, high = zonotope.interval(out)
  np.testing.assert_allclose([float(low[0, 0]), float(high[0, 0])], [0.0, 0.0], atol=1e-6)
  # max(r, 1 - r): the windows' intervals ([0.3, 0.9]) are narrower than the
  # symbols' (r + [0, 0.4]), and are taken: max - r within [0.3 - 0.9, 0.9 - 0.3].
  jaxpr = jax.make_jaxpr(lambda v: pooled(v, lambda r: 1.0 - r))(x)
  (out,), _ = zonotope.propagate(jaxpr, [_zono_input(x, (0, 0), zl, zu)], 4)
  low, high = zonotope.interval(out)
  assert float(low[0, 0]) == pytest.approx(-0.6, abs=1e-6)
  assert float(high[0, 0]) == pytest.approx(0.6, abs=1e-6)
  r = np.linspace(0.3, 0.9, 61)
  truth = np.maximum(r, 1 - r) - r
  assert truth.min() >= -0.6 and truth.max() <= 0.6


def test_zonotope_symbols_of_parallel_branches_stay_independent():
  from jaxpix.verify import zonotope

  # relu(u) - relu(v) of two branches of the same input: each relaxation's
  # error is its own symbol. Had both branches numbered their new symbol
  # alike, the errors would cancel where they are independent, and at
  # red = 0.625 (u = 0.25, v = 0) the bounds [-0.31, 0.13] would miss the
  # true 0.25.
  def branches(x):
    u = 2 * x[:, 0, 0, 0] - 1
    return (jax.nn.relu(u) - jax.nn.relu(-2 * u + 0.5))[:, None]

  x = jnp.zeros((1, 1, 1, 3))
  jaxpr = jax.make_jaxpr(branches)(x)
  zl, zu = jnp.asarray([0.0, 0.0, 0.0]), jnp.asarray([1.0, 0.0, 0.0])
  (out,), _ = zonotope.propagate(jaxpr, [_zono_input(x, (0, 0), zl, zu)], 1)
  assert out.g.shape[0] == 3 + 2  # the colour's symbols, then one per ReLU
  # For each red value (its symbol e_0 = 2 red - 1) the other symbols span
  # what the relaxations leave: the truth must lie within.
  red = np.linspace(0, 1, 201)
  truth = np.asarray(branches(jnp.zeros((201, 1, 1, 3)).at[:, 0, 0, 0].set(red)))[:, 0]
  c, g, rad = (np.asarray(v).reshape(v.shape[0] if v.ndim > 2 else 1, -1) for v in out)
  centre = c[0, 0] + g[0, 0] * (2 * red - 1)
  spread = np.abs(g[3:, 0]).sum() + rad[0, 0]
  assert np.all(truth >= centre - spread - 1e-6) and np.all(truth <= centre + spread + 1e-6)
