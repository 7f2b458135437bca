"""Experiment suites (``config.mode == 'suite'``): a paper's table, measured.

    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --workdir workdir/table1_cpu
    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --config.suite.seeds='(0, 1, 2)' ...

A suite names rows (``jaxpix.repro.configs.rows.row``: a name, a config and its
variants, field overrides), seeds and overrides for every row.
For every row and seed it trains into ``<workdir>/<row>/seed<s>/train`` (a
finished run is reused, an interrupted one resumed) and evaluates that
checkpoint into ``.../eval`` (resumable, see jaxpix.evaluation); the seed sets
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

from jaxpix import build, configs, evaluation, records, stats, train
from jaxpix.evaluation import protocol as proto
from jaxpix.repro import overhead, paper, tables


def select_rows(rows, only: str) -> list:
  """The rows named in ``only`` (comma-separated; all when empty)."""
  if not only:
    return list(rows)
  names = [r.name for r in rows]
  want = [s.strip() for s in only.split(',') if s.strip()]
  unknown = [w for w in want if w not in names]
  if unknown:
    raise ValueError(f'config.suite.only names unknown rows {unknown}; the rows are {names}')
  return [r for r in rows if r.name in want]


def spec_of(row, suite_set: str = '') -> str:
  """A row as one line: ``config:variants field=value ...``, each field at
  the value the row ran with (``suite_set``, the suite's overrides, wins)."""
  final = {key: value for _, key, value in configs.parse_overrides(suite_set)}
  over = ' '.join(f'{k}={final.get(k, v)!r}' for k, v in row.overrides)
  return f'{row.config}:{",".join(row.variants)}' + (f' {over}' if over else '')


def slug(name: str) -> str:
  return re.sub(r'[^A-Za-z0-9]+', '_', name).strip('_').lower()


def row_config(row, suite_cfg, seed: int):
  """The config of ``row`` at ``seed``: its config module at its variants and
  the suite's size, its overrides, then the suite's."""
  cfg = configs.load(f'{row.config}:' + ','.join(sorted({*suite_cfg.size, *row.variants})))
  for field, value in row.overrides:
    configs.set_field(cfg, field, value)
  configs.apply_overrides(cfg, suite_cfg.set)
  cfg.seed = seed
  cfg.eval.seed = seed
  cfg.train.progress = cfg.eval.progress = suite_cfg.progress
  return cfg


def check_rows(suite_cfg, rows, seeds) -> None:
  """Before any row trains: no two rows share a folder (``slug``), and every
  row's config builds with its overrides and passes the checks training and
  eval mode make; an error names the row."""
  folders: dict[str, str] = {}
  for row in suite_cfg.rows:
    if not slug(row.name):
      raise ValueError(f'suite row {row.name!r} needs a letter or digit in its name (its folder)')
    other = folders.setdefault(slug(row.name), row.name)
    if other != row.name:
      raise ValueError(
        f'suite rows {other!r} and {row.name!r} would share the folder {slug(row.name)!r} '
        '(row folders ignore case and punctuation): rename one'
      )
  for row in rows:
    for seed in seeds:
      try:
        cfg = row_config(row, suite_cfg, seed)
        build.check_train_config(cfg)
        proto.check_eval_config(cfg.eval)
      except (ValueError, KeyError, FileNotFoundError) as e:
        raise ValueError(f'suite row {row.name!r} (seed {seed}): {e}') from None


def run_one(row, suite_cfg, seed: int, root: pathlib.Path) -> dict:
  """Trains (or reuses) and evaluates one row at one seed; its results.json."""
  cfg = row_config(row, suite_cfg, seed)
  tdir, edir = root / 'train', root / 'eval'
  owner = suite_cfg.get('shared_autoencoder', '')
  if owner and owner != row.name and cfg.defence.name == 'autoencoder':
    # The owner row trains (or has trained) the autoencoder this row reuses.
    shared = root.parent.parent / slug(owner) / f'seed{seed}' / 'train'
    (owner_row,) = [r for r in suite_cfg.rows if r.name == owner]
    train.train_and_evaluate(row_config(owner_row, suite_cfg, seed), str(shared))
    cfg.defence.autoencoder = str(shared)
  t0 = time.perf_counter()
  train.train_and_evaluate(cfg, str(tdir))
  train_s = time.perf_counter() - t0
  cfg.mode, cfg.checkpoint = 'eval', str(tdir)
  res = evaluation.evaluate(cfg, str(edir))
  res['train_seconds_this_run'] = train_s
  res['spec'] = spec_of(row, suite_cfg.set)
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
    # The row's main attack: DE (the papers'), or the attack built for a row
    # that is not one classifier (randomized ablation's smoothed classifier).
    de = res['attacks'][res.get('primary_attack', 'de')]
    n, k = de['attacks'], de['successes']
    out = dict(
      clean_accuracy=(res['clean_accuracy'], (res['correctly_classified'], res['test_images'])),
      asr=(de['attack_success_rate'], (k, n)),
      robustness=(de['robustness'], (n - k, n)),
    )
    if 'robust_accuracy' in res:  # eval.image_set = 'fixed': paired across rows
      robust, fixed = len(res['robust_images']), len(res['fixed_images'])
      out['robust_accuracy'] = (res['robust_accuracy'], (robust, fixed))
    if 'robust_accuracy_all' in res:  # and not fooled by the other attacks either
      worst = len(res['robust_images_all'])
      out['robust_accuracy_all'] = (res['robust_accuracy_all'], (worst, fixed))
    # eval.targeted: Su et al.'s rate, the images fooled towards >= 1 other class
    targeted = res['attacks'].get('de_targeted')
    if targeted and targeted['images']:
      ni = targeted['images']
      ki = round(targeted['images_fooled_any_target'] * ni)
      out['targeted_any'] = (targeted['images_fooled_any_target'], (ki, ni))
    return out
  t = res['autoencoder_table4']
  out = {
    m: (t[m], tuple(t['counts'][m]) if m in t['counts'] else None)
    for m, _ in paper.AE_METRICS
    if m in t
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
      rows[name][m] = stats.summarise(v, counts, None if m == 'clean_accuracy_cost' else (0, 1))
  return rows


def paired_tests(per_row: dict[str, list[dict]], against: list[str]) -> dict:
  """Exact McNemar tests of every row's per-image robust outcomes against
  each row in ``against`` that exists, seed by seed, where the rows were
  attacked on the same fixed image set (eval.image_set = 'fixed')."""
  out = {}
  for ref in against:
    if ref not in per_row:
      continue
    for name, results in per_row.items():
      if name == ref:
        continue
      tests = []
      for a, b in zip(results, per_row[ref], strict=True):
        if 'fixed_images' not in a or a.get('fixed_images') != b.get('fixed_images'):
          continue
        fixed = a['fixed_images']
        ra, rb = set(a['robust_images']), set(b['robust_images'])
        t = stats.mcnemar([i in ra for i in fixed], [i in rb for i in fixed])
        tests.append(dict(seed=a['seed'], **t))
      if tests:
        out.setdefault(name, {})[ref] = tests
  return out


def mean_curve(curves: list[dict]) -> dict:
  """Mean over seeds of ASR-vs-budget step functions, on the union of budgets."""
  grid = np.unique(np.concatenate([c['budget'] for c in curves]))
  vals = []
  for c in curves:
    b, a = np.asarray(c['budget']), np.asarray(c['asr'])
    pos = np.searchsorted(b, grid, side='right') - 1
    vals.append(np.where(pos >= 0, a[np.maximum(pos, 0)], 0.0))
  return dict(budget=grid.tolist(), asr=np.mean(vals, 0).tolist())


def run(config, workdir: str) -> dict:
  scfg = config.suite
  if scfg.table not in paper.TABLES:
    raise ValueError(
      f'config.suite.table must be one of {sorted(paper.TABLES)}, got {scfg.table!r}'
    )
  seeds = [int(s) for s in scfg.seeds]
  if not seeds or len(set(seeds)) != len(seeds):
    raise ValueError(f'config.suite.seeds must be distinct ints, got {scfg.seeds!r}')
  table = paper.TABLES[scfg.table]
  rows = select_rows(scfg.rows, scfg.only)
  reference = scfg.rows[0]
  if scfg.get('shared_autoencoder', '') not in ('', *(r.name for r in scfg.rows)):
    raise ValueError(
      f'config.suite.shared_autoencoder={scfg.shared_autoencoder!r} is not a row; the rows '
      f'are {[r.name for r in scfg.rows]}'
    )
  check_rows(scfg, rows, seeds)
  root = records.check_workdir(workdir)
  root.mkdir(parents=True, exist_ok=True)
  t0 = time.perf_counter()
  per_row: dict[str, list[dict]] = {}
  for row in rows:
    for seed in seeds:
      res = run_one(row, scfg, seed, root / slug(row.name) / f'seed{seed}')
      per_row.setdefault(row.name, []).append(res)
  summary = summarise_rows(table['kind'], per_row)
  paired = (
    paired_tests(per_row, [reference.name, *paper.APR_ROWS]) if table['kind'] == 'defences' else {}
  )
  curves = {
    name: mean_curve([r['attacks'][r.get('primary_attack', 'de')]['curve'] for r in rs])
    for name, rs in per_row.items()
  }
  out = dict(
    suite=scfg.table,
    title=table['title'],
    size=','.join(scfg.size),
    seeds=seeds,
    overrides=scfg.set,
    root=str(root),
    **records.provenance(),
    rows={
      row.name: dict(
        spec=spec_of(row, scfg.set),
        summary=summary[row.name],
        paper=table['paper'].get(row.name),
        workdirs=[str(root / slug(row.name) / f'seed{s}') for s in seeds],
        per_seed=[_per_seed(r) for r in per_row[row.name]],
        mcnemar=paired.get(row.name, {}),
      )
      for row in rows
    },
    asr_curves=curves,
  )
  if scfg.overhead:
    # The first row is the reference (the undefended model), measured even
    # when suite.only leaves it out.
    measured = [reference] + [r for r in rows if r.name != reference.name]
    out['overhead'] = overhead.table(
      [(r.name, row_config(r, scfg, 0)) for r in measured], scfg.overhead_steps
    )
  out['seconds_this_run'] = time.perf_counter() - t0
  from jaxpix import figures

  figures.asr_vs_budget(curves, root / 'asr_vs_budget.png', title=table['title'])
  if records.writer():
    records.write_json(root / 'results.json', out)
    (root / 'results.md').write_text(
      tables.suite_markdown(json.loads((root / 'results.json').read_text()), table['kind'])
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
    'robust_accuracy',
    'robust_accuracy_wilson95',
    'robust_attacks',
    'robust_accuracy_all',
    'robust_accuracy_all_wilson95',
    'primary_attack',
    'smoothing',
    'certified_accuracy',
    'certified_accuracy_wilson95',
    'note',
    'config',
    'figures',
  )
  out = {k: res[k] for k in keep if k in res}
  out['attacks'] = {
    n: {k: v for k, v in a.items() if k != 'curve'} for n, a in res['attacks'].items()
  }
  return out
