"""Adversarial training with the DE adversary vs the gradient-guided one: robustness
reached and training time, at a CPU scale.

    python benchmarks/adversary_comparison.py --json benchmarks/results/adversary_comparison_cpu.json

Trains three models with the same data, schedule and seed (``configs/cifar_at.py:cpu``
sizes, ``--train-subset`` images for ``--epochs`` epochs): no defence, AT with DE
(population 8, 2 generations after the initial one: 24 evaluations per image) and AT with the
guided adversary (3 pixels x 8 colours = 24). Each is then attacked with Su et
al.'s DE (``--popsize`` x ``--maxiter``) on the first ``--images`` validation
images it classifies correctly. Validation images only: nothing touches test.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for configs/
from jaxpix import attack, data, train  # noqa: E402
from jaxpix.experiment import load_config as config_of  # noqa: E402


def run(spec, args, root):
  cfg = config_of(spec)
  cfg.data.train_subset = args.train_subset
  cfg.train.epochs = args.epochs
  cfg.train.progress = False
  workdir = root / spec.replace(':', '_').replace(',', '_')
  t0 = time.perf_counter()
  train.train_and_evaluate(cfg, str(workdir))
  train_s = time.perf_counter() - t0
  _, val, _ = data.load(cfg.data)
  predict = train.pretrained_predict(cfg, workdir, val.num_classes, fit=False)
  x = data.to_float(val.images[:2000])
  pred = np.concatenate(
    [np.asarray(jax.jit(predict)(x[i : i + 500])).argmax(-1) for i in range(0, len(x), 500)]
  )
  ok = np.flatnonzero(pred == val.labels[:2000])[: args.images]
  r = attack.one_pixel(
    predict,
    x[ok],
    val.labels[ok],
    key=jax.random.key(0),
    popsize=args.popsize,
    maxiter=args.maxiter,
  )
  return dict(
    config=spec,
    train_seconds=train_s,
    validation_accuracy=float(np.mean(pred == val.labels[:2000])),
    attacked=len(ok),
    attack_success_rate=r.success_rate,
    robustness=1 - r.success_rate,
    mean_queries=float(r.queries.mean()),
  )


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--train-subset', type=int, default=10000)
  ap.add_argument('--epochs', type=int, default=2)
  ap.add_argument('--images', type=int, default=100)
  ap.add_argument('--popsize', type=int, default=100)
  ap.add_argument('--maxiter', type=int, default=20)
  ap.add_argument('--json', default=None)
  args = ap.parse_args(argv)
  root = pathlib.Path(tempfile.mkdtemp(prefix='adv_cmp_'))
  rows = []
  for spec in ('cifar_baseline.py:cpu', 'cifar_at.py:cpu', 'cifar_at.py:cpu,guided'):
    rows.append(run(spec, args, root))
    print(json.dumps(rows[-1]), flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(
      json.dumps(dict(settings=vars(args), rows=rows), indent=1) + '\n'
    )


if __name__ == '__main__':
  main(sys.argv[1:])
