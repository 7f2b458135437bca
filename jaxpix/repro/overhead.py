"""Computational overhead of a defence (the APR paper's Table 4): training
step time and inference time per image, measured in this process.

Both run a config's real step (the defence's loss terms, its adversary,
its input pipeline) on random real-shaped data with fresh parameters: the
time does not depend on the parameter values. The first call compiles and is
not timed.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from jaxpix import build, data, defences, mesh, models, steps


def _frozen(config, role: str, num_classes: int):
  """A fresh frozen model's predict (the time does not depend on its values)."""
  return models.as_predict(build.build_model(build.frozen_config(config, role), num_classes))


def train_step_timer(config, batch: int | None = None):
  """Compiles ``config``'s train step on random real-shaped data (its batch
  size unless ``batch``) and returns ``(time, first_step_seconds)``:
  ``time(steps)`` runs that many more steps and returns seconds per step;
  the first step (compilation included) is timed apart. With
  ``defence.replay`` the steps are the visits of a batch in turn (the
  first: one of each, both compile; time an even number)."""
  batch = batch or config.train.batch_size
  m = mesh.make_mesh()
  shape, k = data.input_spec(config.data.dataset)
  name = config.defence.name
  classifier = _frozen(config, 'classifier', k) if name == 'autoencoder' else None
  teacher = _frozen(config, 'teacher', k) if name == 'dd' else None
  tx = build.optimizer_for(config, 1000)
  graphdef, state = build.init_state(build.build_model(config, k, classifier), tx, 0)
  visits = defences.visits(config)
  if visits > 1:
    state = steps.with_replay(state, batch, shape)
  state = jax.device_put(state, steps.state_shardings(m, state))
  terms = defences.loss_terms(config, teacher)
  visit = steps.compile_train_steps(m, graphdef, tx, terms, config.data.augment, state, visits)
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)
  y = rng.integers(0, k, batch).astype(np.int32)
  xb, yb = mesh.global_batch(m, x, y)
  holder = {'state': state, 'step': 0}

  def run(n: int) -> None:
    for _ in range(n):  # a replayed batch's visits in turn, as training runs them
      s = holder['step']
      holder['state'], metrics = visit[s % visits](holder['state'], xb, yb)
      holder['step'] = s + 1
    jax.block_until_ready(metrics)

  t0 = time.perf_counter()
  run(visits)  # every visit's step compiles
  first = time.perf_counter() - t0

  def timed(steps: int) -> float:
    t0 = time.perf_counter()
    run(steps)
    return (time.perf_counter() - t0) / steps

  return timed, first


def train_step_time(config, steps: int = 5, batch: int | None = None) -> dict:
  """Seconds per training step of ``config`` (its batch size unless ``batch``)."""
  batch = batch or config.train.batch_size
  timed, _ = train_step_timer(config, batch)
  dt = timed(steps)
  return dict(batch=batch, steps=steps, seconds_per_step=dt, images_per_s=batch / dt)


def inference_time(config, batch: int = 500, reps: int = 5) -> dict:
  """Seconds per image of the deployed model of ``config`` (its whole
  pipeline: attention, input transformation, autoencoder + classifier)."""
  shape, k = data.input_spec(config.data.dataset)
  classifier = _frozen(config, 'classifier', k) if config.defence.name == 'autoencoder' else None
  predict = jax.jit(models.as_predict(build.build_model(config, k, classifier)))
  rng = np.random.default_rng(0)
  # Timed: the model, not the copy.
  x = jax.device_put(data.to_float(rng.integers(0, 256, (batch,) + shape, dtype=np.uint8)))
  predict(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    predict(x).block_until_ready()
  per_image = (time.perf_counter() - t0) / (reps * batch)
  return dict(batch=batch, reps=reps, seconds_per_image=per_image)


def table(rows: list[tuple[str, object]], steps: int) -> dict:
  """The overhead table: per (name, config), seconds per training step and
  epoch, seconds per image at inference, and both relative to the first row
  (the undefended model); one process, one device. Distillation's training
  time includes its teacher's."""
  out = {}
  for name, cfg in rows:
    tr = train_step_time(cfg, steps=steps)
    step_s = tr['seconds_per_step']
    teacher_s = None
    if cfg.defence.name == 'dd' and not cfg.defence.teacher:
      # Distillation trains its teacher first, for as many epochs, as part of
      # the defence: an epoch of the defence is a teacher epoch + a student epoch.
      teacher_s = train_step_time(build.frozen_config(cfg, 'teacher'), steps=steps)
      teacher_s = teacher_s['seconds_per_step']
      step_s += teacher_s
    train_split, _, _ = data.load(cfg.data)
    out[name] = dict(
      model=cfg.model.name,
      width=cfg.model.width,
      seconds_per_step=step_s,
      teacher_seconds_per_step=teacher_s,
      batch=tr['batch'],
      seconds_per_epoch=step_s * (len(train_split) // cfg.train.batch_size),
      seconds_per_image=inference_time(cfg)['seconds_per_image'],
    )
  ref_name = rows[0][0]
  ref = out[ref_name]
  for o in out.values():
    o['reference'] = ref_name
    o['train_relative'] = o['seconds_per_epoch'] / ref['seconds_per_epoch']
    o['inference_relative'] = o['seconds_per_image'] / ref['seconds_per_image']
  return out
