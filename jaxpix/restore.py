"""Trained models back from their checkpoints: the checkpoint folder of a
workdir, the state, and the deployed model as a pure ``predict``.

A checkpoint of another model (``build.IDENTITY``) is refused before any array
is read. The autoencoder defence's frozen classifier is restored from beside
the autoencoder's workdir (``classifier_dir``).
"""

from __future__ import annotations

import hashlib
import pathlib

import jax
import numpy as np
from flax import nnx

from jaxpix import build, checkpoint, mesh, models


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
  found = False
  if p.is_dir():
    ckpt = checkpoint.Checkpointer(p)
    found = ckpt.latest_step() is not None
    ckpt.close()
  if not found:
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
  with checkpoint.Checkpointer(directory) as ckpt:
    step = config.eval.step or None
    build.check_meta(ckpt.meta(step), build.meta(config, num_classes), ckpt.directory)
    state = ckpt.restore(like, step)
  return graphdef, state, int(state['step'])


def load_classifier(config, num_classes: int) -> Restored:
  """The autoencoder defence's frozen classifier (beside the checkpoint)."""
  workdir = checkpoint_dir(config.checkpoint).parent  # the training workdir
  c = build.frozen_config(config, 'classifier')
  c.checkpoint = str(classifier_dir(config, workdir))
  return load_predict(c, num_classes)


class Restored:
  """A restored model: ``predict`` (pure, eval mode), ``model`` (nnx),
  ``step``; for the autoencoder defence the bare classifier too
  (``classifier``: its predict, ``classifier_model``)."""

  def __init__(self, model: nnx.Module, step: int, classifier: Restored | None = None):
    self.model, self.step = model, step
    self.predict = models.as_predict(model)
    self.classifier = classifier.predict if classifier else None
    self.classifier_model = classifier.model if classifier else None


def load_predict(config, num_classes: int) -> Restored:
  """The deployed model of ``config.checkpoint``."""
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
