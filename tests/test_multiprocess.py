"""Several processes (JAX's multi-controller runtime), as on a TPU pod slice or
a GPU cluster, here as local CPU processes: ``run.py`` joins them
(``jaxpix.experiment.init_distributed``), they train as one process with as
many devices would, and what they write is read by one process."""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from test_train import _config, _lines, _params

from jaxpix import checkpoint, experiment, train

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(args, tmp_path, n=2, devices=2, timeout=300):
  """``run.py args`` as ``n`` local processes of ``devices`` CPU devices each,
  joined through a coordinator on 127.0.0.1; each one's output is in
  ``tmp_path/process_<i>.log``. All are killed on a failure or a timeout."""
  port = _free_port()
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES=str(devices))
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  logs = [tmp_path / f'process_{i}.log' for i in range(n)]
  procs = []

  def output():
    return '\n'.join(f'--- {p.name}:\n{p.read_text()[-3000:]}' for p in logs if p.exists())

  try:
    for i, log in enumerate(logs):
      with log.open('w') as f:
        cmd = [sys.executable, 'run.py', *args, '--compilation_cache=']
        cmd += [f'--coordinator_address=127.0.0.1:{port}', f'--num_processes={n}']
        procs.append(
          subprocess.Popen(
            cmd + [f'--process_id={i}'], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT
          )
        )
    deadline = time.time() + timeout
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.poll() not in (None, 0)]
      assert not failed, f'a process failed ({failed}):\n{output()}'
      assert time.time() < deadline, f'processes still running after {timeout} s:\n{output()}'
      time.sleep(0.2)
    codes = [p.returncode for p in procs]
    assert codes == [0] * n, f'exit codes {codes}:\n{output()}'
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return output()


@pytest.mark.slow
def test_two_processes_train_as_one_and_one_process_resumes_their_checkpoint(shared_data, tmp_path):
  del shared_data
  steps = 8  # one epoch of the test config: ends with an evaluation
  over = {'train.log_every': 1, 'train.steps': steps}
  two = tmp_path / 'two'
  run_processes(
    ['--config=configs/cifar_baseline.py:test', f'--workdir={two}']
    + [f'--config.{k}={v}' for k, v in over.items()],
    tmp_path,
  )
  cfg = _config(**over)
  one = train.train_and_evaluate(cfg, str(tmp_path / 'one'), devices=jax.devices()[:4])
  # Process 0 alone wrote the log: one line per step, one evaluation, one final.
  lines_two = _lines(two)
  assert [ln['step'] for ln in lines_two] == list(range(1, steps + 1)) + [steps, steps]
  final_two = lines_two[-1]
  assert final_two['final'] and abs(final_two['test_accuracy'] - one['test_accuracy']) <= 0.01
  loss_one = [ln['loss'] for ln in _lines(tmp_path / 'one') if 'loss' in ln]
  loss_two = [ln['loss'] for ln in lines_two if 'loss' in ln]
  # 2 processes x 2 devices against 1 x 4: only the float summation order
  # differs (tolerances of test_train's 1-against-4-device test).
  np.testing.assert_allclose(loss_two, loss_one, rtol=1e-4)
  # The 2-process checkpoints restore in this one process (4 devices).
  assert checkpoint.Checkpointer(two / 'checkpoints').steps() == [4, 8]
  p_one, p_two = _params(tmp_path / 'one', cfg), _params(two, cfg)
  assert p_one.keys() == p_two.keys() and p_one
  for k in p_one:
    np.testing.assert_allclose(p_two[k], p_one[k], rtol=1e-3, atol=1e-4, err_msg=k)
  # ... and one process trains on from the 2-process step 4 to the same end.
  resumed = tmp_path / 'resumed'
  shutil.copytree(two, resumed)
  train.train_and_evaluate(_config(**over, **{'train.resume_step': 4}), str(resumed))
  assert checkpoint.Checkpointer(resumed / 'checkpoints').steps() == [4, 8]
  lines_resumed = [ln for ln in _lines(resumed) if 'loss' in ln]
  assert [ln['step'] for ln in lines_resumed] == list(range(1, steps + 1))
  np.testing.assert_allclose([ln['loss'] for ln in lines_resumed], loss_one, rtol=1e-4)
  p_resumed = _params(resumed, cfg)
  for k in p_one:
    np.testing.assert_allclose(p_resumed[k], p_one[k], rtol=1e-3, atol=1e-4, err_msg=k)
  history = [json.loads(ln) for ln in (resumed / 'config_history.jsonl').read_text().splitlines()]
  assert [h['start_step'] for h in history] == [0, 4]


@pytest.mark.parametrize(
  'args, match',
  [
    (dict(num_processes=2), '--coordinator_address, --process_id missing'),
    (
      dict(coordinator_address='127.0.0.1:1234', num_processes=2),
      '--process_id missing.*--distributed',
    ),
    (dict(coordinator_address='127.0.0.1', num_processes=2, process_id=0), 'not host:port'),
    (dict(coordinator_address='h:1', num_processes=0, process_id=0), 'at least 1'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2), r'in \[0, --num_'),
  ],
)
def test_init_distributed_refuses_bad_flags(args, match):
  with pytest.raises(ValueError, match=match):
    experiment.init_distributed(**args)


def test_init_distributed_does_nothing_unless_asked():
  assert experiment.init_distributed() is False
  assert jax.process_count() == 1


def test_run_py_names_the_missing_flag():
  r = subprocess.run(
    [sys.executable, 'run.py', '--config=configs/cifar_baseline.py:test']
    + ['--workdir=/tmp/never', '--num_processes=2', '--process_id=1'],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0 and '--coordinator_address missing' in r.stderr


@pytest.mark.slow
def test_two_processes_share_the_attacks_and_one_resumes_their_shards(
  tiny_checkpoint, tmp_path, monkeypatch
):
  from test_evaluation import _eval_config

  from jaxpix import attack, evaluation

  cfg = _eval_config(tiny_checkpoint)
  one = evaluation.evaluate(cfg, str(tmp_path / 'one'))
  assert 0 < one['attacks']['de']['successes'] < 12  # a test that can tell a difference
  two = tmp_path / 'two'
  over = dict(mode='eval', checkpoint=tiny_checkpoint, **{'train.steps': 40})
  over.update({f'eval.{k}': cfg.eval[k] for k in ('mode', 'popsize', 'maxiter')})
  run_processes(
    ['--config=configs/cifar_baseline.py:test', f'--workdir={two}']
    + [f'--config.{k}={v}' for k, v in over.items()],
    tmp_path,
  )
  for i in range(2):  # each attacked its half only
    out = (tmp_path / f'process_{i}.log').read_text()
    assert f'de: process {i} attacks 6 of the 12 left' in out, out[-3000:]

  def log(workdir):
    return [json.loads(ln) for ln in (workdir / 'attack_de.jsonl').read_text().splitlines()]

  # Process 0 gathered both halves into one log, each image once, no shard left.
  recs_one = {r['key']: r for r in log(tmp_path / 'one') if 'key' in r}
  lines = log(two)
  recs_two = {r['key']: r for r in lines if 'key' in r}
  assert sum('key' in ln for ln in lines) == 12 and recs_two.keys() == recs_one.keys()
  assert not list(two.glob('*.process*'))
  for k, r in recs_one.items():
    assert (recs_two[k]['success'], recs_two[k]['queries']) == (r['success'], r['queries']), k
    np.testing.assert_allclose(recs_two[k]['fitness'], r['fitness'], rtol=1e-4, atol=1e-6)
  res_two = json.loads((two / 'results.json').read_text())
  for k in ('successes', 'mean_queries', 'curve'):
    assert res_two['attacks']['de'][k] == one['attacks']['de'][k], k
  # A 2-process run killed before gathering: 4 records in process 1's shard
  # (its last line torn), 3 nowhere. One process resumes it: it attacks only
  # the 3, keeps the shard's 4, and ends with the same numbers.
  cut = tmp_path / 'cut'
  cut.mkdir()
  keys = sorted(recs_two)
  head = [ln for ln in lines if 'key' not in ln]
  kept = [recs_two[k] for k in keys[:5]]
  (cut / 'attack_de.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in head + kept))
  shard = [{'protocol': lines[0]['protocol']}] + [recs_two[k] for k in keys[5:9]]
  (cut / 'attack_de.jsonl.process1').write_text(
    ''.join(json.dumps(r) + '\n' for r in shard) + '{"key": 3, "succ'
  )
  attacked = []
  real = attack.one_pixel
  monkeypatch.setattr(
    attack, 'one_pixel', lambda p, x, *a, **k: attacked.append(len(x)) or real(p, x, *a, **k)
  )
  resumed = evaluation.evaluate(cfg, str(cut))
  assert attacked == [3]
  assert not list(cut.glob('*.process*'))
  assert sorted(r['key'] for r in log(cut) if 'key' in r) == keys
  for k in ('successes', 'mean_queries', 'curve'):
    assert resumed['attacks']['de'][k] == one['attacks']['de'][k], k


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_after_the_same_saved_step(
  shared_data, tmp_path
):
  del shared_data
  import signal

  port, workdir = _free_port(), tmp_path / 'w'
  env = dict(os.environ, JAX_PLATFORMS='cpu', JAX_NUM_CPU_DEVICES='2')
  env['PYTHONPATH'] = os.pathsep.join([str(ROOT), env.get('PYTHONPATH', '')])
  cmd = [sys.executable, 'run.py', '--config=configs/cifar_baseline.py:test']
  cmd += ['--config.train.steps=400', '--config.train.checkpoint_every=1000']
  cmd += [f'--workdir={workdir}', '--compilation_cache=', f'--coordinator_address=127.0.0.1:{port}']
  logs = [tmp_path / f'process_{i}.log' for i in range(2)]
  procs = []
  try:
    for i, log in enumerate(logs):
      with log.open('w') as f:
        procs.append(
          subprocess.Popen(
            [*cmd, '--num_processes=2', f'--process_id={i}'],
            cwd=ROOT,
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
          )
        )
    deadline = time.time() + 300
    while (
      not (workdir / 'metrics.jsonl').is_file() or not (workdir / 'metrics.jsonl').stat().st_size
    ):
      assert all(p.poll() is None for p in procs) and time.time() < deadline, logs[0].read_text()
      time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)  # the process that writes nothing
    codes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  assert codes == [143, 143], [log.read_text()[-2000:] for log in logs]
  steps = [int(log.read_text().split('training stopped after step ')[1].split()[0]) for log in logs]
  assert steps[0] == steps[1] and 0 < steps[0] < 400
  with checkpoint.Checkpointer(workdir / 'checkpoints') as ckpt:
    assert ckpt.steps() == [steps[0]]
