"""A suite's markdown: the paper's table as the paper lays it out, measured,
with the paper's numbers beside (the evaluation's own report is
jaxpix.report)."""

from __future__ import annotations

import pathlib

from jaxpix import report, stats
from jaxpix.repro import paper


def _rel(path: str, root: str) -> str:
  p = pathlib.Path(path)
  return str(p.relative_to(root)) if p.is_relative_to(root) else str(p)


def _cell(s: dict | None) -> str:
  return stats.fmt_percent(s) if s else 'n/a'


def suite_markdown(res: dict, kind: str) -> str:
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
  for name, r in rows.items():  # a row attacked otherwise (a smoothed classifier)
    seed = r['per_seed'][0]
    if seed.get('primary_attack', 'de') != 'de':
      lines += [
        f'{name}: attacked by `{seed["primary_attack"]}` instead (its attack success rate '
        "and robust accuracy below are that attack's), on its correctly classified fixed "
        f'images; certified accuracy {100 * seed["certified_accuracy"]:.1f}% of the '
        f'{ev["num_images"]} fixed images (jaxpix.evaluation.smoothed).',
        '',
      ]
  metrics = paper.DEFENCE_METRICS if kind == 'defences' else paper.AE_METRICS
  # A metric no row has (robust accuracy without a fixed image set) is left out.
  metrics = [(m, label) for m, label in metrics if any(m in r['summary'] for r in rows.values())]
  head = '| Row | ' + ' | '.join(f'{label} | paper' for _, label in metrics) + ' |'
  lines += [head, '|---' * (1 + 2 * len(metrics)) + '|']
  for name, r in rows.items():
    p = r['paper']
    cells = []
    for m, _ in metrics:
      pv = (
        (
          dict(zip([k for k, _ in paper.DEFENCE_METRICS], p, strict=False)).get(m)
          if isinstance(p, list)
          else p.get({'asr_transfer': 'asr_after'}.get(m, m))
        )
        if p
        else None
      )
      cells += [_cell(r['summary'].get(m)), 'n/a' if pv is None else f'{100 * pv:.2f}%']
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  if kind == 'autoencoder':
    lines += [
      '',
      "Definitions (jaxpix/defences/autoencoder.py, derived from the paper's counts): "
      'N attacked images, every chosen test image the bare classifier gets right; '
      'ASR after reconstruction (transfer) = fooled and still misclassified by the '
      'pipeline / N; defence rate = fooled and then classified correctly / fooled; '
      'performance loss = misclassified by the pipeline though not fooled / (N - '
      'ASR-after-reconstruction count). Attacking the pipeline (adaptive) and the clean '
      'accuracy cost are not in the paper.',
    ]
  ae_tests = [
    (name, p['seed'], p['autoencoder_table4']['paired'])
    for name, r in rows.items()
    for p in r['per_seed']
    if 'paired' in p.get('autoencoder_table4', {})
  ]
  if ae_tests:
    lines += [
      '',
      report.PAIRED_AE_NOTE,
      '',
      '| Row | seed ' + report.PAIRED_AE_HEAD,
      '|---|---|---|---|---|---|---|',
    ]
    lines += [
      report.paired_ae_line(kind_, m, f'{name} | {seed}')
      for name, seed, t in ae_tests
      for kind_, m in t.items()
    ]
  tests = [(name, ref, t) for name, r in rows.items() for ref, t in r.get('mcnemar', {}).items()]
  if tests:
    lines += [
      '',
      'Paired tests: every row was attacked on the same fixed test images. Exact McNemar '
      'test of the per-image robust outcomes (correct and not fooled), per seed: images '
      'robust only under the row / only under the reference, and the two-sided p-value.',
      '',
      '| Row | against | seed | robust only here | robust only there | p |',
      '|---|---|---|---|---|---|',
    ]
    for name, ref, ts in tests:
      for t in ts:
        lines.append(
          f'| {name} | {ref} | {t["seed"]} | {t["only_a"]} | {t["only_b"]} | {t["p"]:.3g} |'
        )
  lines += [
    '',
    '| Row | config | model (width) | seeds | attacked images per seed | train images/s | workdir |',
    '|---|---|---|---|---|---|---|',
  ]
  for name, r in rows.items():
    per = r['per_seed']
    rate = [p.get('train_images_per_s') for p in per]
    # The model a row ran, as its config resolved it (a `:cpu` variant may
    # swap one: the autoencoder suite's "DenseNet" is DenseNet-BC-40 there).
    model = per[0]['config']['model']
    lines.append(
      f'| {name} | `{r["spec"]}` | {model["name"]} ({model["width"]:g}) | '
      f'{[p["seed"] for p in per]} | '
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
      "The APR paper's Table 4 (APR vs no defence): "
      + '; '.join(
        f'{model}: training time +{100 * t:.1f}%, inference time +{100 * i:.1f}%'
        for model, (t, i) in paper.APR_TABLE4.items()
      )
      + '.',
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
