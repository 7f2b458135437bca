"""How tight the verifier's bounds are: positions certified on one image.

For one test image of a zoo model, colour boxes of a given side centred on
grey at every position, and how many positions each kind of bound certifies
(the weakest margin's lower bound above ``TOLERANCE``): forward
bounds only, forward and backward (CROWN) margins, and those with the
refined intermediate bounds.

    python benchmarks/verify_bounds.py --model lenet-none --image 0 --sides 1,0.25
    python benchmarks/verify_bounds.py --model cnn6:0.5:250 --sides 0.25,0.05 --kinds backward,zonotope

``--model``: a zoo name, or ``cnn6:WIDTH:STEPS`` (benchmarks/certify_models.py).
"""

from __future__ import annotations

import argparse
import functools
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix import data, zoo
from jaxpix.verify.certify import TOLERANCE, _box_bounds

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # for benchmarks/
# The refined kind: the 64 widest straddling inputs of each ReLU refined
# (``certify(..., refine_rows=64)``).
# (backward, refined rows, zonotope slots): the zonotope kinds tighten every
# ReLU's input bounds with zonotope bounds (``certify(..., slots=...)``).
KINDS = {
  'forward': (False, 0, 0),
  'backward': (True, 0, 0),
  'refined': (True, 64, 0),
  'zonotope': (True, 0, 16),
  'zonotope64': (True, 0, 64),
}


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--model', default='lenet-none')
  ap.add_argument('--image', type=int, default=0)
  ap.add_argument('--sides', default='1,0.25')
  ap.add_argument('--kinds', default=','.join(KINDS))
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  args = ap.parse_args(argv)
  if args.model.startswith('cnn6:'):  # the notebook's CNN is cnn6:0.5:250
    from benchmarks.certify_models import load

    predict = load(args.model, args.data_dir)
  else:
    m = zoo.load(args.model)
    predict = functools.partial(m.predict, m.params)
  test = data.load_npz('cifar10', 'test', args.data_dir)
  x = jnp.asarray(data.to_float(test.images[args.image]))
  y = int(test.labels[args.image])
  h, w, c = x.shape
  jaxpr = jax.make_jaxpr(predict)(x[None])
  no_parent = jnp.full(jaxpr.out_avals[0].shape[-1], -jnp.inf)  # every margin bounded afresh
  grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing='ij'), -1).reshape(-1, 2)
  for kind in args.kinds.split(','):
    backward, rows, slots = KINDS[kind]
    f = jax.jit(
      jax.vmap(
        lambda p, a, b, backward=backward, rows=rows, slots=slots: _box_bounds(
          jaxpr, x, y, p, a, b, no_parent, backward, rows, slots=slots
        )[0].min()
      )
    )
    for side in (float(s) for s in args.sides.split(',')):
      t0 = time.perf_counter()
      zl = np.full((128, c), 0.5 - side / 2, np.float32)
      low = np.concatenate(
        [
          np.asarray(f(jnp.asarray(grid[s : s + 128]), jnp.asarray(zl), jnp.asarray(zl + side)))
          for s in range(0, len(grid), 128)
        ]
      )
      print(
        f'{args.model} image {args.image}, {kind}, side {side}: '
        f'{int(np.sum(low > TOLERANCE))}/{len(grid)} positions certified, '
        f'median margin bound {np.median(low):.3f} ({time.perf_counter() - t0:.0f} s)',
        flush=True,
      )


if __name__ == '__main__':
  main()
