"""How the first-order training adversary's strength grows with its
verification budget ``k``, against DE 8 x 2, on the models that
``benchmarks/adversary_comparison.py`` trained.

    python benchmarks/adversary_k_curve.py --workdir workdir/adv_cmp \
        --json benchmarks/results/adversary_k_curve_cpu.json

For each row's trained model: the accuracy of ``--images`` training images
(the first of epoch 0's order, unaugmented) clean and after each adversary,
in train mode (batch statistics, as the training step sees them) and in eval
mode; paired, the same images and keys for every adversary. The adversaries
attack in eval mode, as in training. A curve that flattens with ``k`` says the
linearised ranking, not the number of verifications, limits the adversary.
On the first ``--oracle-images`` of them, the exhaustive extreme-colour search
(8,192 evaluations per CIFAR image) says what one pixel can do at all.
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for benchmarks/
from benchmarks.adversary_comparison import ROWS, _config, _folder, mode_predicts  # noqa: E402
from jaxpix import attack, data, restore  # noqa: E402

KS = (1, 2, 4, 8, 16, 32)


def _first_order(predict, x, y, key, **kw):
  del key  # deterministic
  return attack.first_order(predict, x, y, mode='add', **kw)


def curve(label, spec, args) -> dict:
  cfg = _config(spec, argparse.Namespace(train_subset=0, epochs=1, warmup_steps=100))
  tr, _, _ = data.load(cfg.data)
  cfg.checkpoint = str(_folder(pathlib.Path(args.workdir), label))
  graphdef, state, _ = restore.load_state(cfg, tr.num_classes)
  train_p, eval_p = mode_predicts(graphdef, state, True), mode_predicts(graphdef, state, False)
  de = attack.DEConfig(popsize=8, maxiter=2)
  adversaries = {
    'de_8x2': lambda x, y, key: attack.de_fixed_budget(eval_p, x, y, key, de=de, mode='add'),
    **{f'first_order_k{k}': functools.partial(_first_order, eval_p, k=k) for k in KS},
    'first_order_k16_radius0': functools.partial(_first_order, eval_p, k=16, radius=0),
  }

  @jax.jit
  def run(xu8, y, key):  # per image: still correct after each adversary
    x = data.levels(xu8)
    out = {}
    for name, adv in {'clean': None, **adversaries}.items():
      a = x if adv is None else adv(x, y, key).adv_images
      out[f'{name}_train'] = jnp.argmax(train_p(a), -1) == y
      out[f'{name}_eval'] = jnp.argmax(eval_p(a), -1) == y
    return out

  order = data.epoch_order(len(tr), cfg.seed, 0)
  t0 = time.perf_counter()
  n = (args.images // 128) * 128
  per = {}
  for i in range(0, n, 128):
    idx = order[i : i + 128]
    out = run(jnp.asarray(tr.images[idx]), jnp.asarray(tr.labels[idx]), jax.random.key(i))
    for k, v in out.items():
      per.setdefault(k, []).append(np.asarray(v))
  per = {k: np.concatenate(v) for k, v in per.items()}
  acc = {k: float(v.mean()) for k, v in per.items()}
  drops = {
    f'{name}_{m}': acc[f'clean_{m}'] - acc[f'{name}_{m}']
    for name in adversaries
    for m in ('train', 'eval')
  }
  extra = {}
  if args.oracle_images:
    # The exhaustive extreme-colour search (every pixel x the 8 RGB corners,
    # eval mode) on the first images: what one pixel can do at all, to size
    # the adversaries against.
    m = args.oracle_images
    x, y = data.to_float(tr.images[order[:m]]), tr.labels[order[:m]]
    ok = per['clean_eval'][:m]
    r = attack.extreme_colour(eval_p, x[ok], y[ok])
    oracle = ok.copy()
    oracle[np.flatnonzero(ok)] = ~r.success
    extra['oracle'] = dict(
      images=m,
      clean_eval=float(ok.mean()),
      drop_eval={
        'extreme_colour_exhaustive': float(ok.mean() - oracle.mean()),
        **{name: float(ok.mean() - per[f'{name}_eval'][:m].mean()) for name in adversaries},
      },
    )
  return dict(
    label=label, images=n, seconds=time.perf_counter() - t0, accuracy=acc, drop=drops, **extra
  )


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', default='workdir/adv_cmp')
  ap.add_argument('--images', type=int, default=512)
  ap.add_argument(
    '--rows', nargs='+', default=['No defence', 'APR, first-order, FD penalty (default)']
  )
  ap.add_argument('--json', default='')
  ap.add_argument('--oracle-images', type=int, default=128)
  args = ap.parse_args(argv)
  specs = dict(ROWS)
  rows = []
  for label in args.rows:
    r = curve(label, specs[label], args)
    print(json.dumps(r), flush=True)
    rows.append(r)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(dict(ks=KS, rows=rows), indent=1) + '\n')


if __name__ == '__main__':
  main(sys.argv[1:])
