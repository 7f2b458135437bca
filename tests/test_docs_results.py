"""docs/results.md quotes its tables from the committed results under docs/results/."""

import json
import pathlib

import pytest

DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'


def _suite_lines() -> tuple[set[str], set[str]]:
  """Lines of every committed results.md, and every suite row name."""
  lines, rows = set(), set()
  for md in (DOCS / 'results').rglob('results.md'):
    lines.update(md.read_text().splitlines())
  for js in (DOCS / 'results').glob('*/results.json'):
    rows.update(json.loads(js.read_text()).get('rows', {}))
  return lines, rows


@pytest.mark.skipif(not (DOCS / 'results.md').exists(), reason='no docs/results.md')
def test_every_measured_suite_row_in_results_md_is_a_committed_results_row():
  lines, rows = _suite_lines()
  assert {'No Defence', 'APR', 'Full APR', 'LeNet'} <= rows
  quoted = 0
  for line in (DOCS / 'results.md').read_text().splitlines():
    cells = [c.strip() for c in line.strip('|').split('|')]
    if line.startswith('| ') and cells[0] in rows and '[' in line:
      assert line in lines, f'docs/results.md row not in any docs/results/**/results.md: {line}'
      quoted += 1
  assert quoted >= 26  # Table 1 (seed 0, three seeds, full budget), Table 3 (one and three
  # seeds) and the autoencoder table
