"""Training throughput (images/s) of the jitted train step, per model or per config.

    python benchmarks/train_throughput.py --models resnet18@0.25 resnet18@1 cnn6@1
    python benchmarks/train_throughput.py --configs cifar_baseline.py:cpu cifar_apr.py:cpu \
        cifar_apr.py:cpu,de 'cifar_apr.py:cpu|defence.penalty.method=exact' cifar_at.py:cpu

Times ``--steps`` steps of the real train step (augmentation, the config's
whole loss with its defence, backward, Adam) on random uint8 CIFAR-shaped
batches after one compile step, on all local devices. With ``--configs`` the
first one is the reference and each line also gives its step time relative to
it, and the compile step's time. ``spec|field=value,field=value`` overrides
config fields of one entry. ``--repeats`` measures every config that many
times, interleaved, and reports the median (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from jaxpix import configs
from jaxpix.configs import cifar_baseline
from jaxpix.repro import overhead


def config_of(spec: str):
  """``'cifar_apr.py:cpu|defence.penalty.method=exact'`` -> the config, overridden."""
  name, _, overrides = spec.partition('|')
  cfg = configs.load(name)
  configs.apply_overrides(cfg, overrides)
  return cfg


def _describe(cfg) -> dict:
  """What a result line says of the config it timed."""
  return dict(
    model=cfg.model.name,
    width=cfg.model.width,
    defence=cfg.defence.name,
    adversary=cfg.defence.adv.method if cfg.defence.adversarial else None,
  )


def measure(name: str, width: float, batch: int, steps: int, cfg=None) -> dict:
  if cfg is None:
    cfg = cifar_baseline.get_config()
    cfg.model.name, cfg.model.width = name, width
  cfg.train.batch_size = batch
  r = overhead.train_step_time(cfg, steps=steps)
  return dict(
    **_describe(cfg),
    batch=batch,
    steps=steps,
    images_per_s=r['images_per_s'],
    seconds_per_step=r['seconds_per_step'],
  )


def compare(specs, batch: int, steps: int, repeats: int) -> list[dict]:
  """Step time of each config relative to the first, ``repeats`` rounds
  interleaved (every config once per round), medians reported."""
  timers = []
  for spec in specs:
    cfg = config_of(spec)
    cfg.train.batch_size = batch
    timed, first = overhead.train_step_timer(cfg)
    timers.append((spec, cfg, timed, first))
  times = {spec: [] for spec in specs}
  for _ in range(repeats):
    for spec, _, timed, _ in timers:
      times[spec].append(timed(steps))
  rows = []
  ref = float(np.median(times[specs[0]]))
  for spec, cfg, _, first in timers:
    dt = float(np.median(times[spec]))
    rows.append(
      dict(
        config=spec,
        **_describe(cfg),
        batch=batch,
        steps=steps,
        repeats=repeats,
        images_per_s=batch / dt,
        seconds_per_step=dt,
        seconds_per_step_all=times[spec],
        relative_step_time=dt / ref,
        first_step_seconds=first,
      )
    )
  return rows


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', nargs='*', default=['resnet18@0.25', 'resnet18@1'])
  ap.add_argument('--configs', nargs='*', default=[])
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--repeats', type=int, default=1)
  args = ap.parse_args(argv)
  if args.configs:
    for r in compare(args.configs, args.batch, args.steps, args.repeats):
      print(json.dumps(r), flush=True)
    return
  for spec in args.models:
    name, _, width = spec.partition('@')
    print(json.dumps(measure(name, float(width or 1), args.batch, args.steps)), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
