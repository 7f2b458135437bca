"""Trained models by name.

    from jaxpix import zoo
    zoo.list()                                    # the names
    model = zoo.load('resnet18_w0.25-apr')        # predict, params, record
    logits = model.predict(model.params, images)  # images [B, 32, 32, 3] in [0, 1]

Each model is stored as its arrays only (parameters and batch-norm statistics;
no optimiser state) in a safetensors file under ``weights/``, and listed in
``manifest.json`` with the file's sha256, which :func:`load` checks, and its
record: the config it trained with (how to rebuild it), its clean and robust
accuracy, and the results files those come from. An autoencoder defence is
published as its parts (the autoencoder, the classifier) and their pipeline,
which names the parts.

``$JAXPIX_ZOO`` (or ``root=``) points at another folder laid out the same way
(``manifest.json`` and ``weights/``), e.g. a team's own published models.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import pathlib
import re
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np
from flax import nnx
from safetensors import numpy as safetensors_np

from jaxpix import build, configs, models, records

ROOT = pathlib.Path(__file__).resolve().parent
# What a manifest entry is: a classifier (predict -> logits), an autoencoder
# (predict -> reconstructed images) or the pipeline of the two.
KINDS = ('classifier', 'autoencoder', 'pipeline')


class ZooError(ValueError):
  """A name the zoo does not have, or a file that is missing or altered."""


class Pretrained(NamedTuple):
  """A model of the zoo.

  Attributes:
    predict: ``predict(params, images) -> logits`` (an autoencoder's:
      reconstructed images), pure, images float [B, H, W, C] in [0, 1].
    params: its arrays (an ``nnx.State``; a pipeline's: a dict of its parts').
    record: the manifest entry: ``config``, ``clean_accuracy``,
      ``robust``, ``results``, ``sha256``, ...
  """

  predict: Callable
  params: Any
  record: dict


def _root(root) -> pathlib.Path:
  return pathlib.Path(root or os.environ.get('JAXPIX_ZOO') or ROOT)


def manifest(root=None) -> dict:
  """Every model's record, by name."""
  path = _root(root) / 'manifest.json'
  if not path.is_file():
    raise ZooError(f'no zoo manifest at {path}: set $JAXPIX_ZOO (or root=) to a zoo folder')
  return json.loads(path.read_text())


def list(root=None) -> builtins.list[str]:  # noqa: A001 - the zoo's own verb, as torch.hub.list
  """The names of the models the zoo holds."""
  return sorted(manifest(root))


def info(name: str, root=None) -> dict:
  """``name``'s record, without loading its arrays."""
  entries = manifest(root)
  if name not in entries:
    raise ZooError(f'the zoo has no model {name!r}; it has: {", ".join(sorted(entries))}')
  return entries[name]


def load(name: str, root=None) -> Pretrained:
  """Model ``name``: its pure ``predict(params, images)``, ``params`` and
  record. The file's sha256 is checked against the manifest first.

  Example::

    m = zoo.load('resnet18_w0.25-none')
    result = attack.one_pixel(m.predict, x, y, key=jax.random.key(0), params=m.params)
  """
  record = info(name, root)
  if record['kind'] == 'pipeline':
    parts = {role: load(part, root) for role, part in record['parts'].items()}
    ae, clf = parts['autoencoder'].predict, parts['classifier'].predict

    def predict(params, images):
      return clf(params['classifier'], ae(params['autoencoder'], images))

    return Pretrained(predict, {k: p.params for k, p in parts.items()}, record)
  predict, params = models.as_params_predict(module(name, root))
  return Pretrained(predict, params, record)


def module(name: str, root=None) -> nnx.Module:
  """Model ``name`` as an nnx module (eval mode), its arrays loaded. A
  pipeline's is the autoencoder before its classifier."""
  record = info(name, root)
  if record['kind'] == 'pipeline':
    parts = record['parts']
    clf = models.as_predict(module(parts['classifier'], root))
    ae = module(parts['autoencoder'], root)
    return type(ae)(ae.autoencoder, clf)
  config = configs.from_dict(record['config'])
  model = nnx.eval_shape(lambda: _build(config, record))
  graphdef, state = nnx.split(model)
  arrays = _read(name, record, root)
  flat = nnx.to_flat_state(state)
  want = {_key(path): v.get_value() for path, v in flat}
  fits = lambda k: arrays[k].shape == want[k].shape and arrays[k].dtype == want[k].dtype
  if set(want) != set(arrays) or not all(fits(k) for k in want):
    diff = sorted(set(want) ^ set(arrays)) or [k for k in want if not fits(k)]
    raise ZooError(
      f'zoo model {name!r}: its file does not hold the arrays its config builds '
      f'({", ".join(diff[:4])}); the manifest entry and the file disagree'
    )
  loaded = nnx.from_flat_state(
    [(path, v.replace(jax.numpy.asarray(arrays[_key(path)]))) for path, v in flat]
  )
  model = nnx.merge(graphdef, loaded)
  model.eval()
  return model


def _build(config, record) -> nnx.Module:
  # An autoencoder is stored alone: built before the identity it is the
  # pipeline of, its predict returns the reconstruction.
  return build.build_model(config, record['num_classes'], classifier_predict=lambda x: x)


def _key(path) -> str:
  return '/'.join(str(p) for p in path)


def _read(name: str, record: dict, root) -> dict[str, np.ndarray]:
  path = _root(root) / record['file']
  if not path.is_file():
    raise ZooError(
      f'zoo model {name!r}: its file {path} is missing (a partial clone or copy?): '
      'restore it from the repository, or set $JAXPIX_ZOO to a folder that has it'
    )
  digest = sha256(path)
  if digest != record['sha256']:
    raise ZooError(
      f'zoo model {name!r}: {path} has sha256 {digest}, the manifest says '
      f'{record["sha256"]}: the file was altered or is truncated; restore it from the '
      'repository'
    )
  return safetensors_np.load_file(path)


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      h.update(chunk)
  return h.hexdigest()


def publish(name: str, model: nnx.Module, record: dict, root=None) -> dict:
  """Adds ``model`` to the zoo as ``name``: its arrays to
  ``weights/<name>.safetensors``, its record (with ``file`` and ``sha256``)
  to the manifest. ``record`` holds at least ``kind`` and, for a classifier
  or an autoencoder, ``config`` (nested, as a run's ``config.json``) and
  ``num_classes``; a pipeline names its ``parts``. Returns the record."""
  if record.get('kind') not in KINDS:
    raise ValueError(f"record['kind'] must be one of {KINDS}, got {record.get('kind')!r}")
  if not re.fullmatch(r'[A-Za-z0-9][A-Za-z0-9_.+-]*', name) or '..' in name:
    raise ValueError(
      f'zoo name {name!r}: use letters, digits and _ . + - (it names a file), e.g. '
      "'resnet18_w0.25-apr'"
    )
  root = _root(root)
  entries = manifest(root) if (root / 'manifest.json').is_file() else {}
  record = dict(record)
  if record['kind'] != 'pipeline':
    if model is None:
      raise ValueError(f'zoo model {name!r} of kind {record["kind"]!r} needs its module')
    arrays = {
      _key(path): np.asarray(jax.device_get(v.get_value()))
      for path, v in nnx.to_flat_state(nnx.state(model))
    }
    file = pathlib.Path('weights') / f'{name}.safetensors'
    (root / 'weights').mkdir(parents=True, exist_ok=True)
    safetensors_np.save_file(arrays, root / file)
    record.update(file=file.as_posix(), sha256=sha256(root / file))
  entries[name] = record
  records.replace_text(root / 'manifest.json', json.dumps(entries, indent=1, sort_keys=True) + '\n')
  return record


__all__ = [
  'KINDS',
  'Pretrained',
  'ZooError',
  'info',
  'list',
  'load',
  'manifest',
  'module',
  'publish',
]
