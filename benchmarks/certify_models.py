"""Robust accuracy against one changed pixel as an interval: [certified, attacked].

For each model, the first ``--images`` test images: the verifier's certified
accuracy (``jaxpix.verify.certify``, a lower bound on the robust accuracy)
beside the attacks' robust accuracy (correct and fooled by none of the
exhaustive corner sweep, DE and the random search: an upper bound), on the
same images, with the verifier's time per image. Every image the verifier
certifies is checked against every attack (a certified image that an attack
fools would be a bug: the script fails).

    python benchmarks/certify_models.py --model LeNet=zoo:lenet-none --images 100 \\
        --json benchmarks/results/certify_cpu.json

Models as in benchmarks/one_pixel_search.py (``NAME=cnn6``, ``NAME=zoo:NAME``,
``NAME=CONFIG@DIR``), and ``NAME=cnn6:WIDTH:STEPS`` (a CNN6 of that width
trained that many steps by benchmarks/attack_throughput.py's loop; the
notebook's is ``cnn6:0.5:250``). A model already in the JSON with the same
settings is skipped (``--force`` measures it again).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import numpy as np

from jaxpix import attack, data, verify

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for benchmarks/


def load(spec: str, data_dir: str):
  """``predict(images)`` for a model spec (see the module docstring)."""
  from benchmarks.one_pixel_search import load_model

  if spec.startswith('cnn6:'):
    from benchmarks.attack_throughput import train_cnn
    from jaxpix.models import as_predict

    _, width, steps = spec.split(':')
    train = data.load_npz('cifar10', 'train', data_dir)
    return as_predict(train_cnn(train, int(steps), float(width)))
  return load_model(spec, data_dir)


def attacks(predict, x, y, args) -> dict[str, np.ndarray]:
  """Per attack, which images it fooled."""
  key = jax.random.key(args.seed)
  de = attack.one_pixel(
    predict, x, y, key=key, popsize=args.de_popsize, maxiter=args.de_maxiter, mode='replace'
  )
  rs = attack.random_search(predict, x, y, key=key, budget=args.rs_budget)
  corners = attack.extreme_colour(predict, x, y)
  return {'corners': corners.success, 'de': de.success, 'random': rs.success}


def measure(name: str, spec: str, args) -> dict:
  test = data.load_npz('cifar10', 'test', args.data_dir)
  x = data.to_float(test.images[: args.images])
  y = test.labels[: args.images].astype(np.int32)
  predict = load(spec, args.data_dir)
  t0 = time.perf_counter()
  cert = verify.certify(
    predict,
    x,
    y,
    max_boxes=args.max_boxes,
    batch=args.batch,
    refine_rows=args.refine_rows,
    zonotope_slots=args.zonotope_slots,
  )
  verify_s = time.perf_counter() - t0
  fooled = attacks(predict, x, y, args)
  any_fooled = np.any(list(fooled.values()), 0)
  correct = ~cert.misclassified
  bad = np.flatnonzero(cert.certified & any_fooled)
  if len(bad):
    raise SystemExit(f'{name}: images {bad.tolist()} are certified and fooled by an attack')
  status = cert.status
  n = len(y)
  return dict(
    model=name,
    spec=spec,
    images=n,
    max_boxes=args.max_boxes,
    refine_rows=args.refine_rows,
    zonotope_slots=args.zonotope_slots,
    attacks=dict(
      de=f'population {args.de_popsize} x {args.de_maxiter} generations',
      random=f'{args.rs_budget} queries',
      corners='all 8 corners at every position',
    ),
    clean_accuracy=float(correct.mean()),
    certified_accuracy=float(cert.certified.mean()),
    attacked_accuracy=float((correct & ~any_fooled).mean()),
    verifier_fooled=int(cert.fooled.sum()),
    unknown=int((status == 'unknown').sum()),
    unknown_not_attacked=int(((status == 'unknown') & ~any_fooled).sum()),
    fooled_by={k: int(v.sum()) for k, v in fooled.items()},
    verifier_seconds=verify_s,
    seconds_per_image=float(cert.seconds[correct].mean()),
    seconds_per_image_median=float(np.median(cert.seconds[correct])),
    seconds_by_status={
      s: float(cert.seconds[status == s].mean())
      for s in ('certified', 'fooled', 'unknown')
      if np.any(status == s)
    },
    boxes_by_status={
      s: float(cert.boxes[status == s].mean())
      for s in ('certified', 'fooled', 'unknown')
      if np.any(status == s)
    },
    status=status.tolist(),
    bound=[None if np.isnan(b) else round(float(b), 4) for b in cert.bound],
    device=jax.devices()[0].device_kind,
    date=time.strftime('%Y-%m-%d'),
  )


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', action='append', required=True, help='NAME=SPEC')
  ap.add_argument('--images', type=int, default=100)
  ap.add_argument('--max-boxes', type=int, default=16384)
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--refine-rows', type=int, default=0)
  ap.add_argument('--zonotope-slots', type=int, default=64, help='0: off; 64, as verify.certify')
  ap.add_argument('--de-popsize', type=int, default=400)
  ap.add_argument('--de-maxiter', type=int, default=100)
  ap.add_argument('--rs-budget', type=int, default=10000)
  ap.add_argument('--seed', type=int, default=0)
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--json', default='')
  ap.add_argument('--force', action='store_true')
  args = ap.parse_args(argv)
  path = pathlib.Path(args.json) if args.json else None
  results = json.loads(path.read_text()) if path and path.exists() else {}
  keep = ('images', 'max_boxes', 'refine_rows', 'zonotope_slots')
  for item in args.model:
    name, spec = item.split('=', 1)
    old = results.get(name)
    if old and not args.force and all(old.get(k, 0) == getattr(args, k) for k in keep):
      print(f'{name}: in {path} already (--force measures it again)')
      continue
    r = measure(name, spec, args)
    print(
      f'{name}: robust accuracy in [{r["certified_accuracy"]:.1%}, {r["attacked_accuracy"]:.1%}] '
      f'(clean {r["clean_accuracy"]:.1%}; {r["unknown"]} unknown, {r["unknown_not_attacked"]} '
      f'of them not fooled by the attacks); verifier {r["seconds_per_image"]:.1f} s per image',
      flush=True,
    )
    results[name] = r
    if path:
      path.write_text(json.dumps(results, indent=1) + '\n')


if __name__ == '__main__':
  main()
