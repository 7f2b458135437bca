"""Experiment suites (``config.mode == 'suite'``): a paper's table, measured.

    python run.py --config configs/suite_table1.py:cpu --workdir workdir/table1_cpu
    python run.py --config configs/suite_table1.py:cpu --config.suite.seeds='(0, 1, 2)' ...

A suite names rows (``'Row name=config.py:variants'``), seeds and overrides.
For every row and seed it trains into ``<workdir>/<row>/seed<s>/train`` (a
finished run is reused, an interrupted one resumed) and evaluates that
checkpoint into ``.../eval`` (resumable, see jaxpix.evaluate); the seed sets
``config.seed`` (initialisation, data order, training adversary) and
``config.eval.seed`` (which test images, the attack's key). Then it writes

- ``results.json``: every row's per-seed numbers (each with its config, seed,
  commit and device, from the row's own results.json) and their summaries;
- ``results.md``: the table laid out like the paper's, the paper's numbers
  beside the measured ones; each measured cell is ``mean [95% interval]``:
  Student t over seeds with two or more seeds, Wilson over the attacked
  images with one (the table says which);
- ``asr_vs_budget.png``: attack success rate against query budget, one curve
  per row (averaged over seeds);
- with ``suite.overhead``, the overhead table (the APR paper's Table 4):
  training time per epoch and inference time per image of every row relative
  to the first row, all measured in this one process on this device.
"""

from __future__ import annotations

import json
import pathlib
import re
import time

import numpy as np

from jaxpix import data, evaluate, experiment, overhead, paper, stats, train

# Table kinds: which metrics, and the paper's numbers by row name.
TABLES = {
  'apr_table1': dict(
    kind='defences', paper=paper.APR_TABLE1, title='APR paper, Table 1: defences on CIFAR-10'
  ),
  'apr_table2': dict(
    kind='defences',
    paper=paper.APR_TABLE2,
    title='APR paper, Table 2: defences on the ImageNet subset',
  ),
  'apr_table3': dict(
    kind='defences', paper=paper.APR_TABLE3, title='APR paper, Table 3: ablation on CIFAR-10'
  ),
  'autoencoder': dict(
    kind='autoencoder',
    paper=paper.AE_TABLE4,
    title='Autoencoder paper, Table 4: the defence on the model zoo',
  ),
}
DEFENCE_METRICS = (
  ('clean_accuracy', 'Clean Accuracy'),
  ('asr', 'Attack Success Rate'),
  ('robustness', 'Robustness'),
)
AE_METRICS = (
  ('asr_no_defence', 'ASR, no defence'),
  ('asr_adaptive', 'ASR after reconstruction (attacking the pipeline)'),
  ('asr_transfer', 'ASR after reconstruction (transfer)'),
  ('defence_rate', 'Defence rate'),
  ('performance_loss', 'Performance loss'),
)


def parse_rows(rows, size: str, only: str) -> list[tuple[str, str]]:
  """``('No Defence=cifar_baseline.py:{size}', ...)`` -> [(name, spec)], the
  ``{size}`` placeholder filled; ``only`` (comma-separated names) selects."""
  out = []
  for r in rows:
    name, eq, spec = r.partition('=')
    if not eq or not name.strip() or not spec.strip():
      raise ValueError(f"suite row {r!r} must read 'Row name=config.py:variants'")
    spec = spec.strip().replace('{size}', size)
    spec = re.sub(r'[:,]+$', '', spec.replace(':,', ':'))
    out.append((name.strip(), spec))
  names = [n for n, _ in out]
  if only:
    want = [s.strip() for s in only.split(',') if s.strip()]
    unknown = [w for w in want if w not in names]
    if unknown:
      raise ValueError(f'config.suite.only names unknown rows {unknown}; the rows are {names}')
    out = [r for r in out if r[0] in want]
  return out


def slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()


def row_config(spec: str, suite_cfg, seed: int):
  cfg = experiment.load_config(spec)
  experiment.apply_overrides(cfg, suite_cfg.set)
  cfg.seed = seed
  cfg.eval.seed = seed
  cfg.train.progress = cfg.eval.progress = suite_cfg.progress
  return cfg


def run_one(spec: str, suite_cfg, seed: int, root: pathlib.Path) -> dict:
  """Trains (or reuses) and evaluates one row at one seed; its results.json."""
  cfg = row_config(spec, suite_cfg, seed)
  tdir, edir = root / 'train', root / 'eval'
  t0 = time.perf_counter()
  train.train_and_evaluate(cfg, str(tdir))
  train_s = time.perf_counter() - t0
  cfg.mode, cfg.checkpoint = 'eval', str(tdir)
  res = evaluate.evaluate(cfg, str(edir))
  res['train_seconds_this_run'] = train_s
  res['spec'] = spec
  res['train_images_per_s'] = _train_rate(tdir / 'metrics.jsonl')
  return res


def _train_rate(path: pathlib.Path) -> float | None:
  """Median training images/s over the run's log windows."""
  if not path.exists():
    return None
  rates = [json.loads(ln).get('images_per_s') for ln in path.read_text().splitlines()]
  rates = [r for r in rates if r]
  return float(np.median(rates)) if rates else None


def _values(kind: str, res: dict) -> dict[str, tuple[float, tuple[int, int] | None]]:
  """A row-seed's metric -> (value, (successes, n) for a Wilson interval)."""
  if kind == 'defences':
    de = res['attacks']['de']
    n, k = de['attacks'], de['successes']
    return dict(
      clean_accuracy=(res['clean_accuracy'], (res['correctly_classified'], res['test_images'])),
      asr=(de['attack_success_rate'], (k, n)),
      robustness=(de['robustness'], (n - k, n)),
    )
  t = res['autoencoder_table4']
  out = {
    m: (t[m], tuple(t['counts'][m]) if m in t['counts'] else None) for m, _ in AE_METRICS if m in t
  }
  return out


def summarise_rows(kind: str, per_row: dict[str, list[dict]]) -> dict:
  rows = {}
  for name, results in per_row.items():
    vals = [_values(kind, r) for r in results]
    rows[name] = {}
    for m in vals[0]:
      v = [x[m][0] if x[m][0] is not None else float('nan') for x in vals]
      counts = [x[m][1] for x in vals] if vals[0][m][1] else None
      rows[name][m] = stats.summarise(v, counts, None if m == 'performance_loss' else (0, 1))
  return rows


def mean_curve(curves: list[dict]) -> dict:
  """Mean over seeds of ASR-vs-budget step functions, on the union of budgets."""
  grid = np.unique(np.concatenate([c['budget'] for c in curves]))
  vals = []
  for c in curves:
    b, a = np.asarray(c['budget']), np.asarray(c['asr'])
    pos = np.searchsorted(b, grid, side='right') - 1
    vals.append(np.where(pos >= 0, a[np.maximum(pos, 0)], 0.0))
  return dict(budget=grid.tolist(), asr=np.mean(vals, 0).tolist())


def measure_overhead(rows, suite_cfg, reference) -> dict:
  """Per row: seconds per training step and epoch, seconds per image at
  inference, and both relative to ``reference`` (the suite's first row, the
  undefended model, measured even when ``suite.only`` leaves it out); one
  process, one device. Distillation's training time includes its teacher's."""
  out = {}
  for name, spec in [reference] + [r for r in rows if r != reference]:
    cfg = row_config(spec, suite_cfg, 0)
    tr = overhead.train_step_time(cfg, steps=suite_cfg.overhead_steps)
    step_s = tr['seconds_per_step']
    teacher_s = None
    if cfg.defence.name == 'dd' and not cfg.defence.teacher:
      # Distillation trains its teacher first, for as many epochs, as part of
      # the defence: an epoch of the defence is a teacher epoch + a student epoch.
      teacher_cfg = train.sub_config(cfg, 'dd_teacher')
      teacher_s = overhead.train_step_time(teacher_cfg, steps=suite_cfg.overhead_steps)
      step_s += teacher_s['seconds_per_step']
      teacher_s = teacher_s['seconds_per_step']
    inf = overhead.inference_time(cfg)
    train_split, _, _ = data.load(cfg.data)
    per_epoch = step_s * (len(train_split) // cfg.train.batch_size)
    out[name] = dict(
      model=cfg.model.name,
      width=cfg.model.width,
      seconds_per_step=step_s,
      teacher_seconds_per_step=teacher_s,
      batch=tr['batch'],
      seconds_per_epoch=per_epoch,
      seconds_per_image=inf['seconds_per_image'],
    )
  ref = out[reference[0]]
  for o in out.values():
    o['reference'] = reference[0]
    o['train_relative'] = o['seconds_per_epoch'] / ref['seconds_per_epoch']
    o['inference_relative'] = o['seconds_per_image'] / ref['seconds_per_image']
  return out


def run(config, workdir: str) -> dict:
  scfg = config.suite
  if scfg.table not in TABLES:
    raise ValueError(f'config.suite.table must be one of {sorted(TABLES)}, got {scfg.table!r}')
  seeds = [int(s) for s in scfg.seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'config.suite.seeds must be distinct ints, got {scfg.seeds!r}')
  table = TABLES[scfg.table]
  rows = parse_rows(scfg.rows, scfg.size, scfg.only)
  reference = parse_rows(scfg.rows, scfg.size, '')[0]
  root = pathlib.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  per_row: dict[str, list[dict]] = {}
  for name, spec in rows:
    for seed in seeds:
      res = run_one(spec, scfg, seed, root / slug(name) / f'seed{seed}')
      per_row.setdefault(name, []).append(res)
  summary = summarise_rows(table['kind'], per_row)
  curves = {
    name: mean_curve([r['attacks']['de']['curve'] for r in rs]) for name, rs in per_row.items()
  }
  out = dict(
    suite=scfg.table,
    title=table['title'],
    size=scfg.size,
    seeds=seeds,
    overrides=scfg.set,
    root=str(root),
    **evaluate.provenance(),
    rows={
      name: dict(
        spec=spec,
        summary=summary[name],
        paper=table['paper'].get(name),
        workdirs=[str(root / slug(name) / f'seed{s}') for s in seeds],
        per_seed=[_per_seed(r) for r in per_row[name]],
      )
      for name, spec in rows
    },
    asr_curves=curves,
  )
  if scfg.overhead:
    out['overhead'] = measure_overhead(rows, scfg, reference)
  out['seconds_this_run'] = time.perf_counter() - t0
  from jaxpix import figures

  figures.asr_vs_budget(curves, root / 'asr_vs_budget.png', title=table['title'])
  evaluate.write_json(root / 'results.json', out)
  (root / 'results.md').write_text(
    markdown(json.loads((root / 'results.json').read_text()), table['kind'])
  )
  return out


def _per_seed(res: dict) -> dict:
  """What results.json keeps of one row-seed (the full record stays in its
  eval/results.json): the numbers, config, seed, commit, device, times."""
  keep = (
    'seed',
    'eval_seed',
    'commit',
    'device',
    'date',
    'checkpoint',
    'step',
    'spec',
    'test_images',
    'clean_accuracy',
    'correctly_classified',
    'num_images_requested',
    'num_images',
    'train_seconds_this_run',
    'train_images_per_s',
    'seconds_this_run',
    'autoencoder_table4',
    'note',
    'config',
    'figures',
  )
  out = {k: res[k] for k in keep if k in res}
  out['attacks'] = {
    n: {k: v for k, v in a.items() if k != 'curve'} for n, a in res['attacks'].items()
  }
  return out


def _rel(path: str, root: str) -> str:
  p = pathlib.Path(path)
  return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _cell(s: dict | None) -> str:
  return stats.fmt_percent(s) if s else 'n/a'


def markdown(res: dict, kind: str) -> str:
  """The table as the paper lays it out, with the paper's numbers beside."""
  rows = res['rows']
  first = next(iter(rows.values()))
  ps = first['per_seed'][0]
  ev = ps['config']['eval']
  kinds = sorted({m['interval'] for r in rows.values() for m in r['summary'].values()})
  lines = [
    f'# {res["title"]} (measured)',
    '',
    f'Size `{res["size"] or "full"}`, seeds {res["seeds"]}, overrides '
    f'`{res["overrides"] or "none"}`; commit `{res["commit"]}`; device {res["device"]}; '
    f'{res["date"]}; this run took {res["seconds_this_run"] / 60:.1f} min.',
    '',
    f'Attack: DE population {ev["popsize"]}, {ev["maxiter"]} generations, '
    f'{ev["pixels"]} pixel(s), `{ev["mode"]}` mode, on up to {ev["num_images"]} correctly '
    'classified test images per model. Cells: measured mean [95% interval: '
    f'{"; ".join(kinds)}]; "paper" = the number the paper reports.',
    '',
  ]
  metrics = DEFENCE_METRICS if kind == 'defences' else AE_METRICS
  head = '| Row | ' + ' | '.join(f'{label} | paper' for _, label in metrics) + ' |'
  lines += [head, '|---' * (1 + 2 * len(metrics)) + '|']
  for name, r in rows.items():
    p = r['paper']
    cells = []
    for j, (m, _) in enumerate(metrics):
      pv = (
        (p[j] if isinstance(p, list) else p.get({'asr_transfer': 'asr_after'}.get(m, m)))
        if p
        else None
      )
      cells += [_cell(r['summary'].get(m)), 'n/a' if pv is None else f'{100 * pv:.2f}%']
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  if kind == 'autoencoder':
    lines += [
      '',
      'Our performance loss is the clean accuracy the reconstruction costs '
      "(classifier minus pipeline, all test images); the paper's PL is a count "
      'it does not define (e.g. 131/977 for Pure CNN), quoted as printed. Its "ASR '
      'after reconstruction" is the transfer setting, quoted beside ours.',
    ]
  lines += [
    '',
    '| Row | config | seeds | attacked images per seed | train images/s | workdir |',
    '|---|---|---|---|---|---|',
  ]
  for name, r in rows.items():
    per = r['per_seed']
    rate = [p.get('train_images_per_s') for p in per]
    lines.append(
      f'| {name} | `{r["spec"]}` | {[p["seed"] for p in per]} | '
      f'{[p["num_images"] for p in per]} | '
      f'{", ".join("n/a" if x is None else f"{x:.0f}" for x in rate)} | '
      f'`{r["workdirs"][0]}` |'
    )
  if 'overhead' in res:
    ref = next(iter(res['overhead'].values()))['reference']
    lines += [
      '',
      f'## Overhead (one process, one device; relative to {ref})',
      '',
      '| Row | train s/epoch | training time | inference ms/image | inference time |',
      '|---|---|---|---|---|',
    ]
    for name, o in res['overhead'].items():
      label = f'{name} (teacher + student)' if o.get('teacher_seconds_per_step') else name
      lines.append(
        f'| {label} | {o["seconds_per_epoch"]:.1f} | {o["train_relative"]:.2f}x | '
        f'{1e3 * o["seconds_per_image"]:.3f} | {o["inference_relative"]:.2f}x |'
      )
    lines += [
      '',
      "The APR paper's Table 4 (APR vs no defence): training time +27.3% "
      '(ResNet-18), +31.5% (VGG-16); inference time +8.6%, +9.2%.',
    ]
  lines += [
    '',
    '![ASR against query budget](asr_vs_budget.png)',
    '',
    'Per row (seed of the first workdir): '
    + '; '.join(
      f'{name}: '
      + ', '.join(
        f'[{f}]({_rel(r["workdirs"][0], res["root"])}/eval/{f})'
        for f in r['per_seed'][0].get('figures', [])
      )
      for name, r in rows.items()
    ),
  ]
  return '\n'.join(lines) + '\n'
