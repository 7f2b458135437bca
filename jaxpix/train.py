"""Training: one jitted data-parallel step over a device mesh, orbax checkpoints,
metrics as JSON lines.

``train_and_evaluate(config, workdir)`` is what ``run.py`` calls for
``config.mode == 'train'``. Running it again on the same workdir continues from
the latest checkpoint; the data order is a function of (seed, epoch) and the
augmentation key a function of (seed, step), so a resumed run replays exactly
what an uninterrupted one would have done.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from jaxpix import build, checkpoint, configs, data, defences, mesh, preemption, records, restore
from jaxpix.steps import (
  accuracy,
  compile_train_steps,
  make_eval_step,
  state_shardings,
  with_replay,
)

# --------------------------------------------------------------------------- #
# Models this one builds on
# --------------------------------------------------------------------------- #


def frozen_predict(config, role: str, workdir, num_classes: int, devices=None):
  """The frozen ``predict`` of the model ``role`` (``'teacher'`` of
  distillation, ``'classifier'`` of the autoencoder defence) that ``config``
  builds on.

  A model named in the config (``defence.teacher``, ``defence.classifier``)
  is used as it is; only the default one beside this run (``<workdir>/teacher``,
  ``<workdir>/classifier``) is trained (or resumed; a finished run is only
  re-evaluated) first. Resuming a given one would train it on to this run's
  train.epochs and change the model the user asked to keep frozen.
  """
  field = {'teacher': 'teacher', 'classifier': 'classifier'}[role]
  named = config.defence[field]
  c = build.frozen_config(config, role)
  directory = pathlib.Path(named or pathlib.Path(workdir) / field)
  if not named:
    train_and_evaluate(c, str(directory), devices)
  c.checkpoint = str(directory)
  try:
    restore.checkpoint_dir(c.checkpoint, f'defence.{field}')
  except checkpoint.CheckpointError as e:
    raise checkpoint.CheckpointError(
      f'{e}; or leave --config.defence.{field} empty to train one beside this run'
    ) from None
  return restore.load_predict(c, num_classes).predict


# --------------------------------------------------------------------------- #
# The loop
# --------------------------------------------------------------------------- #

# Config fields a resumed run may change: how long it runs and how it reports,
# where files are, the other modes' settings. Any other change would make the
# checkpoint's model a mix of two trainings: refused unless the user passes
# train.allow_changes=True (config_history.jsonl keeps every run's config).
RESUMABLE_CHANGES = (
  'mode',
  'checkpoint',
  'eval',
  'suite',
  'data.dir',
  'data.source',
  'data.eval_subset',
  'train.steps',
  'train.epochs',
  'train.progress',
  'train.log_every',
  'train.checkpoint_every',
  'train.checkpoint_minutes',
  'train.keep_checkpoints',
  'train.resume_step',
  'train.eval_every_epoch',
  'train.eval_batch_size',
  'train.allow_changes',
  # Read only where the run starts (its checkpoint meta keeps autoencoder_from).
  'defence.autoencoder',
)


class _Plan:
  """The schedule: batch size, steps per epoch, total steps.

  With ``visits`` > 1 (``defence.replay``) each batch is trained on in that
  many consecutive steps, so an epoch (one pass over the data) has that many
  times the steps.
  """

  def __init__(self, tcfg, train_size: int, devices: int, visits: int = 1):
    self.batch, self.visits = tcfg.batch_size, visits
    if self.batch % devices:
      raise ValueError(
        f'config.train.batch_size={self.batch} must be divisible by the number of '
        f'devices ({devices})'
      )
    self.steps_per_epoch = train_size // self.batch * visits
    if self.steps_per_epoch == 0:
      raise ValueError(
        f'config.train.batch_size={self.batch} exceeds the {train_size} training images'
      )
    self.total = tcfg.steps or tcfg.epochs * self.steps_per_epoch

  def epoch(self, step: int) -> float:
    return step / self.steps_per_epoch


def _resume(ckpt, state, config, want: dict, total: int):
  """The state to start from (restored if ``ckpt`` holds one) and its step."""
  tcfg = config.train
  if ckpt.latest_step() is None:
    return state, 0
  saved = ckpt.meta(tcfg.resume_step or None)
  build.check_meta(saved, want, ckpt.directory)
  if saved.get('data_sha1', want['data_sha1']) != want['data_sha1']:  # older ones lack it
    raise ValueError(
      f'the checkpoint in {ckpt.directory} trained on other data than '
      f'config.data.dir={config.data.dir!r} holds now (the training images or labels '
      'differ): point data.dir at the data it trained on, or use another --workdir'
    )
  changed = configs.differences(saved.get('config', want['config']), want['config'])
  if changed and not tcfg.allow_changes:
    raise ValueError(
      f'the checkpoint in {ckpt.directory} was trained with another config ('
      + '; '.join(changed)
      + '): resuming would train one model with two settings. Use another --workdir, or '
      "pass --config.train.allow_changes=True to go on deliberately (every run's config "
      'is kept in config_history.jsonl)'
    )
  if changed:
    logging.warning('resuming with a changed config (allowed): %s', '; '.join(changed))
  # Even where the change is allowed, arrays of other shapes cannot be resumed.
  stored = ckpt.shapes(tcfg.resume_step or None)
  arrays = build.shapes(dict(params=state['params'], rest=state['rest']))
  where, k = f'checkpoint in {ckpt.directory}', want['num_classes']
  build.check_structure(stored, arrays, saved.get('config', {}), config, k, where)
  state = ckpt.restore(state, tcfg.resume_step or None)
  start = int(state['step'])
  if start > total:
    raise ValueError(
      f'the checkpoint in {ckpt.directory} is at step {start}, past this '
      f"run's {total} steps; raise config.train.steps/epochs or use another workdir"
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
  return state, start


def metrics_log(path: pathlib.Path, keep_until: int) -> records.JsonlLog:
  """``metrics.jsonl``, cut back to what the restored state had done: lines
  past the restored step (the killed run wrote them, the resumed run writes
  them again), an earlier run's closing ``final`` record and a line torn by
  the kill are dropped, so the file reads as one uninterrupted run."""
  log = records.JsonlLog(path)
  log.rewrite([r for r in log.lines if r.get('step', 0) <= keep_until and not r.get('final')])
  return log


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, devices=None) -> dict:
  """Trains ``config`` in ``workdir`` (resuming if it holds a checkpoint).

  Args:
    config: the experiment config.
    workdir: where checkpoints, ``metrics.jsonl`` and ``config.json`` go.
    devices: the devices to train on (default: all of them).

  Returns:
    The final metrics (also the last line of ``workdir/metrics.jsonl``).
  """
  build.check_train_config(config)
  workdir = records.check_workdir(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  with records.workdir_lock(workdir):
    return _train(config, workdir, devices)


@dataclasses.dataclass
class _Run:
  """What the loop and its closing need of one training run."""

  config: ml_collections.ConfigDict
  plan: _Plan
  train: data.Split
  evaluation: data.Split
  eval_name: str
  mesh: jax.sharding.Mesh
  graphdef: object
  train_steps: tuple[Callable, ...]  # step s runs train_steps[s % plan.visits]
  eval_step: Callable
  workdir: pathlib.Path

  def accuracy(self, state) -> float:
    tcfg = self.config.train
    return accuracy(self.mesh, self.eval_step, state, self.evaluation, tcfg.eval_batch_size)


def _train(config, workdir: pathlib.Path, devices) -> dict:
  tcfg = config.train
  # --- data, schedule
  train, evaluation, eval_name = data.load(config.data)
  m = mesh.make_mesh(devices)
  plan = _Plan(tcfg, len(train), m.size, defences.visits(config))
  k = train.num_classes
  # --- model, optimiser, loss, steps
  name = config.defence.name
  meta = dict(build.meta(config, k, plan.total), config=configs.flatten(config, RESUMABLE_CHANGES))
  meta['data_sha1'] = data.digest(train.images, train.labels)  # checked on resume
  reuse = ''
  if name == 'autoencoder' and config.defence.autoencoder:
    if checkpoint.has_checkpoint(workdir / 'checkpoints'):
      logging.warning(
        "config.defence.autoencoder is ignored: %s already holds this run's own checkpoint",
        workdir,
      )
    else:  # checked before the classifier trains (hours for the larger ones)
      reused = restore.reusable_autoencoder(config, meta)
      reuse = config.defence.autoencoder
  classifier = (
    frozen_predict(config, 'classifier', workdir, k, devices) if name == 'autoencoder' else None
  )
  teacher = frozen_predict(config, 'teacher', workdir, k, devices) if name == 'dd' else None
  tx = build.optimizer_for(config, plan.total)
  graphdef, state = build.init_state(build.build_model(config, k, classifier), tx, config.seed)
  if plan.visits > 1:
    state = with_replay(state, plan.batch, train.images.shape[1:])
  state = jax.device_put(state, state_shardings(m, state))
  terms = defences.loss_terms(config, teacher)
  run = _Run(
    config,
    plan,
    train,
    evaluation,
    eval_name,
    m,
    graphdef,
    compile_train_steps(m, graphdef, tx, terms, config.data.augment, state, plan.visits),
    jax.jit(make_eval_step(graphdef), out_shardings=mesh.replicated(m)),
    workdir,
  )
  # --- checkpoint: resume where a previous run stopped; the loop
  with checkpoint.Checkpointer(workdir / 'checkpoints', keep=tcfg.keep_checkpoints) as ckpt:
    if reuse:
      state, start = restore.reuse_autoencoder(ckpt, state, reused, reuse, meta)
    else:
      state, start = _resume(ckpt, state, config, meta, plan.total)
    if start:
      logging.info('%s: resuming from step %d of %d', workdir, start, plan.total)
    else:
      logging.info('%s: no checkpoint there, training from step 0 of %d', workdir, plan.total)
    # Paths under the repository's parent recorded relative to the repository,
    # so that a committed run folder names no machine's layout. A finished run
    # reopened with nothing left to train (a suite resumed with other eval
    # settings) keeps the record of the config it was trained with;
    # config_history.jsonl logs every invocation.
    if records.writer() and (start < plan.total or not (workdir / 'config.json').exists()):
      records.write_json(workdir / 'config.json', json.loads(config.to_json_best_effort()))
    records.JsonlLog(workdir / 'config_history.jsonl').append(
      [dict(start_step=start, **records.provenance(), config=config.to_dict())]
    )
    # A copy killed before its save was durable left its line: start afresh.
    log = metrics_log(workdir / 'metrics.jsonl', keep_until=0 if reuse else start)
    if reuse:
      log.append([dict(step=start, epoch=plan.epoch(start), autoencoder_from=reuse)])
    state, last_eval = _loop(run, state, start, log, ckpt, meta)
  # --- final accuracy, attention maps
  return _finish(run, state, last_eval, log)


def _loop(run: _Run, state, start: int, log, ckpt, meta):
  """Steps ``start`` to the end: logging, epoch evaluations, checkpoints
  where :class:`preemption.Saver` says; a SIGTERM or Ctrl-C saves at the next
  step and raises :class:`preemption.Stopped`."""
  tcfg, plan = run.config.train, run.plan
  bar = records.StepBar(plan.total, start, tcfg.progress, plan.epoch)
  try:
    with preemption.Saver(tcfg.checkpoint_every, plan.total, tcfg.checkpoint_minutes) as saver:
      out = _steps(run, state, start, log, ckpt, meta, bar, saver)
  except BaseException:
    bar.bar.close()  # without waiting on the queued steps: the error comes first
    raise
  bar.close()
  return out


def _steps(run: _Run, state, start, log, ckpt, meta, bar, saver):
  config, plan, train, m = run.config, run.plan, run.train, run.mesh
  tcfg = config.train
  window, t0, seen = [], time.perf_counter(), 0
  order, order_epoch = None, -1
  last_eval = (-1, None)
  for step in range(start, plan.total):
    epoch, i = divmod(step, plan.steps_per_epoch)
    if epoch != order_epoch:
      order, order_epoch = data.epoch_order(len(train), config.seed, epoch), epoch
    j = i // plan.visits  # the batch's place in the epoch's order
    idx = order[j * plan.batch : (j + 1) * plan.batch]
    batch = mesh.global_batch(m, train.images[idx], train.labels[idx])
    state, metrics = run.train_steps[step % plan.visits](state, *batch)
    window.append(metrics)
    seen += plan.batch
    done = step + 1
    if step == start:  # the first step compiled: time from here on
      jax.block_until_ready(metrics)
      t0, seen = time.perf_counter(), 0
    bar.queue(done, metrics['loss'])
    if done % tcfg.log_every == 0 or done == plan.total:
      bar.wait()
      _check_finite(window, done, tcfg)
      # Replayed batches: a key is averaged over the visits that report it.
      keys = dict.fromkeys(key for w in window for key in w)
      avg = {key: float(np.mean([float(w[key]) for w in window if key in w])) for key in keys}
      # None where no step was timed (the window held only the compiling one).
      rate = seen / max(time.perf_counter() - t0, 1e-9) if seen else None
      log.append([dict(step=done, epoch=plan.epoch(done), images_per_s=rate, **avg)])
      bar.show(loss=f'{avg["loss"]:.3f}', acc=f'{avg["accuracy"]:.3f}', img_s=f'{rate or 0:.0f}')
      window, t0, seen = [], time.perf_counter(), 0
    if done % plan.steps_per_epoch == 0 and tcfg.eval_every_epoch:
      bar.wait()
      last_eval = (done, run.accuracy(state))
      log.append(
        [{'step': done, 'epoch': plan.epoch(done), f'{run.eval_name}_accuracy': last_eval[1]}]
      )
      bar.show(**{f'{run.eval_name}_acc': f'{last_eval[1]:.3f}'})
      t0, seen = time.perf_counter(), 0  # images/s measures training only
    save, stop = saver.due(done)
    if save:
      bar.wait()
      _check_finite(window, done, tcfg, state['params'])  # nothing non-finite is saved
      ckpt.save(done, state, meta)
      saver.saved()
    if stop:
      raise preemption.Stopped(stop, preemption.stop_message(stop, done, plan.total, run.workdir))
  return state, last_eval


@jax.jit
def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _check_finite(window: list, done: int, tcfg, params=None) -> None:
  """Stops training where its loss (over the steps since the last log) or,
  before a save, its parameters are no longer finite: such a state is never
  saved, and the error names the step and the learning rate."""
  losses = [float(w['loss']) for w in window]
  bad = next((i for i, v in enumerate(losses) if not np.isfinite(v)), None)
  if bad is None and (params is None or bool(_all_finite(params))):
    return
  where = (
    f'at step {done - len(window) + bad + 1} (loss {losses[bad]})'
    if bad is not None
    else (f'by step {done} (its parameters)')
  )
  raise FloatingPointError(
    f'training became non-finite {where}; nothing after the last checkpoint was saved. '
    f"Lower config.train.lr (now {tcfg.lr}) or check the defence's settings and the data"
  )


def _finish(run: _Run, state, last_eval, log) -> dict:
  """The closing record (final accuracy) and, with attention, its maps."""
  config, plan = run.config, run.plan
  final = last_eval[1] if last_eval[0] == plan.total else run.accuracy(state)
  result = {
    'step': plan.total,
    'epoch': plan.epoch(plan.total),
    f'{run.eval_name}_accuracy': final,
    'final': True,
  }
  if config.defence.attention and records.writer():
    from jaxpix import figures

    # Process 0 draws alone: its own copy of the replicated state (with
    # several processes the global arrays span devices it cannot compute on).
    local = jax.tree.map(
      lambda a: a.addressable_data(0) if isinstance(a, jax.Array) else a,
      (state['params'], state['rest']),
    )
    trained = nnx.merge(run.graphdef, *local)
    trained.eval()
    figures.attention_maps(
      trained,
      data.to_float(run.evaluation.images[:500]),
      run.evaluation.labels[:500],
      run.workdir / 'attention_maps.png',
      class_names=data.class_names(config.data.dataset, config.data.dir),
    )
  log.append([result])
  return result
