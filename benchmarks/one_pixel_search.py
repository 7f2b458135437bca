"""One-pixel searches against query budget: Su et al.'s DE, the Keras
reference's DE, the gradient-ranked extreme-colour search and the exhaustive
extreme-colour search, paired on the same images of several trained models.

    python benchmarks/one_pixel_search.py \\
        --model 'ResNet-18 (:cpu)=cifar_baseline:cpu@workdir/table1_paired/no_defence/seed0/train' \\
        --model 'CNN6=cnn6' --model 'APR ResNet-18=cifar_apr:cpu@workdir/adv_cmp/...' \\
        --images 48 --json benchmarks/results/one_pixel_search_cpu.json \\
        --figure benchmarks/results/one_pixel_search_cpu.png

A model is ``NAME=cnn6`` (the CNN of benchmarks/attack_throughput.py, trained
and cached there) or ``NAME=zoo:ZOO_NAME`` (a model of jaxpix.zoo) or ``NAME=CONFIG@CHECKPOINT_DIR`` (a jaxpix config and the
run it trained; ``NAME=@DIR`` reads the run's own config.json). For each model, the first ``--images`` test images it
classifies correctly are attacked by every search, untargeted, ``replace``
mode:

- DE, ``su`` and ``keras`` presets, population 400, ``--maxiter`` generations
  (10: 4,400 evaluations per image, the budget issue 18 names);
- ``gradient_ranked`` with every candidate (8,192 on CIFAR-10), so that it
  ends fooling exactly what the exhaustive search fools; its curve says how
  soon: in the fixed gradient order (``refine=False``, ``gradient_fixed``)
  and refined by the measured losses (the default, ``gradient_ranked``);
- ``extreme_colour``, the exhaustive search in raster order, early stopping.

Every curve is exact from one run (an early-stopping search up to b queries
does not depend on the final budget). Also measured: among the images DE
fools, how often the corner of the colour cube nearest DE's colour, at DE's
pixel, fools too (is the best one-pixel change an extreme colour?).
"""

from __future__ import annotations

import argparse
import functools
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for benchmarks/
from jaxpix import attack, configs, data, restore, zoo  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGET = 4400  # 10 DE generations of 400, initial population included


def load_model(spec: str, data_dir: str):
  """``predict`` for ``cnn6``, ``zoo:NAME``, ``CONFIG@CHECKPOINT_DIR`` or
  ``@CHECKPOINT_DIR`` (the run's own config.json)."""
  if spec == 'cnn6':
    from benchmarks.attack_throughput import train_cnn
    from jaxpix.models import as_predict

    train = data.load_npz('cifar10', 'train', data_dir)
    return as_predict(train_cnn(train, 300, 1.0))
  if spec.startswith('zoo:'):
    m = zoo.load(spec[4:])
    return functools.partial(m.predict, m.params)
  config, ckpt = spec.split('@')
  if not config:
    return restore.from_workdir(ckpt).predict
  cfg = configs.load(config)
  cfg.checkpoint = ckpt
  cfg.data.dir = data_dir
  return restore.load_predict(cfg, 10).predict


def curve_at(queries: np.ndarray, success: np.ndarray, budgets) -> list[float]:
  return [float(np.mean(success & (queries <= b))) for b in budgets]


def run_model(name: str, spec: str, args, previous: dict | None = None) -> dict:
  test = data.load_npz('cifar10', 'test', args.data_dir)
  predict = load_model(spec, args.data_dir)
  x_all = data.to_float(test.images)
  probs = attack.batched_probs(predict, x_all, 500)
  correct = np.flatnonzero(probs.argmax(-1) == test.labels)
  idx = correct[: args.images]
  x, y = x_all[idx], test.labels[idx]
  key = jax.random.key(args.seed)
  searches = {
    'de_su': lambda: attack.one_pixel(
      predict, x, y, key=key, strategy='su', popsize=400, maxiter=args.maxiter, indices=idx
    ),
    'de_keras': lambda: attack.one_pixel(
      predict, x, y, key=key, strategy='keras', popsize=400, maxiter=args.maxiter, indices=idx
    ),
    'gradient_fixed': lambda: attack.gradient_ranked(predict, x, y, chunk=400, refine=False),
    'gradient_ranked': lambda: attack.gradient_ranked(predict, x, y, chunk=args.chunk),
    'exhaustive': lambda: attack.extreme_colour(predict, x, y, chunk=512),
  }
  out = dict(
    name=name,
    spec=spec,
    clean_accuracy=float(len(correct) / len(test)),
    images=idx.tolist(),
    searches={},
  )
  if previous and previous['images'] == out['images']:  # resume: searches already run
    out['searches'] = {k: v for k, v in previous['searches'].items() if k in searches}
  results = {}
  for sname, fn in searches.items():
    if sname in out['searches']:
      results[sname] = out['searches'][sname]
      continue
    t0 = time.perf_counter()
    r = fn()
    wall = time.perf_counter() - t0
    q, s = np.asarray(r.queries), np.asarray(r.success)
    results[sname] = dict(success=s.tolist(), queries=q.tolist())
    if sname.startswith('de_'):
      results[sname].update(
        positions=np.asarray(r.positions).tolist(), colors=np.asarray(r.colors).tolist()
      )
    out['searches'][sname] = dict(
      wall_s=wall,
      success=s.tolist(),
      queries=q.tolist(),
      asr=float(s.mean()),
      asr_at_budget=float(np.mean(s & (q <= BUDGET))),
      evaluations=int(q.sum()),
    )
    print(
      f'{name} {sname}: ASR {s.mean():.3f} (within {BUDGET}: {np.mean(s & (q <= BUDGET)):.3f}), '
      f'{int(q.sum())} evaluations, {wall:.0f}s',
      flush=True,
    )
  ex = np.asarray(results['exhaustive']['success'], bool)
  out['exhaustive_fooled'] = int(ex.sum())
  for sname in ('gradient_fixed', 'gradient_ranked'):
    r = results[sname]
    within = np.asarray(r['success'], bool) & (np.asarray(r['queries']) <= BUDGET)
    out['searches'][sname]['of_exhaustive_fooled_within_budget'] = int((within & ex).sum())
  for sname in ('de_su', 'de_keras'):
    r = results[sname]
    s = np.asarray(r['success'], bool)
    out['searches'][sname]['of_exhaustive_fooled'] = int((s & ex).sum())
    if 'positions' not in r or 'nearest_corner_also_fools' in out['searches'][sname]:
      continue  # measured in an earlier run
    # Is the best change a corner? DE's pixel, the nearest corner of its colour.
    if s.any():
      pos = np.asarray(r['positions'])[s, 0]
      corner = np.where(np.asarray(r['colors'])[s, 0] >= 128, 255, 0)
      adv = x[s].copy()
      adv[np.arange(len(pos)), pos[:, 0], pos[:, 1]] = corner / 255.0
      still = attack.batched_probs(predict, adv, 500).argmax(-1) != y[s]
      out['searches'][sname]['nearest_corner_also_fools'] = [int(still.sum()), int(s.sum())]
  return out


def figure(rows: list[dict], path: str) -> None:
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  cols = min(2, len(rows))
  nrows = -(-len(rows) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
  labels = dict(  # one colour per search in every panel
    de_su=('DE (Su et al.)', 'C0'),
    de_keras=('DE (Keras reference)', 'C1'),
    exhaustive=('exhaustive corners (raster)', 'C2'),
    gradient_fixed=('gradient-ranked corners (fixed order)', 'C3'),
    gradient_ranked=('gradient-ranked corners, refined', 'C4'),
  )
  # More panels than rows when their number is odd: the spare one is blanked below.
  for ax, row in zip(axes.flat, rows, strict=False):
    budgets = np.arange(0, 8193, 32)
    for sname, (label, colour) in labels.items():
      if sname not in row['searches']:
        continue
      r = row['searches'][sname]
      q, s = np.asarray(r['queries']), np.asarray(r['success'], bool)
      ax.plot(budgets, 100 * np.array(curve_at(q, s, budgets)), label=label, color=colour)
    ax.axvline(BUDGET, color='grey', lw=0.8, ls=':')
    ax.set_title(f'{row["name"]} ({len(row["images"])} images)', fontsize=10)
    ax.set_xlabel('model evaluations per image')
    ax.set_ylabel('attack success rate (%)')
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(rows) :]:
    ax.axis('off')
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument(
    '--model',
    action='append',
    required=True,
    help='NAME=cnn6, NAME=zoo:ZOO_NAME or NAME=CONFIG@DIR',
  )
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--images', type=int, default=48)
  ap.add_argument('--maxiter', type=int, default=10)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--chunk', type=int, default=200, help='gradient_ranked candidates per step')
  ap.add_argument('--json', default='')
  ap.add_argument('--figure', default='')
  args = ap.parse_args(argv)
  rows = []
  done = {}
  if args.json and pathlib.Path(args.json).exists():  # resume: searches already run
    done = {r['name']: r for r in json.loads(pathlib.Path(args.json).read_text())['models']}
  for m in args.model:
    name, spec = m.split('=', 1)
    rows.append(run_model(name, spec, args, done.get(name)))
    if args.json:
      meta = dict(jax=jax.__version__, device=str(jax.devices()[0].device_kind))
      out = dict(meta, budget=BUDGET, maxiter=args.maxiter, models=rows)
      pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + '\n')
  if args.figure:
    figure(rows, args.figure)
  for r in rows:
    print(
      f'{r["name"]}: exhaustive fools {r["exhaustive_fooled"]}; within {BUDGET} gradient-ranked '
      f'finds {r["searches"]["gradient_ranked"]["of_exhaustive_fooled_within_budget"]} of them '
      f'(fixed order {r["searches"]["gradient_fixed"]["of_exhaustive_fooled_within_budget"]}); DE su '
      f'{r["searches"]["de_su"]["of_exhaustive_fooled"]}, keras '
      f'{r["searches"]["de_keras"]["of_exhaustive_fooled"]}'
    )


if __name__ == '__main__':
  main(sys.argv[1:])
