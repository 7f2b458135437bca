"""What runs leave on disk: append-only JSON-lines logs that survive a kill,
strict JSON files written atomically, and the provenance stamped on results.

Only process 0 writes (``writer``); every process reads.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import fcntl
import gzip
import json
import os
import pathlib
import secrets
import socket
import subprocess
from collections.abc import Callable

import jax
import numpy as np


def writer() -> bool:
  return jax.process_index() == 0


def gz(path: str | pathlib.Path) -> pathlib.Path:
  """Where ``path`` lies compressed: ``<path>.gz`` (how docs/results keeps
  the per-image logs)."""
  path = pathlib.Path(path)
  return path.with_name(path.name + '.gz')


def read_text(path: str | pathlib.Path) -> str:
  """``path``'s text, or, where only its compressed copy (:func:`gz`) is
  there, that copy's."""
  path = pathlib.Path(path)
  if not path.exists() and gz(path).exists():
    return gzip.decompress(gz(path).read_bytes()).decode()
  return path.read_text()


class JsonlLog:
  """A JSON-lines file: ``lines`` (parsed) on open, ``append`` (flushed and
  fsynced, so a kill loses at most the line being written) and ``rewrite``
  (atomic).

  A kill can tear only the last line: an unparsable last line is dropped
  (call ``rewrite`` to drop it from the file too); an unparsable line before
  it is an error, since then the file was damaged some other way.

  Process 0 writes it; with ``own=True`` it is this process's own file (a
  shard of a log that several processes fill) and this process writes it.
  Where only its compressed copy is there (a committed log copied back into
  a workdir), it is read from that, and written out whole before anything
  is appended.
  """

  def __init__(self, path: str | pathlib.Path, own: bool = False):
    self.path = pathlib.Path(path)
    self._writes = own or writer()
    packed = not self.path.exists() and gz(self.path).exists()
    raw = read_text(self.path) if self.path.exists() or packed else ''
    text = raw.splitlines()
    self.lines: list[dict] = []
    for j, ln in enumerate(text):
      try:
        self.lines.append(json.loads(ln))
      except json.JSONDecodeError:
        if j != len(text) - 1:
          raise ValueError(
            f'{self.path} line {j + 1} is not JSON (and is not the last line, so a '
            'kill did not tear it); delete the file, or the line, to go on'
          ) from None
    # A torn last line (or one that lost its newline) is cut off the file
    # before anything is appended, so no record is written onto it.
    if packed or (raw and (len(self.lines) < len(text) or not raw.endswith('\n'))):
      self.rewrite(self.lines)

  def rewrite(self, lines: list[dict]) -> None:
    self.lines = list(lines)
    if self._writes:
      text = ''.join(json.dumps(_finite(r), allow_nan=False) + '\n' for r in self.lines)
      replace_text(self.path, text)

  def append(self, lines: list[dict]) -> None:
    self.lines.extend(lines)
    if self._writes:
      with self.path.open('a') as f:
        for r in lines:
          f.write(json.dumps(_finite(r), allow_nan=False) + '\n')  # strict JSON
        f.flush()
        os.fsync(f.fileno())


def _finite(obj):
  """NaN/inf -> None, so that a JSON file is strict JSON (null = undefined,
  e.g. the mean confidence of successful attacks when none succeeded)."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


# The repository (when jaxpix runs from a clone): absolute paths under its
# parent folder are written relative to it in results files, so that a
# committed file does not carry the machine's layout.
REPO = pathlib.Path(__file__).resolve().parents[1]


def portable(obj, root: pathlib.Path = REPO):
  """``obj`` with every string that is an absolute path under ``root``'s
  parent rewritten relative to ``root`` (``/x/shared/data`` -> ``../shared/data``)."""
  if isinstance(obj, str) and obj.startswith('/'):
    p = pathlib.Path(obj)
    if p.is_relative_to(root.parent):
      return os.path.relpath(p, root)
    return obj
  if isinstance(obj, dict):
    return {k: portable(v, root) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [portable(v, root) for v in obj]
  return obj


def check_workdir(workdir) -> pathlib.Path:
  """``workdir`` as a path, refused where it is empty or blank (an unset
  shell variable would otherwise put a run's files in the current folder)."""
  if workdir is None or not str(workdir).strip():
    raise ValueError(
      f'the workdir is empty ({workdir!r}): an unset variable? Give the folder for this '
      "run's files, e.g. --workdir=workdir/apr"
    )
  return pathlib.Path(workdir)


def replace_text(path: str | pathlib.Path, text: str) -> None:
  """Writes ``text`` to ``path`` atomically and durably: into a new temporary
  file beside it (created exclusively, so a planted file or link there is
  never followed), synced, then renamed over ``path`` and the folder synced:
  a kill or a power loss leaves the old file or the new one, never half."""
  path = pathlib.Path(path)
  tmp = path.parent / f'.{path.name}.{secrets.token_hex(6)}.tmp'
  # Created exclusively (never through a file or link planted at its name),
  # with the permissions open() would give (the umask applies).
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
  try:
    with os.fdopen(fd, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise
  with contextlib.suppress(OSError):  # not every filesystem syncs a folder
    folder = os.open(path.parent, os.O_RDONLY)
    try:
      os.fsync(folder)
    finally:
      os.close(folder)


def write_json(path: str | pathlib.Path, obj) -> None:
  """Writes strict JSON atomically (:func:`replace_text`), paths under the
  repository's parent folder relative to the repository."""
  replace_text(path, json.dumps(portable(_finite(obj)), indent=1, allow_nan=False) + '\n')


def provenance() -> dict:
  """Commit, device and versions, stamped on every results.json."""
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    commit = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    commit += '-dirty' if dirty else ''
  except (OSError, subprocess.CalledProcessError):
    commit = 'unknown'
  d = jax.devices()
  return dict(
    commit=commit,
    device=f'{len(d)} x {d[0].device_kind} ({d[0].platform})',
    jax=jax.__version__,
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  )


def progress_bar(total: int, initial: int, desc: str, unit: str, enabled: bool):
  """The one tqdm bar of training and evaluation."""
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=initial, unit=unit, desc=desc, disable=not enabled)


# Steps the host may queue ahead of the device before it waits for the oldest:
# enough to prepare the next batches while the device works, few enough that
# the bar's count and ETA follow the device.
AHEAD = 4


class StepBar:
  """The training bar (:func:`progress_bar`), counting finished steps.

  Dispatch is asynchronous: ``train_step`` returns once the step is queued. A
  bar advanced per call runs ahead of the device, then stalls wherever the loop
  next reads a result (the metrics, every ``log_every`` steps), and its ETA
  swings between minutes and hours. Each step's loss (a scalar of its own; the
  state's buffers are donated to the next step) tells when that step is done:
  the bar advances as those become ready, and the host waits for the oldest
  once ``AHEAD`` steps are queued. The postfix shows the epoch reached and
  the latest evaluation accuracy beside the logged loss and rate.
  """

  def __init__(self, total: int, start: int, enabled: bool, epoch: Callable[[int], float]):
    self.bar = progress_bar(total, start, 'train', 'step', enabled)
    self.epoch, self.done = epoch, start  # epoch: steps done -> epochs done
    self.queued = collections.deque()  # (step count once finished, its loss)
    self.postfix = {'epoch': f'{epoch(start):.2f}'}

  def queue(self, done: int, loss: jax.Array) -> None:
    """Step ``done`` was dispatched; ``loss`` is ready once it has finished."""
    self.queued.append((done, loss))
    while len(self.queued) > AHEAD:
      self._advance(wait=True)
    while self.queued and self.queued[0][1].is_ready():
      self._advance(wait=False)

  def wait(self) -> None:
    """Waits for every queued step, advancing as each finishes: called where
    the loop is about to read a result, which waits for all of them anyway."""
    while self.queued:
      self._advance(wait=True)

  def show(self, **values: str) -> None:
    self.postfix.update(values)
    self.bar.set_postfix(self.postfix)

  def close(self) -> None:
    self.wait()
    self.bar.close()

  def _advance(self, wait: bool) -> None:
    done, loss = self.queued.popleft()
    if wait:
      loss.block_until_ready()
    self.postfix['epoch'] = f'{self.epoch(done):.2f}'
    self.bar.set_postfix(self.postfix, refresh=False)
    self.bar.update(done - self.done)
    self.done = done


@contextlib.contextmanager
def workdir_lock(workdir: str | pathlib.Path):
  """Holds ``<workdir>/.lock`` (an exclusive advisory lock, released when the
  process ends however it ends) while the body runs: a second run on the same
  workdir is refused, naming the one that holds it, instead of interleaving
  its logs and checkpoints with the first."""
  if not writer():
    yield
    return
  path = pathlib.Path(workdir) / '.lock'
  try:  # never through a link planted there
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
  except OSError as e:
    raise RuntimeError(f'{path} cannot be opened as a lock file ({e}): remove it') from None
  f = os.fdopen(fd, 'r+')
  try:
    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    f.seek(0)
    holder = f.read().strip() or 'another process'
    f.close()
    raise RuntimeError(
      f'{workdir} is in use by {holder}; wait for that run to end, or use another --workdir'
    ) from None
  f.seek(0)
  f.truncate()
  f.write(
    f'pid {os.getpid()} on {socket.gethostname()} since '
    f'{datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")}\n'
  )
  f.flush()
  try:
    yield
  finally:
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()
