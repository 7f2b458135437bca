"""What the repository holds: the library apart from the papers' reproduction,
and under docs/results only what the docs quote and the tests read."""

import ast
import pathlib
import subprocess
import sys

import pytest

from jaxpix.repro import collect_results

REPO = pathlib.Path(__file__).resolve().parents[1]
LIBRARY = [p for p in (REPO / 'jaxpix').rglob('*.py') if 'repro' not in p.parts]


def _imports(path: pathlib.Path) -> set[str]:
  """Every module ``path`` imports, at the top or inside a function."""
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      out |= {node.module} | {f'{node.module}.{a.name}' for a in node.names}
  return out


def test_the_library_imports_nothing_of_the_reproduction():
  assert len(LIBRARY) > 40
  bad = {
    str(p.relative_to(REPO)): sorted(m for m in _imports(p) if m.startswith('jaxpix.repro'))
    for p in LIBRARY
  }
  assert not {k: v for k, v in bad.items() if v}
  # ... nor at run time, through any import chain.
  code = (
    'import sys, jaxpix.attack, jaxpix.build, jaxpix.data, jaxpix.defences, '
    'jaxpix.evaluation, jaxpix.experiment, jaxpix.figures, jaxpix.models, jaxpix.report, '
    'jaxpix.restore, jaxpix.train, jaxpix.zoo\n'
    "print(sorted(m for m in sys.modules if m.startswith('jaxpix.repro')))"
  )
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO)
  assert out.returncode == 0, out.stderr
  assert out.stdout.strip() == '[]'


def test_docs_results_holds_no_checkpoint_and_only_figures_a_page_links():
  root = REPO / 'docs' / 'results'
  assert not [p for p in root.rglob('checkpoints') if p.is_dir()]
  assert not list(root.rglob('*.ocdbt'))
  linked = collect_results.linked_figures(REPO)
  figures = {p.resolve() for p in root.rglob('*.png')}
  assert figures and figures <= linked, sorted(str(p) for p in figures - linked)[:5]
  assert not list(root.rglob('attack_*.jsonl'))  # compressed: attack_*.jsonl.gz
  assert len(list(root.rglob('attack_*.jsonl.gz'))) > 50


def test_every_local_link_of_the_docs_resolves():
  pages = collect_results.doc_pages(REPO) + sorted((REPO / 'docs' / 'results').rglob('*.md'))
  broken = [
    f'{page.relative_to(REPO)} -> {target}'
    for page in pages
    for target in collect_results.links(page)
    if not target.exists()
  ]
  assert not broken, broken[:10]


def test_tidy_keeps_linked_figures_and_unlinks_the_rest(tmp_path):
  (tmp_path / 'docs' / 'results' / 's' / 'r' / 'checkpoints' / '5').mkdir(parents=True)
  res = tmp_path / 'docs' / 'results' / 's'
  for f in ('a.png', 'r/b.png', 'r/attack_de.jsonl'):
    (res / f).write_text('{"i": 1}\n')
  (res / 'results.md').write_text(
    '# T\n\n![a](a.png)\n\nPer row: r: [b.png](r/b.png)\n\n![gone](r/b.png)\nend\n'
  )
  (tmp_path / 'README.md').write_text('See ![a](docs/results/s/a.png).\n')
  done = collect_results.tidy(tmp_path / 'docs' / 'results', tmp_path)
  assert not (res / 'r' / 'checkpoints').exists() and not (res / 'r' / 'b.png').exists()
  assert (res / 'a.png').exists()
  assert collect_results.records.read_text(res / 'r' / 'attack_de.jsonl') == '{"i": 1}\n'
  assert (res / 'results.md').read_text() == '# T\n\n![a](a.png)\n\nend\n'
  assert len(done) == 4
  assert collect_results.tidy(tmp_path / 'docs' / 'results', tmp_path) == []


def _tracked_bytes() -> int:
  files = subprocess.run(
    ['git', 'ls-files', '-z'], capture_output=True, cwd=REPO, check=True
  ).stdout.split(b'\0')
  return sum(
    (REPO / f.decode()).stat().st_size for f in files if f and (REPO / f.decode()).is_file()
  )


def test_tracked_files_stay_under_25_mb():
  if not (REPO / '.git').exists():
    pytest.skip('not a git checkout')
  assert _tracked_bytes() < 25e6
