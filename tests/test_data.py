"""Loading the offline datasets, and refusing bad ones by name."""

import numpy as np
import pytest

from jaxpix import data


def test_cifar10_test_split_is_the_documented_one(shared_data):
  s = data.load_npz('cifar10', 'test', shared_data / 'cifar10')
  assert s.images.shape == (1000, 32, 32, 3) and s.images.dtype == np.uint8
  assert s.labels.dtype == np.int32 and s.num_classes == 10
  # Class counts of the first 1,000 official test images (the data README).
  np.testing.assert_array_equal(
    np.bincount(s.labels, minlength=10), [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
  )


def test_cifar10_train_split_statistics(shared_data):
  s = data.load_npz('cifar10', 'train', shared_data / 'cifar10')
  assert len(s) == 50000
  np.testing.assert_array_equal(np.bincount(s.labels), [5000] * 10)
  mean = s.images[::10].reshape(-1, 3).mean(0)
  np.testing.assert_allclose(mean, [125.3, 122.95, 113.87], atol=1.0)


def test_imagenet_sample(shared_data):
  s = data.load_npz('imagenet_sample', 'test', shared_data / 'imagenet_sample')
  assert s.images.shape == (500, 224, 224, 3) and s.num_classes == 1000
  np.testing.assert_array_equal(s.labels, np.arange(0, 1000, 2))


def test_to_float_is_exactly_uint8_over_255():
  x = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  f = data.to_float(x)
  assert f.dtype == np.float32
  np.testing.assert_array_equal(np.round(f * 255).astype(np.uint8), x)
  assert f.max() == 1.0 and f.min() == 0.0


def _write(path, **arrays):
  np.savez(path, **arrays)


def test_missing_directory_names_the_path(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / 'nope')):
    data.load_npz('cifar10', 'test', tmp_path / 'nope')


def test_missing_file_names_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match='train_1.npz'):
    data.load_npz('cifar10', 'train', tmp_path)


def test_unknown_dataset_and_split(tmp_path):
  with pytest.raises(ValueError, match="unknown dataset 'mnist'"):
    data.load_npz('mnist', 'test', tmp_path)
  with pytest.raises(ValueError, match="no split 'train'"):
    data.load_npz('imagenet_sample', 'train', tmp_path)


@pytest.mark.parametrize(
  'arrays, words',
  [
    (
      dict(images=np.zeros((4, 32, 32, 3), np.float32), labels=np.zeros(4, np.uint8)),
      r'"images" must be uint8 \[N, 32, 32, 3\], got float32',
    ),
    (
      dict(images=np.zeros((4, 28, 28, 1), np.uint8), labels=np.zeros(4, np.uint8)),
      r'got uint8 \[4, 28, 28, 1\]',
    ),
    (
      dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.zeros(5, np.uint8)),
      r'"labels" must be integers of shape \[4\]',
    ),
    (
      dict(images=np.zeros((4, 32, 32, 3), np.uint8), labels=np.array([0, 1, 10, 2])),
      r'labels must lie in \[0, 10\)',
    ),
    (dict(pictures=np.zeros((4, 32, 32, 3), np.uint8)), 'must hold arrays "images" and "labels"'),
    (dict(images=np.array([None] * 4, dtype=object), labels=np.zeros(4)), 'not a readable'),
  ],
)
def test_malformed_file(tmp_path, arrays, words):
  _write(tmp_path / 'test.npz', **arrays)
  with pytest.raises(ValueError, match=words) as e:
    data.load_npz('cifar10', 'test', tmp_path)
  assert str(tmp_path / 'test.npz') in str(e.value)


def test_not_an_npz(tmp_path):
  (tmp_path / 'test.npz').write_text('hello')
  with pytest.raises(ValueError, match='not a readable'):
    data.load_npz('cifar10', 'test', tmp_path)


def test_validation_split_is_carved_from_train(shared_data):
  from configs import cifar_baseline

  cfg = cifar_baseline.get_config('cpu').data
  train, val, name = data.load(cfg)
  assert name == 'validation' and len(val) == 5000 and len(train) == 45000
  # Disjoint: no validation image appears in train (the data has no duplicates).
  tr = {x.tobytes() for x in train.images[::9]}
  assert not any(x.tobytes() in tr for x in val.images)
  # Fixed by split_seed: the same split every time.
  again = data.load(cfg)[1]
  np.testing.assert_array_equal(again.labels, val.labels)
  del shared_data


def test_epoch_order_is_a_fixed_permutation():
  a = data.epoch_order(100, seed=3, epoch=2)
  np.testing.assert_array_equal(np.sort(a), np.arange(100))
  np.testing.assert_array_equal(a, data.epoch_order(100, seed=3, epoch=2))
  assert not np.array_equal(a, data.epoch_order(100, seed=3, epoch=3))


def test_augment_crops_and_flips_per_example():
  import jax

  rng = np.random.default_rng(0)
  x = rng.integers(1, 256, size=(16, 8, 8, 3)).astype(np.uint8)  # no zeros: padding shows
  out = np.asarray(data.augment(jax.random.key(0), x, pad=2))
  assert out.shape == (16, 8, 8, 3) and out.dtype == np.float32
  padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
  flips = shifts = 0
  for i in range(16):
    u8 = np.round(out[i] * 255).astype(np.uint8)
    found = [
      (dy, dx, f)
      for dy in range(5)
      for dx in range(5)
      for f in (0, 1)
      if np.array_equal(u8, (lambda c: c[:, ::-1] if f else c)(padded[i, dy : dy + 8, dx : dx + 8]))
    ]
    assert found, f'example {i} is not a crop/flip of its padded image'
    flips += found[0][2]
    shifts += found[0][:2] != (2, 2)
  assert 0 < flips < 16 and shifts > 8  # both kinds of change happen, not always
  # Per-example keys: example i does not depend on the rest of the batch.
  np.testing.assert_array_equal(np.asarray(data.augment(jax.random.key(0), x[:4], pad=2)), out[:4])


def test_unprepared_tfds_source_is_a_clear_error(tmp_path):
  with pytest.raises(
    FileNotFoundError,
    match=r'(?s)cifar10:train is not prepared under data_dir=.*'
    r'source="npz"',
  ):
    data.load_tfds('cifar10', 'train', str(tmp_path))
  with pytest.raises(ValueError, match='has no tensorflow-datasets source'):
    data.load_tfds('imagenet_sample', 'test', str(tmp_path))
