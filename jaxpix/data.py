"""Datasets as uint8 arrays: CIFAR-10 and the ImageNet sample from ``.npz`` files.

The offline layout is the one in ``shared/data`` (see its README files):

- CIFAR-10: ``train_1.npz`` ... ``train_5.npz`` and ``test.npz``, each with
  ``images`` uint8 [N, 32, 32, 3] and ``labels`` [N] in [0, 10).
- ImageNet sample: ``imagenet_sample_224.npz`` with ``images`` uint8
  [N, 224, 224, 3] and ``labels`` [N] in [0, 1000); it is one split, ``test``.

Images stay uint8 on the host (4x smaller); consumers divide by 255 on device.
A prepared tensorflow-datasets ``imagenet2012`` (:func:`load_tfds`) comes in
many image sizes; it is brought to the sample's 224x224 the same way the sample
was made (:func:`resize_and_crop`). :func:`class_names` gives the captions.

A missing or malformed source raises an error naming the path and what was
expected; there is never a fallback to other data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import zipfile

import numpy as np

SPECS = {
  # dataset: (image shape, classes, {split: file names})
  'cifar10': (
    (32, 32, 3),
    10,
    {'train': [f'train_{k}.npz' for k in range(1, 6)], 'test': ['test.npz']},
  ),
  'imagenet_sample': ((224, 224, 3), 1000, {'test': ['imagenet_sample_224.npz']}),
}

# The standard label order (the CIFAR-10 README): index -> name.
CIFAR10_CLASSES = (
  'airplane',
  'automobile',
  'bird',
  'cat',
  'deer',
  'dog',
  'frog',
  'horse',
  'ship',
  'truck',
)


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: ``images`` uint8 [N, H, W, C], ``labels`` int32 [N]."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __len__(self):
    return len(self.labels)


def digest(images: np.ndarray, labels: np.ndarray, indices=None) -> str:
  """sha1 (16 hex digits) of images' pixels and labels (``indices``: of
  those only, and the indices too): what a checkpoint or an attack log
  records of the data it saw."""
  h = hashlib.sha1()
  if indices is not None:
    h.update(np.asarray(indices, np.int64).tobytes())
    images, labels = images[indices], labels[indices]
  h.update(np.ascontiguousarray(images).tobytes())
  h.update(np.asarray(labels, np.int64).tobytes())
  return h.hexdigest()[:16]


def load_npz(dataset: str, split: str, directory: str | pathlib.Path) -> Split:
  """Loads ``split`` of ``dataset`` from a directory of ``.npz`` files.

  Args:
    dataset: ``'cifar10'`` or ``'imagenet_sample'``.
    split: ``'train'`` or ``'test'`` (the ImageNet sample has only ``'test'``).
    directory: the folder holding the files, e.g. ``../shared/data/cifar10``.

  Returns:
    A :class:`Split`.
  """
  if dataset not in SPECS:
    raise ValueError(f'unknown dataset {dataset!r}; expected one of {sorted(SPECS)}')
  shape, num_classes, files = SPECS[dataset]
  if split not in files:
    raise ValueError(f'dataset {dataset!r} has no split {split!r}; expected one of {sorted(files)}')
  directory = pathlib.Path(directory)
  if not directory.is_dir():
    raise FileNotFoundError(
      f'data directory {directory} does not exist; set config.data.dir to the folder holding '
      f'{", ".join(files[split])} (for this repository: ../shared/data/{dataset})'
    )
  images, labels = [], []
  for name in files[split]:
    path = directory / name
    if not path.is_file():
      raise FileNotFoundError(
        f'{path} is missing; {dataset} {split} needs {files[split]} in {directory}'
      )
    try:
      with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files if k in ('images', 'labels')}
        names = f.files
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
      # A truncated file or a flipped byte (zip CRC) lands here too.
      raise ValueError(
        f'{path} is not a readable .npz file of plain arrays ({type(e).__name__}: {e}); it may '
        'be truncated or corrupted: copy it again'
      ) from None
    if len(arrays) != 2:
      raise ValueError(f'{path} must hold arrays "images" and "labels", it has {names}')
    x, y = arrays['images'], arrays['labels']
    if x.dtype != np.uint8 or x.shape[1:] != shape:
      raise ValueError(
        f'{path}: "images" must be uint8 [N, {", ".join(map(str, shape))}], got '
        f'{x.dtype} {list(x.shape)}'
      )
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(
        f'{path}: "labels" must be integers of shape [{len(x)}], got {y.dtype} {list(y.shape)}'
      )
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(
        f'{path}: labels must lie in [0, {num_classes}), got min {y.min()} and max {y.max()}'
      )
    images.append(x)
    labels.append(y.astype(np.int32))
  return Split(np.concatenate(images), np.concatenate(labels), num_classes)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1], exactly ``uint8 / 255``."""
  return images.astype(np.float32) / np.float32(255)


def class_names(dataset: str, directory: str | pathlib.Path | None = None) -> list | None:
  """The class names of ``dataset`` for captions: ``names[label]``, or None.

  - ``'cifar10'`` (either source): the ten standard names.
  - ``'imagenet_sample'``: the ``names`` array stored in the npz file in
    ``directory`` beside ``labels``. The sample holds only the even classes, so
    the list has 1000 entries and the odd ones are None.
  - any other dataset (e.g. ``'imagenet'`` from tensorflow-datasets, whose
    label names are WordNet IDs), or an npz file without ``names``: None.

  Callers caption a class without a name by its index
  (:func:`jaxpix.figures.caption`).

  Example::

    class_names('cifar10')[3]  # 'cat'
  """
  if dataset == 'cifar10':
    return list(CIFAR10_CLASSES)
  if dataset != 'imagenet_sample':
    return None
  _, num_classes, files = SPECS[dataset]
  path = pathlib.Path(directory if directory is not None else '.') / files['test'][0]
  if not path.is_file():
    raise FileNotFoundError(f'{path} is missing; the {dataset} class names are stored in it')
  with np.load(path, allow_pickle=False) as f:
    if 'names' not in f.files:
      return None
    labels, stored = f['labels'], f['names']
  if stored.shape != labels.shape:
    raise ValueError(
      f'{path}: "names" must have one entry per label, got {list(stored.shape)} names for '
      f'{list(labels.shape)} labels'
    )
  names = [None] * num_classes
  for label, name in zip(labels.tolist(), stored.tolist(), strict=True):
    names[label] = str(name)
  return names


# --------------------------------------------------------------------------- #
# Prepared tensorflow-datasets splits
# --------------------------------------------------------------------------- #


# dataset: (tensorflow-datasets name, image shape, classes, resize). With
# resize, each image is brought to the shape by resize_and_crop (ImageNet's
# photos come in every size); without, an image of another shape is an error.
# ImageNet's shape is the npz sample's, so both sources feed the same models.
_TFDS = {
  'cifar10': ('cifar10', SPECS['cifar10'][0], 10, False),
  'imagenet': ('imagenet2012', SPECS['imagenet_sample'][0], 1000, True),
}

# The standard ImageNet evaluation crop, and how the npz sample was made (its
# README): the shorter side to 224 / 0.875 = 256 px with PIL bicubic, then the
# central 224x224. Scaling the shorter side keeps the aspect ratio (nothing is
# squashed); the crop drops the ends of the longer side and a 1/16 border.
CROP_FRACTION = 0.875


def resize_and_crop(image: np.ndarray, size: int) -> np.ndarray:
  """One uint8 [H, W, 3] image of any size -> uint8 [size, size, 3].

  The shorter side is resized to ``round(size / CROP_FRACTION)`` (256 for 224)
  with PIL bicubic, keeping the aspect ratio, and the central ``size x size``
  is kept (offsets rounded down). Every image is resampled, even one that is
  already ``size x size``, so all images of a dataset see the same scale.

  Example::

    resize_and_crop(np.zeros((375, 500, 3), np.uint8), 224).shape  # (224, 224, 3)
  """
  from PIL import Image  # installed with matplotlib, a jaxpix dependency

  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f'expected a uint8 [H, W, 3] image, got {image.dtype} {list(image.shape)}')
  h, w = image.shape[:2]
  short = round(size / CROP_FRACTION)
  new_h, new_w = (short, round(w * short / h)) if h <= w else (round(h * short / w), short)
  out = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC))
  top, left = (new_h - size) // 2, (new_w - size) // 2
  return out[top : top + size, left : left + size]


def load_tfds(dataset: str, split: str, data_dir: str | None) -> Split:
  """Loads a prepared tensorflow-datasets split (array_record, no TensorFlow).

  ``'cifar10'`` images must be 32x32x3 as they are. ``'imagenet'``
  (``imagenet2012``) images vary in size; each is resized and centre-cropped
  to 224x224 by :func:`resize_and_crop` (shorter side to 256, bicubic, central
  224x224), the preprocessing of the npz ImageNet sample, and the split has
  1000 classes whichever labels it holds. The whole split is decoded into one
  uint8 array in memory.

  Only datasets already prepared under ``data_dir`` work offline; the error
  says so rather than falling back to anything else.

  Args:
    dataset: ``'cifar10'`` or ``'imagenet'``.
    split: a tensorflow-datasets split, e.g. ``'train'`` or ``'validation'``.
    data_dir: the tensorflow-datasets data directory (None: its default).

  Returns:
    A :class:`Split`.
  """
  import tensorflow_datasets as tfds

  if dataset not in _TFDS:
    raise ValueError(f'dataset {dataset!r} has no tensorflow-datasets source; use source="npz"')
  name, shape, num_classes, resize = _TFDS[dataset]
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises many kinds; re-raised with the fix
    raise FileNotFoundError(
      f'tensorflow-datasets {name}:{split} is not prepared under data_dir={data_dir!r} ({e}); '
      'prepare it on a machine with internet, or set config.data.source="npz" and '
      'config.data.dir to a folder of .npz files'
    ) from e
  # Filled one decoded image at a time: the decoded originals are never all
  # in memory together.
  images = np.empty((len(source), *shape), np.uint8)  # [N, H, W, C]
  labels = np.empty(len(source), np.int32)
  for i in range(len(source)):
    row = source[i]
    x = np.asarray(row['image'])
    where = f'tensorflow-datasets {name}:{split} image {i}'
    try:
      x = resize_and_crop(x, shape[0]) if resize else x
    except ValueError as e:
      raise ValueError(f'{where}: {e}') from e
    if x.dtype != np.uint8 or x.shape != shape:
      raise ValueError(f'{where}: expected uint8 {list(shape)}, got {x.dtype} {list(x.shape)}')
    images[i], labels[i] = x, row['label']
  if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(
      f'tensorflow-datasets {name}:{split}: labels must lie in [0, {num_classes}), got min '
      f'{labels.min()} and max {labels.max()}'
    )
  return Split(images, labels, num_classes)


# --------------------------------------------------------------------------- #
# Splits for training, from a config
# --------------------------------------------------------------------------- #


def _reader(cfg):
  """``split name -> Split`` for the ``config.data`` block's source."""
  if cfg.source == 'npz':
    return lambda split: load_npz(cfg.dataset, split, cfg.dir)
  if cfg.source == 'tfds':
    return lambda split: load_tfds(cfg.dataset, split, cfg.dir or None)
  raise ValueError(f'config.data.source must be "npz" or "tfds", got {cfg.source!r}')


def _first(split: Split, n: int) -> Split:
  return Split(split.images[:n], split.labels[:n], split.num_classes) if n else split


def load(cfg) -> tuple[Split, Split, str]:
  """Train and evaluation splits for a ``config.data`` block.

  With ``validation_size > 0`` the last ``validation_size`` images of a fixed
  permutation of ``train_split`` (seed ``split_seed``) are held out and become
  the evaluation split, so model selection never sees the test images;
  otherwise the evaluation split is ``eval_split``. ``train_subset > 0`` keeps the first that
  many training images (CPU runs). Returns (train, eval, eval split name).
  """
  get = _reader(cfg)
  train = get(cfg.train_split)
  if cfg.validation_size:
    if not 0 < cfg.validation_size < len(train):
      raise ValueError(
        f'config.data.validation_size must be in [0, {len(train)}), got {cfg.validation_size}'
      )
    perm = np.random.default_rng(cfg.split_seed).permutation(len(train))
    keep, held = perm[: -cfg.validation_size], perm[-cfg.validation_size :]
    evaluation = Split(train.images[held], train.labels[held], train.num_classes)
    train = Split(train.images[keep], train.labels[keep], train.num_classes)
    name = 'validation'
  else:
    evaluation, name = get(cfg.eval_split), cfg.eval_split
  return _first(train, cfg.train_subset), _first(evaluation, cfg.eval_subset), name


def load_test(cfg) -> Split:
  """The test split of a ``config.data`` block (``eval_split``, its first
  ``eval_subset`` images): what eval mode attacks, never a validation split."""
  return _first(_reader(cfg)(cfg.eval_split), cfg.eval_subset)


def input_spec(dataset: str) -> tuple[tuple[int, int, int], int]:
  """(image shape, number of classes) of ``dataset``, from either source."""
  if dataset in SPECS:
    return SPECS[dataset][0], SPECS[dataset][1]
  if dataset in _TFDS:
    return _TFDS[dataset][1], _TFDS[dataset][2]
  raise ValueError(f'unknown dataset {dataset!r}; expected one of {sorted({*SPECS, *_TFDS})}')


def epoch_order(num_examples: int, seed: int, epoch: int) -> np.ndarray:
  """The training order of one epoch: a permutation fixed by (seed, epoch), so
  a resumed run knows where the data order stands from the step alone."""
  return np.random.default_rng([seed, epoch]).permutation(num_examples)


# --------------------------------------------------------------------------- #
# On-device augmentation (inside the jitted step)
# --------------------------------------------------------------------------- #


def augment(key, images_u8, pad: int = 4, flip: bool = True):
  """Random crop with zero padding ``pad`` and random horizontal flip.

  ``images_u8`` uint8 [B, H, W, C] -> float32 [0, 1]. Example ``b`` uses
  ``fold_in(key, b)``, so the result does not depend on how the batch is
  sharded.
  """
  import jax
  import jax.numpy as jnp

  b, h, w, _ = images_u8.shape
  x = jnp.pad(images_u8, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(i, img):
    k = jax.random.fold_in(key, i)
    kc, kf = jax.random.split(k)
    dy, dx = jax.random.randint(kc, (2,), 0, 2 * pad + 1)
    out = jax.lax.dynamic_slice(img, (dy, dx, 0), (h, w, img.shape[-1]))
    if flip:
      out = jnp.where(jax.random.bernoulli(kf), out[:, ::-1], out)
    return out

  return levels(jax.vmap(one)(jnp.arange(b), x))


def levels(images_u8):
  """uint8 images -> float32 [0, 1] on device, bit-identical to ``to_float``:
  the attack's table of the 256 levels (``jaxpix.attack.perturb.LEVELS``), not
  a division, which XLA would round differently for some levels."""
  import jax.numpy as jnp

  from jaxpix.attack import perturb

  return jnp.asarray(perturb.LEVELS)[images_u8.astype(jnp.int32)]
