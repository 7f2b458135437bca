"""Reports: the markdown table and the figures of an evaluation (a suite's
tables, beside the papers' numbers, are jaxpix.repro.tables).

Pure functions of the results dicts (and, for figures, the images they were
measured on); nothing here measures anything.
"""

from __future__ import annotations

import pathlib

import numpy as np


def evaluation_figures(
  results: dict, out: pathlib.Path, gallery=None, attention=None, class_names=None
) -> list:
  """``asr_vs_budget.png``; with ``gallery`` = (AttackResult, its clean images,
  how many) the adversarial gallery; with ``attention`` = (model, images,
  labels) the attention maps; captions from ``class_names`` (else class
  indices). Returns the file names."""
  from jaxpix import figures

  figures.asr_vs_budget(
    {name: s['curve'] for name, s in results['attacks'].items()}, out / 'asr_vs_budget.png'
  )
  made = ['asr_vs_budget.png']
  if gallery is not None:
    res, images, n = gallery
    figures.adversarial_gallery(res, images, out / 'gallery.png', n=n, class_names=class_names)
    made.append('gallery.png')
  if attention is not None:
    figures.attention_maps(*attention, out / 'attention_maps.png', class_names=class_names)
    made.append('attention_maps.png')
  return made


def _num(v, spec: str) -> str:
  return 'n/a' if v is None or not np.isfinite(v) else format(v, spec)


def _which_images(results: dict) -> str:
  """The attacked images, as the run chose them (config.eval.image_set)."""
  split, seed = results['test_split'], results['eval_seed']
  if 'fixed_images' in results:
    return (
      f'the {results["num_images"]} correctly classified of {len(results["fixed_images"])} '
      f'{split} images fixed with seed {seed} before any model saw them'
    )
  return f'{results["num_images"]} correctly classified {split} images drawn with seed {seed}'


def _attack_runs(results: dict) -> list[str]:
  """Which runs attacked, where that is not this one alone: a resumed
  evaluation reads the records of earlier runs (a killed one, or a finished
  one that a resumed suite re-reads) and writes the numbers anew."""
  this = (results['commit'], results['date'])
  runs = {n: a.get('sessions', []) for n, a in results['attacks'].items()}
  if all([(s['commit'], s['date']) for s in ss] == [this] for ss in runs.values()):
    return []
  fmt = lambda ss: ', '.join(f'{s["date"]} (`{s["commit"][:12]}`)' for s in ss) or 'none'
  return [
    'The attacks ran in these runs (this one wrote the numbers from their '
    'records): ' + '; '.join(f'{n}: {fmt(ss)}' for n, ss in runs.items()) + '.',
    '',
  ]


def evaluation_markdown(results: dict) -> str:
  """results.md: the evaluation's numbers, each with its 95% interval."""
  cfg = results['config']
  pct = lambda v: 'n/a' if v is None or not np.isfinite(v) else f'{100 * v:.2f}%'
  ci = lambda lo_hi: f'[{100 * lo_hi[0]:.1f}, {100 * lo_hi[1]:.1f}]'
  lines = [
    f'# Evaluation: {cfg["model"]["name"]} (width {cfg["model"]["width"]}), defence '
    f'`{cfg["defence"]["name"]}`',
    '',
    f'Checkpoint `{results["checkpoint"]}` at step {results["step"]}; commit '
    f'`{results["commit"]}`; device {results["device"]}; {results["date"]}.',
    '',
    *_attack_runs(results),
    f'Attack protocol: {_which_images(results)}; DE population {cfg["eval"]["popsize"]}, '
    f'{cfg["eval"]["maxiter"]} generations, {cfg["eval"]["pixels"]} pixel(s), '
    f'`{cfg["eval"]["mode"]}` mode, strategy `{cfg["eval"]["strategy"]}`. Intervals: Wilson '
    '95% over images (one seed).',
    '',
  ]
  if 'note' in results:
    lines += [f'Note: {results["note"]}.', '']
  notes = []
  lines += [
    '| Metric | Value | 95% CI |',
    '|---|---|---|',
    f'| Clean accuracy ({results["test_images"]} images) | '
    f'{pct(results["clean_accuracy"])} | {ci(results["clean_accuracy_wilson95"])} |',
  ]
  if 'robust_accuracy' in results:
    lines.append(
      f'| Robust accuracy: correct and not fooled by de, over the '
      f'{len(results["fixed_images"])} fixed images | {pct(results["robust_accuracy"])} | '
      f'{ci(results["robust_accuracy_wilson95"])} |'
    )
  if 'robust_accuracy_all' in results:
    lines.append(
      f'| Robust accuracy: correct and not fooled by any of '
      f'{", ".join(results["robust_attacks"])}, over the {len(results["fixed_images"])} fixed '
      f'images | {pct(results["robust_accuracy_all"])} | '
      f'{ci(results["robust_accuracy_all_wilson95"])} |'
    )
  for name, s in results['attacks'].items():
    lines += [
      f'| {name}: attack success rate ({s["successes"]}/{s["attacks"]}) | '
      f'{pct(s["attack_success_rate"])} | {ci(s["asr_wilson95"])} |',
      f'| {name}: robustness | {pct(s["robustness"])} | '
      f'{ci([1 - s["asr_wilson95"][1], 1 - s["asr_wilson95"][0]])} |',
      f'| {name}: mean queries (all / successful) | {_num(s["mean_queries"], ".0f")} / '
      f'{_num(s["mean_queries_successful"], ".0f")} | |',
      f'| {name}: mean confidence of successful adversarial images | '
      f'{_num(s["mean_confidence_successful"], ".3f")} | |',
    ]
    if 'images_fooled_any_target' in s:
      lines.append(
        f'| {name}: images fooled towards at least one target | '
        f'{pct(s["images_fooled_any_target"])} | {ci(s["any_target_wilson95"])} |'
      )
      notes.append(
        f'{name}: the per-attack interval treats the targets of one image as '
        'independent, so it is too narrow; the per-image one is not.'
      )
  if notes:
    lines += [''] + notes
  if 'autoencoder_table4' in results:
    t = results['autoencoder_table4']
    lines += ['', '| Table 4 metric | Value |', '|---|---|'] + [
      f'| {k} | {pct(v)} |' for k, v in t.items() if k not in ('counts', 'paired')
    ]
    if 'paired' in t:
      lines += ['', PAIRED_AE_NOTE, '', PAIRED_AE_HEAD, '|---|---|---|---|---|'] + [
        paired_ae_line(k, m) for k, m in t['paired'].items()
      ]
  if results.get('figures'):
    lines += [''] + [f'![{f}]({f})' for f in results['figures']]
  return '\n'.join(lines) + '\n'


PAIRED_AE_NOTE = (
  'Paired tests (not in the paper): exact McNemar test over the attacked images of '
  '"classified correctly after the attack", the autoencoder pipeline against the bare '
  "classifier. transfer: the bare attack's images fed to the pipeline (images undone "
  'against images the reconstruction breaks); adaptive: the attack run on the pipeline.'
)
PAIRED_AE_HEAD = '| Attack on the pipeline | correct only behind the autoencoder | correct only bare | images | p |'


def paired_ae_line(kind: str, m: dict, row: str = '') -> str:
  head = f'| {row} | {kind}' if row else f'| {kind}'
  return f'{head} | {m["only_a"]} | {m["only_b"]} | {m["n"]} | {m["p"]:.3g} |'
