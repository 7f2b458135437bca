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
    'cifar10': ((32, 32, 3), 10, {'train': [f'train_{k}.npz' for k in range(1, 6)],
                                  'test': ['test.npz']}),
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
        f'{", ".join(files[split])} (for this repository: ../shared/data/{dataset})')
  images, labels = [], []
  for name in files[split]:
    path = directory / name
    if not path.is_file():
      raise FileNotFoundError(f'{path} is missing; {dataset} {split} needs {files[split]} in '
                              f'{directory}')
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
      raise ValueError(f'{path}: "images" must be uint8 [N, {", ".join(map(str, shape))}], got '
                       f'{x.dtype} {list(x.shape)}')
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
      raise ValueError(f'{path}: "labels" must be integers of shape [{len(x)}], got {y.dtype} '
                       f'{list(y.shape)}')
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f'{path}: labels must lie in [0, {num_classes}), got min {y.min()} and '
                       f'max {y.max()}')
    images.append(x)
    labels.append(y.astype(np.int32))
  return Split(np.concatenate(images), np.concatenate(labels), num_classes)


def to_float(images: np.ndarray) -> np.ndarray:
  """uint8 images -> float32 in [0, 1], exactly ``uint8 / 255``."""
  return images.astype(np.float32) / np.float32(255)
