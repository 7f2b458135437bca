"""What ``run.py`` dispatches to, by ``config.mode``, and loading configs by name."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys

import ml_collections

MODES = ('train', 'eval', 'suite')
CONFIGS = pathlib.Path(__file__).resolve().parents[1] / 'configs'


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.mode == 'train':
    from jaxpix import train

    return train.train_and_evaluate(config, workdir)
  if config.mode == 'eval':
    from jaxpix import evaluate

    return evaluate.evaluate(config, workdir)
  if config.mode == 'suite':
    from jaxpix import suite

    return suite.run(config, workdir)
  raise ValueError(f'config.mode must be one of {MODES}, got {config.mode!r}')


def load_config(spec: str) -> ml_collections.ConfigDict:
  """``'cifar_apr.py:cpu,de'`` (a file in configs/, or a path) -> its config."""
  name, _, arg = spec.partition(':')
  path = pathlib.Path(name)
  if not path.suffix:
    path = path.with_suffix('.py')
  if not path.exists():
    path = CONFIGS / path.name
  if not path.exists():
    raise FileNotFoundError(
      f"config file {name!r} not found (looked in {CONFIGS} too); expected e.g. 'cifar_apr.py:cpu'"
    )
  module_spec = importlib.util.spec_from_file_location(f'_jaxpix_config_{path.stem}', path)
  module = importlib.util.module_from_spec(module_spec)
  root = str(CONFIGS.parent)
  if root not in sys.path:  # config files import configs.common
    sys.path.insert(0, root)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def apply_overrides(config: ml_collections.ConfigDict, overrides: str) -> None:
  """``'train.epochs=2,data.train_subset=10000'`` -> set those fields (values
  parsed as Python literals, else kept as strings). Unknown fields are an error."""
  for item in (s.strip() for s in overrides.split(',') if s.strip()):
    key, eq, raw = item.partition('=')
    if not eq:
      raise ValueError(f'override {item!r} must read field=value, e.g. train.epochs=2')
    try:
      value = ast.literal_eval(raw.strip())
    except (ValueError, SyntaxError):
      value = raw.strip()
    node = config
    *path, last = key.strip().split('.')
    try:
      for p in path:
        node = node[p]
      old = node[last]
    except (KeyError, AttributeError):
      raise ValueError(f'override {item!r}: the config has no field {key.strip()!r}') from None
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[last] = value
