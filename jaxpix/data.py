"""Datasets as uint8 arrays: CIFAR-10 and the ImageNet sample from ``.npz`` files.

The offline layout is the one in ``shared/data`` (see its README files):

- CIFAR-10: ``train_1.npz`` ... ``train_5.npz`` and ``test.npz``, each with
  ``images`` uint8 [N, 32, 32, 3] and ``labels`` [N] in [0, 10).
- ImageNet sample: ``imagenet_sample_224.npz`` with ``images`` uint8
  [N, 224, 224, 3] and ``labels`` [N] in [0, 1000); it is one split, ``test``.

Images stay uint8 on the host (4x smaller); consumers divide by 255 on device.
A missing or malformed source raises an error naming the path and what was
expected; there is never a fallback to other data.
"""

from __future__ import annotations

import dataclasses
import pathlib

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


@dataclasses.dataclass(frozen=True)
class Split:
  """One split in memory: ``images`` uint8 [N, H, W, C], ``labels`` int32 [N]."""

  images: np.ndarray
  labels: np.ndarray
  num_classes: int

  def __len__(self):
    return len(self.labels)


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
    except (OSError, ValueError) as e:
      raise ValueError(f'{path} is not a readable .npz file of plain arrays: {e}') from e
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


# --------------------------------------------------------------------------- #
# Splits for training, from a config
# --------------------------------------------------------------------------- #


def load_tfds(dataset: str, split: str, data_dir: str | None) -> Split:
  """Loads a prepared tensorflow-datasets split (array_record, no TensorFlow).

  Only datasets already prepared under ``data_dir`` work offline; the error
  says so rather than falling back to anything else.
  """
  import tensorflow_datasets as tfds

  name = {'cifar10': 'cifar10', 'imagenet': 'imagenet2012'}.get(dataset)
  if name is None:
    raise ValueError(f'dataset {dataset!r} has no tensorflow-datasets source; use source="npz"')
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as e:  # noqa: BLE001 - tfds raises many kinds; re-raised with the fix
    raise FileNotFoundError(
      f'tensorflow-datasets {name}:{split} is not prepared under data_dir={data_dir!r} ({e}); '
      'prepare it on a machine with internet, or set config.data.source="npz" and '
      'config.data.dir to a folder of .npz files'
    ) from e
  rows = [source[i] for i in range(len(source))]
  images = np.stack([r['image'] for r in rows]).astype(np.uint8)
  labels = np.asarray([r['label'] for r in rows], np.int32)
  return Split(images, labels, int(labels.max()) + 1 if dataset != 'cifar10' else 10)


def load(cfg) -> tuple[Split, Split, str]:
  """Train and evaluation splits for a ``config.data`` block.

  With ``validation_size > 0`` the last ``validation_size`` images of a fixed
  permutation of ``train_split`` (seed ``split_seed``) are held out and become
  the evaluation split, so model selection never sees the test images;
  otherwise the evaluation split is ``eval_split``. ``train_subset > 0`` keeps the first that
  many training images (CPU runs). Returns (train, eval, eval split name).
  """
  if cfg.source == 'npz':
    get = lambda split: load_npz(cfg.dataset, split, cfg.dir)
  elif cfg.source == 'tfds':
    get = lambda split: load_tfds(cfg.dataset, split, cfg.dir or None)
  else:
    raise ValueError(f'config.data.source must be "npz" or "tfds", got {cfg.source!r}')
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
  if cfg.train_subset:
    train = Split(
      train.images[: cfg.train_subset], train.labels[: cfg.train_subset], train.num_classes
    )
  if cfg.eval_subset:
    evaluation = Split(
      evaluation.images[: cfg.eval_subset],
      evaluation.labels[: cfg.eval_subset],
      evaluation.num_classes,
    )
  return train, evaluation, name


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
  """uint8 images -> float32 [0, 1] on device, bit-identical to ``to_float``."""
  import jax.numpy as jnp

  return jnp.asarray(_LEVELS)[images_u8.astype(jnp.int32)]


# uint8 / 255 exactly (see jaxpix.attack.perturb): a table, not a division.
_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)
