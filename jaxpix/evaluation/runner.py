"""The evaluation run: clean accuracy, the attacks (resumable, image by
image), the summaries, and the files they go to."""

from __future__ import annotations

import logging
import pathlib
import time

import jax
import numpy as np

from jaxpix import attack, build, configs, data, records, report, restore, stats
from jaxpix.evaluation import attack_log, metrics, smoothed
from jaxpix.evaluation import protocol as proto


def run_attack(
  spec: proto.AttackSpec,
  log: attack_log.AttackLog,
  images: np.ndarray,
  labels: np.ndarray,
  chosen: np.ndarray,
  num_classes: int,
  ecfg,
) -> list[dict]:
  """Attacks the (image, target) pairs of ``chosen`` not yet in ``log``;
  returns every record, in key order.

  With several processes each attacks every ``process_count()``-th of them
  (a record depends on its key only: ``fold_in(seed, key)``) and they meet in
  ``log.gather``."""
  if spec.targeted:
    keys = np.array(
      [i * num_classes + t for i in chosen for t in range(num_classes) if t != labels[i]], np.int64
    )
  else:
    keys = np.asarray(chosen, np.int64)
  if keys.max(initial=0) >= np.iinfo(np.int32).max:
    raise ValueError('too many images x classes for int32 attack keys')
  todo = np.array([g for g in keys if int(g) not in log.records], np.int64)
  if jax.process_count() > 1:
    left = len(todo)
    todo = todo[jax.process_index() :: jax.process_count()]
    logging.info(
      '%s: process %d attacks %d of the %d left', spec.name, jax.process_index(), len(todo), left
    )
  bar = _Bar(
    spec.name,
    len(keys),
    [log.records[int(g)] for g in keys if int(g) in log.records],
    ecfg.progress,
    'attack' if spec.targeted else 'img',
  )

  def on_finish(finished):
    recs = attack_log.records_of(finished, spec.targeted, num_classes)
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
    elif spec.kind == 'ranked':
      attack.gradient_ranked(spec.predict, x, y, budget=spec.max_budget, **common)
    elif spec.kind == 'random':
      attack.random_search(
        spec.predict,
        x,
        y,
        key=jax.random.key(ecfg.seed),
        pixels=ecfg.pixels,
        budget=spec.max_budget,
        mode=ecfg.mode,
        **common,
      )
    else:
      attack.extreme_colour(spec.predict, x, y, **common)
  bar.close()
  log.gather()
  return [log.records[int(g)] for g in keys]


class _Bar:
  """The progress bar: images (or image x target attacks) done, resumed ones
  included; ASR so far; images/s."""

  def __init__(self, name, total, done_records, enabled, unit):
    self.fooled = sum(r['success'] for r in done_records)
    self.done = len(done_records)
    self.new = 0
    self.t0 = time.perf_counter()
    self.unit = unit
    self.bar = records.progress_bar(total, self.done, f'attack {name}', unit, enabled)

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


def evaluate(config, workdir: str) -> dict:
  """Runs the evaluation described in :mod:`jaxpix.evaluation`; returns
  results.json's dict."""
  proto.check_eval_config(config.eval)
  configs.check_finite(config)
  build.check_ints(config, {'seed': 0, 'eval.seed': 0})
  out = records.check_workdir(workdir)
  out.mkdir(parents=True, exist_ok=True)
  with records.workdir_lock(out):
    return _evaluate(config, out)


def _evaluate(config, out: pathlib.Path) -> dict:
  if config.defence.name == 'ablation':  # a smoothed classifier: certified and attacked as one
    return smoothed.evaluate(config, out)
  t_start = time.perf_counter()
  ecfg = config.eval
  test = data.load_test(config.data)
  k = test.num_classes
  restored = restore.load_predict(config, k)
  predict, classifier = restored.predict, restored.classifier
  x = data.to_float(test.images)
  probs = attack.batched_probs(predict, x, ecfg.batch_size)
  correct = probs.argmax(-1) == test.labels
  ok = correct
  if classifier is not None:
    # The autoencoder: attack every chosen image the bare classifier gets
    # right, as the paper's counts imply. Keeping only those the pipeline gets
    # right too would drop exactly the images the autoencoder breaks and bias
    # its defence rate upwards; they count as defence failures instead
    # (metrics.table4).
    bare_correct = attack.batched_probs(classifier, x, ecfg.batch_size).argmax(-1) == test.labels
    ok = bare_correct
  chosen, fixed = proto.choose(ecfg, ok)
  if fixed is None and len(chosen) < ecfg.num_images:
    logging.warning(
      'config.eval.num_images=%d but only %d test images are classified correctly;'
      ' attacking all %d',
      ecfg.num_images,
      len(chosen),
      len(chosen),
    )
  specs = proto.attack_specs(ecfg, predict, classifier, x.shape[1:])
  session = records.provenance()
  results = dict(
    **proto.results_header(config, restored.step, session),
    test_images=len(test),
    clean_accuracy=float(correct.mean()),
    clean_accuracy_wilson95=list(stats.wilson(int(correct.sum()), len(test))),
    correctly_classified=int(correct.sum()),
    num_images_requested=ecfg.num_images,
    num_images=len(chosen),
    images=chosen.tolist(),
    attacks={},
  )
  if fixed is not None:
    results['fixed_images'] = fixed.tolist()
  elif len(chosen) < ecfg.num_images:
    results['note'] = (
      f'only {len(chosen)} correctly classified test images: all attacked '
      f'instead of the {ecfg.num_images} requested'
    )
  digest = dict(model=restore.params_digest(restored.model))
  if restored.classifier_model is not None:
    digest['classifier'] = restore.params_digest(restored.classifier_model)
  images_sha1 = proto.images_digest(test.images, test.labels, chosen)
  recs = {}
  for spec in specs:
    p = proto.protocol(config, spec, restored.step, digest, images_sha1)
    log = attack_log.AttackLog(out / f'attack_{spec.name}.jsonl', p, session)
    t0 = time.perf_counter()
    some = chosen[: ecfg.targeted_images] if spec.targeted and ecfg.targeted_images else chosen
    if classifier is not None and spec.name != 'de_classifier':
      some = some[correct[some]]  # the pipeline's own mistakes need no attack
    recs[spec.name] = run_attack(spec, log, x, test.labels, some, k, ecfg)
    summary = metrics.summarise_attack(recs[spec.name], spec.max_budget, spec.targeted)
    summary['seconds_this_run'] = time.perf_counter() - t0
    # The runs that wrote these records (a resumed evaluation has several).
    summary['sessions'] = log.sessions
    if len({(s['commit'], s['device']) for s in log.sessions}) > 1:
      logging.warning(
        '%s: records come from runs on different commits or devices: %s', log.path, log.sessions
      )
    results['attacks'][spec.name] = summary
  if fixed is not None:  # robust = correct and not fooled, over the fixed set
    fooled = {r['index'] for r in recs['de'] if r['success']}
    robust = [int(i) for i in fixed if correct[i] and int(i) not in fooled]
    results.update(
      robust_images=robust,
      robust_accuracy=len(robust) / len(fixed),
      robust_accuracy_wilson95=list(stats.wilson(len(robust), len(fixed))),
    )
    # With a second untargeted attack (the exhaustive, gradient-ranked or
    # random search), also the worst case: not fooled by any of them. DE is the
    # papers' attack, so robust_accuracy stays DE's.
    others = [s.name for s in specs if not s.targeted and s.name not in ('de', 'de_classifier')]
    if others:
      for name in others:
        fooled |= {r['index'] for r in recs[name] if r['success']}
      worst = [i for i in robust if i not in fooled]
      results.update(
        robust_attacks=['de', *others],
        robust_images_all=worst,
        robust_accuracy_all=len(worst) / len(fixed),
        robust_accuracy_all_wilson95=list(stats.wilson(len(worst), len(fixed))),
      )
  if classifier is not None:
    bare = recs['de_classifier']
    adv = metrics.adversarial_images(bare, x, ecfg.mode)
    idx = np.array([r['index'] for r in bare], np.int64)
    transferred = attack.batched_probs(predict, adv, ecfg.batch_size).argmax(-1) != test.labels[idx]
    results['autoencoder_table4'] = metrics.table4(
      bare, recs['de'], transferred, correct[idx], bare_correct, correct
    )
  results['seconds_this_run'] = time.perf_counter() - t_start
  if records.writer():
    gallery = attention = None
    if ecfg.gallery and recs.get('de'):
      res = metrics.result_from_records(recs['de'], x, test.labels, probs, ecfg.mode)
      gallery = (res, x[[r['index'] for r in recs['de']]], ecfg.gallery)
    if config.defence.attention:
      attention = (restored.model, x[:500], test.labels[:500])
    names = data.class_names(config.data.dataset, config.data.dir)
    results['figures'] = report.evaluation_figures(results, out, gallery, attention, names)
    records.write_json(out / 'results.json', results)
    (out / 'results.md').write_text(report.evaluation_markdown(results))
  return results
