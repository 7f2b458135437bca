"""What an evaluation attacks: its settings checked, the images chosen, the
attacks listed, and the protocol that a resumed run must match."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from jaxpix import build
from jaxpix.attack import perturb


def check_eval_config(ecfg) -> None:
  if not isinstance(ecfg.num_images, int) or ecfg.num_images < 1:
    raise ValueError(f'config.eval.num_images must be a positive int, got {ecfg.num_images!r}')
  if ecfg.popsize < 4 or ecfg.maxiter < 0:
    raise ValueError(
      'config.eval.popsize must be >= 4 and config.eval.maxiter >= 0, got '
      f'{ecfg.popsize} and {ecfg.maxiter}'
    )
  if ecfg.mode not in perturb.MODES:
    raise ValueError(f'config.eval.mode must be one of {perturb.MODES}, got {ecfg.mode!r}')
  if not ecfg.temperature > 0:
    raise ValueError(
      f'config.eval.temperature must be > 0 (1 = the model as deployed), got {ecfg.temperature!r}'
    )
  if not isinstance(ecfg.batch_size, int) or ecfg.batch_size < 1:
    raise ValueError(f'config.eval.batch_size must be a positive int, got {ecfg.batch_size!r}')


def select_images(correct: np.ndarray, n: int, seed: int) -> np.ndarray:
  """``n`` of the correctly classified indices ``correct``, drawn without
  replacement with ``seed`` and sorted (all of them when there are fewer)."""
  correct = np.asarray(correct)
  if n >= len(correct):
    return np.sort(correct)
  return np.sort(np.random.default_rng(seed).choice(correct, n, replace=False))


def tempered(predict, temperature: float):
  """``predict`` with its logits divided by ``temperature``: the same
  decisions, softer probabilities for the attack's fitness."""
  if temperature == 1:
    return predict
  return lambda x: predict(x) / temperature


@dataclasses.dataclass
class AttackSpec:
  """One attack of the evaluation: what it runs and on which keys."""

  name: str
  kind: str  # 'de' or 'extreme'
  targeted: bool
  predict: object
  max_budget: int


def attack_specs(ecfg, predict, classifier, image_shape) -> list[AttackSpec]:
  """The attacks ``config.eval`` asks for: DE untargeted always; targeted DE,
  the exhaustive extreme-colour search if asked; for the autoencoder defence,
  DE on the bare ``classifier`` too."""
  h, w, c = image_shape
  de_budget = ecfg.popsize * (ecfg.maxiter + 1)
  attacked = tempered(predict, ecfg.temperature)
  specs = [AttackSpec('de', 'de', False, attacked, de_budget)]
  if ecfg.targeted:
    specs.append(AttackSpec('de_targeted', 'de', True, attacked, de_budget))
  if ecfg.extreme_colour:
    specs.append(AttackSpec('extreme_colour', 'extreme', False, attacked, h * w * 2**c))
  if classifier is not None:
    specs.append(AttackSpec('de_classifier', 'de', False, classifier, de_budget))
  return specs


def protocol(config, spec: AttackSpec, num_classes: int, step: int, params_sha1: str, chosen):
  """What an attack log's records depend on; a resumed run must match it."""
  ecfg = config.eval
  p = dict(
    build.meta(config, num_classes),
    step=step,
    params_sha1=params_sha1,
    attack=spec.name,
    seed=ecfg.seed,
    images=len(chosen),
    images_sha1=hashlib.sha1(np.asarray(chosen, np.int64).tobytes()).hexdigest()[:16],
    test_split=config.data.eval_split,
    eval_subset=config.data.eval_subset,
  )
  if ecfg.temperature != 1 and spec.name != 'de_classifier':
    p['temperature'] = float(ecfg.temperature)  # absent at 1: older logs still match
  if spec.kind == 'de':
    p.update(
      popsize=ecfg.popsize,
      maxiter=ecfg.maxiter,
      pixels=ecfg.pixels,
      strategy=ecfg.strategy,
      mode=ecfg.mode,
    )
  return p
