"""Which defended training buys robustness per hour: training time against the
evaluation attack's success rate, on the same data, schedule and images.

    python benchmarks/adversary_comparison.py --workdir workdir/adv_cmp \
        --json benchmarks/results/adversary_comparison_cpu.json \
        --figure benchmarks/results/adversary_comparison_cpu.png

Every row trains ResNet-18 (width 0.25, the ``:cpu`` configs) on the same
training images for the same number of epochs with the same seed; only the
defence changes. Phase 1 trains every row, one after the other, timing each
(run nothing else meanwhile: the times are the point). Phase 2 attacks each
model with the evaluation attack (Su et al.'s DE, population ``--popsize`` x
``--maxiter`` generations, the APR paper's additive mode) on the same first
``--images`` validation images: the correctly classified ones are attacked,
and robust accuracy (correct and not fooled, over all of them) is paired
across rows. Validation images only: nothing touches test.

Between the two, the training adversaries' strength: each trained model is
attacked by both (DE 8 x 2 and first-order k = 4) on the same training
images, and the train-mode accuracy drop each causes is reported, paired
(:func:`strength_row`); each row's ``metrics.jsonl`` also has clean accuracy
against accuracy on the adversarial images of the same training windows.

Every phase resumes: a row with ``train.json`` (``strength.json``,
``attack.json``) in its folder under ``--workdir`` is not run again, so the
command can be repeated after an interruption.
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for benchmarks/
from benchmarks.train_throughput import config_of  # noqa: E402
from jaxpix import attack, data, restore, stats, train  # noqa: E402

# The defaults first, so that an interrupted run has the rows that matter most.
ROWS = (
  ('No defence', 'cifar_baseline.py:cpu'),
  ('AT, first-order (default)', 'cifar_at.py:cpu'),
  ('APR, first-order, FD penalty (default)', 'cifar_apr.py:cpu'),
  ('AT, DE (paper)', 'cifar_at.py:cpu,de'),
  ('APR, first-order, exact penalty', 'cifar_apr.py:cpu|defence.penalty.method=exact'),
)


def _config(spec, args):
  cfg = config_of(spec)
  cfg.data.train_subset = args.train_subset
  cfg.train.epochs = args.epochs
  cfg.train.warmup_steps = args.warmup_steps
  cfg.train.progress = False
  return cfg


def _folder(root, label):
  return root / ''.join(ch if ch.isalnum() else '_' for ch in label.lower()).strip('_')


def train_row(label, spec, args, root) -> dict:
  out = _folder(root, label)
  done = out / 'train.json'
  cfg = _config(spec, args)
  if done.exists():
    rec = json.loads(done.read_text())
    rec.update(adversary_strength(out / 'metrics.jsonl', cfg.train.log_every))
    return rec
  t0 = time.perf_counter()
  final = train.train_and_evaluate(cfg, str(out))
  rec = dict(label=label, config=spec, train_seconds=time.perf_counter() - t0, **final)
  rec.update(adversary_strength(out / 'metrics.jsonl', cfg.train.log_every))
  done.write_text(json.dumps(rec, indent=1) + '\n')
  return rec


def adversary_strength(metrics_path, log_every: int) -> dict:
  """Clean minus adversarial training accuracy, mean over the logged windows
  (all, and the last half of training), and the adversary's own fool rate.
  Whole windows only: the run's last one may hold a single step."""
  lines = [json.loads(ln) for ln in pathlib.Path(metrics_path).read_text().splitlines()]
  win = [ln for ln in lines if 'adv_accuracy' in ln and ln['step'] % log_every == 0]
  if not win:
    return {}
  gap = np.array([ln['accuracy'] - ln['adv_accuracy'] for ln in win])
  half = gap[len(gap) // 2 :]
  return dict(
    train_accuracy_drop=float(gap.mean()),
    train_accuracy_drop_second_half=float(half.mean()),
    train_adv_fooled=float(np.mean([ln.get('adv_fooled', np.nan) for ln in win])),
    train_accuracy_drop_by_step={int(ln['step']): float(g) for ln, g in zip(win, gap, strict=True)},
  )


def attack_row(label, spec, args, root) -> dict:
  out = _folder(root, label)
  done = out / 'attack.json'
  if done.exists():
    return json.loads(done.read_text())
  cfg = _config(spec, args)
  _, val, _ = data.load(cfg.data)
  cfg.checkpoint = str(out)
  predict = restore.load_predict(cfg, val.num_classes).predict
  x = data.to_float(val.images[: args.images])
  y = val.labels[: args.images]
  pred = np.asarray(jax.jit(predict)(x)).argmax(-1)
  ok = np.flatnonzero(pred == y)
  t0 = time.perf_counter()
  r = attack.one_pixel(
    predict,
    x[ok],
    y[ok],
    key=jax.random.key(0),
    popsize=args.popsize,
    maxiter=args.maxiter,
    mode='add',
    progress=False,
  )
  fooled = np.zeros(len(y), bool)
  fooled[ok] = np.asarray(r.success)
  rec = dict(
    label=label,
    images=len(y),
    clean_accuracy=float(len(ok) / len(y)),
    attacked=len(ok),
    attack_success_rate=float(fooled[ok].mean()),
    attack_success_rate_wilson=stats.wilson(int(fooled[ok].sum()), len(ok)),
    robust_accuracy=float((len(ok) - fooled.sum()) / len(y)),
    robust_accuracy_wilson=stats.wilson(int(len(ok) - fooled.sum()), len(y)),
    mean_queries=float(np.mean(r.queries)),
    attack_seconds=time.perf_counter() - t0,
    robust=[int(i) for i in np.flatnonzero((pred == y) & ~fooled)],  # paired outcomes
  )
  done.write_text(json.dumps(rec, indent=1) + '\n')
  return rec


def mode_predicts(graphdef, state, train_mode: bool):
  """The restored model as a predict in train mode (batch statistics, as the
  training step sees it) or eval mode."""

  def predict(x):
    m = nnx.merge(graphdef, state['params'], state['rest'], copy=True)
    m.train() if train_mode else m.eval()
    return m(x)

  return predict


def strength_row(label, spec, args, root) -> dict:
  """Both training adversaries against the same trained model, paired: the
  train-mode accuracy of ``--strength-images`` training images (their first
  ``--strength-images`` of epoch 0's order, unaugmented), clean and after
  each adversary attacks every image. This separates the adversary's
  strength from what the training log shows, where each model has already
  learnt to resist the adversary it was trained against."""
  out = _folder(root, label)
  done = out / 'strength.json'
  if done.exists():
    return json.loads(done.read_text())
  cfg = _config(spec, args)
  tr, _, _ = data.load(cfg.data)
  cfg.checkpoint = str(out)
  graphdef, state, _ = restore.load_state(cfg, tr.num_classes)
  mode_predict = functools.partial(mode_predicts, graphdef, state)

  de = attack.DEConfig(popsize=8, maxiter=2)
  adversaries = {
    'de_8x2': lambda x, y, key, p: (
      attack.de_fixed_budget(p, x, y, key, de=de, mode='add').adv_images
    ),
    'first_order_k4': lambda x, y, key, p: attack.first_order(p, x, y, k=4, mode='add').adv_images,
  }

  @jax.jit
  def run(xu8, y, key):
    x = data.levels(xu8)
    train_p, eval_p = mode_predict(True), mode_predict(False)
    acc = {'clean': jnp.sum(jnp.argmax(train_p(x), -1) == y)}
    for name, adv in adversaries.items():
      acc[name] = jnp.sum(jnp.argmax(train_p(adv(x, y, key, eval_p)), -1) == y)
    return acc

  order = data.epoch_order(len(tr), cfg.seed, 0)
  totals = {}
  for i in range(0, args.strength_images, 128):
    idx = order[i : i + 128]
    acc = run(jnp.asarray(tr.images[idx]), jnp.asarray(tr.labels[idx]), jax.random.key(i))
    for k, v in acc.items():
      totals[k] = totals.get(k, 0) + int(v)
  n = (args.strength_images // 128) * 128
  rec = dict(
    label=label, strength_images=n, **{f'train_accuracy_{k}': v / n for k, v in totals.items()}
  )
  for k in adversaries:
    rec[f'accuracy_drop_{k}'] = (totals['clean'] - totals[k]) / n
  done.write_text(json.dumps(rec, indent=1) + '\n')
  return rec


def figure(rows, path):
  from jaxpix.figures import _pyplot

  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  for r in rows:
    lo, hi = r['attack_success_rate_wilson']
    asr = r['attack_success_rate']
    ax.errorbar(
      r['train_seconds'] / 60,
      100 * asr,
      yerr=[[100 * (asr - lo)], [100 * (hi - asr)]],
      fmt='o',
      capsize=3,
      label=r['label'],
    )
  ax.set_xlabel('training time (minutes, this CPU)')
  ax.set_ylabel('one-pixel attack success rate (%)')
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def markdown(rows) -> str:
  ref = rows[0]['train_seconds']
  out = [
    '| training | train time | vs no defence | clean acc. | ASR [Wilson 95%] | robust acc. '
    '| train-acc. drop, DE 8x2 | train-acc. drop, first-order |',
    '| --- | --- | --- | --- | --- | --- | --- | --- |',
  ]
  for r in rows:
    lo, hi = r['attack_success_rate_wilson']
    out.append(
      f'| {r["label"]} | {r["train_seconds"]:.0f} s | {r["train_seconds"] / ref:.2f}x '
      f'| {100 * r["clean_accuracy"]:.1f}% '
      f'| {100 * r["attack_success_rate"]:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] '
      f'| {100 * r["robust_accuracy"]:.1f}% | {100 * r["accuracy_drop_de_8x2"]:.1f} pt '
      f'| {100 * r["accuracy_drop_first_order_k4"]:.1f} pt |'
    )
  return '\n'.join(out)


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', required=True)
  ap.add_argument('--train-subset', type=int, default=0)
  ap.add_argument('--epochs', type=int, default=1)
  ap.add_argument('--warmup-steps', type=int, default=100)
  ap.add_argument('--images', type=int, default=400)
  ap.add_argument('--popsize', type=int, default=400)
  ap.add_argument('--maxiter', type=int, default=30)
  ap.add_argument('--strength-images', type=int, default=512)
  ap.add_argument('--only', default='', help='comma-separated row numbers (0-based) to run')
  ap.add_argument('--json', default=None)
  ap.add_argument('--figure', default=None)
  args = ap.parse_args(argv)
  root = pathlib.Path(args.workdir)
  root.mkdir(parents=True, exist_ok=True)
  rows = [ROWS[int(i)] for i in args.only.split(',')] if args.only else list(ROWS)
  trained = [train_row(label, spec, args, root) for label, spec in rows]
  for t in trained:
    print(
      json.dumps({k: v for k, v in t.items() if k != 'train_accuracy_drop_by_step'}), flush=True
    )
  strength = [strength_row(label, spec, args, root) for label, spec in rows]
  for r in strength:
    print(json.dumps(r), flush=True)
  results = []
  for (label, spec), t, st in zip(rows, trained, strength, strict=True):
    a = attack_row(label, spec, args, root)
    results.append({**t, **st, **a})
    print(json.dumps({k: v for k, v in a.items() if k != 'robust'}), flush=True)
    if args.json:  # rewritten as rows land
      settings = {k: v for k, v in vars(args).items() if k not in ('json', 'figure')}
      pathlib.Path(args.json).write_text(
        json.dumps(dict(settings=settings, rows=results), indent=1) + '\n'
      )
  print(markdown(results))
  if args.figure:
    figure(results, args.figure)


if __name__ == '__main__':
  main(sys.argv[1:])
