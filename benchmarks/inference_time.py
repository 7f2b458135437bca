"""Inference time per image of each defended model relative to the undefended one.

    python benchmarks/inference_time.py --configs cifar_baseline.py:cpu cifar_at.py:cpu \
        cifar_apr.py:cpu cifar_it.py:cpu cifar_dd.py:cpu cifar_autoencoder.py:cpu

Builds each config's deployed model (fresh parameters: timing does not depend
on them; the autoencoder's frozen classifier is the baseline model), jits its
``predict`` and times ``--reps`` forward passes of a batch of real-shaped
random images after a compile call. The first config is the reference.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxpix import configs, overhead


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--configs', nargs='+', required=True)
  ap.add_argument('--batch', type=int, default=500)
  ap.add_argument('--reps', type=int, default=5)
  args = ap.parse_args(argv)
  ref = None
  for spec in args.configs:
    cfg = configs.load(spec)
    per_image = overhead.inference_time(cfg, args.batch, args.reps)['seconds_per_image']
    ref = ref or per_image
    print(
      json.dumps(
        dict(
          config=spec,
          defence=cfg.defence.name,
          model=cfg.model.name,
          width=cfg.model.width,
          ms_per_image=1e3 * per_image,
          relative=per_image / ref,
        )
      ),
      flush=True,
    )


if __name__ == '__main__':
  main(sys.argv[1:])
