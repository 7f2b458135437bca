"""Eval mode (jaxpix.evaluation): the attack protocol, resume, results files,
and Table 4 against hand-counted values."""

import json
import re

import jax
import numpy as np
import pytest

from jaxpix import attack, checkpoint, data, evaluation, restore
from jaxpix.configs import cifar_baseline
from jaxpix.evaluation import attack_log, metrics


def _eval_config(trained, **eval_overrides):
  c = cifar_baseline.get_config('test')
  c.train.steps = 40
  c.mode, c.checkpoint = 'eval', str(trained)
  c.eval.mode, c.eval.popsize, c.eval.maxiter = 'replace', 16, 6
  for k, v in eval_overrides.items():
    c.eval[k] = v
  return c


@pytest.fixture
def trained(tiny_checkpoint):
  return tiny_checkpoint


def _md_value(md, label):
  m = re.search(r'\| ' + re.escape(label) + r'[^|]*\| ([0-9.]+)%', md)
  return float(m.group(1))


@pytest.mark.slow
def test_eval_protocol_results_and_markdown(trained, tmp_path):
  res = evaluation.evaluate(_eval_config(trained, targeted=True, gradient_ranked=64), str(tmp_path))
  on_disk = json.loads((tmp_path / 'results.json').read_text())
  # The gradient-ranked search as a second attack, at its budget.
  ranked = on_disk['attacks']['gradient_ranked']
  assert ranked['attacks'] == 12 and ranked['max_budget'] == 64
  assert 0 < ranked['mean_queries'] <= 64
  assert on_disk['attacks']['de']['successes'] == res['attacks']['de']['successes']
  # Only correctly classified images, drawn with the seed, as many as asked.
  assert res['num_images'] == 12 == len(set(res['images']))
  restored = restore.load_predict(_eval_config(trained), 10)
  predict, step = restored.predict, restored.step
  test = data.load_test(_eval_config(trained).data)
  x = data.to_float(test.images)
  pred = attack.batched_probs(predict, x, 100).argmax(-1)
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
  res = evaluation.evaluate(cfg, str(tmp_path))
  log = (tmp_path / 'attack_de.jsonl').read_text().splitlines()
  assert json.loads(log[0])['protocol']['eval.temperature'] == 4.0
  recs = [json.loads(ln) for ln in log if '"key"' in ln]
  predict = restore.load_predict(cfg, 10).predict
  test = data.load_test(cfg.data)
  x = data.to_float(test.images)
  adv = metrics.adversarial_images(recs, x, 'replace')
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
    == evaluation.evaluate(_eval_config(trained, num_images=4), str(tmp_path / 'plain'))[
      'clean_accuracy'
    ]
  )
  with pytest.raises(ValueError, match='temperature must be > 0'):
    evaluation.evaluate(_eval_config(trained, temperature=0.0), str(tmp_path / 'bad'))


@pytest.mark.slow
def test_eval_killed_midway_resumes_to_the_same_numbers(trained, tmp_path, monkeypatch):
  full = evaluation.evaluate(_eval_config(trained), str(tmp_path / 'full'))
  assert 0 < full['attacks']['de']['successes'] < 12  # a test that can tell a difference
  # Kill after 5 images were written, leaving a torn half line behind.
  real_append = attack_log.AttackLog.append

  def dying_append(self, records):
    real_append(self, records[:5])
    with self.path.open('a') as f:
      f.write('{"key": 3, "succ')
    raise KeyboardInterrupt

  monkeypatch.setattr(attack_log.AttackLog, 'append', dying_append)
  with pytest.raises(KeyboardInterrupt):
    evaluation.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  monkeypatch.setattr(attack_log.AttackLog, 'append', real_append)
  attacked = []
  real_attack = attack.one_pixel
  monkeypatch.setattr(
    attack, 'one_pixel', lambda p, x, *a, **k: attacked.append(len(x)) or real_attack(p, x, *a, **k)
  )
  resumed = evaluation.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  assert attacked == [12 - 5]  # only what was not saved
  for k in ('successes', 'mean_queries', 'mean_confidence_successful', 'curve'):
    assert resumed['attacks']['de'][k] == full['attacks']['de'][k], k
  lines = [json.loads(ln) for ln in (tmp_path / 'cut' / 'attack_de.jsonl').read_text().splitlines()]
  assert 'protocol' in lines[0] and sum('key' in ln for ln in lines) == 12
  assert len(resumed['attacks']['de']['sessions']) == 2  # the killed run and this one
  # Same command again: nothing left to attack, and a run that attacked
  # nothing is not listed among the log's sessions.
  attacked.clear()
  again = evaluation.evaluate(_eval_config(trained), str(tmp_path / 'cut'))
  assert attacked == []
  assert again['attacks']['de']['sessions'] == resumed['attacks']['de']['sessions']
  text = (tmp_path / 'cut' / 'attack_de.jsonl').read_text()
  assert [json.loads(ln)['session'] for ln in text.splitlines() if '"session"' in ln] == (
    resumed['attacks']['de']['sessions']
  )
  # results.md names the runs that attacked (this one only re-read them);
  # a run that attacked everything itself names none.
  runs = ', '.join(
    f'{s["date"]} (`{s["commit"][:12]}`)' for s in resumed['attacks']['de']['sessions']
  )
  md = (tmp_path / 'cut' / 'results.md').read_text()
  assert f'this one wrote the numbers from their records): de: {runs}.' in md
  assert 'The attacks ran in' not in (tmp_path / 'full' / 'results.md').read_text()
  # Another protocol does not mix into these results.
  with pytest.raises(ValueError, match=r'popsize: saved 16, now 20'):
    evaluation.evaluate(_eval_config(trained, popsize=20), str(tmp_path / 'cut'))


@pytest.mark.slow
def test_eval_bad_input(trained, tmp_path):
  res = evaluation.evaluate(_eval_config(trained, num_images=10_000, gallery=0), str(tmp_path))
  assert res['num_images'] == res['correctly_classified'] < 10_000
  assert 'all attacked instead of the 10000 requested' in res['note']
  wrong = _eval_config(trained)
  wrong.model.width = 0.25
  with pytest.raises(checkpoint.CheckpointError, match=r'width=0\.125.*width=0\.25'):
    evaluation.evaluate(wrong, str(tmp_path / 'w'))
  wrong = _eval_config(trained)
  wrong.defence.name = 'it'
  with pytest.raises(checkpoint.CheckpointError, match=r"defence='none'.*defence='it'"):
    evaluation.evaluate(wrong, str(tmp_path / 'w'))
  with pytest.raises(checkpoint.CheckpointError, match='holds no checkpoint'):
    evaluation.evaluate(_eval_config(tmp_path / 'nowhere'), str(tmp_path / 'w'))
  with pytest.raises(ValueError, match='num_images must be a positive int'):
    evaluation.evaluate(_eval_config(trained, num_images=0), str(tmp_path / 'w'))


def _rec(success, index=0):
  return dict(success=success, index=index, queries=1)


def test_table4_counts_by_hand():
  # Five images the bare classifier gets right. The bare attack fools 0, 1
  # and 3; the pipeline still misclassifies the attacked images of 0 and 3
  # (so it undoes 1 of 3) and that of 2, which was not fooled: a loss of the
  # reconstruction, not of the attack. The pipeline already gets image 4
  # wrong on the clean image: no adaptive attack there, a defence failure.
  bare = [_rec(s, i) for i, s in enumerate([True, True, False, True, False])]
  transferred = np.array([True, False, True, True, False])
  pipe_correct = np.array([1, 1, 1, 1, 0], bool)
  # Images 0-3, listed in another order than the bare attack's: matched by index.
  adaptive = [_rec(False, 3), _rec(False, 0), _rec(True, 1), _rec(False, 2)]
  bare_all = np.array([1, 1, 1, 1, 1, 0], bool)
  pipe_all = np.array([1, 1, 1, 1, 0, 0], bool)
  t = metrics.table4(bare, adaptive, transferred, pipe_correct, bare_all, pipe_all)
  assert t['counts'] == dict(
    asr_no_defence=[3, 5],
    asr_adaptive=[2, 5],
    asr_transfer=[2, 5],
    defence_rate=[1, 3],
    performance_loss=[1, 3],  # image 2, among the 5 - 2 not still fooled
  )
  assert (t['asr_no_defence'], t['asr_adaptive'], t['asr_transfer']) == (0.6, 0.4, 0.4)
  assert t['defence_rate'] == pytest.approx(1 / 3)
  assert t['performance_loss'] == pytest.approx(1 / 3)
  assert t['clean_accuracy_classifier'] == pytest.approx(5 / 6)
  assert t['clean_accuracy_cost'] == pytest.approx(1 / 6)
  # Correct after the attack, pipeline against bare: the transfer test counts
  # image 1 (undone) against image 2 (broken); the adaptive one images 0 and
  # 3 (fooled bare, not through the pipeline) against image 4 (clean wrong).
  paired = t['paired']
  assert (paired['transfer']['only_a'], paired['transfer']['only_b']) == (1, 1)
  assert (paired['adaptive']['only_a'], paired['adaptive']['only_b']) == (2, 1)
  assert paired['adaptive']['n'] == 5 and paired['adaptive']['p'] == 1.0
  with pytest.raises(ValueError, match=r'no adaptive attack record for test images \[2\]'):
    metrics.table4(
      bare, adaptive[:3] + [_rec(False, 7)], transferred, pipe_correct, bare_all, pipe_all
    )
  # The paper's own counts (Pure CNN: 162 fooled, 139 undone, PL 131/977) fit.
  n, f, undone, lost = 1000, 162, 139, 131
  bare = [_rec(i < f) for i in range(n)]
  wrong = np.array([undone <= i < f or f <= i < f + lost for i in range(n)])
  ones = np.ones(n, bool)
  t = metrics.table4(bare, [_rec(False)] * n, wrong, ones, ones, ones)
  c = t['counts']
  assert (c['asr_transfer'], c['defence_rate'], c['performance_loss']) == (
    [23, 1000],
    [139, 162],
    [131, 977],
  )
  # Undone 139 against broken 131: the paper's Pure CNN row does not show the
  # autoencoder undoing more than it breaks (exact two-sided p = 0.67).
  assert (t['paired']['transfer']['only_a'], t['paired']['transfer']['only_b']) == (139, 131)
  assert t['paired']['transfer']['p'] == pytest.approx(0.6702, abs=1e-4)
  # Nothing fooled: the defence rate is undefined, not 0 or 1.
  one = np.array([True])
  none = metrics.table4([_rec(False)], [_rec(False)], np.array([False]), one, one, one)
  assert none['asr_transfer'] == 0 and np.isnan(none['defence_rate'])
  with pytest.raises(ValueError, match='adaptive attack runs on the images'):
    metrics.table4([_rec(False)], [], np.array([False]), one, one, one)


@pytest.mark.slow
def test_fixed_image_set_is_chosen_before_the_model_and_pairs(trained, tmp_path):
  cfg = _eval_config(
    trained,
    image_set='fixed',
    num_images=20,
    targeted=True,
    targeted_images=3,
    gradient_ranked=8192,
    random_search=300,
  )
  res = evaluation.evaluate(cfg, str(tmp_path))
  fixed = res['fixed_images']
  # Drawn from all 200 test images with the seed, whatever the model.
  assert fixed == sorted(np.random.default_rng(0).choice(200, 20, replace=False).tolist())
  test = data.load_test(cfg.data)
  pred = attack.batched_probs(restore.load_predict(cfg, 10).predict, data.to_float(test.images))
  correct = pred.argmax(-1) == test.labels
  assert res['images'] == [i for i in fixed if correct[i]]  # its correct ones are attacked
  fooled = {
    json.loads(ln)['index']
    for ln in (tmp_path / 'attack_de.jsonl').read_text().splitlines()
    if '"success": true' in ln
  }
  assert res['robust_images'] == [i for i in fixed if correct[i] and i not in fooled]
  assert res['robust_accuracy'] == len(res['robust_images']) / 20
  assert res['attacks']['de_targeted']['images'] == 3  # eval.targeted_images
  md = (tmp_path / 'results.md').read_text()
  assert 'Robust accuracy' in md
  n = len(res['images'])
  assert f'the {n} correctly classified of 20 test images fixed with seed 0' in md
  assert 'drawn with seed' not in md
  # The worst case over the untargeted attacks (the targeted one is not one).
  ranked = {
    json.loads(ln)['index']
    for ln in (tmp_path / 'attack_gradient_ranked.jsonl').read_text().splitlines()
    if '"success": true' in ln
  }
  # With the whole budget (8,192) its outcome is the exhaustive search's, not
  # an accident of its order: here it fools 1 of the 7 attacked, DE none.
  assert ranked - fooled  # the second attack fools some image DE did not
  random = [
    json.loads(ln) for ln in (tmp_path / 'attack_random_search.jsonl').read_text().splitlines()
  ]
  random = [r for r in random if 'index' in r]
  assert sorted(r['index'] for r in random) == res['images']
  assert all(r['queries'] <= 300 for r in random)
  random_fooled = {r['index'] for r in random if r['success']}
  assert res['robust_attacks'] == ['de', 'gradient_ranked', 'random_search']
  assert res['robust_images_all'] == [
    i for i in res['robust_images'] if i not in ranked | random_fooled
  ]
  assert res['robust_accuracy_all'] == len(res['robust_images_all']) / 20
  assert (
    'not fooled by any of de, gradient_ranked, random_search, over the 20 fixed images'
    in (tmp_path / 'results.md').read_text()
  )
