"""jaxpix.repro.paired_tests: the paired tests docs/results.md quotes."""

import json
import pathlib

import pytest

from jaxpix import records
from jaxpix.repro import paired_tests

_DOCS = pathlib.Path(__file__).resolve().parents[1] / 'docs'

_T1 = _DOCS / 'results' / 'table1_paired'


def _load(row):
  path = _T1 / row / 'seed0' / 'eval' / 'results.json'
  return json.loads(path.read_text()), path.parent / 'attack_de.jsonl'


def test_robust_test_equals_the_suites_own_and_fooled_sets_match_the_logs():
  (apr, apr_log), (nd, nd_log) = _load('apr'), _load('no_defence')
  suite = json.loads((_T1 / 'results.json').read_text())
  expected = suite['rows']['APR']['mcnemar']['No Defence'][0]
  r = paired_tests.robust(apr, nd)
  assert (r['only_a'], r['only_b'], r['n']) == (expected['only_a'], expected['only_b'], 500)
  assert r['p'] == pytest.approx(expected['p'])
  fa, fb = paired_tests.fooled(apr, apr_log), paired_tests.fooled(nd, nd_log)
  # The logs' successes are exactly the attacked images not in robust_images.
  assert fa == set(apr['images']) - set(apr['robust_images'])
  assert (len(fa), len(fb)) == (70, 112)  # results.md: 70/425 and 112/425
  c = paired_tests.fooled_given_correct(apr, nd, fa, fb)
  assert (c['both'], c['fooled_a'], c['fooled_b'], c['only_a'], c['only_b']) == (
    403,
    55,
    92,
    16,
    53,
  )
  assert c['p'] < 1e-4


def test_rows_on_different_image_sets_are_refused():
  apr, _ = _load('apr')
  other = dict(apr, fixed_images=apr['fixed_images'][1:])
  with pytest.raises(ValueError, match='different fixed image sets'):
    paired_tests.robust(apr, other)
  drawn = {k: v for k, v in apr.items() if k != 'fixed_images'}
  with pytest.raises(ValueError, match="image_set='fixed'"):
    paired_tests.robust(drawn, apr)


def test_targeted_against_untargeted_on_the_same_images(capsys):
  folder = _DOCS / 'results' / 'table1_paired_targeted' / 'no_defence' / 'seed0' / 'eval'
  results = json.loads((folder / 'results.json').read_text())
  t = paired_tests.targeted_vs_untargeted(results, folder)
  tg = results['attacks']['de_targeted']
  assert t['images'] == tg['images'] == 100
  assert t['targeted'] == round(tg['images_fooled_any_target'] * 100) == 21
  # The first 100 attacked images, as the targeted attack takes them.
  fooled = paired_tests.fooled(results, folder / 'attack_de.jsonl')
  assert t['untargeted'] == len(fooled & set(results['images'][:100])) == 21
  assert (t['only_a'], t['only_b'], t['p']) == (0, 0, 1.0)
  paired_tests.main(['--targeted', str(folder / 'results.json')])
  assert 'fooled towards at least one 21, fooled untargeted 21' in capsys.readouterr().out


def test_targeted_rate_of_two_rows_over_the_images_both_covered(capsys):
  root = _DOCS / 'results' / 'table1_paired_targeted'
  folders = [root / row / 'seed0' / 'eval' for row in ('no_defence', 'apr')]
  nd, apr = (json.loads((f / 'results.json').read_text()) for f in folders)
  t = paired_tests.targeted_pair(nd, apr, *folders)
  # Each row's first 100 correctly classified fixed images; 94 are in both.
  assert t['both'] == len(set(nd['images'][:100]) & set(apr['images'][:100])) == 94
  assert (t['fooled_a'], t['fooled_b']) == (17, 6)
  assert t['fooled_a'] - t['fooled_b'] == t['only_a'] - t['only_b'] == 11
  assert t['p'] < 0.05
  paired_tests.main(['--targeted', *(str(f / 'results.json') for f in folders)])
  assert 'covered: A 17, B 6; only A 15, only B 4, p = 0.019' in capsys.readouterr().out


def test_a_smaller_budget_read_off_the_log_matches_the_runs_curve(capsys):
  apr, log = _load('apr')
  de = apr['attacks']['de']
  assert paired_tests.at_budget(apr, log, de['max_budget'])['robust_images'] == apr['robust_images']
  curve = dict(zip(de['curve']['budget'], de['curve']['asr'], strict=True))
  first = paired_tests.at_budget(apr, log, 400)
  fooled_400 = len(apr['images']) - len(first['robust_images'])
  assert fooled_400 == round(curve[400] * de['attacks']) < 70
  # The run against itself stopped after its first generation: only B's robust images grow.
  path = str(log.parent / 'results.json')
  paired_tests.main([path, path, '--budget-b', '400'])
  out = capsys.readouterr().out
  assert f'only A 0, only B {70 - fooled_400}' in out
  with pytest.raises(ValueError, match='exceeds the 12400 evaluations'):
    paired_tests.at_budget(apr, log, 12800)


def test_a_smoothed_row_pairs_by_its_own_attack_and_by_its_certificates(capsys):
  # Randomized ablation's row (docs/results.md): its attack log is its own,
  # and its certified images (a lower bound) pair against another row's
  # robust ones.
  abl = _DOCS / 'results' / 'table1_paired_ablation' / 'randomized_ablation' / 'seed0' / 'eval'
  a = str(abl / 'results.json')
  paired_tests.main([a, str(_T1 / 'no_defence' / 'seed0' / 'eval' / 'results.json')])
  out = capsys.readouterr().out
  assert 'robust over 500 fixed images: A 324, B 313; only A 90, only B 79, p = 0.44' in out
  assert 'fooled (ablation_search / de), over the 303 images both classify correctly' in out
  paired_tests.main(['--certified-a', a, str(_T1 / 'apr' / 'seed0' / 'eval' / 'results.json')])
  out = capsys.readouterr().out
  assert 'certified (A) against robust (B) over 500 fixed images: A 297, B 355' in out
  assert 'only A 51, only B 109, p = 5.3e-06' in out
  # The certified images are the log's: top class selected right and
  # p_lower - k / n > 1/2.
  results = json.loads((abl / 'results.json').read_text())
  recs = [json.loads(ln) for ln in records.read_text(abl / 'certify_ablation.jsonl').splitlines()]
  recs = [r for r in recs if 'index' in r]
  delta = results['smoothing']['delta']
  assert delta == pytest.approx(75 / 1024)
  certified = sorted(
    r['index'] for r in recs if r['selected'] == r['label'] and r['p_lower'] - delta > 0.5
  )
  assert certified == sorted(results['certified_images']) and len(certified) == 297
  assert not set(results['certified_fooled'])
