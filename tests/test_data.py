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
  from jaxpix.configs import cifar_baseline

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


class _FakeSource:
  """A stand-in for ``tfds.data_source(...)``: indexable rows of
  ``{'image': uint8 [H, W, 3], 'label': int}``."""

  def __init__(self, rows):
    self.rows = rows

  def __len__(self):
    return len(self.rows)

  def __getitem__(self, i):
    return self.rows[i]


def _fake_tfds(monkeypatch, rows):
  """Makes ``import tensorflow_datasets`` inside load_tfds return a module
  whose ``data_source`` serves ``rows`` (no prepared data, no tfds import)."""
  import sys
  import types

  calls = []

  def data_source(name, **kwargs):
    calls.append((name, kwargs))
    return _FakeSource(rows)

  monkeypatch.setitem(
    sys.modules, 'tensorflow_datasets', types.SimpleNamespace(data_source=data_source)
  )
  return calls


def test_tfds_imagenet_of_any_size_is_resized_and_centre_cropped(monkeypatch):
  # ImageNet photos come in many sizes: landscape, portrait, small, square.
  const = np.full((300, 500, 3), (10, 200, 77), np.uint8)
  # Landscape 512x768: shorter side 512 -> 256 (scale 1/2), width 384, so the
  # 224 crop keeps original columns 160..607 and rows 32..479. The edges
  # outside it are red (left) and blue (right); a white 200x200 square sits
  # in the centre and becomes 100x100 in the middle of the crop.
  big = np.zeros((512, 768, 3), np.uint8)
  big[:, :120] = (255, 0, 0)
  big[:, -120:] = (0, 0, 255)
  big[156:356, 284:484] = 255
  rows = [
    {'image': const, 'label': 417},
    {'image': big, 'label': 3},
    {'image': np.full((400, 180, 3), 90, np.uint8), 'label': 999},  # portrait
    {'image': np.full((64, 64, 3), 130, np.uint8), 'label': 0},  # smaller than 224
  ]
  calls = _fake_tfds(monkeypatch, rows)
  s = data.load_tfds('imagenet', 'validation', '/prepared')
  assert calls == [('imagenet2012', dict(split='validation', data_dir='/prepared', download=False))]
  assert s.images.shape == (4, 224, 224, 3) and s.images.dtype == np.uint8
  np.testing.assert_array_equal(s.labels, [417, 3, 999, 0])
  assert s.labels.dtype == np.int32
  assert s.num_classes == 1000  # ImageNet's, not max(label) + 1
  # A constant image stays exactly its colour.
  np.testing.assert_array_equal(s.images[0], np.broadcast_to([10, 200, 77], (224, 224, 3)))
  np.testing.assert_array_equal(s.images[2], 90)
  np.testing.assert_array_equal(s.images[3], 130)
  # The centre of the larger image is the centre of the crop, at half scale.
  white = np.all(s.images[1] >= 250, axis=-1)
  rows_, cols = np.nonzero(white)
  assert 95 <= white.sum() ** 0.5 <= 101  # ~100x100 (bicubic blurs the edge)
  assert abs(rows_.mean() - 111.5) < 0.5 and abs(cols.mean() - 111.5) < 0.5
  assert not white[:55].any() and not white[:, :55].any()
  assert not white[169:].any() and not white[:, 169:].any()
  # The red and blue ends lie outside the crop, so none of them is left.
  assert s.images[1][..., 0].max() == s.images[1][..., 2].max() == 255  # white only
  np.testing.assert_array_equal(s.images[1][..., 0], s.images[1][..., 2])


def test_resize_and_crop_matches_the_imagenet_sample_recipe():
  from PIL import Image

  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, size=(375, 500, 3)).astype(np.uint8)
  # The sample's README: shorter side to 256 with PIL bicubic, central 224x224.
  ref = np.asarray(Image.fromarray(x).resize((341, 256), Image.Resampling.BICUBIC))
  ref = ref[16:240, 58:282]
  np.testing.assert_array_equal(data.resize_and_crop(x, 224), ref)
  # Portrait: the same along the other axis.
  np.testing.assert_array_equal(
    data.resize_and_crop(x.transpose(1, 0, 2), 224),
    np.asarray(Image.fromarray(x.transpose(1, 0, 2)).resize((256, 341), Image.Resampling.BICUBIC))[
      58:282, 16:240
    ],
  )


def test_tfds_images_of_the_wrong_shape_are_refused_by_index(monkeypatch):
  _fake_tfds(monkeypatch, [{'image': np.zeros((32, 32, 3), np.uint8), 'label': 1}] * 2)
  s = data.load_tfds('cifar10', 'test', None)
  assert s.images.shape == (2, 32, 32, 3) and s.num_classes == 10
  _fake_tfds(
    monkeypatch,
    [
      {'image': np.zeros((32, 32, 3), np.uint8), 'label': 1},
      {'image': np.zeros((40, 32, 3), np.uint8), 'label': 1},
    ],
  )
  with pytest.raises(ValueError, match=r'cifar10:test image 1: expected uint8 \[32, 32, 3\]'):
    data.load_tfds('cifar10', 'test', None)
  _fake_tfds(monkeypatch, [{'image': np.zeros((300, 400), np.uint8), 'label': 1}])
  with pytest.raises(ValueError, match=r'imagenet2012:train image 0: expected a uint8 \[H, W, 3\]'):
    data.load_tfds('imagenet', 'train', None)
  _fake_tfds(monkeypatch, [{'image': np.zeros((300, 400, 3), np.uint8), 'label': 1000}])
  with pytest.raises(ValueError, match=r'labels must lie in \[0, 1000\)'):
    data.load_tfds('imagenet', 'train', None)


def test_class_names_come_from_the_dataset(shared_data):
  assert data.class_names('cifar10') == list(data.CIFAR10_CLASSES)
  assert data.class_names('cifar10')[3] == 'cat'
  names = data.class_names('imagenet_sample', shared_data / 'imagenet_sample')
  assert len(names) == 1000
  # The standard ImageNet-1k order (the sample's README): tench is class 0.
  assert names[0] == 'tench' and names[2] == 'great_white_shark' and names[4] == 'hammerhead'
  assert names[1] is None and names[999] is None  # the sample has the even classes only
  assert sum(n is not None for n in names) == 500
  assert data.class_names('imagenet') is None  # tfds names are WordNet IDs, not captions


def test_class_names_of_an_npz_without_names(tmp_path):
  _write(
    tmp_path / 'imagenet_sample_224.npz',
    images=np.zeros((2, 224, 224, 3), np.uint8),
    labels=np.array([0, 4]),
  )
  assert data.class_names('imagenet_sample', tmp_path) is None
  with pytest.raises(FileNotFoundError, match='imagenet_sample_224.npz is missing'):
    data.class_names('imagenet_sample', tmp_path / 'nope')
