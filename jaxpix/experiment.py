"""What ``run.py`` dispatches to, by ``config.mode``."""

from __future__ import annotations

import ml_collections

MODES = ('train', 'eval', 'suite')


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
