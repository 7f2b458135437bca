"""The house style (STYLE.md): one formatter for the whole tree, lint clean."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff(*args):
  exe = shutil.which('ruff') or str(pathlib.Path(sys.executable).parent / 'ruff')
  return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True)


def test_tree_is_ruff_formatted():
  r = _ruff('format', '--check', '.')
  assert r.returncode == 0, f'run `ruff format .` first:\n{r.stdout}{r.stderr}'


def test_tree_is_lint_clean():
  r = _ruff('check', '.')
  assert r.returncode == 0, f'`ruff check .` reports:\n{r.stdout}{r.stderr}'
