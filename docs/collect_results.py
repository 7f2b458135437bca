"""Copies the small outputs of finished runs from their workdirs into docs/results/.

    python docs/collect_results.py workdir/table1_lenet:table1 workdir/keras_lenet:keras_lenet
    python docs/collect_results.py --checkpoints workdir/table1_paired_full:table1_paired_full

For each ``WORKDIR:NAME`` it copies, keeping the folder layout (the suites'
results.md link their figures by relative path): every ``results.json``,
``results.md``, PNG figure and per-image attack log (``attack_*.jsonl``), and
each training run's ``config.json`` and ``metrics.jsonl``. Checkpoints stay
behind unless ``--checkpoints`` is given: then each training run's latest
checkpoint (one step folder, a few MB at the CPU widths) comes too, so that
the committed model can be evaluated again (``--config.checkpoint`` names
the copied ``train`` folder) and a suite copied back into a workdir resumes
from it. A step folder an earlier collection copied there (the run was then
still training) is removed, so each copied ``checkpoints`` folder holds
that latest step alone. The commands in docs/results.md train models of
the same recipe, but not bit for bit the same parameters on another machine
(docs/results.md): a retrained model is another sample of the recipe, not
the committed one.
Symbolic links to other folders (a suite row reusing another suite's run)
are followed, so each copy stands alone. JSON files are written with
absolute paths under the repository's parent folder made relative to the
repository (``jaxpix.records.portable``), so no copy carries this machine's
layout; ``--portable DIR`` rewrites the JSON files already under ``DIR`` so.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxpix import records  # noqa: E402

KEEP = ('results.json', 'results.md', 'config.json', 'metrics.jsonl')
DOCS = pathlib.Path(__file__).resolve().parent / 'results'


def wanted(p: pathlib.Path, latest: dict[pathlib.Path, str] | None = None) -> bool:
  """Whether ``p`` (relative to the workdir) is copied; ``latest`` maps each
  ``checkpoints`` folder to the name of its latest step folder, whose files
  are copied (``None``: no checkpoint is)."""
  if 'checkpoints' in p.parts:
    i = p.parts.index('checkpoints')
    step = p.parts[i + 1] if len(p.parts) > i + 2 else None
    return (
      latest is not None
      and step is not None
      and latest.get(pathlib.Path(*p.parts[: i + 1])) == step
    )
  if p.suffix == '.png':  # a training run's figures are repeated by its evaluation
    return 'train' not in p.parts
  return p.name in KEEP or (p.name.startswith('attack_') and p.suffix == '.jsonl')


def latest_steps(src: pathlib.Path) -> dict[pathlib.Path, str]:
  """Each ``checkpoints`` folder under ``src`` (relative) -> the name of its
  latest complete step folder (orbax names them by step; a save still in
  flight, ``<step>.orbax-checkpoint-tmp-*``, is not one)."""
  out = {}
  for folder, dirs, _ in os.walk(src, followlinks=True):
    if pathlib.Path(folder).name == 'checkpoints':
      steps = [d for d in dirs if d.isdigit()]
      if steps:
        out[pathlib.Path(folder).relative_to(src)] = max(steps, key=int)
  return out


def collect(src: pathlib.Path, dst: pathlib.Path, checkpoints: bool = False) -> int:
  """Copies the wanted files under ``src`` to ``dst``; returns how many.
  ``checkpoints``: each training run's latest checkpoint too."""
  if not src.is_dir():
    raise FileNotFoundError(f'{src} is not a directory; pass WORKDIR:NAME of a finished run')
  latest = latest_steps(src) if checkpoints else None
  n = 0
  for folder, _, files in os.walk(src, followlinks=True):  # a reused row is a symlink
    for f in sorted(files):
      rel = pathlib.Path(folder, f).relative_to(src)
      if wanted(rel, latest):
        out = dst / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src / rel, out)
        if out.suffix == '.json' and 'checkpoints' not in rel.parts:  # orbax's own files
          make_portable(out)
        if out.name == 'commit_success.txt':  # orbax's note of where it saved
          out.write_text(out.read_text().replace(f'{records.REPO}{os.sep}', ''))
        n += 1
  for rel, step in (latest or {}).items():
    prune_steps(dst / rel, step)
  return n


def prune_steps(folder: pathlib.Path, keep: str) -> None:
  """Removes the step folders under a copied ``checkpoints`` folder other
  than ``keep``: those an earlier collection copied while the run trained."""
  for d in sorted(folder.iterdir()) if folder.is_dir() else []:
    if d.is_dir() and d.name.isdigit() and d.name != keep:
      shutil.rmtree(d)
      print(f'{d}: removed, superseded by step {keep}')


def make_portable(path: pathlib.Path) -> bool:
  """Rewrites a JSON file with repository-relative paths; True if it changed."""
  obj = json.loads(path.read_text())
  new = records.portable(obj)
  if new == obj:
    return False
  records.write_json(path, new)
  return True


def main(argv: list[str]) -> None:
  if not argv:
    raise SystemExit(__doc__)
  if argv[0] == '--portable':
    for d in argv[1:]:
      changed = sum(make_portable(p) for p in sorted(pathlib.Path(d).rglob('*.json')))
      print(f'{d}: {changed} JSON files rewritten with relative paths')
    return
  checkpoints = argv[0] == '--checkpoints'
  for arg in argv[checkpoints:]:
    src, sep, name = arg.partition(':')
    if not sep or not name:
      raise SystemExit(f'{arg!r}: expected WORKDIR:NAME, e.g. workdir/table1_lenet:table1')
    n = collect(pathlib.Path(src), DOCS / name, checkpoints)
    print(f'{src} -> {DOCS / name}: {n} files')


if __name__ == '__main__':
  main(sys.argv[1:])
