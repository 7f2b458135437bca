"""``attack_<name>.jsonl``: the resumable per-image results of one attack."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxpix import configs, records


class AttackLog:
  """A protocol header, then one line per attack, and a ``session`` line
  (commit, device, date) for each run that saved records to it: written
  before the run's first record, so that reopening a finished log (a resumed
  suite re-reading its finished evaluations) does not list a run that
  attacked nothing.

  Lines are appended and flushed as images finish. On open, a line torn by a
  kill is dropped (``records.JsonlLog``); a header that differs from this
  run's protocol is an error naming the differing fields.

  Several processes (each attacks its share of the images): process 0
  appends to the log, process ``i`` to its shard ``<log>.process<i>`` beside
  it (a workdir all processes see, as orbax's checkpoints need too);
  ``gather`` moves the shards' records into the log, where every process then
  reads them. Opening gathers too, so the shards of a killed run are kept
  whatever number of processes resumes it.
  """

  def __init__(self, path: pathlib.Path, protocol: dict, session: dict):
    self.path = path
    self.protocol = protocol
    self._shard = None
    self._log = records.JsonlLog(path)
    lines = self._log.lines
    for f, ls in [(path, lines), *((f, records.JsonlLog(f).lines) for f in self._shards())]:
      diff = configs.differences((ls[0].get('protocol') or {}) if ls else protocol, protocol)
      if diff:
        raise ValueError(
          f'{f} holds results of another protocol ({"; ".join(diff)}): resuming would '
          'mix them; use another --workdir, or delete the file to attack again'
        )
    self.sessions = [r['session'] for r in lines[1:] if 'session' in r]
    self.records: dict[int, dict] = {r['key']: r for r in lines[1:] if 'key' in r}
    self._session = session  # into ``sessions`` and the log with this run's first record
    self._log.rewrite(
      [{'protocol': protocol}, *({'session': s} for s in self.sessions), *self.records.values()]
    )
    self.gather()

  def _shards(self) -> list[pathlib.Path]:
    return sorted(self.path.parent.glob(self.path.name + '.process*'))

  def append(self, recs: list[dict]) -> None:
    if not recs:
      return
    self.records.update({r['key']: r for r in recs})
    new_session = []
    if self._session is not None:
      self.sessions.append(self._session)
      new_session, self._session = [{'session': self._session}], None
    if records.writer():
      self._log.append([*new_session, *recs])
      return
    if self._shard is None:
      self._shard = records.JsonlLog(
        self.path.with_name(f'{self.path.name}.process{jax.process_index()}'), own=True
      )
      if not self._shard.lines:
        self._shard.append([{'protocol': self.protocol}])
    self._shard.append(recs)

  def gather(self) -> None:
    """Every process's records into the log and into every process's
    ``records`` (with several processes, all must call it: it waits for
    them). A record is appended to the log before its shard is deleted, so a
    kill in between repeats it (read once, by key) and loses nothing."""
    if jax.process_count() == 1 and not self._shards():
      return
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(f'{self.path.name}: shards written')
    if records.writer():
      for f in self._shards():
        new = [r for r in records.JsonlLog(f).lines[1:] if 'key' in r]
        self.append([r for r in new if r['key'] not in self.records])
        f.unlink()
    self._shard = None
    multihost_utils.sync_global_devices(f'{self.path.name}: shards gathered')
    lines = records.JsonlLog(self.path).lines
    self.records.update({r['key']: r for r in lines[1:] if 'key' in r})


def records_of(finished: dict, targeted: bool, num_classes: int) -> list[dict]:
  """Log records of the attacks the engine reports finished (``progress=``)."""
  out = []
  for j, g in enumerate(finished['gidx']):
    g = int(g)
    r = dict(
      key=g,
      index=g // num_classes if targeted else g,
      success=bool(finished['success'][j]),
      queries=int(finished['queries'][j]),
      true_prob=float(finished['true_prob'][j]),
      adv_label=int(finished['pred'][j]),
      adv_prob=float(finished['pred_prob'][j]),
      fitness=float(finished['fitness'][j]),
      vec=[float(v) for v in np.asarray(finished['vec'][j])],
    )
    if targeted:
      r['target'] = g % num_classes
      r['target_prob'] = float(finished['target_prob'][j])
    out.append(r)
  return out
