"""Paired tests between two evaluations attacked on the same fixed test images.

    python -m jaxpix.repro.paired_tests A/results.json B/results.json [--attack de]
    python -m jaxpix.repro.paired_tests A/results.json B/results.json --budget-a 12400
    python -m jaxpix.repro.paired_tests --targeted A/results.json [B/results.json]

Prints two exact McNemar tests (``jaxpix.stats.mcnemar``) of row A against
row B, both over the same images:

- **robust**: per fixed image, "correctly classified and not fooled" (the
  RobustBench robust accuracy; what the suites' own tables test). It mixes
  two effects: a defence that costs clean accuracy loses images here even if
  the attack never fools it.
- **fooled given correct**: over the images *both* rows classify correctly,
  "fooled by the attack" (the papers' attack success rate, made paired). It
  isolates the attack's success from the clean accuracy a defence costs.

With ``--budget-a N`` (or ``--budget-b N``), row A (B) counts an image as
fooled only where its log records the success within N model evaluations:
the outcome of a smaller budget read off the same run (DE at population P
and G generations spends at most P * (G + 1)), so one 400 x 100 run can be
tested against itself at 400 x 30 (A and B the same file).

With ``--targeted``, one evaluation run with ``eval.targeted``: over the
images it attacked towards every other class, Su et al.'s "fooled towards at
least one class" against the untargeted attack's "fooled", image by image;
with two, that rate of row A against row B over the images both targeted
attacks covered.

All read the evaluations' results.json (written by eval mode, with
``eval.image_set='fixed'``); docs/results.md quotes what this prints.
"""

from __future__ import annotations

import argparse
import json
import pathlib

from jaxpix import records, stats
from jaxpix.repro import suite


def _fixed(a: dict, b: dict) -> list[int]:
  for name, r in (('A', a), ('B', b)):
    if 'fixed_images' not in r:
      raise ValueError(
        f'results.json {name} has no fixed_images: evaluate with '
        "--config.eval.image_set='fixed' so that both rows see the same images"
      )
  if a['fixed_images'] != b['fixed_images']:
    raise ValueError(
      'the two evaluations were attacked on different fixed image sets '
      '(eval.num_images or eval.seed differ): a paired test needs the same images'
    )
  return a['fixed_images']


def robust(a: dict, b: dict) -> dict:
  """McNemar on "correct and not fooled by DE" over the fixed images: the
  suites' own test (``jaxpix.repro.suite.paired_tests``), for two results.json."""
  _fixed(a, b)
  return suite.paired_tests({'A': [a], 'B': [b]}, ['B'])['A']['B'][0]


def fooled(results: dict, log: pathlib.Path, budget: int | None = None) -> set[int]:
  """Test-set indices the attack fooled, from its per-image log; with
  ``budget``, only those fooled within that many model evaluations."""
  out = {}
  for line in records.read_text(log).splitlines():
    rec = json.loads(line)
    if 'index' in rec:
      out[rec['index']] = bool(rec['success']) and (budget is None or rec['queries'] <= budget)
  missing = set(results['images']) - set(out)
  if missing:
    raise ValueError(f'{log} lacks {len(missing)} attacked images (the run did not finish)')
  return {i for i, s in out.items() if s}


def at_budget(results: dict, log: pathlib.Path, budget: int) -> dict:
  """``results`` with its robust images re-derived for an attack stopped at
  ``budget`` model evaluations: correct and not fooled within the budget."""
  max_budget = results['attacks'][log.stem.removeprefix('attack_')]['max_budget']
  if budget > max_budget:
    raise ValueError(
      f'budget {budget} exceeds the {max_budget} evaluations the run spent per image: '
      'a log cannot tell what a larger budget would have fooled'
    )
  hit = fooled(results, log, budget)
  return dict(results, robust_images=sorted(set(results['images']) - hit))


def fooled_given_correct(a: dict, b: dict, fooled_a: set[int], fooled_b: set[int]) -> dict:
  """McNemar on "fooled" over the fixed images both rows classify correctly."""
  _fixed(a, b)
  both = sorted(set(a['images']) & set(b['images']))
  t = stats.mcnemar([i in fooled_a for i in both], [i in fooled_b for i in both])
  return dict(
    t,
    both=len(both),
    fooled_a=sum(i in fooled_a for i in both),
    fooled_b=sum(i in fooled_b for i in both),
  )


def fooled_any_target(results: dict, folder: pathlib.Path, attack: str = 'de') -> dict[int, bool]:
  """Test-set index -> fooled towards at least one class, over the images of
  the targeted attack's log (every (image, target) pair finished)."""
  by_image: dict[int, bool] = {}
  for line in records.read_text(folder / f'attack_{attack}_targeted.jsonl').splitlines():
    rec = json.loads(line)
    if 'index' in rec:
      by_image[rec['index']] = by_image.get(rec['index'], False) or bool(rec['success'])
  want = results['attacks'][f'{attack}_targeted']['images']
  if len(by_image) != want:
    raise ValueError(f'the targeted log holds {len(by_image)} of {want} images (unfinished)')
  return by_image


def targeted_vs_untargeted(results: dict, folder: pathlib.Path, attack: str = 'de') -> dict:
  """Over the images of the targeted attack's log, McNemar on "fooled towards
  at least one class" (targeted) against "fooled" (untargeted ``attack``)."""
  by_image = fooled_any_target(results, folder, attack)
  untargeted = fooled(results, folder / f'attack_{attack}.jsonl')
  images = sorted(by_image)
  t = stats.mcnemar([by_image[i] for i in images], [i in untargeted for i in images])
  return dict(
    t,
    images=len(images),
    targeted=sum(by_image.values()),
    untargeted=sum(i in untargeted for i in images),
  )


def targeted_pair(
  a: dict, b: dict, folder_a: pathlib.Path, folder_b: pathlib.Path, attack: str = 'de'
) -> dict:
  """McNemar on "fooled towards at least one class", row A against row B, over
  the images both targeted attacks covered (each row takes the first images
  of the fixed set *it* classifies correctly, so the sets overlap, mostly)."""
  _fixed(a, b)
  ta, tb = fooled_any_target(a, folder_a, attack), fooled_any_target(b, folder_b, attack)
  both = sorted(set(ta) & set(tb))
  t = stats.mcnemar([ta[i] for i in both], [tb[i] for i in both])
  return dict(
    t, both=len(both), fooled_a=sum(ta[i] for i in both), fooled_b=sum(tb[i] for i in both)
  )


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('a', type=pathlib.Path, help="row A's results.json")
  ap.add_argument('b', type=pathlib.Path, nargs='?', help="row B's results.json")
  ap.add_argument(
    '--attack',
    default=None,
    help="which attack log (attack_<name>.jsonl); default: each row's main attack (DE, or "
    "the row's own, as randomized ablation's)",
  )
  ap.add_argument(
    '--certified-a',
    action='store_true',
    help="row A's certified images (a lower bound) in place of its robust ones",
  )
  for side in 'ab':
    ap.add_argument(
      f'--budget-{side}',
      type=int,
      help=f'row {side.upper()}: count only successes within this many evaluations',
    )
  ap.add_argument(
    '--targeted',
    action='store_true',
    help="A's targeted attack against its untargeted one (or B's targeted attack)",
  )
  args = ap.parse_args(argv)
  if args.targeted and args.b is not None:
    a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
    t = targeted_pair(a, b, args.a.parent, args.b.parent, args.attack or 'de')
    print(
      f'fooled towards at least one class, over the {t["both"]} images both targeted '
      f'attacks covered: A {t["fooled_a"]}, B {t["fooled_b"]}; only A {t["only_a"]}, '
      f'only B {t["only_b"]}, p = {t["p"]:.2g}'
    )
    return
  if args.targeted:
    t = targeted_vs_untargeted(json.loads(args.a.read_text()), args.a.parent, args.attack or 'de')
    print(
      f'over the {t["images"]} images attacked towards every other class: fooled towards '
      f'at least one {t["targeted"]}, fooled untargeted {t["untargeted"]}; only targeted '
      f'{t["only_a"]}, only untargeted {t["only_b"]}, p = {t["p"]:.2g}'
    )
    return
  if args.b is None:
    ap.error('give two results.json (or --targeted and one)')
  a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
  name_a, name_b = (args.attack or r.get('primary_attack', 'de') for r in (a, b))
  log_a = args.a.parent / f'attack_{name_a}.jsonl'
  log_b = args.b.parent / f'attack_{name_b}.jsonl'
  if args.certified_a:
    if 'certified_images' not in a:
      ap.error(f'{args.a} has no certified_images (a certified evaluation writes them)')
    a = dict(a, robust_images=a['certified_images'])
  if args.budget_a:
    a = at_budget(a, log_a, args.budget_a)
  if args.budget_b:
    b = at_budget(b, log_b, args.budget_b)
  r = robust(a, b)
  what = 'certified (A) against robust (B)' if args.certified_a else 'robust'
  print(
    f'{what} over {len(a["fixed_images"])} fixed images: A {len(a["robust_images"])}, '
    f'B {len(b["robust_images"])}; only A {r["only_a"]}, only B {r["only_b"]}, p = {r["p"]:.2g}'
  )
  fa, fb = fooled(a, log_a, args.budget_a), fooled(b, log_b, args.budget_b)
  c = fooled_given_correct(a, b, fa, fb)
  n = c['both']
  print(
    f'fooled ({name_a} / {name_b}), over the {n} images both classify correctly: '
    f'A {c["fooled_a"]} ({100 * c["fooled_a"] / n:.1f}%), B {c["fooled_b"]} '
    f'({100 * c["fooled_b"] / n:.1f}%); only A {c["only_a"]}, only B {c["only_b"]}, '
    f'p = {c["p"]:.2g}'
  )


if __name__ == '__main__':
  main()
