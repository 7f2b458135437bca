"""What ``run.py`` dispatches to, by ``config.mode``."""

from __future__ import annotations

import pathlib

import ml_collections

MODES = ('train', 'eval', 'suite')
# run.py's default for --compilation_cache: compiled programs persist across
# processes, so the second run of a config (or an eval after its training)
# does not compile the same step or attack again.
DEFAULT_CACHE = pathlib.Path('~/.cache/jaxpix/xla').expanduser()


def enable_compilation_cache(directory) -> None:
  """JAX's persistent compilation cache in ``directory`` (created if
  missing); programs that take under a second to compile are not stored."""
  import jax

  path = pathlib.Path(directory).expanduser()
  path.mkdir(parents=True, exist_ok=True)
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.mode == 'train':
    from jaxpix import train

    return train.train_and_evaluate(config, workdir)
  if config.mode == 'eval':
    from jaxpix import evaluation

    return evaluation.evaluate(config, workdir)
  if config.mode == 'suite':
    from jaxpix import suite

    return suite.run(config, workdir)
  raise ValueError(f'config.mode must be one of {MODES}, got {config.mode!r}')
