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

``--run-lengths N1 N2`` times what a user runs instead: ``run.py`` on the
real data for N1 and for N2 steps (fresh workdirs, everything the run does:
start-up, compilation, checkpoints, the closing evaluation), and the step
time is the difference of the two wall times over N2 - N1 (what both runs
do once cancels; each run compiles afresh, in a compilation cache of its
own). With ``defence.replay`` give even lengths (a batch's two
visits differ in cost).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

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


ROOT = pathlib.Path(__file__).resolve().parents[1]


def run_seconds(spec: str, steps: int, workdir: pathlib.Path) -> float:
  """Wall seconds of ``run.py`` training ``spec`` for ``steps`` steps from scratch."""
  name, _, overrides = spec.partition('|')
  args = [sys.executable, str(ROOT / 'run.py'), f'--config=configs/{name}']
  args += [f'--config.{kv}' for kv in overrides.split(',') if kv]
  args += [f'--config.train.steps={steps}', '--config.train.progress=False', f'--workdir={workdir}']
  # A cache of its own: both lengths compile (a shared one would let the
  # second run of a config skip what the first compiled, and the
  # difference would no longer cancel it).
  args += [f'--compilation_cache={workdir}_xla']
  t0 = time.perf_counter()
  done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
  if done.returncode:
    raise RuntimeError(f'{" ".join(args)} failed:\n{done.stderr[-3000:]}')
  return time.perf_counter() - t0


def through_run(specs, lengths: tuple[int, int], repeats: int) -> list[dict]:
  """Step time of each config from two ``run.py`` lengths, relative to the
  first config; ``repeats`` rounds interleaved, medians reported."""
  n1, n2 = lengths
  if not 0 < n1 < n2:
    raise ValueError(f'--run-lengths needs 0 < N1 < N2, got {n1} {n2}')
  walls = {spec: {n1: [], n2: []} for spec in specs}
  with tempfile.TemporaryDirectory() as tmp:
    for r in range(repeats):
      for i, spec in enumerate(specs):
        for n in lengths:
          walls[spec][n].append(run_seconds(spec, n, pathlib.Path(tmp) / f'{r}_{i}_{n}'))
  per_step = {
    spec: float(np.median([(b - a) / (n2 - n1) for a, b in zip(w[n1], w[n2], strict=True)]))
    for spec, w in walls.items()
  }
  ref = per_step[specs[0]]
  return [
    dict(
      config=spec,
      **_describe(config_of(spec)),
      method='run.py, two lengths',
      run_lengths=[n1, n2],
      repeats=repeats,
      wall_seconds={str(n): w for n, w in walls[spec].items()},
      seconds_per_step=per_step[spec],
      relative_step_time=per_step[spec] / ref,
    )
    for spec, w in walls.items()
  ]


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--models', nargs='*', default=['resnet18@0.25', 'resnet18@1'])
  ap.add_argument('--configs', nargs='*', default=[])
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--steps', type=int, default=5)
  ap.add_argument('--repeats', type=int, default=1)
  ap.add_argument('--run-lengths', type=int, nargs=2, metavar=('N1', 'N2'))
  args = ap.parse_args(argv)
  if args.run_lengths:
    if not args.configs:
      ap.error('--run-lengths times --configs through run.py: name them')
    for r in through_run(args.configs, tuple(args.run_lengths), args.repeats):
      print(json.dumps(r), flush=True)
    return
  if args.configs:
    for r in compare(args.configs, args.batch, args.steps, args.repeats):
      print(json.dumps(r), flush=True)
    return
  for spec in args.models:
    name, _, width = spec.partition('@')
    print(json.dumps(measure(name, float(width or 1), args.batch, args.steps)), flush=True)


if __name__ == '__main__':
  main(sys.argv[1:])
