"""benchmarks/accelerator.sh, the one prepared device benchmark, checked on
the CPU at tiny sizes: it fails fast and clearly before measuring anything
when something is missing, writes every figure into one JSON as it lands,
and keeps what landed when it is stopped."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / 'benchmarks' / 'accelerator.sh'


def _run(out, timeout=300, **env):
  full = dict(os.environ, OUT=str(out), TINY='1', PY=sys.executable, **env)
  return subprocess.run(
    ['bash', str(SCRIPT)], env=full, capture_output=True, text=True, timeout=timeout
  )


def _sections(out):
  return json.loads((out / 'accelerator.json').read_text())['sections']


def test_missing_data_fails_at_once_and_says_how_to_fix_it(tmp_path):
  t0 = time.perf_counter()
  r = _run(tmp_path, DATA=str(tmp_path / 'nowhere'))
  assert r.returncode == 2
  assert 'cannot start' in r.stdout and 'no CIFAR-10 test split at' in r.stdout  # and in log.txt
  problems = _sections(tmp_path)['preflight']['problems']
  assert len(problems) == 1 and 'carry it' in problems[0]
  assert time.perf_counter() - t0 < 60  # nothing was measured


def test_a_tiny_run_writes_its_figures(shared_data, tmp_path):
  data = shared_data / 'cifar10'
  r = _run(tmp_path, DATA=str(data), SECTIONS='forward')
  assert r.returncode == 0, r.stdout[-3000:]
  s = _sections(tmp_path)
  assert set(s['forward']) == {'w1.0_b4', 'w1.0_b8', 'w1.0_best'}
  assert s['forward']['w1.0_best'] == max(s['forward']['w1.0_b4'], s['forward']['w1.0_b8']) > 0
  meta = json.loads((tmp_path / 'accelerator.json').read_text())['meta']
  assert meta['backend'] == 'cpu' and meta['tiny'] and meta['finished'] >= meta['started']
  assert 'jax' in (tmp_path / 'log.txt').read_text()


@pytest.mark.slow  # every section at tiny sizes (about a minute), then a stopped run
def test_every_section_and_a_stopped_run_keeps_what_landed(shared_data, tmp_path):
  data = shared_data / 'cifar10'
  r = _run(tmp_path / 'all', DATA=str(data))
  assert r.returncode == 0, r.stdout[-3000:]
  s = _sections(tmp_path / 'all')
  for search in ('de', 'random', 'gradient_ranked'):
    for n in (3, 4):
      first, warm = s['attacks'][f'{search}_{n}_first_call'], s['attacks'][f'{search}_{n}_warm']
      assert first['images'] == warm['images'] == n and first['evals'] > 0
      assert warm['efficiency'] == pytest.approx(
        warm['evals_per_s'] / s['attacks']['best_forward_images_per_s']
      )
  ev = s['full_eval']
  assert ev['rc'] == 0 and ev['images_done'] == ev['num_images'] == 2
  assert 0 <= ev['robust_accuracy'] <= 1 and ev['wall_s'] >= ev['seconds_this_run'] > 0
  rows = s['train_steps']['cpu_sizes']
  assert [row['defence'] for row in rows] == ['none', 'apr']
  assert rows[0]['relative_step_time'] == 1.0 and rows[1]['relative_step_time'] > 1.0
  # Stopped (as a lease's end would) once the first figure has landed.
  out = tmp_path / 'stopped'
  env = dict(os.environ, OUT=str(out), TINY='1', DATA=str(data), PY=sys.executable)
  proc = subprocess.Popen(['bash', str(SCRIPT)], env=env, start_new_session=True)
  path = out / 'accelerator.json'
  for _ in range(600):
    if path.is_file() and 'forward' in json.loads(path.read_text())['sections']:
      break
    time.sleep(0.1)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  kept = json.loads(path.read_text())
  assert 'forward' in kept['sections'] and 'finished' not in kept['meta']
