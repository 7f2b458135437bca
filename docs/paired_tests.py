"""Paired tests between two evaluations attacked on the same fixed test images.

    python docs/paired_tests.py A/results.json B/results.json [--attack de]

Prints two exact McNemar tests (``jaxpix.stats.mcnemar``) of row A against
row B, both over the same images:

- **robust**: per fixed image, "correctly classified and not fooled" (the
  RobustBench robust accuracy; what the suites' own tables test). It mixes
  two effects: a defence that costs clean accuracy loses images here even if
  the attack never fools it.
- **fooled given correct**: over the images *both* rows classify correctly,
  "fooled by the attack" (the papers' attack success rate, made paired). It
  isolates the attack's success from the clean accuracy a defence costs.

Both read the evaluations' results.json (written by eval mode, with
``eval.image_set='fixed'``); docs/results.md quotes what this prints.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
from jaxpix import stats, suite  # noqa: E402


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
  suites' own test (``jaxpix.suite.paired_tests``), for two results.json."""
  _fixed(a, b)
  return suite.paired_tests({'A': [a], 'B': [b]}, ['B'])['A']['B'][0]


def fooled(results: dict, log: pathlib.Path) -> set[int]:
  """Test-set indices the attack fooled, from its per-image log."""
  out = {}
  for line in log.read_text().splitlines():
    rec = json.loads(line)
    if 'index' in rec:
      out[rec['index']] = bool(rec['success'])
  missing = set(results['images']) - set(out)
  if missing:
    raise ValueError(f'{log} lacks {len(missing)} attacked images (the run did not finish)')
  return {i for i, s in out.items() if s}


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


def main(argv=None) -> None:
  ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  ap.add_argument('a', type=pathlib.Path, help="row A's results.json")
  ap.add_argument('b', type=pathlib.Path, help="row B's results.json")
  ap.add_argument('--attack', default='de', help='which attack log (attack_<name>.jsonl)')
  args = ap.parse_args(argv)
  a, b = (json.loads(p.read_text()) for p in (args.a, args.b))
  r = robust(a, b)
  print(
    f'robust over {len(a["fixed_images"])} fixed images: A {len(a["robust_images"])}, '
    f'B {len(b["robust_images"])}; only A {r["only_a"]}, only B {r["only_b"]}, p = {r["p"]:.2g}'
  )
  fa = fooled(a, args.a.parent / f'attack_{args.attack}.jsonl')
  fb = fooled(b, args.b.parent / f'attack_{args.attack}.jsonl')
  c = fooled_given_correct(a, b, fa, fb)
  n = c['both']
  print(
    f'fooled by {args.attack}, over the {n} images both classify correctly: '
    f'A {c["fooled_a"]} ({100 * c["fooled_a"] / n:.1f}%), B {c["fooled_b"]} '
    f'({100 * c["fooled_b"] / n:.1f}%); only A {c["only_a"]}, only B {c["only_b"]}, '
    f'p = {c["p"]:.2g}'
  )


if __name__ == '__main__':
  main()
