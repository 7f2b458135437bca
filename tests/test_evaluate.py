"""Eval mode (the attack protocol, resume, results files), suites and the
confidence intervals."""

import json
import math
import re

import jax
import numpy as np
import pytest

from configs import cifar_baseline, suite_table1
from jaxpix import attack, checkpoint, data, evaluate, experiment, stats, suite, train
from jaxpix.attack import attacks as attacks_mod

# --------------------------------------------------------------------------- #
# Statistics, against values computed by hand
# --------------------------------------------------------------------------- #


def test_wilson_interval_hand_values():
  # 8/10: p = .8, z^2 = 3.8415; centre = (.8 + .19207) / 1.38415 = .71674,
  # half = 1.96 sqrt(.016 + .0096036) / 1.38415 = .22658.
  lo, hi = stats.wilson(8, 10)
  assert lo == pytest.approx(0.49016, abs=1e-4) and hi == pytest.approx(0.94332, abs=1e-4)
  # 0/10: [0, z^2 / (n + z^2)] = [0, 3.8415 / 13.8415].
  assert stats.wilson(0, 10) == (0.0, pytest.approx(0.27753, abs=1e-4))
  assert stats.wilson(10, 10) == (pytest.approx(0.72247, abs=1e-4), 1.0)
  assert all(math.isnan(v) for v in stats.wilson(0, 0))
  with pytest.raises(ValueError, match='successes'):
    stats.wilson(11, 10)


def test_t_interval_hand_values():
  # [1, 2, 3]: mean 2, s = 1, t_{.975, 2} = 4.302653 -> half 4.302653 / sqrt(3) = 2.48414.
  mean, lo, hi = stats.t_interval([1.0, 2.0, 3.0])
  assert mean == 2 and lo == pytest.approx(2 - 2.48414, abs=1e-4)
  assert hi == pytest.approx(2 + 2.48414, abs=1e-4)
  # [.5, .7]: mean .6, s = .141421, t_{.975, 1} = 12.7062 -> half 1.27062.
  assert stats.t_interval([0.5, 0.7])[2] == pytest.approx(0.6 + 1.27062, abs=1e-4)
  m, lo, hi = stats.t_interval([0.25])
  assert m == 0.25 and math.isnan(lo) and math.isnan(hi)


def test_summarise_picks_the_interval_and_says_which():
  one = stats.summarise([0.8], [(8, 10)])
  assert one['interval'] == 'Wilson 95% over 10 images'
  assert (one['low'], one['high']) == pytest.approx(stats.wilson(8, 10))
  three = stats.summarise([1.0, 2.0, 3.0], [(1, 2)] * 3)
  assert three['interval'] == 'Student t 95% over 3 seeds' and three['mean'] == 2
  clipped = stats.summarise([0.9, 1.0], bounds=(0, 1))
  assert clipped['high'] == 1.0 and 'clipped' in clipped['interval']
  assert stats.fmt_percent(one) == '80.0% [49.0, 94.3]'


# --------------------------------------------------------------------------- #
# Eval mode
# --------------------------------------------------------------------------- #


def _eval_config(trained, **eval_overrides):
  c = cifar_baseline.get_config('test')
  c.train.steps = 40
  c.mode, c.checkpoint = 'eval', str(trained)
  c.eval.mode, c.eval.popsize, c.eval.maxiter = 'replace', 16, 6
  for k, v in eval_overrides.items():
    c.eval[k] = v
  return c


@pytest.fixture(scope='module')
def trained(shared_data, tmp_path_factory):
  del shared_data
  d = tmp_path_factory.mktemp('trained')
  c = cifar_baseline.get_config('test')
  c.train.steps = 40
  train.train_and_evaluate(c, str(d))
  return d


def _md_value(md, label):
  m = re.search(r'\| ' + re.escape(label) + r'[^|]*\| ([0-9.]+)%', md)
  return float(m.group(1))


@pytest.mark.slow
def test_eval_protocol_results_and_markdown(trained, tmp_path):
  res = evaluate.evaluate(_eval_config(trained, targeted=True), str(tmp_path))
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  assert on_disk['attacks']['de']['successes'] == res['attacks']['de']['successes']
  # Only correctly classified images, drawn with the seed, as many as asked.
  assert res['num_images'] == 12 == len(set(res['images']))
  predict, step, _, _ = evaluate.load_predict(_eval_config(trained), 10)
  test = evaluate.load_test_split(_eval_config(trained).data)
  x = data.to_float(test.images)
  pred = evaluate.predict_probs(predict, x, 100).argmax(-1)
  assert np.all(pred[res['images']] == test.labels[res['images']]) and step == 40
  assert res['clean_accuracy'] == pytest.approx(np.mean(pred == test.labels))
  # The records are the attack's own results on those images with that key.
  direct = attack.one_pixel(
    predict,
    x[res['images']],
    test.labels[res['images']],
    key=jax.random.key(0),
    popsize=16,
    maxiter=6,
    indices=np.asarray(res['images']),
  )
  de = res['attacks']['de']
  assert de['successes'] == int(direct.success.sum())
  assert de['mean_queries'] == pytest.approx(direct.queries.mean())
  assert de['robustness'] == pytest.approx(1 - de['attack_success_rate'])
  assert de['curve']['asr'][-1] == pytest.approx(de['attack_success_rate'])
  # Targeted: every other class of every image; "any target" is per image.
  tg = res['attacks']['de_targeted']
  assert tg['attacks'] == 12 * 9 and tg['images'] == 12
  recs = [
    json.loads(ln)
    for ln in (tmp_path / 'attack_de_targeted.jsonl').read_text().splitlines()
    if '"key"' in ln
  ]
  assert len(recs) == 108 and all(r['target'] != test.labels[r['index']] for r in recs)
  assert sorted(r['key'] for r in recs) == sorted(
    i * 10 + t for i in res['images'] for t in range(10) if t != test.labels[i]
  )
  # Key i * K + t: the same as attacking (image i, target t) directly.
  i = res['images'][0]
  mine = sorted((r for r in recs if r['index'] == i), key=lambda r: r['target'])
  tgt = np.array([r['target'] for r in mine], np.int32)
  direct_t = attack.one_pixel(
    predict,
    x[[i] * 9],
    test.labels[[i] * 9],
    targets=tgt,
    key=jax.random.key(0),
    popsize=16,
    maxiter=6,
    indices=i * 10 + tgt,
  )
  assert [r['success'] for r in mine] == direct_t.success.tolist()
  assert [r['queries'] for r in mine] == direct_t.queries.tolist()
  fooled_any = {r['index'] for r in recs if r['success']}
  assert tg['images_fooled_any_target'] == len(fooled_any) / 12
  # The markdown shows the numbers of results.json.
  md = (tmp_path / 'results.md').read_text()
  assert _md_value(md, 'Clean accuracy') == pytest.approx(
    100 * on_disk['clean_accuracy'], abs=0.005
  )
  assert _md_value(md, 'de: attack success rate') == pytest.approx(
    100 * de['attack_success_rate'], abs=0.005
  )
  for f in ('asr_vs_budget.png', 'gallery.png', 'attack_de.jsonl'):
    assert (tmp_path / f).stat().st_size > 0
  assert on_disk['commit'] and on_disk['device'] and on_disk['config']['eval']['popsize'] == 16


@pytest.mark.slow
def test_eval_temperature_softens_the_attacks_probabilities(trained, tmp_path):
  cfg = _eval_config(trained, temperature=4.0, num_images=4)
  res = evaluate.evaluate(cfg, str(tmp_path))
  log = (tmp_path / 'attack_de.jsonl').read_text().splitlines()
  assert json.loads(log[0])['protocol']['temperature'] == 4.0
  recs = [json.loads(ln) for ln in log if '"key"' in ln]
  predict, _, _, _ = evaluate.load_predict(cfg, 10)
  test = evaluate.load_test_split(cfg.data)
  x = data.to_float(test.images)
  adv = evaluate.adversarial_images(recs, x, 'replace')
  logits = np.asarray(predict(adv))
  y = test.labels[[r['index'] for r in recs]]
  # The records hold softmax(logits / 4) of the adversarial image ...
  soft = np.asarray(jax.nn.softmax(logits / 4.0))[np.arange(4), y]
  assert [r['true_prob'] for r in recs] == pytest.approx(soft, abs=1e-5)
  # ... which is not the deployed model's own probability, and the clean
  # accuracy is the deployed model's, unchanged.
  plain = np.asarray(jax.nn.softmax(logits))[np.arange(4), y]
  assert not np.allclose(soft, plain, atol=1e-3)
  assert (
    res['clean_accuracy']
    == evaluate.evaluate(_eval_config(trained, num_images=4), str(tmp_path / 'plain'))[
      'clean_accuracy'
    ]
  )
  with pytest.raises(ValueError, match='temperature must be > 0'):
    evaluate.evaluate(_eval_config(trained, temperature=0.0), str(tmp_path / 'bad'))


@pytest.mark.slow
def test_eval_killed_midway_resumes_to_the_same_numbers(trained, tmp_path, monkeypatch):
  full = evaluate.evaluate(_eval_config(trained), str(tmp_path / 'full'))
  assert 0 < full['attacks']['de']['successes'] < 12  # a test that can tell a difference
  # Kill after 5 images were written, leaving a torn half line behind.
  real_append = evaluate.AttackLog.append

  def dying_append(self, records):
    real_append(self, records[:5])
    with self.path.open('a') as f:
      f.write('{"key": 3, "succ')
    raise KeyboardInterrupt

  monkeypatch.setattr(evaluate.AttackLog, 'append', dying_append)
  with pytest.raises(KeyboardInterrupt):
    evaluate.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  monkeypatch.setattr(evaluate.AttackLog, 'append', real_append)
  attacked = []
  real_attack = attack.one_pixel
  monkeypatch.setattr(
    attack, 'one_pixel', lambda p, x, *a, **k: attacked.append(len(x)) or real_attack(p, x, *a, **k)
  )
  resumed = evaluate.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  assert attacked == [12 - 5]  # only what was not saved
  for k in ('successes', 'mean_queries', 'mean_confidence_successful', 'curve'):
    assert resumed['attacks']['de'][k] == full['attacks']['de'][k], k
  lines = [json.loads(ln) for ln in (tmp_path / 'cut' / 'attack_de.jsonl').read_text().splitlines()]
  assert 'protocol' in lines[0] and sum('key' in ln for ln in lines) == 12
  assert len(resumed['attacks']['de']['sessions']) == 2  # the killed run and this one
  # Same command again: nothing left to attack.
  attacked.clear()
  evaluate.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  assert attacked == []
  # Another protocol does not mix into these results.
  with pytest.raises(ValueError, match=r'popsize: saved 16, now 20'):
    evaluate.evaluate(_eval_config(trained, popsize=20), str(tmp_path / 'cut'))


@pytest.mark.slow
def test_eval_bad_input(trained, tmp_path):
  res = evaluate.evaluate(_eval_config(trained, num_images=10_000, gallery=0), str(tmp_path))
  assert res['num_images'] == res['correctly_classified'] < 10_000
  assert 'all attacked instead of the 10000 requested' in res['note']
  wrong = _eval_config(trained)
  wrong.model.width = 0.25
  with pytest.raises(checkpoint.CheckpointError, match=r'width=0\.125.*width=0\.25'):
    evaluate.evaluate(wrong, str(tmp_path / 'w'))
  wrong = _eval_config(trained)
  wrong.defence.name = 'it'
  with pytest.raises(checkpoint.CheckpointError, match=r"defence='none'.*defence='it'"):
    evaluate.evaluate(wrong, str(tmp_path / 'w'))
  with pytest.raises(checkpoint.CheckpointError, match='does not exist'):
    evaluate.evaluate(_eval_config(tmp_path / 'nowhere'), str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='num_images must be a positive int'):
    evaluate.evaluate(_eval_config(trained, num_images=0), str(tmp_path / 'w'))


# --------------------------------------------------------------------------- #
# Suites
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_suite_trains_evaluates_tabulates_and_reuses(shared_data, tmp_path, monkeypatch):
  del shared_data
  c = suite_table1.get_config('test')
  c.suite.only, c.suite.seeds = 'No Defence,IT', (0, 1)
  res = experiment.run(c, str(tmp_path))
  rows = json.loads((tmp_path / 'results.json').read_text())['rows']
  assert list(rows) == ['No Defence', 'IT']
  for name, r in rows.items():
    accs = [p['clean_accuracy'] for p in r['per_seed']]
    s = r['summary']['clean_accuracy']
    assert [p['seed'] for p in r['per_seed']] == [0, 1]
    assert s['mean'] == pytest.approx(np.mean(accs)) and s['interval'].startswith('Student t')
    assert r['paper'] == list(suite.paper.APR_TABLE1[name])
    # Each seed's numbers are its eval's results.json.
    ev = json.loads((tmp_path / suite.slug(name) / 'seed1' / 'eval' / 'results.json').read_text())
    assert r['per_seed'][1]['attacks']['de']['successes'] == ev['attacks']['de']['successes']
  md = (tmp_path / 'results.md').read_text()
  cell = stats.fmt_percent(rows['IT']['summary']['asr'])
  assert (
    f'| IT | {stats.fmt_percent(rows["IT"]["summary"]["clean_accuracy"])} | 89.10% | '
    f'{cell} | 38.76% |' in md
  )
  oh = res['overhead']
  assert list(oh) == ['No Defence', 'IT'] and oh['IT']['reference'] == 'No Defence'
  assert oh['IT']['inference_relative'] == pytest.approx(
    oh['IT']['seconds_per_image'] / oh['No Defence']['seconds_per_image']
  )
  assert 'relative to No Defence' in md
  assert (tmp_path / 'asr_vs_budget.png').stat().st_size > 0
  # Again: checkpoints and attack results are reused, the numbers unchanged.
  monkeypatch.setattr(attacks_mod, '_attack', lambda *a, **k: pytest.fail('attacked again'))
  c.suite.overhead = False
  again = experiment.run(c, str(tmp_path))
  assert again['rows']['IT']['summary'] == res['rows']['IT']['summary']


def test_overhead_counts_the_distillation_teacher(monkeypatch):
  step_s = {'none': 1.0, 'dd': 1.5, 'dd_teacher': 2.0}
  monkeypatch.setattr(
    suite.overhead,
    'train_step_time',
    lambda cfg, steps: dict(seconds_per_step=step_s[cfg.defence.name], batch=64),
  )
  monkeypatch.setattr(suite.overhead, 'inference_time', lambda cfg: dict(seconds_per_image=2e-3))
  monkeypatch.setattr(suite.data, 'load', lambda dcfg: (np.zeros(640), None, None))
  c = suite_table1.get_config('test')
  oh = suite.measure_overhead(
    suite.parse_rows(c.suite.rows, 'test', 'DD'),
    c.suite,
    suite.parse_rows(c.suite.rows, 'test', '')[0],
  )
  assert list(oh) == ['No Defence', 'DD']
  # 640 images at batch 64: 10 steps an epoch; DD's epoch = teacher's + student's.
  assert oh['DD']['seconds_per_step'] == 3.5 and oh['DD']['teacher_seconds_per_step'] == 2.0
  assert oh['DD']['seconds_per_epoch'] == pytest.approx(35.0)
  assert oh['DD']['train_relative'] == pytest.approx(3.5)
  assert oh['No Defence']['teacher_seconds_per_step'] is None
  assert oh['DD']['inference_relative'] == pytest.approx(1.0)


def test_suite_rows_and_overrides():
  rows = suite.parse_rows(('A=cifar_apr.py:{size},no_adv', 'B=cifar_it.py:{size}'), '', '')
  assert rows == [('A', 'cifar_apr.py:no_adv'), ('B', 'cifar_it.py')]
  assert suite.parse_rows(('A=x.py:{size}',), 'cpu', '') == [('A', 'x.py:cpu')]
  with pytest.raises(ValueError, match=r"unknown rows \['C'\]"):
    suite.parse_rows(('A=x.py',), '', 'C')
  with pytest.raises(ValueError, match='Row name=config'):
    suite.parse_rows(('just-a-file.py',), '', '')
  cfg = experiment.load_config('cifar_apr.py:cpu')
  experiment.apply_overrides(cfg, 'train.epochs=2, eval.num_images=50,train.lr=1')
  assert (cfg.train.epochs, cfg.eval.num_images, cfg.train.lr) == (2, 50, 1.0)
  with pytest.raises(ValueError, match="no field 'train.epoch'"):
    experiment.apply_overrides(cfg, 'train.epoch=2')
  with pytest.raises(FileNotFoundError, match='nope.py'):
    experiment.load_config('nope.py:cpu')
  curve = suite.mean_curve(
    [dict(budget=[10, 30], asr=[0.2, 0.4]), dict(budget=[20, 30], asr=[0.1, 0.3])]
  )
  assert curve == dict(budget=[10, 20, 30], asr=pytest.approx([0.1, 0.15, 0.35]))


@pytest.mark.slow
def test_one_seed_autoencoder_suite_uses_wilson_and_reads_back(shared_data, tmp_path):
  del shared_data
  from configs import suite_autoencoder

  c = suite_autoencoder.get_config('test')
  c.suite.only = 'LeNet'
  c.suite.set = 'train.steps=20,eval.num_images=8'
  res = experiment.run(c, str(tmp_path))
  row = json.loads((tmp_path / 'results.json').read_text())['rows']['LeNet']
  t = row['per_seed'][0]['autoencoder_table4']
  for m in ('asr_no_defence', 'asr_adaptive', 'asr_transfer'):
    k, n = t['counts'][m]
    assert row['summary'][m]['interval'] == f'Wilson 95% over {n} images'
    assert row['summary'][m]['mean'] == pytest.approx(k / n)
  assert row['summary']['performance_loss']['interval'] == 'none (one value)'
  assert row['paper'] == suite.paper.AE_TABLE4['LeNet']
  md = (tmp_path / 'results.md').read_text()
  assert f'| LeNet | {stats.fmt_percent(row["summary"]["asr_no_defence"])} | 61.20% |' in md
  assert res['rows']['LeNet']['spec'] == 'cifar_autoencoder.py:test,lenet'
