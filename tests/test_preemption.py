"""Stopping cleanly: SIGTERM and Ctrl-C save at the next step and say how to
resume; checkpoints by wall time; every process agrees on when to save."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flax import nnx

from jaxpix import checkpoint, preemption, restore

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_first_signal_is_recorded_and_a_second_ctrl_c_aborts():
  with preemption.Requests() as stop:
    signal.raise_signal(signal.SIGTERM)
    assert stop.signum == signal.SIGTERM  # recorded, the loop goes on
  with preemption.Requests() as stop:
    signal.raise_signal(signal.SIGINT)
    assert stop.signum == signal.SIGINT
    with pytest.raises(KeyboardInterrupt):
      signal.raise_signal(signal.SIGINT)
  # The handlers in place before are back.
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_saver_saves_on_schedule_by_wall_time_and_on_a_stop():
  saver = preemption.Saver(every=5, total=12, minutes=0)
  with saver:
    assert [d for d in range(1, 13) if saver.due(d)[0]] == [5, 10, 12]
    signal.raise_signal(signal.SIGTERM)
    assert saver.due(7) == (True, signal.SIGTERM)
  timed = preemption.Saver(every=1000, total=1000, minutes=1e-9)
  with timed:
    time.sleep(0.01)
    assert timed.due(3) == (True, None)
    timed.saved()
    timed.seconds = 3600.0
    assert timed.due(4) == (False, None)


def test_stopped_exits_as_a_shell_reports_the_signal():
  e = preemption.Stopped(signal.SIGTERM, 'x')
  # Not an Exception: no `except Exception` on its way may take it for its own failure.
  assert not isinstance(e, Exception) and isinstance(e, BaseException)
  assert e.exit_code == 143 and preemption.Stopped(signal.SIGINT, 'y').exit_code == 130
  msg = preemption.stop_message(signal.SIGTERM, 24, 400, '/w')
  assert msg.startswith('SIGTERM: training stopped after step 24 of 400, saved in /w')


def _params(workdir) -> dict:
  model = restore.from_workdir(workdir).model
  return {str(k): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(model))}


def _run(workdir, steps, env):
  args = [
    sys.executable,
    str(ROOT / 'run.py'),
    '--config',
    'configs/cifar_baseline.py:test',
    f'--config.train.steps={steps}',
    '--config.train.checkpoint_every=1000',  # only the stop (and the end) saves
    '--config.train.log_every=10',
    f'--workdir={workdir}',
  ]
  return subprocess.Popen(
    args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_at_the_next_step_and_the_resumed_run_ends_the_same(
  shared_data, tmp_path, sig
):
  del shared_data
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  steps, stopped = 200, tmp_path / 'stopped'
  proc = _run(stopped, steps, env)
  deadline = time.time() + 240
  while not (stopped / 'metrics.jsonl').is_file() or not (stopped / 'metrics.jsonl').stat().st_size:
    assert proc.poll() is None and time.time() < deadline, proc.stderr.read()[-2000:]
    time.sleep(0.05)
  t0 = time.time()
  proc.send_signal(sig)
  _, err = proc.communicate(timeout=120)
  assert time.time() - t0 < 30  # the next step, not the next scheduled save
  assert proc.returncode == 128 + sig
  last = err.strip().splitlines()[-1]
  assert last.startswith(f'{signal.Signals(sig).name}: training stopped after step ')
  assert 'run the same command again to resume' in last and 'Traceback' not in err
  step = int(last.split('after step ')[1].split()[0])
  assert 0 < step < steps
  with checkpoint.Checkpointer(stopped / 'checkpoints') as ckpt:
    assert ckpt.steps() == [step]
  resumed = _run(stopped, steps, env)
  _, err = resumed.communicate(timeout=600)
  assert resumed.returncode == 0, err[-2000:]
  assert f'resuming from step {step} of {steps}' in err
  clean = _run(tmp_path / 'clean', steps, env)
  _, err = clean.communicate(timeout=600)
  assert clean.returncode == 0 and 'training from step 0 of 200' in err
  a, b = _params(stopped), _params(tmp_path / 'clean')
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
