"""The house style (STYLE.md): one formatter for the whole tree, lint clean."""

import pathlib
import shutil
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff(*args):
  exe = shutil.which('ruff') or str(pathlib.Path(sys.executable).parent / 'ruff')
  if not pathlib.Path(exe).exists():
    # A failure, not a skip: the test extras install ruff, and a tree that
    # nobody checked must not pass as a checked one.
    pytest.fail("ruff is not installed: `pip install -e '.[test]'` installs it")
  return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)


def test_tree_is_ruff_formatted():
  r = _ruff('format', '--check', '.')
  assert r.returncode == 0, f'run `ruff format .` first:\n{r.stdout}{r.stderr}'


def test_tree_is_lint_clean():
  r = _ruff('check', '.')
  assert r.returncode == 0, f'`ruff check .` reports:\n{r.stdout}{r.stderr}'


def _imports(path: pathlib.Path, modules: set[str]) -> set[str]:
  """The jaxpix modules ``path`` imports (lazily too), as top-level units
  (``jaxpix.attack``, ``jaxpix.evaluation``, ``jaxpix.train`` ...)."""
  import ast

  unit = lambda name: '.'.join(name.split('.')[:2])
  out = set()
  for node in ast.walk(ast.parse(path.read_text())):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith('jaxpix'):
      names = [f'{node.module}.{a.name}' for a in node.names]
    out |= {unit(n) for n in names if n.startswith('jaxpix') and unit(n) in modules}
  return out


def test_jaxpix_has_no_import_cycle_and_no_oversized_module():
  pkg = ROOT / 'jaxpix'
  files = [p for p in pkg.rglob('*.py')]
  unit_of = lambda p: '.'.join(('jaxpix', *p.relative_to(pkg).with_suffix('').parts[:1]))
  modules = {unit_of(p) for p in files}
  graph: dict[str, set[str]] = {m: set() for m in modules}
  for p in files:
    graph[unit_of(p)] |= _imports(p, modules) - {unit_of(p)}
  # Depth-first search for a back edge.
  state: dict[str, int] = {}

  def visit(m, path):
    state[m] = 1
    for d in sorted(graph[m]):
      assert state.get(d) != 1, 'import cycle: ' + ' -> '.join([*path, m, d])
      if d not in state:
        visit(d, [*path, m])
    state[m] = 2

  for m in sorted(modules):
    if m not in state:
      visit(m, [])
  long = {
    str(p.relative_to(ROOT)): n for p in files if (n := len(p.read_text().splitlines())) > 420
  }
  assert not long, f'modules over ~400 lines (split them by job): {long}'
