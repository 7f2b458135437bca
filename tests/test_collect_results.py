"""docs/collect_results.py: what it copies from a workdir into docs/results."""

import importlib.util
import json
import pathlib

import pytest

_PATH = pathlib.Path(__file__).resolve().parents[1] / 'docs' / 'collect_results.py'
_spec = importlib.util.spec_from_file_location('collect_results', _PATH)
collect_results = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(collect_results)


def _touch(path: pathlib.Path, text: str = 'x') -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)


def _files(root: pathlib.Path) -> list[str]:
  return sorted(str(p.relative_to(root)) for p in root.rglob('*') if p.is_file())


def test_copies_results_logs_and_figures_follows_links_skips_checkpoints(tmp_path):
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

  got = _files(dst)
  assert got == [
    'apr/seed0/eval/results.json',
    'asr_vs_budget.png',
    'none/seed0/eval/attack_de.jsonl',
    'none/seed0/eval/gallery.png',
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
    f'absolute paths in {bad[:5]}: python docs/collect_results.py --portable docs/results'
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


def test_checkpoints_flag_copies_each_runs_latest_step_only(tmp_path, capsys):
  src = tmp_path / 'suite'
  train = src / 'apr' / 'seed0' / 'train'
  _touch(train / 'metrics.jsonl')
  for step in ('1000', '2000', '2808'):
    _touch(train / 'checkpoints' / step / 'state' / 'manifest.ocdbt', step)
    _touch(train / 'checkpoints' / step / '_CHECKPOINT_METADATA', step)
  _touch(train / 'checkpoints' / '3000.orbax-checkpoint-tmp-1' / 'state' / 'x')  # in flight
  repo = collect_results.records.REPO
  _touch(train / 'checkpoints' / '2808' / 'commit_success.txt', f'saved to {repo}/w/2808')
  _touch(src / 'lenet' / 'seed0' / 'train' / 'checkpoints' / '999' / 'state' / 'x', 'lenet')

  bare = tmp_path / 'bare'
  collect_results.collect(src, bare)
  assert not [p for p in bare.rglob('*') if 'checkpoints' in p.parts]

  dst = tmp_path / 'docs' / 'suite'
  collect_results.main(['--checkpoints', f'{src}:{dst}'])
  got = _files(dst)
  assert got == [
    'apr/seed0/train/checkpoints/2808/_CHECKPOINT_METADATA',
    'apr/seed0/train/checkpoints/2808/commit_success.txt',
    'apr/seed0/train/checkpoints/2808/state/manifest.ocdbt',
    'apr/seed0/train/metrics.jsonl',
    'lenet/seed0/train/checkpoints/999/state/x',
  ]
  assert (dst / 'apr/seed0/train/checkpoints/2808/state/manifest.ocdbt').read_text() == '2808'
  assert (dst / 'apr/seed0/train/checkpoints/2808/commit_success.txt').read_text() == (
    'saved to w/2808'
  )
  assert '5 files' in capsys.readouterr().out

  # Collected again after the run saved a later step: the copy holds that
  # step alone, the earlier collection's step folder is gone.
  _touch(train / 'checkpoints' / '3000' / 'state' / 'manifest.ocdbt', '3000')
  _touch(dst / 'apr/seed0/train/checkpoints/notes.txt')  # not a step folder: kept
  collect_results.main(['--checkpoints', f'{src}:{dst}'])
  got = _files(dst)
  assert [g for g in got if g.startswith('apr/seed0/train/checkpoints/')] == [
    'apr/seed0/train/checkpoints/3000/state/manifest.ocdbt',
    'apr/seed0/train/checkpoints/notes.txt',
  ]
  assert 'lenet/seed0/train/checkpoints/999/state/x' in got
  assert 'superseded by step 3000' in capsys.readouterr().out
