"""Training loop, checkpoints and resume, on real CIFAR-10 with the `test` config."""

import io
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest
import tqdm

from jaxpix import build, checkpoint, configs, evaluation, records, train
from jaxpix.configs import cifar_baseline

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(**overrides):
  c = cifar_baseline.get_config('test')
  for k, v in overrides.items():
    configs.set_field(c, k, v)
  return c


def _lines(workdir):
  return [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]


def _params(workdir, config, step=None):
  """The flat parameter dict of a checkpoint."""
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints')
  model = build.build_model(config, 10)
  _, like = build.init_state(model, build.make_optimizer(config.train, 1), config.seed)
  state = ckpt.restore(like, step)
  ckpt.close()
  return {k: np.asarray(v) for k, v in checkpoint.flat(state['params']).items()}


@pytest.mark.slow
def test_train_end_to_end(shared_data, tmp_path, monkeypatch):
  del shared_data
  bars = []

  def progress_bar(total, initial, desc, unit, enabled):
    del enabled  # the test variant turns the bar off; this one is read back
    bars.append(tqdm.tqdm(total=total, initial=initial, desc=desc, unit=unit, file=io.StringIO()))
    return bars[-1]

  monkeypatch.setattr(records, 'progress_bar', progress_bar)
  cfg = _config()
  result = train.train_and_evaluate(cfg, str(tmp_path))
  lines = _lines(tmp_path)
  # The bar ends at the last step, showing the epoch and the accuracy of the
  # evaluation at the end of epoch 1 beside the last logged loss.
  epoch_eval = next(ln['test_accuracy'] for ln in lines if 'test_accuracy' in ln)
  assert bars[0].n == 12
  assert bars[0].postfix.startswith(f'epoch=1.50, loss={lines[-2]["loss"]:.3f}, acc=')
  assert bars[0].postfix.endswith(f', test_acc={epoch_eval:.3f}')
  assert [ln['step'] for ln in lines if 'loss' in ln] == [4, 8, 12]
  assert lines[-1] == result and result['final'] and 0 <= result['test_accuracy'] <= 1
  # 512 images at batch 64: epoch 1 ends at step 8 and is evaluated.
  assert any(ln.get('step') == 8 and 'test_accuracy' in ln for ln in lines)
  assert lines[-2]['loss'] < lines[0]['loss']  # it learns something in 12 steps
  assert all(ln['images_per_s'] > 0 for ln in lines if 'loss' in ln)
  saved = json.loads((tmp_path / 'config.json').read_text())
  assert saved['model']['name'] == 'cnn6'
  # The data folder beside the repository is recorded relative to it (../shared/data/...).
  assert saved['data']['dir'] == records.portable(cfg.data.dir)
  # Reopened when finished (a suite resumed with other eval settings), the run
  # trains nothing and keeps the record of the config it was trained with.
  again = _config()
  again.eval.maxiter = 7
  assert train.train_and_evaluate(again, str(tmp_path))['test_accuracy'] == result['test_accuracy']
  assert json.loads((tmp_path / 'config.json').read_text()) == saved
  assert saved['eval']['maxiter'] != 7
  ckpt = checkpoint.Checkpointer(tmp_path / 'checkpoints', keep=3)
  assert ckpt.steps() == [4, 8, 12]
  meta = ckpt.meta()
  # What was trained, for resume to compare (jaxpix.train.RESUMABLE_CHANGES aside).
  assert meta.pop('config')['model.width'] == 0.125
  assert len(meta.pop('data_sha1')) == 16  # the training data, checked on resume
  assert meta == dict(
    model='cnn6',
    width=0.125,
    defence='none',
    attention=False,
    dataset='cifar10',
    num_classes=10,
    total_steps=12,
    step=12,
  )
  ckpt.close()
  # Eval mode restores the same model and finds the same accuracy on the same
  # (first 200, the test variant's eval_subset) test images.
  ev = evaluation.evaluate(_config(mode='eval', checkpoint=str(tmp_path)), str(tmp_path / 'ev'))
  assert ev['step'] == 12 and ev['test_images'] == 200
  assert ev['clean_accuracy'] == result['test_accuracy']


@pytest.mark.slow
def test_resume_continues_and_refuses_another_model(shared_data, tmp_path):
  del shared_data
  train.train_and_evaluate(_config(**{'train.steps': 8}), str(tmp_path))
  # Same workdir, longer run: continues from step 8 instead of starting over.
  train.train_and_evaluate(_config(**{'train.steps': 12}), str(tmp_path))
  # The log reads as one 12-step run: the first run's closing record is gone,
  # the epoch evaluation at step 8 (skipped as final in the 8-step run) is there.
  kinds = [
    (ln['step'], 'loss' in ln, 'test_accuracy' in ln, bool(ln.get('final')))
    for ln in _lines(tmp_path)
  ]
  assert kinds == [
    (4, True, False, False),
    (8, True, False, False),
    (8, False, True, False),
    (12, True, False, False),
    (12, False, True, True),
  ]
  with pytest.raises(checkpoint.CheckpointError, match=r'width=0\.125.*width=0\.25'):
    train.train_and_evaluate(_config(**{'model.width': 0.25, 'train.steps': 16}), str(tmp_path))


@pytest.mark.slow
def test_corrupted_checkpoint_names_the_directory_and_older_ones_still_work(shared_data, tmp_path):
  del shared_data
  cfg = _config()
  train.train_and_evaluate(cfg, str(tmp_path))
  latest = tmp_path / 'checkpoints' / '12' / 'state'
  for f in latest.rglob('*'):
    if f.is_file() and f.stat().st_size > 0 and 'manifest' in f.name:
      f.write_bytes(b'garbage')
  with pytest.raises(checkpoint.CheckpointError) as e:
    train.train_and_evaluate(_config(**{'train.steps': 16}), str(tmp_path))
  assert str(tmp_path / 'checkpoints' / '12') in str(e.value)
  assert 'steps [4, 8]' in str(e.value)
  old = _params(tmp_path, cfg, step=8)
  assert old and all(np.all(np.isfinite(v)) for v in old.values())
  # Resuming explicitly from an older checkpoint works, and replaces the newer
  # (corrupted) one instead of leaving it for the next resume to trip on.
  train.train_and_evaluate(_config(**{'train.steps': 12, 'train.resume_step': 8}), str(tmp_path))
  assert checkpoint.Checkpointer(tmp_path / 'checkpoints').steps() == [4, 8, 12]
  assert _params(tmp_path, cfg, step=12).keys() == old.keys()


@pytest.mark.slow
def test_sigkill_mid_training_then_resume_equals_uninterrupted(shared_data, tmp_path):
  del shared_data
  steps, every = 160, 20
  args = [
    sys.executable,
    str(ROOT / 'run.py'),
    '--config',
    'configs/cifar_baseline.py:test',
    f'--config.train.steps={steps}',
    f'--config.train.checkpoint_every={every}',
    '--config.train.log_every=20',
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  killed = tmp_path / 'killed'
  proc = subprocess.Popen(
    args + [f'--workdir={killed}'],
    cwd=ROOT,
    env=env,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )
  # Kill it as soon as a checkpoint exists, well before the end.
  deadline = time.time() + 240
  while not (killed / 'checkpoints' / str(every)).is_dir() and time.time() < deadline:
    assert proc.poll() is None, 'training ended before it could be killed'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  left = checkpoint.Checkpointer(killed / 'checkpoints').latest_step()
  assert left is not None and left < steps
  subprocess.run(args + [f'--workdir={killed}'], cwd=ROOT, env=env, check=True, capture_output=True)
  clean = tmp_path / 'clean'
  subprocess.run(args + [f'--workdir={clean}'], cwd=ROOT, env=env, check=True, capture_output=True)
  cfg = _config()
  a, b = _params(killed, cfg), _params(clean, cfg)
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
  ka = [ln for ln in _lines(killed) if 'loss' in ln]
  kb = [ln for ln in _lines(clean) if 'loss' in ln]
  assert [x['step'] for x in ka] == [x['step'] for x in kb]
  np.testing.assert_allclose([x['loss'] for x in ka], [x['loss'] for x in kb], rtol=1e-6)


@pytest.mark.slow
def test_one_and_four_devices_give_the_same_trajectory(shared_data, tmp_path):
  del shared_data
  assert jax.device_count() >= 4
  cfg = _config(**{'train.log_every': 1, 'train.steps': 6})
  one = train.train_and_evaluate(cfg, str(tmp_path / 'one'), devices=jax.devices()[:1])
  four = train.train_and_evaluate(cfg, str(tmp_path / 'four'), devices=jax.devices()[:4])
  la = [ln['loss'] for ln in _lines(tmp_path / 'one') if 'loss' in ln]
  lb = [ln['loss'] for ln in _lines(tmp_path / 'four') if 'loss' in ln]
  assert len(la) == 6
  # Batch norm sees the global batch on 4 devices too (XLA all-reduces its
  # statistics), so only the float summation order differs.
  np.testing.assert_allclose(la, lb, rtol=1e-4)
  assert abs(one['test_accuracy'] - four['test_accuracy']) <= 0.01
  pa, pb = _params(tmp_path / 'one', cfg), _params(tmp_path / 'four', cfg)
  for k in pa:
    np.testing.assert_allclose(pa[k], pb[k], rtol=1e-3, atol=1e-4, err_msg=k)


def test_bad_configs(shared_data, tmp_path):
  del shared_data
  with pytest.raises(FileNotFoundError, match='nowhere'):
    train.train_and_evaluate(_config(**{'data.dir': str(tmp_path / 'nowhere')}), str(tmp_path))
  with pytest.raises(
    ValueError,
    match=r'batch_size=66 must be divisible by the number of '
    r'devices \(4\)',
  ):
    train.train_and_evaluate(
      _config(**{'train.batch_size': 66}), str(tmp_path), devices=jax.devices()[:4]
    )
  with pytest.raises(ValueError, match='schedule must be'):
    train.train_and_evaluate(_config(**{'train.schedule': 'linear'}), str(tmp_path))
  with pytest.raises(ValueError, match='unknown config variant'):
    cifar_baseline.get_config('gpu')
  with pytest.raises(checkpoint.CheckpointError, match='holds no checkpoint'):
    evaluation.evaluate(_config(mode='eval', checkpoint=str(tmp_path / 'none')), str(tmp_path))


class _FakeDevice:
  """Runs queued steps in order, only as far as the test (or a wait) lets it."""

  def __init__(self, finished: int):
    self.finished = finished

  def loss(self, step: int):
    device = self

    class Loss:
      def is_ready(self):
        return device.finished >= step

      def block_until_ready(self):
        device.finished = max(device.finished, step)
        return self

    return Loss()


def test_the_bar_counts_finished_steps_and_shows_epoch_and_accuracy(capsys):
  # 32 images at batch 4: 8 steps an epoch; resumed at step 2 of 20.
  plan = train._Plan(ml_collections.ConfigDict(dict(batch_size=4, steps=20)), 32, 1)
  device = _FakeDevice(finished=2)
  bar = records.StepBar(plan.total, 2, True, plan.epoch)
  for step in range(2, 20):
    if step == 10:
      device.finished = 9  # the device caught up on its own: shown at the next dispatch
    bar.queue(step + 1, device.loss(step + 1))
    # The bar shows what the device finished, never what was only dispatched,
    # and the host stays at most AHEAD steps ahead.
    assert bar.bar.n == bar.done == device.finished
    assert step + 1 - records.AHEAD <= device.finished
  assert bar.bar.n == 20 - records.AHEAD
  assert bar.postfix['epoch'] == f'{(20 - records.AHEAD) / 8:.2f}'
  bar.wait()  # the loop is about to read a result: the bar catches up
  assert bar.bar.n == device.finished == 20
  bar.show(loss='1.234', test_acc='0.412')
  assert bar.bar.postfix == 'epoch=2.50, loss=1.234, test_acc=0.412'
  bar.close()
  assert 'epoch=2.50, loss=1.234, test_acc=0.412' in capsys.readouterr().err


def test_locked_config_rejects_typos():
  r = subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config',
      'configs/cifar_baseline.py:test',
      '--config.train.epoch=3',
      '--workdir=/tmp/never',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
  )
  assert r.returncode != 0 and 'epoch' in r.stderr


@pytest.mark.slow
def test_imagenet_smoke_config_runs_the_224_path(shared_data, tmp_path):
  del shared_data
  from jaxpix.configs import imagenet_baseline

  cfg = imagenet_baseline.get_config('smoke')
  cfg.train.progress = False
  result = train.train_and_evaluate(cfg, str(tmp_path))
  losses = [ln['loss'] for ln in _lines(tmp_path) if 'loss' in ln]
  # ResNet-50 (width 1/8) on 224x224 images with 1,000 classes: the loss starts
  # near ln(1000) = 6.9 and is finite; accuracy on 100 one-per-class images
  # after 4 steps means nothing and is not asserted beyond its range.
  assert len(losses) == 2 and all(5 < v < 12 for v in losses)
  assert 0 <= result['validation_accuracy'] <= 1
  ckpt = checkpoint.Checkpointer(tmp_path / 'checkpoints')
  assert ckpt.meta()['model'] == 'resnet50' and ckpt.meta()['num_classes'] == 1000
  ckpt.close()


@pytest.mark.slow
def test_bfloat16_compute_trains(shared_data, tmp_path):
  del shared_data
  result = train.train_and_evaluate(_config(dtype='bfloat16', **{'train.steps': 8}), str(tmp_path))
  losses = [ln['loss'] for ln in _lines(tmp_path) if 'loss' in ln]
  assert len(losses) == 2 and all(np.isfinite(losses)) and losses[1] < losses[0]
  assert 0 <= result['test_accuracy'] <= 1
  # Parameters are kept (and checkpointed) in float32.
  params = _params(tmp_path, _config(dtype='bfloat16'))
  assert all(v.dtype == np.float32 for v in params.values())


@pytest.mark.slow
def test_run_py_keeps_compiled_programs_across_processes(shared_data, tmp_path):
  del shared_data
  cache = tmp_path / 'xla'

  def run(workdir):
    return subprocess.run(
      [
        sys.executable,
        'run.py',
        '--config',
        'configs/cifar_baseline.py:test',
        '--config.train.steps=4',
        f'--compilation_cache={cache}',
        f'--workdir={tmp_path / workdir}',
      ],
      cwd=ROOT,
      capture_output=True,
      text=True,
    )

  r = run('a')
  assert r.returncode == 0, r.stderr[-2000:]
  # The train step (it compiles for over a second) is stored. Whether a second
  # process adds entries is not asserted: which small programs pass the
  # one-second threshold depends on the machine's load.
  assert any(p.name.startswith('jit_train_step') for p in cache.iterdir())
  r = run('b')  # a second process runs with the cache filled
  assert r.returncode == 0, r.stderr[-2000:]
