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
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix import data, models, train


def _shape(config) -> tuple[int, int, int]:
  return (224, 224, 3) if config.data.dataset != 'cifar10' else (32, 32, 3)


def train_step_timer(config, batch: int | None = None):
  """Compiles ``config``'s train step on random real-shaped data (its batch
  size unless ``batch``) and returns ``(time, first_step_seconds)``:
  ``time(steps)`` runs that many more steps and returns seconds per step;
  the first step (compilation included) is timed apart."""
  batch = batch or config.train.batch_size
  mesh = train.make_mesh()
  k = 10 if config.data.dataset == 'cifar10' else 1000
  classifier = (
    models.as_predict(train.build_model(train.sub_config(config, 'none'), k))
    if config.defence.name == 'autoencoder'
    else None
  )
  teacher = (
    models.as_predict(train.build_model(train.sub_config(config, 'dd_teacher'), k))
    if config.defence.name == 'dd'
    else None
  )
  model = train.build_model(config, k, classifier)
  tx = train.make_optimizer(config.train, 1000)
  graphdef, state = train.init_state(model, tx, 0)
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  state = jax.device_put(state, repl)
  step = jax.jit(
    train.make_train_step(graphdef, tx, train.make_loss(config, teacher), config.data.augment),
    in_shardings=(repl, shard, shard),
    out_shardings=(repl, repl),
    donate_argnums=0,
  )
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (batch,) + _shape(config), dtype=np.uint8)
  y = rng.integers(0, k, batch).astype(np.int32)
  xb, yb = train.global_batch(mesh, x, y)
  holder = {}
  t0 = time.perf_counter()
  holder['state'], m = step(state, xb, yb)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0

  def timed(steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
      holder['state'], m = step(holder['state'], xb, yb)
    jax.block_until_ready(m)
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
  k = 10 if config.data.dataset == 'cifar10' else 1000
  classifier = (
    models.as_predict(train.build_model(train.sub_config(config, 'none'), k))
    if config.defence.name == 'autoencoder'
    else None
  )
  predict = jax.jit(models.as_predict(train.build_model(config, k, classifier)))
  x = jax.device_put(
    data.to_float(
      np.random.default_rng(0).integers(0, 256, (batch,) + _shape(config), dtype=np.uint8)
    )
  )  # timed: the model, not the copy
  predict(x).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    predict(x).block_until_ready()
  per_image = (time.perf_counter() - t0) / (reps * batch)
  return dict(batch=batch, reps=reps, seconds_per_image=per_image)
