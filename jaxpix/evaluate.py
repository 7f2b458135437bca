"""Evaluation of a trained checkpoint (``config.mode == 'eval'``).

    python run.py --config configs/cifar_apr.py --config.mode=eval \
        --config.checkpoint=workdir/apr --workdir workdir/apr_eval

Loads the model (and its defence pipeline) named by the config from
``config.checkpoint`` (a training workdir, or its ``checkpoints/`` folder),
refuses a checkpoint of another model or defence, and reports:

1. clean accuracy on the test split (``config.data.eval_split``);
2. the one-pixel attack with the papers' protocol (``config.eval``): only
   correctly classified test images, ``num_images`` of them drawn with
   ``eval.seed``, the full DE budget (population 400, 100 generations); the
   attack success rate (ASR), robustness = 1 - ASR, mean queries and the mean
   confidence of the successful adversarial images; optionally the targeted
   attack towards every other class (Su et al.) and the exhaustive
   extreme-colour search as a second, stronger attack;
3. for the autoencoder defence, the autoencoder paper's Table 4 metrics
   (attacking the bare classifier too, and passing its adversarial images
   through the autoencoder).

Every attacked image's result is appended to ``attack_<name>.jsonl`` in the
workdir as it finishes. Running the same command again after a kill continues
where it stopped: images already in the file are not attacked again, and as
each image's search depends only on its image and its key
``fold_in(key(eval.seed), index)``, the final numbers equal an uninterrupted
run's (bitwise on CPU, tested; on a GPU a resumed run feeds the model batches
of other shapes, and kernels chosen per shape may round differently, so a
near-tie can go the other way: equal in distribution, not bit for bit). The
file's first line records the protocol (model, defence, step, a hash of the
parameters, the attack's settings, the chosen images); a run with another
protocol refuses to mix into it. ``session`` lines record the commit and
device of every run that wrote to it.

Outputs: ``results.json`` (every number with its config, seed, commit and
device), ``results.md`` (the same numbers as a table), ``asr_vs_budget.png``
and ``gallery.png``.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import logging
import os
import pathlib
import subprocess
import time

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix import attack, checkpoint, data, models, stats, train
from jaxpix.attack import attacks as _attacks
from jaxpix.attack import perturb

# --------------------------------------------------------------------------- #
# Loading
# --------------------------------------------------------------------------- #


def checkpoint_dir(path: str) -> pathlib.Path:
  if not path:
    raise ValueError(
      'config.checkpoint is empty; set it to a training workdir, e.g. '
      '--config.checkpoint=workdir/cifar_baseline'
    )
  p = pathlib.Path(path)
  if (p / 'checkpoints').is_dir():
    p = p / 'checkpoints'
  if not p.is_dir():
    raise checkpoint.CheckpointError(
      f'checkpoint directory {p} does not exist; point --config.checkpoint at the workdir of a '
      'training run (the folder holding checkpoints/)'
    )
  return p


def load_state(config, num_classes: int, classifier=None):
  """(graphdef, state restored from config.checkpoint, mesh, step).

  ``classifier``: the autoencoder defence's frozen classifier ``predict``
  (default: loaded from beside the checkpoint, see ``train.classifier_dir``).
  """
  ckpt = checkpoint.Checkpointer(checkpoint_dir(config.checkpoint))
  if ckpt.latest_step() is None:
    raise checkpoint.CheckpointError(
      f'{ckpt.directory} holds no checkpoint; train first (mode=train) or point '
      '--config.checkpoint at a finished run'
    )
  step = config.train.resume_step or None
  train.check_meta(ckpt.meta(step), train.checkpoint_meta(config, num_classes), ckpt.directory)
  mesh = train.make_mesh()
  if config.defence.name == 'autoencoder' and classifier is None:
    classifier = load_classifier(config, num_classes)
  model = train.build_model(config, num_classes, classifier)
  tx = train.make_optimizer(config.train, 1)
  graphdef, like = train.init_state(model, tx, config.seed)
  like = jax.device_put(like, NamedSharding(mesh, P()))
  state = ckpt.restore(like, step)
  ckpt.close()
  return graphdef, state, mesh, int(state['step'])


def load_classifier(config, num_classes: int):
  """The autoencoder defence's frozen classifier (it sits beside the checkpoint)."""
  workdir = checkpoint_dir(config.checkpoint).parent  # the training workdir
  cdir = train.classifier_dir(config, workdir)
  return train.pretrained_predict(train.sub_config(config, 'none'), cdir, num_classes, fit=False)


def load_predict(config, num_classes: int):
  """(predict of the deployed model, its step, the nnx model, the bare
  classifier's predict for the autoencoder defence or None)."""
  classifier = (
    load_classifier(config, num_classes) if config.defence.name == 'autoencoder' else None
  )
  graphdef, state, _, step = load_state(config, num_classes, classifier)
  model = nnx.merge(graphdef, state['params'], state['rest'])
  return models.as_predict(model), step, model, classifier


def params_digest(model) -> str:
  """sha1 of the model's parameters: the attack logs refuse to mix results of
  two different trainings that happen to share model, defence and step."""
  h = hashlib.sha1()
  for path, leaf in sorted(
    nnx.to_flat_state(nnx.state(model, nnx.Param)), key=lambda kv: str(kv[0])
  ):
    h.update(str(path).encode())
    h.update(np.ascontiguousarray(np.asarray(jax.device_get(leaf.get_value()))).tobytes())
  return h.hexdigest()[:16]


def predict_probs(predict, x: np.ndarray, batch: int) -> np.ndarray:
  fn = _attacks._softmax_fn(predict)
  return np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])


def select_images(correct: np.ndarray, n: int, seed: int) -> np.ndarray:
  """``n`` of the correctly classified indices ``correct``, drawn without
  replacement with ``seed`` and sorted (all of them when there are fewer)."""
  correct = np.asarray(correct)
  if n >= len(correct):
    return np.sort(correct)
  return np.sort(np.random.default_rng(seed).choice(correct, n, replace=False))


# --------------------------------------------------------------------------- #
# Resumable per-image results
# --------------------------------------------------------------------------- #


class AttackLog:
  """``attack_<name>.jsonl``: a protocol header, then one line per attack,
  and a ``session`` line (commit, device, date) each time a run opens it.

  Lines are appended and flushed as images finish (by process 0 only). On
  open, a line torn by a kill (the last one, unparsable) is dropped, with an
  atomic rewrite; a header that differs from this run's protocol is an error
  naming the differing fields.
  """

  def __init__(self, path: pathlib.Path, protocol: dict, session: dict):
    self.path = path
    self.records: dict[int, dict] = {}
    self.sessions: list[dict] = []
    self.writer = jax.process_index() == 0
    lines = path.read_text().splitlines() if path.exists() else []
    parsed = []
    for j, ln in enumerate(lines):
      try:
        parsed.append(json.loads(ln))
      except json.JSONDecodeError:
        if j != len(lines) - 1:
          raise ValueError(
            f'{path} line {j + 1} is not JSON (and is not the last line, so a '
            'kill did not tear it); delete the file to attack again'
          ) from None
    if parsed:
      saved = parsed[0].get('protocol') or {}
      if saved != protocol:
        diff = sorted(k for k in set(saved) | set(protocol) if saved.get(k) != protocol.get(k))
        raise ValueError(
          f'{path} holds results of another protocol ('
          + ', '.join(f'{k}: saved {saved.get(k)!r}, now {protocol.get(k)!r}' for k in diff)
          + '); use another --workdir, or delete the file to attack again'
        )
      self.sessions = [r['session'] for r in parsed[1:] if 'session' in r]
      self.records = {r['key']: r for r in parsed[1:] if 'key' in r}
    self.sessions.append(session)
    if self.writer:  # header, sessions, complete records: drops a torn line
      tmp = path.with_suffix('.jsonl.tmp')
      tmp.write_text(
        ''.join(
          json.dumps(r) + '\n'
          for r in [
            {'protocol': protocol},
            *({'session': x} for x in self.sessions),
            *self.records.values(),
          ]
        )
      )
      os.replace(tmp, path)

  def append(self, records: list[dict]) -> None:
    self.records.update({r['key']: r for r in records})
    if not self.writer:
      return
    with self.path.open('a') as f:
      for r in records:
        f.write(json.dumps(r) + '\n')
      f.flush()
      os.fsync(f.fileno())


@dataclasses.dataclass
class AttackSpec:
  """One attack of the evaluation: what it runs and on which keys."""

  name: str
  kind: str  # 'de' or 'extreme'
  targeted: bool
  predict: object
  max_budget: int


def _records_of(finished: dict, targeted: bool, k: int) -> list[dict]:
  out = []
  for j, g in enumerate(finished['gidx']):
    g = int(g)
    r = dict(
      key=g,
      index=g // k if targeted else g,
      success=bool(finished['success'][j]),
      queries=int(finished['queries'][j]),
      true_prob=float(finished['true_prob'][j]),
      adv_label=int(finished['pred'][j]),
      adv_prob=float(finished['pred_prob'][j]),
      fitness=float(finished['energy'][j]),
      vec=[float(v) for v in np.asarray(finished['vec'][j])],
    )
    if targeted:
      r['target'] = g % k
      r['target_prob'] = float(finished['target_prob'][j])
    out.append(r)
  return out


def run_attack(
  spec: AttackSpec,
  log: AttackLog,
  images: np.ndarray,
  labels: np.ndarray,
  chosen: np.ndarray,
  num_classes: int,
  ecfg,
  progress: bool,
) -> list[dict]:
  """Attacks the (image, target) pairs of ``chosen`` not yet in ``log``;
  returns every record, in key order."""
  if spec.targeted:
    keys = np.array(
      [i * num_classes + t for i in chosen for t in range(num_classes) if t != labels[i]], np.int64
    )
  else:
    keys = np.asarray(chosen, np.int64)
  if keys.max(initial=0) >= np.iinfo(np.int32).max:
    raise ValueError('too many images x classes for int32 attack keys')
  todo = np.array([g for g in keys if int(g) not in log.records], np.int64)
  bar = _EvalBar(
    spec.name,
    len(keys),
    [log.records[int(g)] for g in keys if int(g) in log.records],
    progress,
    'attack' if spec.targeted else 'img',
  )

  def on_finish(finished):
    recs = _records_of(finished, spec.targeted, num_classes)
    log.append(recs)
    bar.update(recs)

  if len(todo):
    idx = todo // num_classes if spec.targeted else todo
    x, y = images[idx], labels[idx]
    targets = (todo % num_classes).astype(np.int32) if spec.targeted else None
    common = dict(targets=targets, indices=todo.astype(np.int32), progress=on_finish)
    if spec.kind == 'de':
      attack.one_pixel(
        spec.predict,
        x,
        y,
        key=jax.random.key(ecfg.seed),
        pixels=ecfg.pixels,
        popsize=ecfg.popsize,
        maxiter=ecfg.maxiter,
        strategy=ecfg.strategy,
        mode=ecfg.mode,
        **common,
      )
    else:
      attack.extreme_colour(spec.predict, x, y, **common)
  bar.close()
  return [log.records[int(g)] for g in keys]


class _EvalBar:
  """tqdm bar: images (or image x target attacks) done, resumed ones included;
  ASR so far; images/s."""

  def __init__(self, name, total, done_records, enabled, unit):
    from tqdm.auto import tqdm

    self.fooled = sum(r['success'] for r in done_records)
    self.done = len(done_records)
    self.new = 0
    self.t0 = time.perf_counter()
    self.unit = unit
    self.bar = tqdm(
      total=total, initial=self.done, unit=unit, desc=f'attack {name}', disable=not enabled
    )

  def update(self, recs):
    self.done += len(recs)
    self.new += len(recs)
    self.fooled += sum(r['success'] for r in recs)
    rate = self.new / max(time.perf_counter() - self.t0, 1e-9)
    self.bar.set_postfix(
      {'asr': f'{self.fooled / max(self.done, 1):.3f}', f'{self.unit}/s': f'{rate:.2f}'}
    )
    self.bar.update(len(recs))

  def close(self):
    self.bar.close()


# --------------------------------------------------------------------------- #
# Summaries
# --------------------------------------------------------------------------- #


def asr_curve(records: list[dict], max_budget: int) -> dict:
  """Attack success rate against query budget: an attack succeeds within
  budget b when it succeeded with at most b model evaluations. Exact for the
  early-stopping searches here: an image's search up to b evaluations is the
  same whatever the final budget."""
  q = np.array([r['queries'] for r in records if r['success']], np.int64)
  budgets = np.unique(np.concatenate([q, [max_budget]])).astype(np.int64)
  n = max(len(records), 1)
  return dict(budget=budgets.tolist(), asr=[float(np.sum(q <= b) / n) for b in budgets])


def summarise_attack(records: list[dict], max_budget: int, targeted: bool) -> dict:
  succ = np.array([r['success'] for r in records], bool)
  queries = np.array([r['queries'] for r in records], np.float64)
  conf_key = 'target_prob' if targeted else 'adv_prob'
  conf = np.array([r[conf_key] for r in records], np.float64)
  k, n = int(succ.sum()), len(records)
  lo, hi = stats.wilson(k, n)
  out = dict(
    attacks=n,
    successes=k,
    attack_success_rate=k / n if n else float('nan'),
    asr_wilson95=[lo, hi],
    robustness=1 - k / n if n else float('nan'),
    mean_queries=float(queries.mean()) if n else float('nan'),
    mean_queries_successful=float(queries[succ].mean()) if k else float('nan'),
    mean_confidence_successful=float(conf[succ].mean()) if k else float('nan'),
    max_budget=max_budget,
    curve=asr_curve(records, max_budget),
  )
  if targeted:  # Su et al.'s "perturbed to at least one target class" rate, per image
    by_image: dict[int, bool] = {}
    for r in records:
      by_image[r['index']] = by_image.get(r['index'], False) or r['success']
    ki, ni = sum(by_image.values()), len(by_image)
    out.update(
      images=ni,
      images_fooled_any_target=ki / ni if ni else float('nan'),
      any_target_wilson95=list(stats.wilson(ki, ni)),
    )
  return out


def adversarial_images(records: list[dict], images: np.ndarray, mode: str) -> np.ndarray:
  """The adversarial image of each record (its best candidate applied)."""
  idx = np.array([r['index'] for r in records], np.int64)
  vec = np.array([r['vec'] for r in records], np.float32)
  return _attacks._apply_all(images[idx], vec, mode)


def result_from_records(
  records: list[dict], images: np.ndarray, labels: np.ndarray, clean_probs: np.ndarray, mode: str
) -> attack.AttackResult:
  """An :class:`AttackResult` rebuilt from log records (for the gallery)."""
  idx = np.array([r['index'] for r in records], np.int64)
  vec = np.array([r['vec'] for r in records], np.float32)
  x = images[idx]
  h, w, c = x.shape[1:]
  pos, val = jax.device_get(perturb.decode(jax.numpy.asarray(vec), h, w, c, mode))
  y = labels[idx]
  return attack.AttackResult(
    adv_images=adversarial_images(records, images, mode),
    success=np.array([r['success'] for r in records]),
    queries=np.array([r['queries'] for r in records]),
    positions=pos,
    colors=val,
    true_prob=np.array([r['true_prob'] for r in records]),
    adv_prob=np.array([r['adv_prob'] for r in records]),
    adv_label=np.array([r['adv_label'] for r in records]),
    target_prob=None,
    fitness=np.array([r['fitness'] for r in records]),
    labels=y,
    targets=None,
    clean_label=clean_probs[idx].argmax(-1),
    clean_true_prob=clean_probs[idx, y],
  )


def provenance() -> dict:
  """Commit, device and versions, stamped on every results.json."""
  root = pathlib.Path(__file__).resolve().parents[1]
  try:
    commit = subprocess.run(
      ['git', 'rev-parse', 'HEAD'], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      ['git', 'status', '--porcelain', '--untracked-files=no'],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout.strip()
    commit += '-dirty' if dirty else ''
  except (OSError, subprocess.CalledProcessError):
    commit = 'unknown'
  d = jax.devices()
  return dict(
    commit=commit,
    device=f'{len(d)} x {d[0].device_kind} ({d[0].platform})',
    jax=jax.__version__,
    date=datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
  )


# --------------------------------------------------------------------------- #
# The evaluation
# --------------------------------------------------------------------------- #


def load_test_split(cfg) -> data.Split:
  test = (
    data.load_npz(cfg.dataset, cfg.eval_split, cfg.dir)
    if cfg.source == 'npz'
    else data.load_tfds(cfg.dataset, cfg.eval_split, cfg.dir or None)
  )
  if cfg.eval_subset:
    test = data.Split(
      test.images[: cfg.eval_subset], test.labels[: cfg.eval_subset], test.num_classes
    )
  return test


def check_eval_config(ecfg) -> None:
  if not isinstance(ecfg.num_images, int) or ecfg.num_images < 1:
    raise ValueError(f'config.eval.num_images must be a positive int, got {ecfg.num_images!r}')
  if ecfg.popsize < 4 or ecfg.maxiter < 0:
    raise ValueError(
      'config.eval.popsize must be >= 4 and config.eval.maxiter >= 0, got '
      f'{ecfg.popsize} and {ecfg.maxiter}'
    )
  if ecfg.mode not in perturb.MODES:
    raise ValueError(f'config.eval.mode must be one of {perturb.MODES}, got {ecfg.mode!r}')
  if not ecfg.temperature > 0:
    raise ValueError(
      f'config.eval.temperature must be > 0 (1 = the model as deployed), got {ecfg.temperature!r}'
    )


def tempered(predict, temperature: float):
  """``predict`` with its logits divided by ``temperature``: the same
  decisions, softer probabilities for the attack's fitness."""
  if temperature == 1:
    return predict
  return lambda x: predict(x) / temperature


def evaluate(config, workdir: str) -> dict:
  """Runs the evaluation described in the module docstring; returns results.json's dict."""
  t_start = time.perf_counter()
  ecfg = config.eval
  check_eval_config(ecfg)
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  test = load_test_split(config.data)
  k = test.num_classes
  predict, step, model, classifier = load_predict(config, k)
  x = data.to_float(test.images)
  batch = config.train.eval_batch_size
  probs = predict_probs(predict, x, batch)
  pred = probs.argmax(-1)
  correct = pred == test.labels
  ok = correct.copy()
  if classifier is not None:  # the same images for the bare and the defended attack
    bare_correct = predict_probs(classifier, x, batch).argmax(-1) == test.labels
    ok &= bare_correct
  chosen = select_images(np.flatnonzero(ok), ecfg.num_images, ecfg.seed)
  if len(chosen) < ecfg.num_images:
    logging.warning(
      'config.eval.num_images=%d but only %d test images are classified correctly;'
      ' attacking all %d',
      ecfg.num_images,
      len(chosen),
      len(chosen),
    )
  meta = train.checkpoint_meta(config, k)
  h, w, c = x.shape[1:]
  de_budget = ecfg.popsize * (ecfg.maxiter + 1)
  attacked = tempered(predict, ecfg.temperature)
  specs = [AttackSpec('de', 'de', False, attacked, de_budget)]
  if ecfg.targeted:
    specs.append(AttackSpec('de_targeted', 'de', True, attacked, de_budget))
  if ecfg.extreme_colour:
    specs.append(AttackSpec('extreme_colour', 'extreme', False, attacked, h * w * 2**c))
  if classifier is not None:
    specs.append(AttackSpec('de_classifier', 'de', False, classifier, de_budget))
  digest = hashlib.sha1(np.asarray(chosen, np.int64).tobytes()).hexdigest()[:16]
  session = provenance()
  results = dict(
    config=json.loads(config.to_json_best_effort()),
    seed=config.seed,
    eval_seed=ecfg.seed,
    checkpoint=str(checkpoint_dir(config.checkpoint)),
    step=step,
    **session,
    test_split=config.data.eval_split,
    test_images=len(test),
    clean_accuracy=float(correct.mean()),
    clean_accuracy_wilson95=list(stats.wilson(int(correct.sum()), len(test))),
    correctly_classified=int(correct.sum()),
    num_images_requested=ecfg.num_images,
    num_images=len(chosen),
    images=chosen.tolist(),
    attacks={},
  )
  if len(chosen) < ecfg.num_images:
    results['note'] = (
      f'only {len(chosen)} correctly classified test images: all attacked '
      f'instead of the {ecfg.num_images} requested'
    )
  records = {}
  for spec in specs:
    protocol = dict(
      meta,
      step=step,
      params_sha1=params_digest(model),
      attack=spec.name,
      seed=ecfg.seed,
      images=len(chosen),
      images_sha1=digest,
      test_split=config.data.eval_split,
      eval_subset=config.data.eval_subset,
    )
    if ecfg.temperature != 1 and spec.name != 'de_classifier':
      protocol['temperature'] = float(ecfg.temperature)  # absent at 1: older logs still match
    if spec.kind == 'de':
      protocol.update(
        popsize=ecfg.popsize,
        maxiter=ecfg.maxiter,
        pixels=ecfg.pixels,
        strategy=ecfg.strategy,
        mode=ecfg.mode,
      )
    log = AttackLog(out / f'attack_{spec.name}.jsonl', protocol, session)
    t0 = time.perf_counter()
    recs = run_attack(spec, log, x, test.labels, chosen, k, ecfg, ecfg.progress)
    records[spec.name] = recs
    summary = summarise_attack(recs, spec.max_budget, spec.targeted)
    summary['seconds_this_run'] = time.perf_counter() - t0
    # The runs that wrote these records (a resumed evaluation has several).
    summary['sessions'] = log.sessions
    if len({(x['commit'], x['device']) for x in log.sessions}) > 1:
      logging.warning(
        '%s: records come from runs on different commits or devices: %s', log.path, log.sessions
      )
    results['attacks'][spec.name] = summary
  if classifier is not None:
    results['autoencoder_table4'] = _table4(
      results,
      records['de_classifier'],
      predict,
      x,
      test.labels,
      bare_correct,
      correct,
      ecfg.mode,
      batch,
    )
  results['seconds_this_run'] = time.perf_counter() - t_start
  if jax.process_index() == 0:
    _figures(results, records, x, test.labels, probs, ecfg, out, config, model)
    write_json(out / 'results.json', results)
    (out / 'results.md').write_text(markdown(results))
  return results


def _table4(
  results, bare_records, pipeline, x, labels, bare_correct, pipe_correct, mode, batch
) -> dict:
  """The autoencoder paper's Table 4 on the evaluated images (definitions in
  jaxpix.defences.autoencoder): the DE attack on the bare classifier, its
  adversarial images passed through the pipeline (transfer), and the adaptive
  attack on the whole pipeline (``attacks.de``)."""
  adv = adversarial_images(bare_records, x, mode)
  idx = np.array([r['index'] for r in bare_records], np.int64)
  fooled = np.array([r['success'] for r in bare_records], bool)
  # Still fooling after reconstruction: only the attacks that fooled the bare
  # classifier count (the paper's counts: 162 fooled - 139 undone = 23).
  transferred = (predict_probs(pipeline, adv, batch).argmax(-1) != labels[idx]) & fooled
  att = results['attacks']
  counts = dict(
    asr_no_defence=[att['de_classifier']['successes'], att['de_classifier']['attacks']],
    asr_adaptive=[att['de']['successes'], att['de']['attacks']],
    asr_transfer=[int(transferred.sum()), len(idx)],
    defence_rate=[int((~transferred[fooled]).sum()), int(fooled.sum())],
  )
  return dict(
    counts=counts,
    asr_no_defence=results['attacks']['de_classifier']['attack_success_rate'],
    asr_adaptive=results['attacks']['de']['attack_success_rate'],
    asr_transfer=float(transferred.mean()) if len(idx) else float('nan'),
    defence_rate=float(np.mean(~transferred[fooled])) if fooled.any() else float('nan'),
    clean_accuracy_classifier=float(bare_correct.mean()),
    clean_accuracy_pipeline=float(pipe_correct.mean()),
    performance_loss=float(bare_correct.mean() - pipe_correct.mean()),
  )


def _figures(results, records, x, labels, probs, ecfg, out, config, model) -> None:
  from jaxpix import figures

  figures.asr_vs_budget(
    {name: s['curve'] for name, s in results['attacks'].items()}, out / 'asr_vs_budget.png'
  )
  results['figures'] = ['asr_vs_budget.png']
  if ecfg.gallery and records.get('de'):
    res = result_from_records(records['de'], x, labels, probs, ecfg.mode)
    figures.adversarial_gallery(
      res, x[[r['index'] for r in records['de']]], out / 'gallery.png', n=ecfg.gallery
    )
    results['figures'].append('gallery.png')
  if config.defence.attention:
    figures.attention_maps(model, x[:500], labels[:500], out / 'attention_maps.png')
    results['figures'].append('attention_maps.png')


def _finite(obj):
  """NaN/inf -> None, so that results.json is strict JSON (null = undefined,
  e.g. the mean confidence of successful attacks when none succeeded)."""
  if isinstance(obj, float):
    return obj if np.isfinite(obj) else None
  if isinstance(obj, dict):
    return {k: _finite(v) for k, v in obj.items()}
  if isinstance(obj, (list, tuple)):
    return [_finite(v) for v in obj]
  return obj


def write_json(path: pathlib.Path, obj) -> None:
  """Writes strict JSON atomically (a kill never leaves half a file)."""
  tmp = path.with_suffix(path.suffix + '.tmp')
  tmp.write_text(json.dumps(_finite(obj), indent=1, allow_nan=False) + '\n')
  os.replace(tmp, path)


def _num(v, spec: str) -> str:
  return 'n/a' if v is None or not np.isfinite(v) else format(v, spec)


def markdown(results: dict) -> str:
  """results.md: the evaluation's numbers, each with its 95% interval."""
  cfg = results['config']
  pct = lambda v: 'n/a' if v is None or not np.isfinite(v) else f'{100 * v:.2f}%'
  ci = lambda lo_hi: f'[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]'
  lines = [
    f'# Evaluation: {cfg["model"]["name"]} (width {cfg["model"]["width"]}), defence '
    f'`{cfg["defence"]["name"]}`',
    '',
    f'Checkpoint `{results["checkpoint"]}` at step {results["step"]}; commit '
    f'`{results["commit"]}`; device {results["device"]}; {results["date"]}.',
    '',
    f'Attack protocol: {results["num_images"]} correctly classified {results["test_split"]} '
    f'images drawn with seed {results["eval_seed"]}; DE population {cfg["eval"]["popsize"]}, '
    f'{cfg["eval"]["maxiter"]} generations, {cfg["eval"]["pixels"]} pixel(s), '
    f'`{cfg["eval"]["mode"]}` mode, strategy `{cfg["eval"]["strategy"]}`. Intervals: Wilson '
    '95% over images (one seed).',
    '',
  ]
  if 'note' in results:
    lines += [f'Note: {results["note"]}.', '']
  notes = []
  lines += [
    '| Metric | Value | 95% CI |',
    '|---|---|---|',
    f'| Clean accuracy ({results["test_images"]} images) | '
    f'{pct(results["clean_accuracy"])} | {ci(results["clean_accuracy_wilson95"])} |',
  ]
  for name, s in results['attacks'].items():
    lines += [
      f'| {name}: attack success rate ({s["successes"]}/{s["attacks"]}) | '
      f'{pct(s["attack_success_rate"])} | {ci(s["asr_wilson95"])} |',
      f'| {name}: robustness | {pct(s["robustness"])} | '
      f'{ci([1 - s["asr_wilson95"][1], 1 - s["asr_wilson95"][0]])} |',
      f'| {name}: mean queries (all / successful) | {_num(s["mean_queries"], ".0f")} / '
      f'{_num(s["mean_queries_successful"], ".0f")} | |',
      f'| {name}: mean confidence of successful adversarial images | '
      f'{_num(s["mean_confidence_successful"], ".3f")} | |',
    ]
    if 'images_fooled_any_target' in s:
      lines.append(
        f'| {name}: images fooled towards at least one target | '
        f'{pct(s["images_fooled_any_target"])} | {ci(s["any_target_wilson95"])} |'
      )
      notes.append(
        f'{name}: the per-attack interval treats the targets of one image as '
        'independent, so it is too narrow; the per-image one is not.'
      )
  if notes:
    lines += [''] + notes
  if 'autoencoder_table4' in results:
    t = results['autoencoder_table4']
    lines += ['', '| Table 4 metric | Value |', '|---|---|'] + [
      f'| {k} | {pct(v)} |' for k, v in t.items() if k != 'counts'
    ]
  if results.get('figures'):
    lines += [''] + [f'![{f}]({f})' for f in results['figures']]
  return '\n'.join(lines) + '\n'
