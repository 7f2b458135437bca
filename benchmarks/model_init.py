"""Time to a model's first parameters: ``models.create`` against the eager build.

    python benchmarks/model_init.py --models cnn6@0.125 resnet18@0.25 lenet@1 \
        --json benchmarks/results/model_init_cpu.json

Each figure is a fresh Python process (nothing compiled yet, no compilation
cache): the seconds from the call to its parameters being ready, for
``models.create`` (every parameter drawn in one program, compiled at XLA's
optimisation level 0 on the CPU; ``models.initialise``) and for the same
constructor called eagerly (one compiled random-number program per
parameter shape, the way ``create`` built models before). ``--repeats``
alternates the two that many times; the median is reported. Also checked:
both give the same parameters up to float32 rounding.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
import jax, numpy as np
from flax import nnx
from jaxpix import models
name, width, how = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ctor, _ = models.REGISTRY[name]
build = lambda: ctor(num_classes=10, width=width, rngs=nnx.Rngs(0))
jax.block_until_ready(jax.numpy.zeros(1) + 1)  # the backend up before the clock
t = time.perf_counter()
m = models.initialise(build) if how == 'create' else build()
leaves = jax.block_until_ready(jax.tree.leaves(nnx.state(m)))
seconds = time.perf_counter() - t
ref = jax.tree.leaves(nnx.state(build())) if how == 'create' else leaves
diff = max(float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))
           for a, b in zip(leaves, ref))
print(json.dumps(dict(seconds=seconds, max_abs_diff=diff, device=jax.devices()[0].device_kind)))
"""


def measure(name: str, width: float, how: str) -> dict:
  out = subprocess.run(
    [sys.executable, '-c', CHILD, name, str(width), how],
    capture_output=True,
    text=True,
    check=True,
  ).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  p.add_argument('--models', nargs='+', default=['cnn6@0.125', 'resnet18@0.25'])
  p.add_argument('--repeats', type=int, default=1)
  p.add_argument('--json', help='write the rows here too')
  a = p.parse_args(argv)
  rows = []
  for spec in a.models:
    name, _, width = spec.partition('@')
    runs = {'create': [], 'eager': []}
    diff, device = 0.0, ''
    for _ in range(a.repeats):
      for how in runs:
        r = measure(name, float(width or 1), how)
        runs[how].append(r['seconds'])
        diff, device = max(diff, r['max_abs_diff']), r['device']
    row = dict(
      model=spec,
      create_s=statistics.median(runs['create']),
      eager_s=statistics.median(runs['eager']),
      max_abs_diff=diff,
      repeats=a.repeats,
      device=device,
    )
    row['eager_over_create'] = row['eager_s'] / row['create_s']
    rows.append(row)
    print(json.dumps(row), flush=True)
  if a.json:
    with open(a.json, 'w') as f:
      json.dump(rows, f, indent=1)


if __name__ == '__main__':
  main()
