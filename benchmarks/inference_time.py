"""Inference time per image of each defended model relative to the undefended one.

    python benchmarks/inference_time.py --configs cifar_baseline.py:cpu cifar_at.py:cpu \
        cifar_apr.py:cpu cifar_it.py:cpu cifar_dd.py:cpu cifar_autoencoder.py:cpu

    # the autoencoder suite's six pipelines, 32-channel autoencoder, batch 400:
    python benchmarks/inference_time.py --batch 400 --configs \
        'cifar_autoencoder.py:cpu,lenet defence.ae_width=32' \
        'cifar_autoencoder.py:cpu,pure_cnn defence.ae_width=32' ...

Builds each config's deployed model (fresh parameters: timing does not depend
on them; the autoencoder's frozen classifier is the baseline model), jits its
``predict`` and times ``--reps`` forward passes of a batch of real-shaped
random images after a compile call. The first config is the reference. A
config may carry overrides after a space (``field=value,...``, as
``--config.suite.set``). For an autoencoder config the frozen classifier
alone is timed too (``classifier_images_per_s``): what the autoencoder costs.
"""

from __future__ import annotations

import argparse
import json
import sys

from jaxpix import build, configs
from jaxpix.repro import overhead


def load(spec: str):
  """``'cifar_autoencoder.py:cpu,lenet defence.ae_width=32'`` -> its config."""
  name, _, overrides = spec.strip().partition(' ')
  cfg = configs.load(name)
  configs.apply_overrides(cfg, overrides)
  return cfg


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--configs', nargs='+', required=True)
  ap.add_argument('--batch', type=int, default=500)
  ap.add_argument('--reps', type=int, default=5)
  args = ap.parse_args(argv)
  ref = None
  for spec in args.configs:
    cfg = load(spec)
    per_image = overhead.inference_time(cfg, args.batch, args.reps)['seconds_per_image']
    ref = ref or per_image
    row = dict(
      config=spec,
      defence=cfg.defence.name,
      model=cfg.model.name,
      width=cfg.model.width,
      batch=args.batch,
      ms_per_image=1e3 * per_image,
      images_per_s=1 / per_image,
      relative=per_image / ref,
    )
    if cfg.defence.name == 'autoencoder':
      row['ae_width'] = cfg.defence.ae_width
      bare = build.frozen_config(cfg, 'classifier')
      bare_s = overhead.inference_time(bare, args.batch, args.reps)['seconds_per_image']
      row['classifier_images_per_s'] = 1 / bare_s
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
