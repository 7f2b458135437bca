"""``attack_<name>.jsonl``: the resumable per-image results of one attack."""

from __future__ import annotations

import pathlib

import numpy as np

from jaxpix import configs, records


class AttackLog:
  """A protocol header, then one line per attack, and a ``session`` line
  (commit, device, date) each time a run opens it.

  Lines are appended and flushed as images finish (by process 0 only). On
  open, a line torn by a kill is dropped (``records.JsonlLog``); a header
  that differs from this run's protocol is an error naming the differing
  fields.
  """

  def __init__(self, path: pathlib.Path, protocol: dict, session: dict):
    self.path = path
    self._log = records.JsonlLog(path)
    lines = self._log.lines
    self.records: dict[int, dict] = {}
    self.sessions: list[dict] = []
    if lines:
      saved = lines[0].get('protocol') or {}
      diff = configs.differences(saved, protocol)
      if diff:
        raise ValueError(
          f'{path} holds results of another protocol ({"; ".join(diff)}): resuming would '
          'mix them; use another --workdir, or delete the file to attack again'
        )
      self.sessions = [r['session'] for r in lines[1:] if 'session' in r]
      self.records = {r['key']: r for r in lines[1:] if 'key' in r}
    self.sessions.append(session)
    self._log.rewrite(
      [{'protocol': protocol}, *({'session': s} for s in self.sessions), *self.records.values()]
    )

  def append(self, recs: list[dict]) -> None:
    self.records.update({r['key']: r for r in recs})
    self._log.append(recs)


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
      fitness=float(finished['energy'][j]),
      vec=[float(v) for v in np.asarray(finished['vec'][j])],
    )
    if targeted:
      r['target'] = g % num_classes
      r['target_prob'] = float(finished['target_prob'][j])
    out.append(r)
  return out
