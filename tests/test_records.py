"""JSON-lines logs that survive a kill, strict JSON, provenance (jaxpix.records)."""

import json

import pytest

from jaxpix import records


def test_jsonl_log_drops_a_torn_last_line_and_refuses_a_damaged_one(tmp_path):
  path = tmp_path / 'log.jsonl'
  log = records.JsonlLog(path)
  assert log.lines == []
  log.append([{'a': 1}, {'a': 2}])
  with path.open('a') as f:
    f.write('{"a": 3, "b')  # a kill mid-line
  log = records.JsonlLog(path)
  assert log.lines == [{'a': 1}, {'a': 2}]
  log.rewrite(log.lines)
  assert path.read_text() == '{"a": 1}\n{"a": 2}\n'
  path.write_text('{"a": 1}\nnot json\n{"a": 2}\n')
  with pytest.raises(ValueError, match='line 2 is not JSON'):
    records.JsonlLog(path)


def test_write_json_is_strict(tmp_path):
  records.write_json(tmp_path / 'r.json', {'x': float('nan'), 'y': [1.0, float('inf')]})
  assert json.loads((tmp_path / 'r.json').read_text()) == {'x': None, 'y': [1.0, None]}
  p = records.provenance()
  assert p['commit'] and p['device'] and p['jax']


def test_results_files_hold_paths_relative_to_the_repository(tmp_path):
  root = records.REPO
  obj = {
    'dir': str(root.parent / 'shared' / 'data' / 'cifar10'),
    'ck': [str(root / 'workdir' / 'x')],
    'elsewhere': '/definitely/not/under/it',
    'n': 3,
  }
  records.write_json(tmp_path / 'r.json', obj)
  got = json.loads((tmp_path / 'r.json').read_text())
  assert got == {
    'dir': '../shared/data/cifar10',
    'ck': ['workdir/x'],
    'elsewhere': obj['elsewhere'],
    'n': 3,
  }
