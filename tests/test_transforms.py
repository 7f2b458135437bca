"""Input transformations: bit depth, and JPEG in JAX against Pillow's libjpeg."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxpix import attack, build, data, defences, models
from jaxpix.configs import cifar_it, cifar_median

import toy_models as toy


@pytest.mark.parametrize('bits', [1, 3, 5, 8])
def test_bit_depth_has_at_most_2_to_the_b_levels(bits):
  x = jnp.asarray(np.arange(256, dtype=np.float32).reshape(1, 16, 16, 1) / 255)
  out = np.asarray(defences.bit_depth(x, bits))
  assert len(np.unique(out)) == 2**bits
  assert out.min() == 0 and out.max() == 1
  assert np.abs(out - np.asarray(x)).max() <= 0.5 / (2**bits - 1) + 1e-6
  if bits == 8:  # the identity on the 8-bit grid, exactly (on GPUs too)
    np.testing.assert_array_equal(out, np.asarray(x))
  # Outside [0, 1]: the nearest level.
  np.testing.assert_array_equal(
    np.asarray(defences.bit_depth(jnp.array([-0.3, 1.4]), bits)), [0, 1]
  )


def _pillow(images_u8, quality):
  out = []
  for im in images_u8:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, 'JPEG', quality=quality)
    buf.seek(0)
    out.append(np.asarray(Image.open(buf).convert('RGB')))
  return np.stack(out).astype(np.int32)


@pytest.mark.parametrize('quality', [50, 75, 90])
def test_jpeg_matches_pillow_on_real_cifar10(shared_data, quality):
  # Measured on the first 200 test images: mean |jaxpix - Pillow| is 0.30,
  # 0.37 and 0.48 levels at quality 50, 75 and 90 (80% of values exact at 75),
  # against 7.5, 5.8 and 4.0 levels between the original and Pillow's JPEG.
  # The residue is libjpeg's fixed-point DCT against our float one.
  x = data.load_npz('cifar10', 'test', shared_data / 'cifar10').images[:200]
  ref = _pillow(x, quality)
  out = np.round(
    np.asarray(jax.jit(lambda v: defences.jpeg(v, quality))(data.to_float(x))) * 255
  ).astype(np.int32)
  diff = np.abs(out - ref)
  distortion = np.abs(x.astype(np.int32) - ref).mean()
  assert diff.mean() <= 0.6, diff.mean()  # tolerance: 0.6 of one 8-bit level on average
  assert diff.mean() <= 0.15 * distortion
  assert np.mean(diff <= 1) >= 0.85
  # Output is on the 8-bit grid.
  f = np.asarray(defences.jpeg(jnp.asarray(data.to_float(x[:4])), quality))
  np.testing.assert_array_equal(np.round(f * 255) / 255, f)


def test_jpeg_pads_odd_sizes_like_libjpeg():
  x = (np.random.default_rng(0).integers(0, 256, (2, 21, 13, 3))).astype(np.uint8)
  ref = _pillow(x, 75)
  out = np.round(np.asarray(defences.jpeg(jnp.asarray(data.to_float(x)), 75)) * 255)
  assert out.shape == x.shape
  assert np.abs(out - ref).mean() <= 1.0


@pytest.mark.parametrize('size', [3, 5])
def test_median_filter_is_scipys(size):
  from scipy import ndimage

  x = np.random.default_rng(size).random((2, 9, 11, 3)).astype(np.float32)
  want = ndimage.median_filter(x, size=(1, size, size, 1), mode='reflect')
  np.testing.assert_array_equal(np.asarray(defences.median_filter(jnp.asarray(x), size)), want)


def test_one_changed_pixel_moves_a_3x3_median_only_within_its_neighbours():
  x = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
  clean = np.asarray(defences.median_filter(jnp.asarray(x)))
  for pos in [(0, 0), (3, 4), (7, 2)]:
    for colour in (0.0, 1.0):
      v = x.copy()
      v[0, pos[0], pos[1]] = colour
      out = np.asarray(defences.median_filter(jnp.asarray(v)))
      moved = np.argwhere(np.any(out != clean, -1))[:, 1:]
      assert np.all(np.abs(moved - np.array(pos)).max(1) <= 1)
      # An output moves at most m order statistics, m = the copies of the
      # changed pixel in its window (4 at most, at a corner: never the 5 that
      # decide).
      pad = np.pad(x[0], ((1, 1), (1, 1), (0, 0)), mode='symmetric')
      mark = np.zeros((8, 8), int)
      mark[pos] = 1
      copies = np.pad(mark, 1, mode='symmetric')
      for i, j in moved:
        m = copies[i : i + 3, j : j + 3].sum()
        assert 1 <= m <= 4
        win = np.sort(pad[i : i + 3, j : j + 3].reshape(9, 3), 0)
        assert np.all((out[0, i, j] >= win[4 - m]) & (out[0, i, j] <= win[4 + m]))


def test_bad_transform_settings():
  with pytest.raises(ValueError, match='bits must be in'):
    defences.bit_depth(jnp.zeros((1, 8, 8, 3)), 0)
  with pytest.raises(ValueError, match='quality must be in'):
    defences.jpeg(jnp.zeros((1, 8, 8, 3)), 101)
  with pytest.raises(ValueError, match='RGB'):
    defences.jpeg(jnp.zeros((1, 8, 8, 1)), 75)
  for size in (2, 0, 3.0):
    with pytest.raises(ValueError, match='an odd int >= 1'):
      defences.median_filter(jnp.zeros((1, 8, 8, 3)), size)


def test_the_median_row_builds_the_filter_in_front_of_its_classifier():
  model = build.build_model(cifar_median.get_config('test'), 10)
  assert isinstance(model, defences.Transformed)
  assert (model.bits, model.quality, model.median) == (0, 0, 3)
  x = jnp.asarray(toy.cifar_like(2, 32, 32, seed=3))
  want = models.as_predict(model.classifier)(defences.median_filter(x))
  np.testing.assert_allclose(np.asarray(models.as_predict(model)(x)), np.asarray(want), atol=1e-6)


@pytest.mark.slow
def test_it_model_and_the_attack_run_through_the_transformations():
  cfg = cifar_it.get_config('test')
  model = build.build_model(cfg, 10)
  assert isinstance(model, defences.Transformed) and (model.bits, model.quality) == (5, 75)
  predict = models.as_predict(model)
  x = toy.cifar_like(3, 32, 32, seed=1)
  # The defended predict is the classifier on transformed images...
  inner = models.as_predict(model.classifier)
  want = jax.jit(lambda v: inner(defences.jpeg(defences.bit_depth(v, 5), 75)))(jnp.asarray(x))
  np.testing.assert_allclose(
    np.asarray(jax.jit(predict)(jnp.asarray(x))), np.asarray(want), rtol=1e-5, atol=1e-5
  )
  # ...and one jittable function the attack compiles end to end.
  y = np.asarray(jax.jit(predict)(jnp.asarray(x))).argmax(1).astype(np.int32)
  r = attack.one_pixel(predict, x, y, key=jax.random.key(0), popsize=8, maxiter=1)
  assert r.queries.shape == (3,) and np.all(r.queries <= 16)
  np.testing.assert_array_equal(
    np.asarray(jax.jit(predict)(jnp.asarray(r.adv_images))).argmax(1), r.adv_label
  )
