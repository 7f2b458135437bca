"""Experiment configs, in the package (as big_vision's): each module has a
``get_config(arg)`` returning an ``ml_collections.ConfigDict``; ``arg`` is the
comma-separated variants after the colon (``cifar_apr.py:cpu,de``).

``run.py --config configs/cifar_apr.py:cpu`` reads the file (``configs/`` at
the repository root is a link to this folder); code loads them by name with
:func:`load`, which also works after a non-editable ``pip install``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import math
import pathlib

import ml_collections

HERE = pathlib.Path(__file__).resolve().parent


def names() -> list[str]:
  """The configs shipped with jaxpix."""
  return sorted(p.stem for p in HERE.glob('*.py') if p.stem not in ('__init__', 'common'))


def load(spec: str) -> ml_collections.ConfigDict:
  """``'cifar_apr:cpu,de'`` (or ``'cifar_apr.py:cpu,de'``, or a path to a
  config file outside the package, ``./mine.py:cpu``) -> its config. A bare
  name is always a jaxpix config, never a file of the current folder."""
  name, _, arg = spec.partition(':')
  path = pathlib.Path(name)
  path = path if path.suffix else path.with_suffix('.py')
  # A bare name is one of ours, whatever files the current folder holds; a
  # user's file is named by a path (a folder in it: ./my_config.py).
  bare = '/' not in name  # ./mine.py is a path, mine.py a name
  ours = path.stem in names() and (
    bare
    or (path.is_file() and path.resolve().parent == HERE)
    or (not path.exists() and path.parent.name == 'configs')  # run.py's spelling, elsewhere
  )
  if ours:
    module = importlib.import_module(f'jaxpix.configs.{path.stem}')
  elif not bare and path.is_file():
    module_spec = importlib.util.spec_from_file_location(f'_jaxpix_config_{path.stem}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  else:
    raise FileNotFoundError(
      f'config {name!r} is neither a jaxpix config ({", ".join(names())}) nor a file'
      + (f' (a file of yours: give its path, e.g. ./{path})' if bare else '')
    )
  return module.get_config(arg or None)


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  """Sets ``config.<field>`` (dotted) to ``value``; an unknown field is an
  error, and an int given for a float field becomes a float."""
  node = config
  *path, last = field.split('.')
  try:
    for p in path:
      node = node[p]
    old = node[last]
  except (KeyError, AttributeError):
    raise ValueError(f'the config has no field {field!r}') from None
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  node[last] = value


def parse_overrides(overrides: str) -> list[tuple[str, str, object]]:
  """``'train.epochs=2,data.train_subset=10000'`` (a suite's ``suite.set``)
  -> [(item, field, value)]; values are Python literals, else kept as strings."""
  out = []
  for item in (s.strip() for s in overrides.split(',') if s.strip()):
    key, eq, raw = item.partition('=')
    if not eq:
      raise ValueError(f'override {item!r} must read field=value, e.g. train.epochs=2')
    try:
      value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      value = raw.strip()
    out.append((item, key.strip(), value))
  return out


def apply_overrides(config: ml_collections.ConfigDict, overrides: str) -> None:
  """Sets the fields of ``overrides`` (:func:`parse_overrides`)."""
  for item, key, value in parse_overrides(overrides):
    try:
      set_field(config, key, value)
    except ValueError as e:
      raise ValueError(f'override {item!r}: {e}') from None


def flatten(config, ignore: tuple[str, ...] = ()) -> dict:
  """``{'model.width': 0.25, 'defence.adv.k': 4, ...}``: every leaf field of
  ``config`` by its dotted name, except those under a prefix in ``ignore``
  (``'train'`` drops the whole block, ``'data.dir'`` one field). Tuples
  become lists, as JSON reads them back."""
  out = {}

  def walk(node, prefix):
    for key in sorted(node.keys()):
      name = f'{prefix}{key}'
      if any(name == i or name.startswith(i + '.') for i in ignore):
        continue
      value = node[key]
      if isinstance(value, ml_collections.ConfigDict):
        walk(value, name + '.')
      else:
        out[name] = list(value) if isinstance(value, tuple) else value

  walk(config, '')
  return out


# Fields added after checkpoints and attack logs were written, with the value
# that does what the code did before they existed: a record that lacks one was
# made with that value, so only another value is a change.
ADDED = {'defence.autoencoder': '', 'defence.ae_weight_decay': -1.0, 'defence.replay': False}


def from_dict(saved: dict) -> ml_collections.ConfigDict:
  """A config a run saved (its ``config.json``, nested) made whole again:
  fields added to jaxpix since take the value of the behaviour the run had
  (:data:`ADDED`), else today's default; a field jaxpix no longer has is
  dropped (nothing reads it)."""
  from jaxpix.configs import common

  config = common.base(saved.get('data', {}).get('dataset', 'cifar10'))
  for field, value in ADDED.items():
    set_field(config, field, value)
  for field, value in flatten(ml_collections.ConfigDict(saved)).items():
    try:
      set_field(config, field, tuple(value) if isinstance(value, list) else value)
    except ValueError:
      pass
    except TypeError as e:
      raise ValueError(
        f'config.{field}={value!r} as saved does not fit the field today ({e})'
      ) from None
  return config


def check_finite(config) -> None:
  """Every float field of ``config`` is a finite number, else an error
  naming it (NaN or inf would pass every range check and train or attack on,
  to NaN losses or a meaningless success rate)."""
  for field, value in flatten(config).items():
    values = value if isinstance(value, list) else [value]
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
      raise ValueError(f'config.{field} must be a finite number, got {value!r}')


def differences(saved: dict, now: dict) -> list[str]:
  """``'field: saved X, now Y'`` for every field that differs between two
  :func:`flatten` dicts (a field only one has counts, except one of
  :data:`ADDED` at its old behaviour's value)."""
  missing = object()

  def get(d, k):
    return d.get(k, ADDED.get(k, missing))

  return [
    f'{k}: saved {saved.get(k, "(absent)")!r}, now {now.get(k, "(absent)")!r}'
    for k in sorted(set(saved) | set(now))
    if get(saved, k) != get(now, k)
  ]
