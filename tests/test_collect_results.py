"""jaxpix.repro.collect_results: what it copies from a workdir into docs/results."""

import json
import pathlib

import pytest

from jaxpix.repro import collect_results


def _touch(path: pathlib.Path, text: str = 'x') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def test_copies_results_and_logs_follows_links_skips_checkpoints_and_figures(tmp_path):
  other = tmp_path / 'other_suite' / 'apr' / 'seed0'
  _touch(other / 'eval' / 'results.json', '{"reused": true}')
  _touch(other / 'train' / 'checkpoints' / '100' / 'state', 'big')
  src = tmp_path / 'suite'
  _touch(src / 'results.json', '{}')
  _touch(src / 'results.md')
  _touch(src / 'asr_vs_budget.png')
  _touch(src / 'none' / 'seed0' / 'eval' / 'attack_de.jsonl')
  _touch(src / 'none' / 'seed0' / 'eval' / 'gallery.png')
  _touch(src / 'none' / 'seed0' / 'train' / 'metrics.jsonl')
  repo = collect_results.records.REPO
  data_dir = str(repo.parent / 'shared' / 'data' / 'cifar10')
  _touch(src / 'none' / 'seed0' / 'train' / 'config.json', f'{{"data": {{"dir": "{data_dir}"}}}}')
  _touch(src / 'none' / 'seed0' / 'train' / 'attention_maps.png')  # repeated by eval/
  _touch(src / 'none' / 'seed0' / 'train' / 'checkpoints' / '1053' / 'meta.json')
  _touch(src / 'none' / 'seed0' / 'notes.txt')
  (src / 'apr').mkdir()
  (src / 'apr' / 'seed0').symlink_to(other)

  dst = tmp_path / 'docs' / 'suite'
  n = collect_results.collect(src, dst)

  # No checkpoint (the zoo publishes models), no figure no doc page links,
  # attack logs compressed.
  got = _files(dst)
  assert got == [
    'apr/seed0/eval/results.json',
    'none/seed0/eval/attack_de.jsonl.gz',
    'none/seed0/train/config.json',
    'none/seed0/train/metrics.jsonl',
    'results.json',
    'results.md',
  ]
  assert n == len(got)
  assert (dst / 'apr/seed0/eval/results.json').read_text() == '{"reused": true}'
  assert not (dst / 'apr/seed0/eval/results.json').is_symlink()
  # JSON copies hold paths relative to the repository, not this machine's.
  cfg = json.loads((dst / 'none/seed0/train/config.json').read_text())
  assert cfg == {'data': {'dir': '../shared/data/cifar10'}}


def test_committed_results_hold_no_absolute_paths_of_the_machine():
  repo = collect_results.records.REPO
  bad = [
    str(p.relative_to(repo))
    for p in sorted((repo / 'docs' / 'results').rglob('*.json'))
    if collect_results.records.portable(json.loads(p.read_text())) != json.loads(p.read_text())
  ]
  assert not bad, (
    f'absolute paths in {bad[:5]}: python -m jaxpix.repro.collect_results --portable docs/results'
  )


def test_portable_rewrites_json_files_in_place(tmp_path, capsys):
  repo = collect_results.records.REPO
  absolute = str(repo.parent / 'shared' / 'data' / 'imagenet_sample')
  _touch(tmp_path / 'a' / 'results.json', json.dumps({'dir': absolute, 'n': 3}))
  _touch(tmp_path / 'b.json', json.dumps({'dir': '/elsewhere/data'}))  # not under the parent
  collect_results.main(['--portable', str(tmp_path)])
  assert json.loads((tmp_path / 'a' / 'results.json').read_text()) == {
    'dir': '../shared/data/imagenet_sample',
    'n': 3,
  }
  assert json.loads((tmp_path / 'b.json').read_text()) == {'dir': '/elsewhere/data'}
  assert '1 JSON files rewritten' in capsys.readouterr().out


def test_missing_workdir_and_bad_argument_are_clear_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='not a directory'):
    collect_results.collect(tmp_path / 'absent', tmp_path / 'out')
  with pytest.raises(SystemExit, match='expected WORKDIR:NAME'):
    collect_results.main(['workdir/table1_lenet'])


def test_figures_flag_copies_every_evaluation_figure_and_logs_read_back(tmp_path, capsys):
  src = tmp_path / 'suite'
  _touch(src / 'asr_vs_budget.png')
  _touch(src / 'apr' / 'seed0' / 'eval' / 'gallery.png')
  _touch(src / 'apr' / 'seed0' / 'train' / 'attention_maps.png')  # repeated by eval/
  _touch(src / 'apr' / 'seed0' / 'train' / 'checkpoints' / '2808' / 'state' / 'x', 'big')
  log = '{"header": 1}\n{"index": 3}\n'
  _touch(src / 'apr' / 'seed0' / 'eval' / 'attack_de.jsonl', log)
  dst = tmp_path / 'docs' / 'suite'
  collect_results.main(['--figures', f'{src}:{dst}'])
  assert _files(dst) == [
    'apr/seed0/eval/attack_de.jsonl.gz',
    'apr/seed0/eval/gallery.png',
    'asr_vs_budget.png',
  ]
  assert '3 files' in capsys.readouterr().out
  copy = dst / 'apr' / 'seed0' / 'eval' / 'attack_de.jsonl'
  assert collect_results.records.read_text(copy) == log
  # Collected again, the compressed log is byte for byte the same.
  before = collect_results.records.gz(copy).read_bytes()
  collect_results.collect(src, dst)
  assert collect_results.records.gz(copy).read_bytes() == before
  # A log copied back into a workdir is read, then written out whole before
  # the next record is appended (a suite resumes from committed logs).
  jl = collect_results.records.JsonlLog(copy)
  assert jl.lines == [{'header': 1}, {'index': 3}]
  jl.append([{'index': 4}])
  assert copy.read_text() == log + '{"index": 4}\n'
