"""The black-box ``random_search`` against Sparse-RS (the authors' code),
paired on the same images of several trained models, several seeds each.

    python benchmarks/random_search.py --model 'ResNet-18=zoo:resnet18_w0.25-none' \\
        --model CNN6=cnn6 --model 'APR ResNet-18=zoo:resnet18_w0.25-apr' \\
        --search jaxpix --search sparse-rs --sparse-rs ../sparse-rs \\
        --json benchmarks/results/random_search_cpu.json

Models are given as in benchmarks/one_pixel_search.py (``NAME=cnn6``,
``NAME=zoo:ZOO_NAME``, ``NAME=CONFIG@DIR``, ``NAME=@DIR``). The first
``--images`` test images each model classifies correctly are attacked,
untargeted, by:

- ``jaxpix``: ``attack.random_search`` (``--seeds`` keys);
- ``sparse-rs``: Sparse-RS (Croce et al., AAAI 2022), the authors' code
  (``rs_attacks.RSAttack``, norm L0, eps = k pixels, margin loss, its
  default p_init 0.8 and schedule) from a checkout of fra31/sparse-rs given by
  ``--sparse-rs`` (not part of jaxpix: PyTorch 2.13 must be installed), on the
  same JAX model called through a PyTorch callback (NCHW in, logits out);
  ``--seeds`` seeds;
- ``gradient_ranked`` (one pixel only; white-box, for reference; no seed).

One pixel (``--pixels 1``) at ``--budget`` 4,400: an early-stopping search's
count of images fooled within b queries is read off one run for every b <=
budget (for jaxpix it is at most what a run with budget b finds, since a step
that crosses b is counted whole). k pixels at 10,000 (Sparse-RS rescales its
schedule to the budget, so only the final budget is compared).

Each run is written to the JSON as it ends (per image: success and queries,
and the wall time); a rerun skips runs already there.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for benchmarks/
from benchmarks.one_pixel_search import load_model  # noqa: E402
from jaxpix import attack, data, stats  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUDGETS = (100, 200, 400, 1000, 2000, 4400)
K_BUDGETS = (100, 1000)  # and the row's budget, for k > 1


def torch_callback(predict):
  """``predict`` as Sparse-RS calls a model: a torch tensor [B, C, H, W] in,
  torch logits out. Batches are padded to a power of two (at least 8), so that
  the JAX model compiles a handful of shapes, not one per number of images
  left."""
  import torch

  fn = jax.jit(predict)

  def call(x):
    a = x.detach().permute(0, 2, 3, 1).contiguous().numpy().astype(np.float32)
    n = len(a)
    size = max(8, 1 << (n - 1).bit_length())
    pad = np.concatenate([a, np.repeat(a[-1:], size - n, 0)]) if size > n else a
    return torch.from_numpy(np.array(fn(pad))[:n])

  return call


def run_sparse_rs(predict, x, y, pixels: int, budget: int, seed: int, checkout: str) -> dict:
  sys.path.insert(0, checkout)
  import torch
  from rs_attacks import RSAttack

  # The PyTorch side only indexes small tensors: one thread leaves the cores
  # to the model (two threads spinning beside JAX's made it slower).
  torch.set_num_threads(1)
  model = torch_callback(predict)
  xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
  yt = torch.from_numpy(y.astype(np.int64))
  rs = RSAttack(
    model, norm='L0', eps=pixels, n_queries=budget, seed=seed, verbose=False, loss='margin'
  )
  queries, adv = rs.perturb(xt, yt)
  adv = adv.permute(0, 2, 3, 1).numpy()
  changed = (np.abs(adv - x).sum(-1) > 0).reshape(len(x), -1).sum(1)
  if changed.max(initial=0) > pixels:
    raise RuntimeError(f'Sparse-RS changed {changed.max()} pixels, more than {pixels}')
  success = attack.batched_probs(predict, adv, 500).argmax(-1) != y
  q = queries.numpy().astype(int)
  return dict(success=success.tolist(), queries=np.where(success, q, budget).tolist())


def run_jaxpix(predict, x, y, pixels: int, budget: int, seed: int, idx) -> dict:
  r = attack.random_search(
    predict, x, y, key=jax.random.key(seed), pixels=pixels, budget=budget, indices=idx
  )
  return dict(success=r.success.tolist(), queries=r.queries.tolist())


def run_gradient(predict, x, y, budget: int) -> dict:
  r = attack.gradient_ranked(predict, x, y, budget=budget)
  return dict(success=r.success.tolist(), queries=r.queries.tolist())


def fooled_at(run: dict, budgets) -> list[int]:
  s, q = np.asarray(run['success'], bool), np.asarray(run['queries'])
  return [int(np.sum(s & (q <= b))) for b in budgets]


def table(result: dict) -> str:
  """Markdown: per model and search, images fooled at each budget (mean over
  seeds, and the range)."""
  lines = []
  for key, row in result['rows'].items():
    budgets = BUDGETS if row['pixels'] == 1 else (*K_BUDGETS, row['budget'])
    budgets = sorted({b for b in budgets if b <= row['budget']})
    lines += [
      f'\n{key} ({row["images"]} images)\n',
      '| search | ' + ' | '.join(f'{b:,}' for b in budgets) + ' | wall (s) |',
      '|---' * (len(budgets) + 2) + '|',
    ]
    for search, runs in row['runs'].items():
      counts = np.array([fooled_at(r, budgets) for r in runs.values()])
      walls = [r['wall_s'] for r in runs.values()]
      cells = [
        f'{m:.1f}' + (f' ({lo}-{hi})' if hi > lo else '')
        for m, lo, hi in zip(counts.mean(0), counts.min(0), counts.max(0), strict=True)
      ]
      lines.append(
        f'| {search} ({len(runs)} runs) | ' + ' | '.join(cells) + f' | {np.mean(walls):.0f} |'
      )
    lines += paired(row)
  return '\n'.join(lines)


def paired(row: dict) -> list[str]:
  """Per seed, jaxpix against Sparse-RS on the same images at the row's
  budget: the images only one of them fooled, and the exact McNemar p."""
  ours, theirs = row['runs'].get('jaxpix', {}), row['runs'].get('sparse-rs', {})
  out = []
  for seed in sorted(set(ours) & set(theirs)):
    a, b = (np.asarray(r[seed]['success'], bool) for r in (ours, theirs))
    t = stats.mcnemar(a, b)
    out.append(
      f'- seed {seed}, at {row["budget"]:,} queries: only jaxpix {t["only_a"]}, only '
      f'Sparse-RS {t["only_b"]} (McNemar p = {t["p"]:.2f})'
    )
  return ['', *out] if out else []


def figure(result: dict, path: str) -> None:
  """Images fooled (%) against queries, one panel per one-pixel row, each
  search's mean over its runs (the band: its lowest and highest run)."""
  import matplotlib

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  rows = [(k, r) for k, r in result['rows'].items() if r['pixels'] == 1]
  cols = min(2, len(rows))
  nrows = -(-len(rows) // cols)
  fig, axes = plt.subplots(nrows, cols, figsize=(5.2 * cols, 3.8 * nrows), squeeze=False)
  style = {
    'jaxpix': ('jaxpix random_search', 'C3'),
    'sparse-rs': ("Sparse-RS (authors' code)", 'C0'),
    'gradient': ('gradient_ranked (white-box)', 'C2'),
  }
  for ax, (key, row) in zip(axes.flat, rows, strict=False):
    budgets = np.arange(0, row['budget'] + 1, 20)
    for search, runs in row['runs'].items():
      label, colour = style[search]
      c = 100 * np.array([fooled_at(r, budgets) for r in runs.values()]) / row['images']
      ax.plot(budgets, c.mean(0), color=colour, label=f'{label}, {len(runs)} run(s)')
      if len(runs) > 1:
        ax.fill_between(budgets, c.min(0), c.max(0), color=colour, alpha=0.2, lw=0)
    ax.set_xscale('symlog', linthresh=100)
    ax.set_title(key, fontsize=10)
    ax.set_xlabel('queries per image')
    ax.set_ylabel('images fooled (%)')
    ax.grid(alpha=0.3)
  for ax in list(axes.flat)[len(rows) :]:
    ax.axis('off')
  axes[0][0].legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', action='append', default=[], help='NAME=SPEC')
  ap.add_argument('--search', action='append', choices=('jaxpix', 'sparse-rs', 'gradient'))
  ap.add_argument('--sparse-rs', default=str(ROOT.parent / 'sparse-rs'))
  ap.add_argument('--pixels', type=int, default=1)
  ap.add_argument('--budget', type=int, default=4400)
  ap.add_argument('--images', type=int, default=64)
  ap.add_argument('--seeds', default='0,1,2')
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--json', required=True)
  ap.add_argument('--figure', default='', help='also draw the one-pixel curves here')
  ap.add_argument('--report', action='store_true', help='only print the table (and figure)')
  args = ap.parse_args(argv)
  path = pathlib.Path(args.json)
  result = json.loads(path.read_text()) if path.exists() else dict(rows={})
  result.update(jax=jax.__version__, device=str(jax.devices()[0].device_kind))
  test = data.load_npz('cifar10', 'test', args.data_dir)
  x_all = data.to_float(test.images)
  for m in [] if args.report else args.model:
    name, spec = m.split('=', 1)
    predict = load_model(spec, args.data_dir)
    correct = np.flatnonzero(attack.batched_probs(predict, x_all, 500).argmax(-1) == test.labels)
    idx = correct[: args.images]
    x, y = x_all[idx], test.labels[idx]
    key = f'{name}, k={args.pixels}, budget {args.budget}'
    row = result['rows'].setdefault(
      key,
      dict(spec=spec, pixels=args.pixels, budget=args.budget, images=len(idx), runs={}),
    )
    if row.get('indices', idx.tolist()) != idx.tolist():
      raise SystemExit(f'{key}: the model classifies other images now; remove its row to rerun')
    row['indices'] = idx.tolist()
    for search in args.search or ('jaxpix', 'sparse-rs'):
      seeds = [None] if search == 'gradient' else [int(s) for s in args.seeds.split(',')]
      for seed in seeds:
        runs = row['runs'].setdefault(search, {})
        if str(seed) in runs:
          continue
        t0 = time.perf_counter()
        if search == 'jaxpix':
          run = run_jaxpix(predict, x, y, args.pixels, args.budget, seed, idx)
        elif search == 'sparse-rs':
          run = run_sparse_rs(predict, x, y, args.pixels, args.budget, seed, args.sparse_rs)
        else:
          run = run_gradient(predict, x, y, min(args.budget, x.shape[1] * x.shape[2] * 8))
        run['wall_s'] = time.perf_counter() - t0
        runs[str(seed)] = run
        print(f'{key} {search} seed {seed}: {fooled_at(run, BUDGETS)} ({run["wall_s"]:.0f}s)')
        path.write_text(json.dumps(result, indent=1) + '\n')
  print(table(result))
  if args.figure:
    figure(result, args.figure)


if __name__ == '__main__':
  main(sys.argv[1:])
