"""What an evaluation attacks: its settings checked, the images chosen, the
attacks listed, and the protocol that a resumed run must match."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from jaxpix import configs, data, restore
from jaxpix.attack import perturb

IMAGE_SETS = ('correct', 'fixed')


def check_eval_config(ecfg) -> None:
  if ecfg.image_set not in IMAGE_SETS:
    raise ValueError(f'config.eval.image_set must be one of {IMAGE_SETS}, got {ecfg.image_set!r}')
  if not isinstance(ecfg.targeted_images, int) or ecfg.targeted_images < 0:
    raise ValueError(
      f'config.eval.targeted_images must be an int >= 0 (0: all), got {ecfg.targeted_images!r}'
    )
  if not isinstance(ecfg.num_images, int) or ecfg.num_images < 1:
    raise ValueError(f'config.eval.num_images must be a positive int, got {ecfg.num_images!r}')
  for field, least in (
    ('popsize', 4),
    ('maxiter', 0),
    ('pixels', 1),
    ('step', 0),
    ('gradient_ranked', 0),
    ('random_search', 0),
  ):
    v = ecfg[field]
    if isinstance(v, bool) or not isinstance(v, int) or v < least:
      raise ValueError(f'config.eval.{field} must be an int >= {least}, got {v!r}')
  if ecfg.mode not in perturb.MODES:
    raise ValueError(f'config.eval.mode must be one of {perturb.MODES}, got {ecfg.mode!r}')
  if not ecfg.temperature > 0:
    raise ValueError(
      f'config.eval.temperature must be > 0 (1 = the model as deployed), got {ecfg.temperature!r}'
    )
  if not isinstance(ecfg.batch_size, int) or ecfg.batch_size < 1:
    raise ValueError(f'config.eval.batch_size must be a positive int, got {ecfg.batch_size!r}')


def choose(ecfg, ok: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
  """(the images to attack, the fixed set or None) for ``config.eval``;
  ``ok``: bool over the test images, classified correctly."""
  if ecfg.image_set == 'fixed':
    fixed = select_images(np.arange(len(ok)), ecfg.num_images, ecfg.seed)
    return fixed[ok[fixed]], fixed
  return select_images(np.flatnonzero(ok), ecfg.num_images, ecfg.seed), None


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
  kind: str  # 'de', 'extreme', 'ranked' or 'random'
  targeted: bool
  predict: object
  max_budget: int


def attack_specs(ecfg, predict, classifier, image_shape) -> list[AttackSpec]:
  """The attacks ``config.eval`` asks for: DE untargeted always; targeted DE,
  the exhaustive extreme-colour search, its gradient-ranked order and the
  black-box random search if asked; for the autoencoder defence,
  DE on the bare ``classifier`` too."""
  h, w, c = image_shape
  de_budget = ecfg.popsize * (ecfg.maxiter + 1)
  attacked = tempered(predict, ecfg.temperature)
  specs = [AttackSpec('de', 'de', False, attacked, de_budget)]
  if ecfg.targeted:
    specs.append(AttackSpec('de_targeted', 'de', True, attacked, de_budget))
  if ecfg.extreme_colour:
    specs.append(AttackSpec('extreme_colour', 'extreme', False, attacked, h * w * 2**c))
  if ecfg.gradient_ranked:
    specs.append(AttackSpec('gradient_ranked', 'ranked', False, attacked, ecfg.gradient_ranked))
  if ecfg.random_search:
    specs.append(AttackSpec('random_search', 'random', False, attacked, ecfg.random_search))
  if classifier is not None:
    specs.append(AttackSpec('de_classifier', 'de', False, classifier, de_budget))
  return specs


# Config fields that cannot change what an attack finds on an image, given the
# checkpoint's parameters (hashed) and the attacked images (their content is
# hashed): where files are, how the run reports, which attacks run (each has
# its own log), how training ran. Every other field is part of the protocol,
# so a field added to the configs later is compared without anyone listing it.
NOT_IN_PROTOCOL = (
  'mode',
  'checkpoint',
  'seed',  # initialisation and training order: the parameters are hashed
  'train',
  'suite',
  'data.dir',
  'data.source',
  'data.train_split',
  'data.validation_size',
  'data.split_seed',
  'data.train_subset',
  'data.augment',
  'defence.classifier',  # the classifier's parameters are hashed instead
  'defence.teacher',
  'defence.autoencoder',  # a reused autoencoder: its parameters are hashed
  'eval.progress',
  'eval.gallery',
  'eval.batch_size',
  'eval.num_images',  # with eval.seed, picks the images: hashed instead
  'eval.step',  # the step is recorded
  'eval.targeted',
  'eval.targeted_images',  # recorded for the targeted attack only
  'eval.extreme_colour',
  'eval.gradient_ranked',  # recorded for the gradient-ranked attack only
  'eval.random_search',  # recorded for the random search only
)


def images_digest(images: np.ndarray, labels: np.ndarray, chosen) -> str:
  """sha1 of the chosen images' indices, pixels and labels."""
  return data.digest(images, labels, chosen)


def protocol(config, spec: AttackSpec, step: int, params_sha1: dict, images_sha1: str) -> dict:
  """What an attack log's records depend on; a resumed run must match it.

  Every config field but ``NOT_IN_PROTOCOL`` (by its dotted name), the attack,
  the checkpoint's step and parameter hashes (``params_sha1``: model, and the
  autoencoder's classifier), and the attacked images' hash.
  """
  extra = {'eval.targeted_images': config.eval.targeted_images} if spec.targeted else {}
  if spec.kind == 'ranked':
    extra['eval.gradient_ranked'] = config.eval.gradient_ranked
  if spec.kind == 'random':
    extra['eval.random_search'] = config.eval.random_search
  return dict(
    **extra,
    attack=spec.name,
    step=step,
    **{f'params_sha1.{k}': v for k, v in params_sha1.items()},
    images_sha1=images_sha1,
    **configs.flatten(config, NOT_IN_PROTOCOL),
  )


def results_header(config, step: int, session: dict) -> dict:
  """The fields every evaluation's results.json starts with: the config, its
  seeds, the checkpoint and step, the run's provenance, the test split."""
  return dict(
    config=json.loads(config.to_json_best_effort()),
    seed=config.seed,
    eval_seed=config.eval.seed,
    checkpoint=restore.source(config.checkpoint),
    step=step,
    **session,
    test_split=config.data.eval_split,
  )
