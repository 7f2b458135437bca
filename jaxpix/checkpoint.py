"""Checkpoints through one orbax ``CheckpointManager``.

A checkpoint holds two items: ``state``, the training state as a flat dict
keyed by pytree path (readable, and restored into the structure of a freshly
built state, so any mismatch is caught by name), and ``meta``, JSON describing
what produced it (model name, width, defence, dataset, step), which lets a
consumer refuse a checkpoint of another model before touching its arrays.

Orbax writes each step to a temporary folder and renames it when complete, so
a run killed mid-save leaves the previous checkpoints intact.
"""

from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp


def _quiet_closed_loop_noise() -> None:
  """When orbax fails to read a checkpoint, tensorstore's pending callbacks
  try to reach orbax's closed event loop from other threads, and each prints
  a "RuntimeError: Event loop is closed" traceback (as an unraisable
  exception) over the real error. Those, and only those, are dropped once a
  Checkpointer exists; any other unraisable exception is reported as before."""
  previous = sys.unraisablehook
  if getattr(previous, '_jaxpix_quiet', False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if isinstance(exc, RuntimeError) and str(exc) == 'Event loop is closed':
      return
    previous(unraisable)

  hook._jaxpix_quiet = True
  sys.unraisablehook = hook


# The flat key prefix of a replayed run's between-visits state.
REPLAY = "['replay']"


def flat(tree) -> dict[str, Any]:
  """``tree``'s leaves by their key path (``"['params']['conv']..."``), as saved."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in leaves}


def has_checkpoint(directory: str | pathlib.Path) -> bool:
  """Whether ``directory`` holds a complete checkpoint."""
  if not pathlib.Path(directory).is_dir():
    return False
  with Checkpointer(directory) as ckpt:
    return ckpt.latest_step() is not None


class CheckpointError(ValueError):
  """A checkpoint that is missing, corrupted or of another model / config."""


class Checkpointer:
  """Saves and restores training states under ``directory``.

  Args:
    directory: where the step folders go.
    keep: the trainer's handle (it holds the workdir's lock): how many of the
      latest checkpoints to keep; the folder is created if missing, a save
      killed midway (orbax's temporary folder) is removed, and checkpoints
      over ``keep`` (a kill between writing one and deleting the oldest) are
      pruned, oldest first. ``None``: a reader's handle, which changes nothing
      on disk (a reader may look at a run that is still training).
  """

  def __init__(self, directory: str | pathlib.Path, keep: int | None = None):
    self.directory = pathlib.Path(directory).absolute()
    # Orbax logs every save at INFO/WARNING; progress is reported by the caller.
    _quiet_closed_loop_noise()
    logging.getLogger('absl').setLevel(logging.ERROR)
    writer = keep is not None
    self._mngr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=writer, cleanup_tmp_directories=writer, read_only=not writer
      ),
      item_names=('state', 'meta'),
    )
    if writer:
      for s in self.steps()[: max(len(self.steps()) - keep, 0)]:
        self._mngr.delete(s)

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()

  def steps(self) -> list[int]:
    return sorted(self._mngr.all_steps())

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    """Saves asynchronously; ``close()`` makes it durable."""
    self._mngr.save(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardSave(flat(state)), meta=ocp.args.JsonSave(dict(meta, step=step))
      ),
    )

  def delete_after(self, step: int) -> list[int]:
    """Deletes checkpoints newer than ``step`` (a run resumed from an older
    checkpoint replaces them; orbax would otherwise skip saving those steps)."""
    newer = [s for s in self.steps() if s > step]
    for s in newer:
      self._mngr.delete(s)
    return newer

  def meta(self, step: int | None = None) -> dict:
    step = self._step(step)
    try:
      return self._mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # noqa: BLE001 - orbax raises many kinds; re-raised with the path
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointError(
        self._explain(step, f'its metadata cannot be read (orbax: {first})')
      ) from None

  def shapes(self, step: int | None = None) -> dict[str, tuple[int, ...]]:
    """The stored arrays' shapes by flat key (as :func:`flat` names the
    leaves of a state), read from the checkpoint's metadata, no array."""
    step = self._step(step)
    reader = ocp.StandardCheckpointer()
    try:
      tree = reader.metadata(self.directory / str(step) / 'state')
    except Exception as e:  # noqa: BLE001 - re-raised with the path
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointError(
        self._explain(step, f'its array metadata cannot be read (orbax: {first})')
      ) from None
    finally:
      reader.close()
    tree = getattr(tree, 'item_metadata', tree)
    if not hasattr(tree, 'items'):
      raise CheckpointError(
        self._explain(step, 'it cannot be read: corrupted or incomplete (no array metadata)')
      )
    return {k: tuple(v.shape) for k, v in tree.items() if hasattr(v, 'shape')}

  def restore(self, like, step: int | None = None):
    """Restores ``step`` (default: the latest) into the structure of ``like``.

    ``like`` is a state of the expected shapes (arrays or ShapeDtypeStructs);
    its shardings are used for the restored arrays.
    """
    step = self._step(step)
    flat_like = flat(like)
    abstract = {
      k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=getattr(v, 'sharding', None))
      for k, v in flat_like.items()
    }
    # A replayed run's checkpoint also holds what a batch keeps between its
    # visits (jaxpix.steps.with_replay, float32); a loader that wants the
    # model only reads it and drops it.
    for k, shape in self.shapes(step).items():
      if k.startswith(REPLAY) and k not in abstract:
        abstract[k] = jax.ShapeDtypeStruct(shape, jnp.float32)
    try:
      got = self._mngr.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
      )['state']
    except Exception as e:  # noqa: BLE001
      first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
      raise CheckpointError(
        self._explain(
          step,
          'it cannot be read: corrupted or incomplete, or written for another model '
          f'(orbax: {first})',
        )
      ) from None
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, [got[k] for k in flat_like])

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def _step(self, step):
    steps = self.steps()
    if not steps:
      raise CheckpointError(
        f'no checkpoint in {self.directory}; train first or point '
        'config.checkpoint at a workdir that has one'
      )
    if step is None:
      return steps[-1]
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {self.directory}; it has {steps}')
    return step

  def _explain(self, step, what):
    older = [s for s in self.steps() if s < step]
    hint = (
      f' Older checkpoints there are still usable: steps {older} (pick one with '
      'config.train.resume_step=N to train on from it, config.eval.step=N to evaluate it).'
      if older
      else ''
    )
    return f'checkpoint {self.directory / str(step)} cannot be used: {what}.{hint}'
