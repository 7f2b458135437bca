"""Training throughput (images/s) of the jitted train step, per model or per config.

    python benchmarks/train_throughput.py --models resnet18@0.25 resnet18@1 cnn6@1
    python benchmarks/train_throughput.py --configs cifar_baseline.py:cpu cifar_apr.py:cpu \
        cifar_apr.py:cpu,guided cifar_at.py:cpu

Times ``--steps`` steps of the real train step (augmentation, the config's
whole loss with its defence, backward, Adam) on random uint8 CIFAR-shaped
batches after one compile step, on all local devices. With ``--configs`` the
first one is the reference and each line also gives its step time relative to it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))  # for configs/
from configs import cifar_baseline  # noqa: E402
from jaxpix import overhead  # noqa: E402
from jaxpix.experiment import load_config as config_of  # noqa: E402


def measure(name: str, width: float, batch: int, steps: int, cfg=None) -> dict:
  if cfg is None:
    cfg = cifar_baseline.get_config()
    cfg.model.name, cfg.model.width = name, width
  cfg.train.batch_size = batch
  r = overhead.train_step_time(cfg, steps=steps)
  return dict(
    model=cfg.model.name,
    width=cfg.model.width,
    defence=cfg.defence.name,
    adversary=cfg.defence.adv.method if cfg.defence.adversarial else None,
    batch=batch,
    steps=steps,
    images_per_s=r['images_per_s'],
    seconds_per_step=r['seconds_per_step'],
  )


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', nargs='*', default=['resnet18@0.25', 'resnet18@1'])
  ap.add_argument('--configs', nargs='*', default=[])
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=5)
  args = ap.parse_args(argv)
  if args.configs:
    ref = None
    for spec in args.configs:
      r = dict(config=spec, **measure('', 0, args.batch, args.steps, config_of(spec)))
      ref = ref or r['seconds_per_step']
      r['relative_step_time'] = r['seconds_per_step'] / ref
      print(json.dumps(r), flush=True)
    return
  for spec in args.models:
    name, _, width = spec.partition('@')
    print(json.dumps(measure(name, float(width or 1), args.batch, args.steps)), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
