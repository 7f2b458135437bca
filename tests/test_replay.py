"""Replayed batches (``defence.replay``): the plain visit records every
image's input gradient, the defended visit reads it, and a run stopped
between the two visits resumes exactly."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxpix import build, checkpoint, configs, data, defences, mesh, restore, steps, train
from jaxpix.configs import cifar_apr, cifar_at, cifar_baseline
from jaxpix.defences import apr

import toy_models as toy


def _steps_of(cfg, batch):
  m = mesh.make_mesh(jax.devices()[:1])
  tx = build.optimizer_for(cfg, 10)
  graphdef, state = build.init_state(build.build_model(cfg, 10), tx, 0)
  state = steps.with_replay(state, batch, (32, 32, 3))
  state = jax.device_put(state, steps.state_shardings(m, state))
  visits = steps.compile_train_steps(
    m, graphdef, tx, defences.loss_terms(cfg), False, state, defences.visits(cfg)
  )
  return graphdef, state, visits


@pytest.mark.slow  # two train steps' compilations: ~12 s, kept out of the quick loop
def test_the_plain_visit_records_each_images_gradient_and_the_next_reads_it():
  cfg = cifar_apr.get_config('test,replay')
  b = 16
  graphdef, state, (record, replay) = _steps_of(cfg, b)
  images = (toy.cifar_like(b, 32, 32) * 255).round().astype(np.uint8)
  labels = jnp.arange(b) % 10
  model = jax.tree.map(jnp.copy, (state['params'], state['rest']))  # before the donation
  after, metrics = record(state, jnp.asarray(images), labels)
  assert set(metrics) == {'loss', 'clean_loss', 'accuracy'}  # a plain step
  # What the loss term would compute itself: the train-mode gradient of the
  # summed cross-entropy over the same batch (batch statistics included).
  fresh = nnx.merge(graphdef, *model)
  fresh.train()
  want, _ = apr.input_gradient(fresh, data.levels(jnp.asarray(images)), labels, False)
  np.testing.assert_allclose(after['replay']['grads'], want, rtol=2e-3, atol=1e-6)
  assert float(jnp.abs(want).max()) > 0
  # The defended visit takes its penalty from the recorded gradient: plant a
  # known one and read R back (the penalty's images: positions 2, 3 of each
  # block of 8, after the adversary's 0, 1).
  planted = jnp.zeros_like(after['replay']['grads']).at[:, 0, 0, 0].set(jnp.arange(b) + 1.0)
  after['replay'] = dict(after['replay'], grads=planted)
  _, metrics = replay(after, jnp.asarray(images), labels)
  scale = apr.penalty_scale(cfg)[0]
  pen = np.array([3, 4, 11, 12], np.float32)  # 1 + positions 2, 3, 10, 11
  assert float(metrics['grad_penalty']) == pytest.approx(np.mean((scale * pen) ** 2), rel=1e-5)
  assert float(metrics['adv_changed']) == 1.0


@pytest.mark.parametrize(
  'make, field, value, message',
  [
    (cifar_apr.get_config, 'adv.method', 'de', "adv.method='first_order'"),
    (cifar_apr.get_config, 'penalty.method', 'exact', "penalty.method='fd'"),
    (cifar_baseline.get_config, 'name', 'none', "'apr' or 'at'"),
    (cifar_at.get_config, 'adversarial', False, 'has neither'),
  ],
)
def test_replay_without_a_gradient_reader_is_a_clear_error(make, field, value, message):
  cfg = make('test,replay' if make is not cifar_baseline.get_config else 'test')
  cfg.defence.replay = True
  configs.set_field(cfg, f'defence.{field}', value)
  with pytest.raises(ValueError, match=message):
    defences.visits(cfg)


def test_the_replay_variant_keeps_the_number_of_steps():
  plain, replayed = cifar_apr.get_config('cpu'), cifar_apr.get_config('cpu,replay')
  assert replayed.defence.replay and not plain.defence.replay
  assert replayed.train.epochs * 2 == plain.train.epochs
  assert (
    cifar_at.get_config('cpu,replay').train.epochs * 2 == cifar_at.get_config('cpu').train.epochs
  )


def _lines(workdir):
  return [json.loads(ln) for ln in (workdir / 'metrics.jsonl').read_text().splitlines()]


@pytest.mark.slow
def test_replayed_training_resumed_between_visits_equals_uninterrupted(shared_data, tmp_path):
  del shared_data
  cfg = cifar_apr.get_config('test,replay')
  cfg.train.steps, cfg.train.checkpoint_every, cfg.train.keep_checkpoints = 10, 3, 10
  cfg.train.log_every = 2
  whole = tmp_path / 'whole'
  train.train_and_evaluate(cfg, str(whole))
  logged = [ln for ln in _lines(whole) if 'loss' in ln]
  assert len(logged) == 5
  for ln in logged:  # each window holds one plain and one defended visit
    assert 0 <= ln['accuracy'] <= 1 and np.isfinite(ln['grad_penalty']) and ln['adv_changed'] > 0.9
  # Step 3 is a defended visit: it needs the gradient step 2 recorded.
  resumed = tmp_path / 'resumed'
  shutil.copytree(whole, resumed)
  cfg.train.resume_step = 3
  train.train_and_evaluate(cfg, str(resumed))
  _, like = build.init_state(build.build_model(cfg, 10), build.optimizer_for(cfg, 10), 0)
  like = steps.with_replay(like, cfg.train.batch_size, (32, 32, 3))
  got = []
  for w in (whole, resumed):
    with checkpoint.Checkpointer(w / 'checkpoints') as ckpt:
      assert ckpt.latest_step() == 10
      got.append(checkpoint.flat(ckpt.restore(like)))
  assert got[0].keys() == got[1].keys() and any('replay' in k for k in got[0])
  for k in got[0]:
    np.testing.assert_allclose(got[0][k], got[1][k], rtol=1e-6, atol=1e-7, err_msg=k)
  # Eval mode and the zoo load the model alone (the kept gradients are dropped).
  model = restore.from_workdir(whole).model
  kernel = np.asarray(model.attention.conv.kernel.get_value())
  np.testing.assert_array_equal(kernel, got[0]["['params']['attention']['conv']['kernel'].value"])


@pytest.mark.slow
def test_replay_on_one_and_four_devices_gives_the_same_trajectory(shared_data, tmp_path):
  del shared_data
  assert jax.device_count() >= 4
  cfg = cifar_apr.get_config('test,replay')
  cfg.train.steps, cfg.train.log_every = 6, 1
  for n in (1, 4):
    train.train_and_evaluate(cfg, str(tmp_path / str(n)), devices=jax.devices()[:n])
  one, four = ([ln for ln in _lines(tmp_path / str(n)) if 'loss' in ln] for n in (1, 4))
  assert len(one) == 6 and 'adv_loss' not in one[0] and 'adv_loss' in one[1]  # plain, defended
  # The kept gradients are sharded like the batch: each device reads its own.
  np.testing.assert_allclose([x['loss'] for x in one], [x['loss'] for x in four], rtol=1e-4)
  np.testing.assert_allclose(
    [x['grad_penalty'] for x in one[1::2]], [x['grad_penalty'] for x in four[1::2]], rtol=1e-3
  )


def test_run_lengths_step_time_is_the_wall_difference_over_the_extra_steps(monkeypatch):
  from benchmarks import train_throughput as tt

  # A run: 30 s of start-up and compilation, then 0.5 s per step (APR 0.8 s).
  per_step = {'cifar_baseline.py:cpu': 0.5, 'cifar_apr.py:cpu': 0.8}
  monkeypatch.setattr(tt, 'run_seconds', lambda spec, n, workdir: 30.0 + per_step[spec] * n)
  rows = tt.through_run(list(per_step), (20, 100), repeats=2)
  assert [r['seconds_per_step'] for r in rows] == pytest.approx([0.5, 0.8])
  assert rows[1]['relative_step_time'] == pytest.approx(1.6)
  assert rows[1]['wall_seconds'] == {'20': [46.0, 46.0], '100': [110.0, 110.0]}
  with pytest.raises(ValueError, match='0 < N1 < N2'):
    tt.through_run(list(per_step), (100, 20), repeats=1)
