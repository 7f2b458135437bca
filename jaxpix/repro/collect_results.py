"""Copies the small outputs of finished runs from their workdirs into docs/results/.

    python -m jaxpix.repro.collect_results workdir/table1_lenet:table1 workdir/keras:keras_lenet
    python -m jaxpix.repro.collect_results --figures workdir/table1_paired_full:table1_paired_full
    python -m jaxpix.repro.collect_results --tidy   # after the docs are written

For each ``WORKDIR:NAME`` it copies, keeping the folder layout: every
``results.json`` and ``results.md``, each training run's ``config.json`` and
``metrics.jsonl``, and the per-image attack logs compressed
(``attack_*.jsonl.gz``, and ``certify_*.jsonl.gz``; ``jaxpix.records.read_text`` and the attack logs
read them as they are, and a suite copied back into a workdir resumes from
them). What the repository keeps is what the docs quote and the tests read:

- no checkpoint: trained models are published by name to the zoo
  (``python -m jaxpix.repro.publish_zoo``), as parameters with a sha256;
- a figure only where a doc page links it (README.md, docs/*.md,
  benchmarks/README.md); ``--figures`` copies every evaluation's and
  suite's figures to choose from, and ``--tidy`` then removes those no page
  links, and the links the generated results.md files make to them.

Symbolic links to other folders (a suite row reusing another suite's run)
are followed, so each copy stands alone. JSON files are written with
absolute paths under the repository's parent folder made relative to the
repository (``jaxpix.records.portable``), so no copy carries this machine's
layout; ``--portable DIR`` rewrites the JSON files already under ``DIR`` so.
"""

from __future__ import annotations

import gzip
import json
import os
import pathlib
import re
import shutil
import sys

from jaxpix import records

KEEP = ('results.json', 'results.md', 'config.json', 'metrics.jsonl')
# Per-image logs, kept compressed: the attacks', and randomized ablation's
# certificates (certify_ablation.jsonl).
LOGS = ('attack_', 'certify_')


def _log(p: pathlib.Path) -> bool:
  return p.name.startswith(LOGS) and p.suffix == '.jsonl'


DOCS = records.REPO / 'docs' / 'results'


def doc_pages(repo: pathlib.Path = records.REPO) -> list[pathlib.Path]:
  """The hand-written pages: README.md, docs/*.md, benchmarks/README.md (not
  the results.md files runs generate under docs/results)."""
  pages = [repo / 'README.md', repo / 'benchmarks' / 'README.md', *(repo / 'docs').glob('*.md')]
  return sorted(p for p in pages if p.is_file())


_LINK = re.compile(r'\]\(([^)\s]+)\)|src="([^"]+)"')


def links(page: pathlib.Path) -> set[pathlib.Path]:
  """The local files ``page`` links (markdown links and images, ``src=``),
  resolved."""
  out = set()
  for m in _LINK.finditer(page.read_text()):
    target = (m.group(1) or m.group(2)).split('#')[0]
    if target and '://' not in target:
      out.add((page.parent / target).resolve())
  return out


def linked_figures(repo: pathlib.Path = records.REPO) -> set[pathlib.Path]:
  return {p for page in doc_pages(repo) for p in links(page) if p.suffix == '.png'}


def wanted(p: pathlib.Path) -> bool:
  """Whether ``p`` (relative to the workdir) is a kind of file kept: no
  checkpoint, no training run's figure (its evaluation repeats them)."""
  if 'checkpoints' in p.parts:
    return False
  if p.suffix == '.png':
    return 'train' not in p.parts
  return p.name in KEEP or _log(p)


def collect(src: pathlib.Path, dst: pathlib.Path, figures: bool = False) -> int:
  """Copies the wanted files under ``src`` to ``dst``; returns how many.
  ``figures``: every figure, not only those a doc page links."""
  if not src.is_dir():
    raise FileNotFoundError(f'{src} is not a directory; pass WORKDIR:NAME of a finished run')
  linked = linked_figures()
  n = 0
  for folder, _, files in os.walk(src, followlinks=True):  # a reused row is a symlink
    for f in sorted(files):
      rel = pathlib.Path(folder, f).relative_to(src)
      out = dst / rel
      if not wanted(rel) or (rel.suffix == '.png' and not figures and out.resolve() not in linked):
        continue
      out.parent.mkdir(parents=True, exist_ok=True)
      if _log(out):
        compress(src / rel, records.gz(out))
      else:
        shutil.copyfile(src / rel, out)
        if out.suffix == '.json':
          make_portable(out)
      n += 1
  return n


def compress(src: pathlib.Path, dst: pathlib.Path) -> None:
  """``src`` gzipped to ``dst``, byte for byte the same for the same text
  (no timestamp), so an unchanged log does not show as changed."""
  dst.write_bytes(gzip.compress(src.read_bytes(), compresslevel=9, mtime=0))


def tidy(root: pathlib.Path = DOCS, repo: pathlib.Path = records.REPO) -> list[str]:
  """Makes ``root`` hold what the repository keeps: checkpoint folders
  removed, attack logs compressed, figures no doc page links removed with
  the generated results.md lines and links that show them. Returns what it
  did, a line per change."""
  done = []
  for d in sorted(root.rglob('checkpoints'), reverse=True):
    if d.is_dir():
      shutil.rmtree(d)
      done.append(f'{d.relative_to(repo)}: removed (models are published to jaxpix/zoo)')
  for log in sorted(p for p in root.rglob('*.jsonl') if _log(p)):
    compress(log, records.gz(log))
    log.unlink()
    done.append(f'{log.relative_to(repo)}: compressed')
  keep = linked_figures(repo)
  gone = {p.resolve() for p in root.rglob('*.png') if p.resolve() not in keep}
  for p in sorted(gone):
    p.unlink()
    done.append(f'{p.relative_to(repo)}: removed (no doc page links it)')
  for md in sorted(root.rglob('*.md')):
    text = unlink_missing(md.read_text(), md.parent)
    if text != md.read_text():
      md.write_text(text)
      done.append(f'{md.relative_to(repo)}: links to removed figures dropped')
  return done


def unlink_missing(text: str, base: pathlib.Path) -> str:
  """``text`` (a generated results.md) without the images of PNG files
  missing under ``base``, nor the line listing the rows' figures
  (tables.suite_markdown's "Per row") where none of them is left; a link
  to a missing figure elsewhere becomes its plain name."""
  missing = lambda t: t.endswith('.png') and not (base / t).exists()
  out = []
  for ln in text.splitlines():
    image = re.fullmatch(r'!\[[^\]]*\]\(([^)]+)\)', ln.strip())
    if image and missing(image.group(1)):
      continue
    targets = re.findall(r'\]\(([^)]+\.png)\)', ln)
    if ln.startswith('Per row') and targets and all(missing(t) for t in targets):
      continue
    # Any other link to a missing figure keeps its name, as plain text.
    link = r'\[([^\]]+)\]\(([^)]+\.png)\)'
    out.append(re.sub(link, lambda m: m.group(1) if missing(m.group(2)) else m.group(0), ln))
  return re.sub(r'\n{3,}', '\n\n', '\n'.join(out) + ('\n' if text.endswith('\n') else ''))


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
  if argv[0] == '--tidy':
    print('\n'.join(tidy(pathlib.Path(argv[1]) if len(argv) > 1 else DOCS)) or 'nothing to do')
    return
  figures = argv[0] == '--figures'
  for arg in argv[figures:]:
    src, sep, name = arg.partition(':')
    if not sep or not name:
      raise SystemExit(f'{arg!r}: expected WORKDIR:NAME, e.g. workdir/table1_lenet:table1')
    n = collect(pathlib.Path(src), DOCS / name, figures)
    print(f'{src} -> {DOCS / name}: {n} files')


if __name__ == '__main__':
  main(sys.argv[1:])
