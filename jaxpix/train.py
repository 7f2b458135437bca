"""Training: one jitted data-parallel step over a device mesh, orbax checkpoints,
metrics as JSON lines.

``train_and_evaluate(config, workdir)`` is what ``run.py`` calls for
``config.mode == 'train'``. Running it again on the same workdir continues from
the latest checkpoint; the data order is a function of (seed, epoch) and the
augmentation key a function of (seed, step), so a resumed run replays exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix import checkpoint, data, defences, models

DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}

# A loss term: (model in train mode, images [B, H, W, C] in [0, 1], labels [B],
# key) -> (scalar, metrics). Defences add terms (adversarial examples, the
# input-gradient penalty, distillation); the clean cross-entropy is the base.
LossTerm = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]


# --------------------------------------------------------------------------- #
# Mesh and input pipeline
# --------------------------------------------------------------------------- #


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """All devices (of every host; or ``devices``) on one ``data`` axis.

  Auto axis type: XLA propagates the batch sharding through the step (explicit
  sharding, the default of ``jax.make_mesh`` today, would make every vmap over
  the batch spell out its sharding).
  """
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
    (len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def global_batch(mesh, images: np.ndarray, labels: np.ndarray):
  """A host batch -> arrays sharded over ``data``. On several hosts each
  process contributes its slice of the (identical) global batch."""
  sharding = NamedSharding(mesh, P('data'))
  per = len(labels) // jax.process_count()
  sl = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
  return (
    jax.make_array_from_process_local_data(sharding, images[sl]),
    jax.make_array_from_process_local_data(sharding, labels[sl]),
  )


# --------------------------------------------------------------------------- #
# Model, optimiser, loss
# --------------------------------------------------------------------------- #


def build_model(config, num_classes: int, classifier_predict=None) -> nnx.Module:
  """The classifier of ``config.model``, behind the defence's input
  transformations (IT) and pixel-wise attention (APR) where it has them; for
  the autoencoder defence, the autoencoder before ``classifier_predict``."""
  if config.defence.name == 'autoencoder':
    if classifier_predict is None:
      raise ValueError('the autoencoder defence needs its frozen classifier')
    ae = defences.autoencoder.ConvAutoencoder(config.defence.ae_width, rngs=nnx.Rngs(config.seed))
    return defences.autoencoder.Reconstructed(ae, classifier_predict)
  model = models.create(
    config.model.name,
    num_classes=num_classes,
    width=config.model.width,
    dtype=DTYPES[config.dtype],
    seed=config.seed,
  )
  if config.defence.bit_depth or config.defence.jpeg_quality:
    model = defences.Transformed(model, config.defence.bit_depth, config.defence.jpeg_quality)
  if config.defence.attention:
    model = defences.Attended(
      model, config.defence.attention_kernel, rngs=nnx.Rngs(config.seed + 1)
    )
  return model


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay, as PyTorch's ``Adam(weight_decay=...)``
  which the APR paper used (lr 1e-3, wd 5e-4): the decay is added to the
  gradient before the moment estimates, not decoupled as in AdamW."""
  if cfg.schedule == 'constant':
    lr = cfg.lr
  elif cfg.schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1)
    )
  else:
    raise ValueError(f'config.train.schedule must be "constant" or "cosine", got {cfg.schedule!r}')
  return optax.chain(optax.add_decayed_weights(cfg.weight_decay), optax.adam(lr))


def make_loss(config, teacher_predict=None) -> list[tuple[str, float, LossTerm]]:
  """The weighted terms of the training loss for ``config`` (its defence);
  a distillation student also needs its teacher's ``predict``."""
  return defences.loss_terms(config, teacher_predict)


def sub_config(config, defence_name: str) -> ml_collections.ConfigDict:
  """A copy of ``config`` for a model another one builds on: a distillation
  student's teacher (``'dd_teacher'``) or the autoencoder's classifier (``'none'``)."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.defence.name = defence_name
  c.train.resume_step = 0
  return c


def pretrained_predict(
  config, directory, num_classes: int, devices=None, fit: bool = True, key: str = ''
):
  """The frozen ``predict`` of the model ``config`` trains in ``directory``;
  with ``fit`` it is trained first (or resumed; a finished run is only
  re-evaluated), without it the checkpoint there is loaded as it is. ``key``:
  the config entry that named ``directory``, for the error when it holds no
  checkpoint."""
  from jaxpix import evaluate  # evaluate imports this module

  if fit:
    train_and_evaluate(config, str(directory), devices)
  elif key:
    d = pathlib.Path(directory)
    d = d / 'checkpoints' if (d / 'checkpoints').is_dir() else d
    found = False
    if d.is_dir():
      ckpt = checkpoint.Checkpointer(d)
      found = ckpt.latest_step() is not None
      ckpt.close()
    if not found:
      raise checkpoint.CheckpointError(
        f'--config.{key}={str(directory)!r} holds no checkpoint: point it at the '
        f'workdir of a finished training run, or leave it empty to train one '
        f'beside this run'
      )
  config.checkpoint = str(directory)
  graphdef, state, _, _ = evaluate.load_state(config, num_classes)
  return models.as_predict(nnx.merge(graphdef, state['params'], state['rest']))


def classifier_dir(config, workdir) -> pathlib.Path:
  """Where the autoencoder defence's frozen classifier lives."""
  return pathlib.Path(config.defence.classifier or pathlib.Path(workdir) / 'classifier')


# --------------------------------------------------------------------------- #
# State and steps
# --------------------------------------------------------------------------- #


def init_state(model: nnx.Module, tx, seed: int):
  """The training state: a pytree of arrays (keys as raw key data for orbax)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = dict(
    params=params,
    rest=rest,
    opt=tx.init(params),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.key_data(jax.random.key(seed)),
  )
  return graphdef, state


def make_train_step(graphdef, tx, terms, augment: bool):
  def train_step(state, images_u8, labels):
    key = jax.random.fold_in(jax.random.wrap_key_data(state['key']), state['step'])
    k_aug, k_loss = jax.random.split(key)
    x = data.augment(k_aug, images_u8) if augment else data.levels(images_u8)

    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.train()

    def loss_fn(model):
      total, metrics = 0.0, {}
      for i, (_, weight, term) in enumerate(terms):
        value, m = term(model, x, labels, jax.random.fold_in(k_loss, i))
        total = total + weight * value
        metrics.update(m)
      metrics['loss'] = total
      return total, metrics

    # Gradients w.r.t. the parameters only; batch statistics update in place.
    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return dict(state, params=params, rest=rest, opt=opt, step=state['step'] + 1), metrics

  return train_step


def make_eval_step(graphdef):
  def eval_step(state, images_u8, labels, mask):
    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.eval()
    logits = model(data.levels(images_u8))
    return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

  return eval_step


def accuracy(mesh, eval_step, state, split: data.Split, batch_size: int) -> float:
  """Exact accuracy over a whole split (the last batch padded and masked)."""
  batch_size = -(-batch_size // mesh.size) * mesh.size  # shardable over every device
  correct = 0
  for i in range(0, len(split), batch_size):
    x, y = split.images[i : i + batch_size], split.labels[i : i + batch_size]
    pad = batch_size - len(y)
    mask = np.arange(batch_size) < len(y)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    xs, ys = global_batch(mesh, x, y)
    _, ms = global_batch(mesh, x, mask)
    correct += int(eval_step(state, xs, ys, ms))
  return correct / len(split)


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #


def checkpoint_meta(config, num_classes: int, total_steps: int | None = None) -> dict:
  return dict(
    model=config.model.name,
    width=config.model.width,
    defence=config.defence.name,
    dataset=config.data.dataset,
    num_classes=num_classes,
    total_steps=total_steps,
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Args:
    config: the experiment config.
    workdir: where checkpoints, ``metrics.jsonl`` and ``config.json`` go.
    devices: the devices to train on (default: all of them).

  Returns:
    The final metrics (also the last line of ``workdir/metrics.jsonl``).
  """
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  tcfg = config.train
  # --- data
  train, evaluation, eval_name = data.load(config.data)
  batch = tcfg.batch_size
  mesh = make_mesh(devices)
  if batch % mesh.size:
    raise ValueError(
      f'config.train.batch_size={batch} must be divisible by the number of devices ({mesh.size})'
    )
  steps_per_epoch = len(train) // batch
  if steps_per_epoch == 0:
    raise ValueError(f'config.train.batch_size={batch} exceeds the {len(train)} training images')
  total = tcfg.steps or tcfg.epochs * steps_per_epoch
  # --- model, optimiser
  # A model named in the config (defence.classifier, defence.teacher) is used
  # as it is; only the default one beside this run is trained (or resumed)
  # first. Resuming a given one would train it on to this run's train.epochs
  # and change the model the user asked to keep frozen.
  classifier = (
    pretrained_predict(
      sub_config(config, 'none'),
      classifier_dir(config, workdir),
      train.num_classes,
      devices,
      fit=not config.defence.classifier,
      key='defence.classifier',
    )
    if config.defence.name == 'autoencoder'
    else None
  )
  model = build_model(config, train.num_classes, classifier)
  tx = make_optimizer(tcfg, total)
  graphdef, state = init_state(model, tx, config.seed)
  state = jax.device_put(state, NamedSharding(mesh, P()))
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  teacher = (
    pretrained_predict(
      sub_config(config, 'dd_teacher'),
      config.defence.teacher or workdir / 'teacher',
      train.num_classes,
      devices,
      fit=not config.defence.teacher,
      key='defence.teacher',
    )
    if config.defence.name == 'dd'
    else None
  )
  train_step = jax.jit(
    make_train_step(graphdef, tx, make_loss(config, teacher), config.data.augment),
    in_shardings=(repl, shard, shard),
    out_shardings=(repl, repl),
    donate_argnums=0,
  )
  eval_step = jax.jit(
    make_eval_step(graphdef), in_shardings=(repl, shard, shard, shard), out_shardings=repl
  )
  # --- checkpoint: resume where a previous run stopped
  ckpt = checkpoint.Checkpointer(workdir / 'checkpoints', keep=tcfg.keep_checkpoints)
  meta = checkpoint_meta(config, train.num_classes, total)
  start = 0
  if ckpt.latest_step() is not None:
    saved = ckpt.meta(tcfg.resume_step or None)
    check_meta(saved, meta, ckpt.directory)
    state = ckpt.restore(state, tcfg.resume_step or None)
    start = int(state['step'])
    if start > total:
      raise ValueError(
        f'the checkpoint in {ckpt.directory} is at step {start}, past this '
        f"run's {total} steps; raise config.train.steps/epochs or use another "
        'workdir'
      )
    if saved.get('total_steps') != total and tcfg.schedule != 'constant':
      logging.warning(
        'resuming a %s schedule planned for %s steps with %d steps: the learning '
        'rate from here on differs from the original plan',
        tcfg.schedule,
        saved.get('total_steps'),
        total,
      )
    dropped = ckpt.delete_after(start)
    if dropped:
      logging.warning('resumed from step %d; deleted the newer checkpoints %s', start, dropped)
  (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2) + '\n')
  log = _MetricsLog(workdir / 'metrics.jsonl', keep_until=start)
  # --- loop
  bar = _progress(total, start, tcfg.progress)
  window, t0, seen = [], time.perf_counter(), 0
  order, order_epoch = None, -1
  last_eval = (-1, None)
  for step in range(start, total):
    epoch, i = divmod(step, steps_per_epoch)
    if epoch != order_epoch:
      order, order_epoch = data.epoch_order(len(train), config.seed, epoch), epoch
    idx = order[i * batch : (i + 1) * batch]
    state, metrics = train_step(state, *global_batch(mesh, train.images[idx], train.labels[idx]))
    window.append(metrics)
    seen += batch
    done = step + 1
    if step == start:  # the first step compiled: time from here on
      jax.block_until_ready(metrics)
      t0, seen = time.perf_counter(), 0
    if done % tcfg.log_every == 0 or done == total:
      m = {k: float(np.mean([float(w[k]) for w in window])) for k in window[0]}
      rate = seen / max(time.perf_counter() - t0, 1e-9)
      log.write(dict(step=done, epoch=done / steps_per_epoch, images_per_s=rate, **m))
      bar.set_postfix(loss=f'{m["loss"]:.3f}', acc=f'{m["accuracy"]:.3f}', img_s=f'{rate:.0f}')
      window, t0, seen = [], time.perf_counter(), 0
    if done % steps_per_epoch == 0 and tcfg.eval_every_epoch:
      last_eval = (done, accuracy(mesh, eval_step, state, evaluation, tcfg.eval_batch_size))
      log.write(
        {'step': done, 'epoch': done / steps_per_epoch, f'{eval_name}_accuracy': last_eval[1]}
      )
      t0, seen = time.perf_counter(), 0  # images/s measures training only
    if done % tcfg.checkpoint_every == 0 or done == total:
      ckpt.save(done, state, meta)
    bar.update(1)
  bar.close()
  ckpt.close()
  final = (
    last_eval[1]
    if last_eval[0] == total
    else accuracy(mesh, eval_step, state, evaluation, tcfg.eval_batch_size)
  )
  result = {
    'step': total,
    'epoch': total / steps_per_epoch,
    f'{eval_name}_accuracy': final,
    'final': True,
  }
  if config.defence.attention and jax.process_index() == 0:
    from jaxpix import figures

    trained = nnx.merge(graphdef, state['params'], state['rest'])
    trained.eval()
    figures.attention_maps(
      trained,
      data.to_float(evaluation.images[:500]),
      evaluation.labels[:500],
      workdir / 'attention_maps.png',
    )
  log.write(result)
  return result


def check_meta(saved: dict, want: dict, directory) -> None:
  diff = [
    k for k in ('model', 'width', 'defence', 'dataset', 'num_classes') if saved.get(k) != want[k]
  ]
  if diff:
    raise checkpoint.CheckpointError(
      f'checkpoint in {directory} was trained with '
      + ', '.join(f'{k}={saved.get(k)!r}' for k in diff)
      + ' but the config asks for '
      + ', '.join(f'{k}={want[k]!r}' for k in diff)
      + '; use a fresh workdir or the matching config'
    )


class _MetricsLog:
  """Appends JSON lines. On resume it keeps what the restored state had done:
  lines past the restored step (the killed run wrote them, the resumed run will
  write them again), an earlier run's closing ``final`` record and a line torn
  by the kill are dropped, so the file reads as one uninterrupted run."""

  def __init__(self, path: pathlib.Path, keep_until: int):
    self.path = path
    if path.exists():
      kept = []
      for ln in path.read_text().splitlines():
        try:
          rec = json.loads(ln)
        except json.JSONDecodeError:
          continue
        if rec.get('step', 0) <= keep_until and not rec.get('final'):
          kept.append(ln)
      path.write_text(''.join(ln + '\n' for ln in kept))

  def write(self, record: dict) -> None:
    with self.path.open('a') as f:
      f.write(json.dumps(record) + '\n')


def _progress(total, start, enabled):
  from tqdm.auto import tqdm

  return tqdm(total=total, initial=start, unit='step', desc='train', disable=not enabled)
