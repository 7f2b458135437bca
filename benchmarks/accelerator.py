"""The figures jaxpix has never measured on an accelerator, in one run, into one JSON.

Run by ``benchmarks/accelerator.sh`` on whatever GPU/TPU is present (its
header says how to carry the data and the packages); on the CPU with
``--tiny`` as its check (tests/test_accelerator.py):

    python benchmarks/accelerator.py --json /tmp/accel.json --data-dir ../shared/data/cifar10

Sections, in this order, each written to the JSON as soon as it is measured
(a run stopped at any point keeps what it measured; a section that fails
records its error and the next one runs; one that would start past
``--deadline-s`` is recorded as skipped):

1. ``forward``: the raw forward rate (images/s, warm) of the operating
   point's ResNet-18 (width 0.25, the zoo's ``resnet18_w0.25-none``) and the
   full-width one at several batch sizes, and each one's best.
2. ``attacks``: on the zoo model and the first correctly classified test
   images, DE (population 400, Su et al.), the random search and the
   gradient-ranked search, at 24 images (first call, compilation included,
   then warm) and at 500 images (warm): model evaluations per second, and
   the efficiency (that over the best raw forward rate of the same model).
3. ``train_steps``: the jitted train step (augmentation, loss with its
   defence, backward, Adam) of No Defence, AT and APR at the ``:cpu`` and
   the full sizes: seconds per step (median of rounds, interleaved), the
   first step (compilation), and each relative to No Defence's.
4. ``full_eval``: the full-budget evaluation of No Defence (``run.py`` eval
   mode, DE 400 x 100, the 500 fixed test images): its wall time, or, when
   the deadline stops it, the images it finished and the rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parent.parent
REQUIRED = ('jax', 'flax', 'optax', 'orbax.checkpoint', 'ml_collections', 'numpy')

# The sizes of a device run, and of the CPU check (--tiny).
FULL = dict(
  model='resnet18',
  zoo='resnet18_w0.25-none',
  widths=(0.25, 1.0),
  forward_batches=(128, 512, 2048, 8192),
  small=24,
  large=500,
  popsize=400,
  small_maxiter=10,
  large_maxiter=10,
  budget=4_400,
  train_configs=('cifar_baseline.py:cpu', 'cifar_at.py:cpu', 'cifar_apr.py:cpu'),
  full_configs=('cifar_baseline.py', 'cifar_at.py', 'cifar_apr.py'),
  step_batch=None,  # the config's own
  step_rounds=3,
  step_steps=5,
  eval_images=500,
  eval_maxiter=100,
  forward_reps=20,  # timed calls per forward rate (after a compile call)
  eval_popsize=400,
)
TINY = dict(  # LeNet: every path, compiled in seconds
  model='lenet',
  zoo='lenet-none',
  widths=(1.0,),
  forward_batches=(4, 8),
  small=3,
  large=4,
  popsize=8,
  small_maxiter=1,
  large_maxiter=1,
  budget=24,
  train_configs=('cifar_baseline.py:test|model.name=lenet', 'cifar_apr.py:test|model.name=lenet'),
  full_configs=(),
  step_batch=16,
  step_rounds=1,
  step_steps=1,
  eval_images=2,
  eval_maxiter=1,
  forward_reps=3,
  eval_popsize=8,
)


class Report:
  """The JSON, rewritten whole (through a temporary file) after every figure."""

  def __init__(self, path: pathlib.Path, meta: dict):
    self.path, self.doc = path, {'meta': meta, 'sections': {}}
    self.write()

  def put(self, section: str, key: str | None, value) -> None:
    if key is None:
      self.doc['sections'][section] = value
    else:
      self.doc['sections'].setdefault(section, {})[key] = value
    self.write()

  def write(self) -> None:
    self.doc['meta']['written'] = _now()
    tmp = self.path.with_suffix('.tmp')
    tmp.write_text(json.dumps(self.doc, indent=1) + '\n')
    os.replace(tmp, self.path)


def _now() -> str:
  return datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')


def preflight(data_dir: pathlib.Path) -> list[str]:
  """What is missing before anything is measured: each a sentence saying how to fix it."""
  problems = []
  for name in REQUIRED:
    try:
      __import__(name)
    except ImportError as e:
      problems.append(
        f'the package {name} does not import ({e}): carry it as a wheel (benchmarks/accelerator.sh)'
      )
  test = data_dir / 'test.npz'
  if not test.is_file():
    problems.append(
      f'no CIFAR-10 test split at {test}: copy ../shared/data/cifar10/test.npz there and carry '
      'it, or pass --data-dir'
    )
  return problems


def forward_section(report: Report, s: dict, x_all, deadline: float) -> None:
  """Raw forward rates per width and batch, and the best per width."""
  import numpy as np

  from benchmarks.attack_throughput import forward_rate
  from jaxpix import models

  for width in s['widths']:
    predict = models.as_predict(models.create(s['model'], num_classes=10, width=width))
    rates = {}
    for b in s['forward_batches']:
      if time.monotonic() > deadline:
        report.put('forward', f'w{width}_b{b}', 'skipped: past the deadline')
        continue
      x = x_all[np.resize(np.arange(len(x_all)), b)]
      rates[b] = forward_rate(predict, x, s['forward_reps'])
      report.put('forward', f'w{width}_b{b}', rates[b])
    if rates:
      report.put('forward', f'w{width}_best', max(rates.values()))


def attacks_section(report: Report, s: dict, test, deadline: float) -> None:
  import jax
  import numpy as np

  from benchmarks.attack_throughput import forward_rate
  from jaxpix import attack, data, zoo

  m = zoo.load(s['zoo'])
  x_all = data.to_float(test.images)
  fwd = jax.jit(m.predict)
  pred = np.concatenate(
    [np.asarray(fwd(m.params, x_all[i : i + 1000]).argmax(-1)) for i in range(0, len(x_all), 1000)]
  )
  correct = np.flatnonzero(pred == test.labels)
  best = max(
    forward_rate(
      lambda v: m.predict(m.params, v),
      x_all[np.resize(np.arange(len(x_all)), b)],
      s['forward_reps'],
    )
    for b in s['forward_batches']
  )
  report.put('attacks', 'model', s['zoo'])
  report.put('attacks', 'best_forward_images_per_s', best)
  key = jax.random.key(0)
  attacks = {
    'de': attack.one_pixel,
    'random': attack.random_search,
    'gradient_ranked': attack.gradient_ranked,
  }

  def run(name, n, **kw):
    if time.monotonic() > deadline:
      report.put('attacks', name, 'skipped: past the deadline')
      return
    idx = correct[:n]
    search = attacks[kw.pop('search')]
    t0 = time.perf_counter()
    r = search(m.predict, x_all[idx], test.labels[idx], key=key, params=m.params, **kw)
    wall = time.perf_counter() - t0
    evals = int(r.queries.sum())
    report.put(
      'attacks',
      name,
      dict(
        images=len(idx),
        wall_s=wall,
        evals=evals,
        evals_per_s=evals / wall,
        efficiency=evals / wall / best,
        fooled=int(r.success.sum()),
      ),
    )

  searches = {
    'de': dict(search='de', maxiter=s['small_maxiter'], popsize=s['popsize']),
    'random': dict(search='random', budget=s['budget']),
    'gradient_ranked': dict(search='gradient_ranked', budget=s['budget'], chunk=200),
  }
  # Each size compiles its own program (the images in flight set the
  # shapes), so the large run has a first call too.
  for name, kw in searches.items():
    large = dict(kw, maxiter=s['large_maxiter']) if name == 'de' else dict(kw)
    for n, settings in ((s['small'], kw), (s['large'], large)):
      run(f'{name}_{n}_first_call', n, **dict(settings))
      run(f'{name}_{n}_warm', n, **dict(settings))


def steps_section(report: Report, s: dict, deadline: float) -> None:
  from benchmarks import train_throughput

  for group, specs in (('cpu_sizes', s['train_configs']), ('full_sizes', s['full_configs'])):
    if not specs:
      continue
    if time.monotonic() > deadline:
      report.put('train_steps', group, 'skipped: past the deadline')
      continue
    batch = s['step_batch'] or train_throughput.config_of(specs[0]).train.batch_size
    rows = train_throughput.compare(list(specs), batch, s['step_steps'], s['step_rounds'])
    report.put('train_steps', group, rows)


def eval_section(report: Report, s: dict, data_dir: pathlib.Path, out: pathlib.Path, deadline):
  """``run.py`` eval mode as a user runs it, in its own process, stopped at the deadline."""
  left = deadline - time.monotonic()
  if left < 30:
    report.put('full_eval', None, 'skipped: past the deadline')
    return
  workdir = out / 'full_eval'
  shutil.rmtree(workdir, ignore_errors=True)  # a resumed evaluation would time nothing
  cmd = [
    sys.executable,
    str(ROOT / 'run.py'),
    '--config',
    str(ROOT / 'configs' / 'cifar_baseline.py:cpu'),
    '--workdir',
    str(workdir),
    '--config.mode=eval',
    f'--config.checkpoint=zoo:{s["zoo"]}',
    f'--config.model.name={s["model"]}',
    f'--config.model.width={s["widths"][0]}',
    f'--config.data.dir={data_dir}',
    '--config.eval.image_set=fixed',
    f'--config.eval.num_images={s["eval_images"]}',
    f'--config.eval.maxiter={s["eval_maxiter"]}',
    '--config.eval.gradient_ranked=0',
    '--config.eval.progress=False',
    f'--config.eval.popsize={s["eval_popsize"]}',
  ]
  t0 = time.perf_counter()
  try:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=left, cwd=ROOT)
    rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-2000:]
  except subprocess.TimeoutExpired as e:  # its output comes back as bytes whatever text= says
    out_err = [
      v.decode(errors='replace') if isinstance(v, bytes) else v or '' for v in (e.stdout, e.stderr)
    ]
    rc, tail = 'stopped at the deadline', ''.join(out_err)[-2000:]
  wall = time.perf_counter() - t0
  done = 0
  for log in workdir.glob('**/attack_*.jsonl'):
    done = max(done, sum('"index"' in line for line in log.read_text().splitlines()))
  result = dict(
    command=' '.join(cmd[1:]), rc=rc, wall_s=wall, images=s['eval_images'], images_done=done
  )
  results = next(workdir.glob('**/results.json'), None)
  if results is not None and rc == 0:
    r = json.loads(results.read_text())
    keep = ('clean_accuracy', 'robust_accuracy', 'num_images', 'seconds_this_run')
    result.update({k: r[k] for k in keep if k in r})
  if rc != 0:
    result['output_tail'] = tail
  report.put('full_eval', None, result)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  ap.add_argument('--json', required=True, help='where the figures go (rewritten as they land)')
  ap.add_argument('--data-dir', default=str(ROOT.parent / 'shared' / 'data' / 'cifar10'))
  ap.add_argument('--deadline-s', type=float, default=420, help='no section starts after this')
  ap.add_argument('--tiny', action='store_true', help='the CPU check: tiny sizes')
  ap.add_argument('--sections', default='forward,attacks,train_steps,full_eval')
  ap.add_argument(
    '--allow-cpu', action='store_true', help='measure even where JAX sees no accelerator'
  )
  args = ap.parse_args(argv)
  t_start = time.monotonic()
  deadline = t_start + args.deadline_s
  out = pathlib.Path(args.json).resolve()
  out.parent.mkdir(parents=True, exist_ok=True)
  data_dir = pathlib.Path(args.data_dir).resolve()
  meta = dict(started=_now(), command=' '.join(sys.argv), tiny=args.tiny)
  report = Report(out, meta)
  problems = preflight(data_dir)
  if problems:
    report.put('preflight', None, {'problems': problems})
    print('accelerator benchmark: cannot start:\n  ' + '\n  '.join(problems), file=sys.stderr)
    return 2
  import jax

  from jaxpix import data

  dev = jax.devices()[0]
  meta.update(
    backend=jax.default_backend(),
    device=dev.device_kind,
    devices=jax.device_count(),
    jax=jax.__version__,
    preallocate=os.environ.get('XLA_PYTHON_CLIENT_PREALLOCATE'),
    commit=subprocess.run(
      ['git', 'rev-parse', 'HEAD'], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    or None,
  )
  report.write()
  if meta['backend'] == 'cpu' and not args.allow_cpu:
    problem = 'JAX sees no accelerator (backend cpu): check jax[cuda] / the TPU runtime, or pass --allow-cpu'
    report.put('preflight', None, {'problems': [problem]})
    print(f'accelerator benchmark: cannot start: {problem}', file=sys.stderr)
    return 2
  s = TINY if args.tiny else FULL
  test = data.load_npz('cifar10', 'test', str(data_dir))
  wanted = args.sections.split(',')
  failed = []
  for name in wanted:
    t0 = time.monotonic()
    if t0 > deadline:
      report.put(name, None, 'skipped: past the deadline')
      continue
    print(f'[{t0 - t_start:6.0f} s] {name}', flush=True)
    try:
      if name == 'forward':
        forward_section(report, s, data.to_float(test.images[:1000]), deadline)
      elif name == 'attacks':
        attacks_section(report, s, test, deadline)
      elif name == 'train_steps':
        steps_section(report, s, deadline)
      elif name == 'full_eval':
        eval_section(report, s, data_dir, out.parent, deadline)
      else:
        raise ValueError(f'unknown section {name!r}: choose from {ap.get_default("sections")}')
    except Exception as e:  # noqa: BLE001 - recorded; the next section still runs
      failed.append(name)
      report.put(name, 'error', ''.join(traceback.format_exception_only(e)).strip())
      traceback.print_exc()
    report.put('seconds', name, time.monotonic() - t0)
  report.doc['meta']['finished'] = _now()
  report.write()
  print(f'[{time.monotonic() - t_start:6.0f} s] done; failed: {failed or "none"}', flush=True)
  return 1 if failed else 0


if __name__ == '__main__':
  sys.path.insert(0, str(ROOT))  # for benchmarks/
  sys.exit(main(sys.argv[1:]))
