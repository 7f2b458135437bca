"""Attack throughput against the raw forward throughput of the same model,
at small and large N, first call and warm call.

    python benchmarks/attack_throughput.py --json benchmarks/results/attack_throughput_cpu.json

The model is the 6-conv CIFAR CNN (``jaxpix.models.CNN6``, ~70 MFLOP/image by
XLA's count), trained briefly on real CIFAR-10 (cached in benchmarks/.cache/)
so that the attack runs real trajectories. In one process, the script
measures:

- the raw forward rate (images/s) of the jitted model at several batch sizes,
  and the best of them: the reference every efficiency is a ratio to;
- small N (``--small`` images, ``--small-maxiter`` generations, the case of a
  notebook user): the first call of ``one_pixel`` with a closure (compilation
  included; nothing of the attack was compiled before it in this process),
  the same call again (warm), the params path (``predict(params, images)``)
  first with one parameter set and then with another of the same shapes;
- large N (``--images`` x ``--maxiter``): the warm attack's rate.

Each attack's rate is model evaluations (queries summed) / wall time.

``--search random`` measures ``attack.random_search`` instead (one pixel,
``--small-budget`` and ``--budget`` queries per image; default 500 images for
the large run), and, on the small images, the whole evaluation's wall time
beside DE's at the same budget (``--small-budget`` = 400 x (maxiter + 1)):

    python benchmarks/attack_throughput.py --search random --images 500 \
        --json benchmarks/results/attack_throughput_random_cpu.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpix import attack, data
from jaxpix.models import CNN6, as_params_predict, as_predict

ROOT = pathlib.Path(__file__).resolve().parent.parent


def train_cnn(train: data.Split, steps: int, width: float, seed: int = 0) -> CNN6:
  """A short Adam run (batch 128, random flips), cached by its settings."""
  cache = ROOT / 'benchmarks' / '.cache' / f'cnn6_w{width}_steps{steps}_seed{seed}.npz'
  model = CNN6(width=width, rngs=nnx.Rngs(seed))
  state = nnx.state(model)
  if cache.exists():
    with np.load(cache) as f:
      leaves = [f[f'arr_{i}'] for i in range(len(f.files))]
    nnx.update(model, jax.tree.unflatten(jax.tree.structure(state), leaves))
    print(f'loaded cached model {cache.name}', flush=True)
    return model
  opt = nnx.Optimizer(model, optax.adam(1e-3), wrt=nnx.Param)

  @nnx.jit
  def step(model, opt, x, y):
    def loss_fn(model):
      logits = model(x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    opt.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  t0 = time.perf_counter()
  for i in range(steps):
    idx = rng.integers(0, len(train), 128)
    x = data.to_float(train.images[idx])
    flip = rng.random(128) < 0.5
    x[flip] = x[flip, :, ::-1]
    loss = step(model, opt, jnp.asarray(x), jnp.asarray(train.labels[idx]))
    if i % 50 == 0 or i == steps - 1:
      print(
        f'train step {i:4d} loss {float(loss):.3f} ({time.perf_counter() - t0:.0f}s)', flush=True
      )
  cache.parent.mkdir(parents=True, exist_ok=True)
  np.savez(cache, *jax.tree.leaves(nnx.state(model)))
  return model


def forward_rate(predict, x: np.ndarray, reps: int) -> float:
  fn = jax.jit(predict)
  xb = jnp.asarray(x)
  fn(xb).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(reps):
    fn(xb).block_until_ready()
  return reps * len(x) / (time.perf_counter() - t0)


def timed_attack(predict, x, y, search='de', **kw) -> dict:
  t0 = time.perf_counter()
  if search == 'random':
    kw = {k: v for k, v in kw.items() if k not in ('popsize', 'maxiter')}
    r = attack.random_search(predict, x, y, **kw)
  else:
    kw.pop('budget', None)
    r = attack.one_pixel(predict, x, y, **kw)
  wall = time.perf_counter() - t0
  evals = int(r.queries.sum())
  return dict(
    wall_s=wall,
    evals=evals,
    evals_per_s=evals / wall,
    success=int(r.success.sum()),
    images=len(x),
  )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--small', type=int, default=24, help='images of the small-N runs')
  ap.add_argument('--small-maxiter', type=int, default=10)
  ap.add_argument('--images', type=int, default=100, help='images of the large-N run')
  ap.add_argument('--maxiter', type=int, default=20, help='generations of the large-N run')
  ap.add_argument('--popsize', type=int, default=400)
  ap.add_argument('--batch', type=int, default=None, help='default: attack.default_batch()')
  ap.add_argument(
    '--forward-batches', default='100,200,400,800,1600,4000', help='raw forward batch sizes'
  )
  ap.add_argument('--width', type=float, default=1.0)
  ap.add_argument('--train-steps', type=int, default=300)
  ap.add_argument('--forward-reps', type=int, default=5)
  ap.add_argument('--rounds', type=int, default=3, help='forward sweeps and warm small runs')
  ap.add_argument('--json', default=None, help='also write the figures to this file')
  ap.add_argument('--search', choices=('de', 'random'), default='de')
  ap.add_argument('--small-budget', type=int, default=10_000, help='random: queries per image')
  ap.add_argument('--budget', type=int, default=2000, help='random, large run: queries per image')
  args = ap.parse_args(argv)

  train = data.load_npz('cifar10', 'train', args.data_dir)
  test = data.load_npz('cifar10', 'test', args.data_dir)
  model = train_cnn(train, args.train_steps, args.width)
  predict = as_predict(model)
  x_test = data.to_float(test.images)
  fwd = jax.jit(predict)
  pred = np.concatenate(
    [np.asarray(fwd(x_test[i : i + 500]).argmax(-1)) for i in range(0, len(x_test), 500)]
  )
  acc = float(np.mean(pred == test.labels))
  correct = np.flatnonzero(pred == test.labels)
  batch = args.batch or attack.default_batch()
  print(f'clean test accuracy {acc:.3f} on {len(test)} images; attack batch {batch}', flush=True)

  # The machine is shared and noisy: every rate is the best of a few rounds,
  # forward sweeps and warm attacks alike.
  rates = {}
  for _ in range(args.rounds):
    for b in [int(v) for v in args.forward_batches.split(',')]:
      reps = max(args.forward_reps, 4000 * args.forward_reps // b // 4)
      r = forward_rate(predict, x_test[np.resize(np.arange(len(x_test)), b)], reps)
      rates[b] = max(rates.get(b, 0.0), r)
      print(f'raw forward: {r:.0f} images/s at batch {b}', flush=True)
  best_b = max(rates, key=rates.get)
  best = rates[best_b]

  kw = dict(key=jax.random.key(0), popsize=args.popsize, batch=batch, search=args.search)
  small = correct[: args.small]
  xs, ys = x_test[small], test.labels[small]
  skw = dict(kw, maxiter=args.small_maxiter, budget=args.small_budget)
  runs = {}
  runs['small_first_call'] = timed_attack(predict, xs, ys, **skw)
  warm = [timed_attack(predict, xs, ys, **skw) for _ in range(args.rounds)]
  runs['small_warm_call'] = min(warm, key=lambda r: r['wall_s'])
  runs['small_warm_call']['all_wall_s'] = [r['wall_s'] for r in warm]
  fn, params = as_params_predict(model)
  runs['small_params_first_call'] = timed_attack(fn, xs, ys, params=params, **skw)
  other = jax.tree.map(lambda a: a * 1.01, params)  # another parameter set, same shapes
  runs['small_params_new_params'] = timed_attack(fn, xs, ys, params=other, **skw)
  large = correct[args.small : args.small + args.images]
  runs['large_warm'] = timed_attack(
    predict, x_test[large], test.labels[large], maxiter=args.maxiter, budget=args.budget, **kw
  )
  if args.search == 'random':  # the whole evaluation at DE's budget, DE beside it
    same = dict(kw, maxiter=args.small_maxiter, budget=args.popsize * (args.small_maxiter + 1))
    runs['small_at_de_budget'] = timed_attack(predict, xs, ys, **same)
    de = [timed_attack(predict, xs, ys, **dict(same, search='de')) for _ in range(2)]
    runs['small_de_same_budget'] = de[1]  # warm, as the random search's (its budget is data)
    runs['small_de_same_budget_first_call'] = de[0]
  for name, r in runs.items():
    r['efficiency'] = r['evals_per_s'] / best
    print(
      f'{name}: {r["images"]} images, {r["success"]} fooled, {r["evals"]} evaluations in '
      f'{r["wall_s"]:.1f}s = {r["evals_per_s"]:.0f}/s, efficiency {r["efficiency"]:.3f}',
      flush=True,
    )
  median_warm = float(np.median(runs['small_warm_call']['all_wall_s']))
  first_over_warm = runs['small_first_call']['wall_s'] / median_warm
  print(f'first call / median warm call (small N): {first_over_warm:.3f}')
  peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
  dev = jax.devices()[0]
  peak_dev = (
    (dev.memory_stats() or {}).get('peak_bytes_in_use') if hasattr(dev, 'memory_stats') else None
  )
  out = dict(
    device=str(dev.device_kind),
    backend=jax.default_backend(),
    jax=jax.__version__,
    search=args.search,
    popsize=args.popsize,
    batch=batch,
    small_budget=args.small_budget if args.search == 'random' else None,
    large_budget=args.budget if args.search == 'random' else None,
    small_maxiter=args.small_maxiter,
    large_maxiter=args.maxiter,
    clean_accuracy=acc,
    forward_images_per_s={str(b): r for b, r in rates.items()},
    best_forward_batch=best_b,
    best_forward_images_per_s=best,
    runs=runs,
    first_over_warm_small=first_over_warm,
    peak_host_rss_gib=peak_host,
    peak_device_bytes=peak_dev,
  )
  print(json.dumps(out))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + '\n')
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
