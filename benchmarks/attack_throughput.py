"""Attack throughput against the raw forward throughput of the same model.

    python benchmarks/attack_throughput.py                      # CPU-sized defaults
    python benchmarks/attack_throughput.py --images 500 --maxiter 100   # full budget

The model is the 6-conv CIFAR CNN (``jaxpix.models.CNN6``, ~70 MFLOP/image by
XLA's count), trained briefly on real CIFAR-10 (cached in benchmarks/.cache/)
so that the attack runs real trajectories. The script prints:

- the raw batched forward rate (images/s) at the attack's batch size
  (slots x popsize), jitted ``predict`` on real test images;
- the attack's model evaluations per second on a real untargeted run over
  correctly classified test images (queries summed / wall time, compilation
  excluded by a warm-up run on other images of the same shape);
- their ratio (the efficiency: 1.0 means the attack costs nothing but the
  forward passes), and peak memory.
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
from jaxpix.models import CNN6, as_predict

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


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--images', type=int, default=40, help='images attacked in the timed run')
  ap.add_argument('--popsize', type=int, default=400)
  ap.add_argument('--maxiter', type=int, default=20)
  ap.add_argument('--slots', type=int, default=None, help='default: 4096 // popsize')
  ap.add_argument('--width', type=float, default=1.0)
  ap.add_argument('--train-steps', type=int, default=300)
  ap.add_argument('--forward-reps', type=int, default=5)
  ap.add_argument('--json', default=None, help='also write the figures to this file')
  args = ap.parse_args(argv)

  train = data.load_npz('cifar10', 'train', args.data_dir)
  test = data.load_npz('cifar10', 'test', args.data_dir)
  model = train_cnn(train, args.train_steps, args.width)
  predict = as_predict(model)
  x_test = data.to_float(test.images)
  pred = np.concatenate(
    [
      np.asarray(jax.jit(predict)(x_test[i : i + 500]).argmax(-1))
      for i in range(0, len(x_test), 500)
    ]
  )
  acc = float(np.mean(pred == test.labels))
  correct = np.flatnonzero(pred == test.labels)
  slots = args.slots or max(1, 4096 // args.popsize)
  batch = slots * args.popsize
  print(
    f'clean test accuracy {acc:.3f} on {len(test)} images; attack batch {slots} slots x '
    f'{args.popsize} = {batch}',
    flush=True,
  )

  reps_x = x_test[np.resize(np.arange(len(x_test)), batch)]
  fwd = forward_rate(predict, reps_x, args.forward_reps)
  print(f'raw forward: {fwd:.0f} images/s at batch {batch}', flush=True)

  kw = dict(key=jax.random.key(0), popsize=args.popsize, maxiter=args.maxiter, slots=slots)
  warm = correct[-slots:]  # compile (every tail size too) on images not timed
  attack.one_pixel(predict, x_test[warm], test.labels[warm], **kw)
  timed = correct[: args.images]
  t0 = time.perf_counter()
  r = attack.one_pixel(predict, x_test[timed], test.labels[timed], **kw)
  wall = time.perf_counter() - t0
  evals = int(r.queries.sum())
  rate = evals / wall
  peak_host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
  dev = jax.devices()[0]
  peak_dev = (
    (dev.memory_stats() or {}).get('peak_bytes_in_use') if hasattr(dev, 'memory_stats') else None
  )
  out = dict(
    device=str(dev.device_kind),
    backend=jax.default_backend(),
    images=len(timed),
    popsize=args.popsize,
    maxiter=args.maxiter,
    slots=slots,
    batch=batch,
    clean_accuracy=acc,
    success_rate=r.success_rate,
    mean_queries=float(r.queries.mean()),
    attack_wall_s=wall,
    model_evals=evals,
    attack_evals_per_s=rate,
    forward_images_per_s=fwd,
    efficiency=rate / fwd,
    peak_host_rss_gib=peak_host,
    peak_device_bytes=peak_dev,
  )
  print(
    f'attack: {len(timed)} images, success {r.success_rate:.3f}, mean queries '
    f'{r.queries.mean():.0f}, {evals} evaluations in {wall:.1f}s = {rate:.0f} evals/s'
  )
  print(f'efficiency (attack evals/s / raw forward images/s): {rate / fwd:.3f}')
  print(
    f'peak host RSS {peak_host:.2f} GiB'
    + (f', peak device memory {peak_dev / 2**30:.2f} GiB' if peak_dev else '')
  )
  print(json.dumps(out))
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(out, indent=1) + '\n')
  return out


if __name__ == '__main__':
  main(sys.argv[1:])
