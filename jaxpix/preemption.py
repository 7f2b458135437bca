"""Stopping a run cleanly: SIGTERM (a SLURM time limit, a preempted TPU VM,
``docker stop``) and SIGINT (Ctrl-C).

Training asks for a stop and keeps going to the next step boundary, where it
saves a checkpoint and raises :class:`Stopped`; a second Ctrl-C aborts at
once. Elsewhere (eval mode, suites between rows) a signal raises
:class:`Stopped` where it lands: everything they save is already durable
record by record. ``run.py`` prints the one line of a :class:`Stopped` and
exits with 128 + the signal's number, as a shell reports a killed process.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

import jax
import numpy as np

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(BaseException):  # noqa: N818 - not an error: the run stopped as asked
  """A run stopped by a signal, with everything saved that it had done. A
  ``BaseException``, as ``KeyboardInterrupt``: no ``except Exception`` on the
  way (a checkpoint read, a data load) may take it for a failure of its own.

  Attributes:
    signum: the signal.
    message: what was saved and how to resume.
  """

  def __init__(self, signum: int, message: str):
    super().__init__(message)
    self.signum, self.message = signum, message

  @property
  def exit_code(self) -> int:
    return 128 + self.signum


def _name(signum: int) -> str:
  return signal.Signals(signum).name


def _raise(signum, frame):
  del frame
  raise Stopped(
    signum,
    f'{_name(signum)}: stopped; what had been saved is kept (results per image, '
    'checkpoints): run the same command again to resume',
  )


def install() -> None:
  """SIGTERM and SIGINT raise :class:`Stopped` (``run.py`` installs this;
  training replaces it while it runs, see :class:`Requests`). Only from the
  main thread, where Python runs signal handlers."""
  if threading.current_thread() is threading.main_thread():
    for s in SIGNALS:
      signal.signal(s, _raise)


class Requests:
  """While training runs: the first SIGTERM or SIGINT is recorded
  (``signum``), not raised, so the loop saves at the next step boundary; a
  second SIGINT raises ``KeyboardInterrupt`` at once (the user insists).

  Use as a context manager; outside the main thread it records nothing (no
  handler can be installed there) and the signals act as before.
  """

  def __init__(self):
    self.signum: int | None = None
    self._previous = {}

  def __enter__(self) -> Requests:
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._record) for s in SIGNALS}
    return self

  def __exit__(self, *exc) -> None:
    for s, handler in self._previous.items():
      with contextlib.suppress(TypeError, ValueError):  # a handler not set from Python
        signal.signal(s, handler)

  def _record(self, signum, frame):
    del frame
    if self.signum == signal.SIGINT and signum == signal.SIGINT:
      raise KeyboardInterrupt  # the second Ctrl-C: abort now
    self.signum = self.signum or signum


# With several processes, how often (in steps) they decide together whether to
# save or stop: the all-gather that decides makes the host wait for the device.
AGREE_EVERY = 10


class Saver(Requests):
  """When the training loop saves: every ``every`` steps and at the last
  (``total``), after ``minutes`` of wall time since the last save (0: never),
  and at a stop request (:class:`Requests`), which then ends the run. With
  several processes all of them agree: every ``AGREE_EVERY`` steps (and at
  each scheduled save) the decision is the union of theirs, by one small
  all-gather, so every process saves the same step and stops after it; in
  between they go on, so a stop waits at most that many steps more."""

  def __init__(self, every: int, total: int, minutes: float):
    super().__init__()
    self.every, self.total, self.seconds = every, total, 60.0 * minutes
    self.last = time.monotonic()

  def due(self, done: int) -> tuple[bool, int | None]:
    """(save after step ``done``?, the signal to stop for, or None)."""
    timed = self.seconds > 0 and time.monotonic() - self.last >= self.seconds
    stop = self.signum or 0
    scheduled = done % self.every == 0 or done == self.total
    if jax.process_count() > 1:
      if not scheduled and done % AGREE_EVERY:
        return False, None  # decided together, every AGREE_EVERY steps
      from jax.experimental import multihost_utils

      # A device collective: the host waits here for the queued steps.
      flags = multihost_utils.process_allgather(np.array([timed, stop], np.int32))
      timed, stop = bool(flags[..., 0].max()), int(flags[..., 1].max())
    return bool(scheduled or timed or stop), (stop or None)

  def saved(self) -> None:
    self.last = time.monotonic()


def stop_message(signum: int, done: int, total: int, where) -> str:
  return (
    f'{_name(signum)}: training stopped after step {done} of {total}, saved in {where}; '
    'run the same command again to resume from there'
  )


__all__ = ['SIGNALS', 'Requests', 'Saver', 'Stopped', 'install', 'stop_message']
