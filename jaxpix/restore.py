"""Trained models back from their checkpoints: the checkpoint folder of a
workdir, the state, and the deployed model as a pure ``predict``.

A checkpoint of another model (``build.IDENTITY``) is refused before any array
is read. The autoencoder defence's frozen classifier is restored from beside
the autoencoder's workdir (``classifier_dir``); a trained autoencoder is
reused by another autoencoder run (``reuse_autoencoder``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import pathlib

import jax
import ml_collections
import numpy as np
from flax import nnx

from jaxpix import build, checkpoint, configs, mesh, models, zoo

# config.checkpoint naming a model of the zoo instead of a workdir.
ZOO_PREFIX = 'zoo:'


def run_config(workdir) -> ml_collections.ConfigDict:
  """The config a training run used, from its workdir's ``config.json``
  (:func:`configs.from_dict`)."""
  path = pathlib.Path(workdir) / 'config.json'
  if not path.is_file():
    raise checkpoint.CheckpointError(
      f'{workdir} has no config.json, so it is not the workdir of a training run (run.py '
      'writes one there): point at the folder given as --workdir when it trained'
    )
  return configs.from_dict(json.loads(path.read_text()))


def from_workdir(workdir, step: int | None = None) -> Restored:
  """Any training run's model, rebuilt from the run's own ``config.json``:
  no config to guess.

  Args:
    workdir: the folder a run trained in (``run.py --workdir``), holding
      ``config.json`` and ``checkpoints/``.
    step: which checkpoint (default: the latest).

  Returns:
    :class:`Restored`: ``predict`` (pure, images in [0, 1] -> logits),
    ``model``, ``step``, ``config``; for the autoencoder defence also the
    frozen classifier (from ``<workdir>/classifier``).

  Example::

    restored = restore.from_workdir('workdir/cifar_apr')
    logits = restored.predict(images)
  """
  config = run_config(workdir)
  config.mode, config.checkpoint, config.eval.step = 'eval', str(workdir), step or 0
  with checkpoint.Checkpointer(checkpoint_dir(str(workdir))) as ckpt:
    num_classes = ckpt.meta(step).get('num_classes')
  if num_classes is None:
    raise checkpoint.CheckpointError(
      f'the checkpoint in {workdir} does not record its number of classes (an older '
      'jaxpix wrote it): load it with restore.load_predict(config, num_classes)'
    )
  restored = load_predict(config, num_classes)
  restored.config = config
  return restored


def checkpoint_dir(path: str, key: str = 'checkpoint') -> pathlib.Path:
  """The checkpoint folder of ``path``: a training workdir (its
  ``checkpoints/``) or the folder itself. ``key``: the config field that named
  it, for the error messages."""
  if not path:
    raise ValueError(
      f'config.{key} is empty; set it to a training workdir, e.g. '
      f'--config.{key}=workdir/cifar_baseline'
    )
  p = pathlib.Path(path)
  if (p / 'checkpoints').is_dir():
    p = p / 'checkpoints'
  if not checkpoint.has_checkpoint(p):
    raise checkpoint.CheckpointError(
      f'--config.{key}={str(path)!r} holds no checkpoint: point it at the workdir of a '
      'training run (the folder holding checkpoints/), or train first (mode=train)'
    )
  return p


def classifier_dir(config, workdir) -> pathlib.Path:
  """Where the autoencoder defence's frozen classifier lives: the workdir named
  by ``config.defence.classifier``, else ``<workdir>/classifier``."""
  return pathlib.Path(config.defence.classifier or pathlib.Path(workdir) / 'classifier')


def load_state(config, num_classes: int, classifier=None):
  """(graphdef, state restored from ``config.checkpoint``, step).

  The step is ``config.eval.step`` (0: the latest). ``classifier``: the
  autoencoder defence's frozen classifier ``predict`` (default: restored from
  beside the checkpoint).
  """
  directory = checkpoint_dir(config.checkpoint)
  if config.defence.name == 'autoencoder' and classifier is None:
    classifier = load_classifier(config, num_classes).predict
  model = build.build_model(config, num_classes, classifier)
  tx = build.make_optimizer(config.train, 1)
  graphdef, like = build.init_state(model, tx, config.seed)
  like = jax.device_put(like, mesh.replicated(mesh.make_mesh()))
  # The latest step of a run still training can be pruned while it is read
  # (keep_checkpoints): then the new latest is read instead, a few times.
  for attempt in range(3):
    with checkpoint.Checkpointer(directory) as ckpt:
      step = config.eval.step or _agreed(ckpt.latest_step())
      try:
        saved = ckpt.meta(step)
        build.check_meta(saved, build.meta(config, num_classes), ckpt.directory)
        want = build.shapes(dict(params=like['params'], rest=like['rest']))
        where = f'checkpoint in {ckpt.directory}'
        build.check_structure(
          ckpt.shapes(step), want, saved.get('config', {}), config, num_classes, where
        )
        state = ckpt.restore(like, step)
      except checkpoint.CheckpointError:
        if config.eval.step or attempt == 2 or (ckpt.directory / str(step)).exists():
          raise
        logging.warning('step %d of %s was removed while read (still training?)', step, directory)
        continue
    return graphdef, state, int(state['step'])


def _agreed(step: int | None) -> int | None:
  """Process 0's ``step``, for every process: each must read the same
  checkpoint, though a run still training may save or prune between reads."""
  if jax.process_count() == 1 or step is None:
    return step
  from jax.experimental import multihost_utils

  return int(multihost_utils.broadcast_one_to_all(np.int64(step)))


def load_classifier(config, num_classes: int) -> Restored:
  """The autoencoder defence's frozen classifier (beside the checkpoint)."""
  workdir = checkpoint_dir(config.checkpoint).parent  # the training workdir
  c = build.frozen_config(config, 'classifier')
  c.checkpoint = str(classifier_dir(config, workdir))
  return load_predict(c, num_classes)


# What makes two autoencoder runs train the same autoencoder (the classifier
# in front of which it trains does not: its loss never reaches it).
_AUTOENCODER_FIELDS = ('seed', 'dtype', 'data.', 'train.', 'defence.ae_')


def reusable_autoencoder(config, want: dict) -> pathlib.Path:
  """The checkpoint folder of ``config.defence.autoencoder``, checked to hold
  what this run would train: a finished autoencoder run with this run's
  seed, data settings, schedule and autoencoder fields, whatever its
  classifier (``want``: this run's checkpoint meta). Run before anything
  trains, so a wrong one is refused at once."""
  src = config.defence.autoencoder
  try:
    directory = checkpoint_dir(src, 'defence.autoencoder')
  except checkpoint.CheckpointError as e:
    raise checkpoint.CheckpointError(
      f'{e}; or leave --config.defence.autoencoder empty to train one here'
    ) from None
  with checkpoint.Checkpointer(directory) as other:
    saved, step = other.meta(), other.latest_step()
  if saved.get('defence') != 'autoencoder':
    raise checkpoint.CheckpointError(
      f'--config.defence.autoencoder={src!r} is a run of defence '
      f'{saved.get("defence", "(unrecorded)")!r}, not an autoencoder run: name the workdir '
      'of one, or leave the field empty to train one here'
    )
  if 'config' not in saved:
    raise checkpoint.CheckpointError(
      f'--config.defence.autoencoder={src!r} does not record the config it trained with '
      '(an older jaxpix wrote it), so it cannot be checked to be the autoencoder this run '
      'would train: leave the field empty to train one here'
    )

  def mine(flat):
    return {k: v for k, v in flat.items() if k.startswith(_AUTOENCODER_FIELDS)}

  changed = configs.differences(mine(saved['config']), mine(want['config']))
  if saved.get('total_steps') != want['total_steps']:
    changed.append(f'total steps: saved {saved.get("total_steps")}, now {want["total_steps"]}')
  if saved.get('data_sha1', want.get('data_sha1')) != want.get('data_sha1'):
    changed.append('the training data (its sha1) differ')
  if changed:
    raise ValueError(
      f'--config.defence.autoencoder={src!r} trained another autoencoder than this run '
      f'would ({"; ".join(changed)}): reuse one trained with these settings, or leave '
      'it empty to train one here'
    )
  if step != want['total_steps']:
    raise checkpoint.CheckpointError(
      f'--config.defence.autoencoder={src!r} has trained {step} of its '
      f'{want["total_steps"]} steps: finish it first (run it again), or leave the field '
      'empty to train one here'
    )
  return directory


def reuse_autoencoder(ckpt, state, directory: pathlib.Path, src: str, want: dict):
  """A run that reuses the autoencoder ``src`` (its checkpoint folder
  ``directory``, from :func:`reusable_autoencoder`) starts from a copy of its
  final state, saved as this run's checkpoint: nothing is left to train, and
  eval mode and resuming read it as any checkpoint of this run.
  Returns (state, step)."""
  with checkpoint.Checkpointer(directory) as other:
    step = other.latest_step()
    state = other.restore(state, step)
  ckpt.save(step, state, dict(want, autoencoder_from=str(src)))
  logging.info('reusing the autoencoder of %s (step %d)', src, step)
  return state, step


class Restored:
  """A restored model: ``predict`` (pure, eval mode), ``model`` (nnx),
  ``step``; for the autoencoder defence the bare classifier too
  (``classifier``: its predict, ``classifier_model``)."""

  def __init__(self, model: nnx.Module, step: int, classifier: Restored | None = None):
    self.model, self.step = model, step
    self.config = None  # set by from_workdir
    self.predict = models.as_predict(model)
    self.classifier = classifier.predict if classifier else None
    self.classifier_model = classifier.model if classifier else None


def load_predict(config, num_classes: int) -> Restored:
  """The deployed model of ``config.checkpoint``: a training workdir, or
  ``zoo:NAME`` (a model of :mod:`jaxpix.zoo`)."""
  if config.checkpoint.startswith(ZOO_PREFIX):
    return from_zoo(config, num_classes)
  classifier = (
    load_classifier(config, num_classes) if config.defence.name == 'autoencoder' else None
  )
  graphdef, state, step = load_state(
    config, num_classes, classifier.predict if classifier else None
  )
  # Each process's own copy of the replicated state: the deployed model then
  # runs on this process's devices only (each attacks its share of the
  # images), and process 0 can draw its figures alone.
  local = jax.tree.map(
    lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
    (state['params'], state['rest']),
  )
  return Restored(nnx.merge(graphdef, *local), step, classifier)


def source(path: str) -> str:
  """What ``config.checkpoint`` loads, for the records: the checkpoint folder
  of a workdir, or the zoo name with its file's sha256."""
  if path.startswith(ZOO_PREFIX):
    name = path[len(ZOO_PREFIX) :]
    record = zoo.info(name)
    parts = record.get('parts', {}).values() if record['kind'] == 'pipeline' else [name]
    return path + ' (' + ', '.join(f'{p}: sha256 {zoo.info(p)["sha256"]}' for p in parts) + ')'
  return str(checkpoint_dir(path))


def from_zoo(config, num_classes: int) -> Restored:
  """``config.checkpoint = 'zoo:NAME'``: the zoo's model, refused (naming the
  fields) where it is not the model ``config`` describes, as a checkpoint of
  another model is."""
  name = config.checkpoint[len(ZOO_PREFIX) :]
  try:
    record = zoo.info(name)
  except zoo.ZooError as e:
    raise checkpoint.CheckpointError(f'--config.checkpoint={config.checkpoint!r}: {e}') from None
  if record['kind'] == 'autoencoder':
    raise checkpoint.CheckpointError(
      f'--config.checkpoint={config.checkpoint!r} is an autoencoder alone, which classifies '
      'nothing: name a pipeline of it (zoo.list() names them: *-autoencoder)'
    )
  if record['kind'] == 'pipeline':
    parts = record['parts']
    _check_zoo(parts['classifier'], build.frozen_config(config, 'classifier'), num_classes)
    # The autoencoder is one whatever classifier it was trained before.
    _check_zoo(parts['autoencoder'], config, num_classes, fields=('defence', 'dataset'))
    clf = Restored(zoo.module(parts['classifier']), zoo.info(parts['classifier'])['step'])
    return Restored(zoo.module(name), zoo.info(parts['autoencoder'])['step'], clf)
  if config.defence.name == 'autoencoder':
    raise checkpoint.CheckpointError(
      f'--config.checkpoint={config.checkpoint!r} is a {record["kind"]}, but the config '
      'evaluates the autoencoder defence: name a pipeline (*-autoencoder)'
    )
  _check_zoo(name, config, num_classes)
  return Restored(zoo.module(name), record['step'])


def _check_zoo(name: str, config, num_classes: int, fields=build.IDENTITY) -> None:
  """Refuses zoo model ``name`` where its ``fields`` of the checkpoint meta
  or its arrays' shapes differ from what ``config`` builds."""
  saved = configs.from_dict(zoo.info(name)['config'])
  where = f'zoo model {name!r}'
  mine = {k: v for k, v in build.meta(saved, num_classes).items() if k in fields}
  build.check_meta(mine, build.meta(config, num_classes), where)
  build.check_structure(
    build.structure(saved, num_classes),
    build.structure(config, num_classes),
    configs.flatten(saved),
    config,
    num_classes,
    where,
  )


def params_digest(model) -> str:
  """sha1 of the model's parameters: the attack logs refuse to mix results of
  two different trainings that happen to share model, defence and step."""
  h = hashlib.sha1()
  for path, leaf in sorted(
    nnx.to_flat_state(nnx.state(model, nnx.Param)), key=lambda kv: str(kv[0])
  ):
    h.update(str(path).encode())
    h.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf.get_value()))).tobytes())
  return h.hexdigest()[:16]
