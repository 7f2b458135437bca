"""Suites (jaxpix.repro.suite): rows x seeds trained, evaluated and tabulated; the
overhead table."""

import json

import numpy as np
import pytest

from jaxpix import attack, experiment, stats
from jaxpix.repro import overhead, suite
from jaxpix.repro.configs import rows, suite_table1, suite_table3


@pytest.mark.slow
def test_suite_trains_evaluates_tabulates_and_reuses(shared_data, tmp_path, monkeypatch):
  del shared_data
  c = suite_table1.get_config('test')
  c.suite.only, c.suite.seeds = 'No Defence,IT', (0, 1)
  res = suite.run(c, str(tmp_path))
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
  monkeypatch.setattr(attack, 'one_pixel', lambda *a, **k: pytest.fail('attacked again'))
  c.suite.overhead = False
  again = suite.run(c, str(tmp_path))
  assert again['rows']['IT']['summary'] == res['rows']['IT']['summary']


def test_overhead_counts_the_distillation_teacher(monkeypatch):
  step_s = {'none': 1.0, 'dd': 1.5, 'dd_teacher': 2.0}
  monkeypatch.setattr(
    overhead,
    'train_step_time',
    lambda cfg, steps: dict(seconds_per_step=step_s[cfg.defence.name], batch=64),
  )
  monkeypatch.setattr(overhead, 'inference_time', lambda cfg: dict(seconds_per_image=2e-3))
  monkeypatch.setattr(overhead.data, 'load', lambda dcfg: (np.zeros(640), None, None))
  c = suite_table1.get_config('test')
  rows = [c.suite.rows[0], *suite.select_rows(c.suite.rows, 'DD')]
  oh = overhead.table([(r.name, suite.row_config(r, c.suite, 0)) for r in rows], steps=3)
  assert list(oh) == ['No Defence', 'DD']
  # 640 images at batch 64: 10 steps an epoch; DD's epoch = teacher's + student's.
  assert oh['DD']['seconds_per_step'] == 3.5 and oh['DD']['teacher_seconds_per_step'] == 2.0
  assert oh['DD']['seconds_per_epoch'] == pytest.approx(35.0)
  assert oh['DD']['train_relative'] == pytest.approx(3.5)
  assert oh['No Defence']['teacher_seconds_per_step'] is None
  assert oh['DD']['inference_relative'] == pytest.approx(1.0)


def test_suite_rows_configs_and_overrides():
  c = suite_table3.get_config('cpu')
  assert [r.name for r in suite.select_rows(c.suite.rows, 'Full APR, w/o Regularization')] == [
    'Full APR',
    'w/o Regularization',
  ]
  with pytest.raises(ValueError, match=r"unknown rows \['C'\]"):
    suite.select_rows(c.suite.rows, 'C')
  # A row's config: its module at its variants plus the suite's size, its
  # overrides, then the suite's; the seed sets both seeds.
  row = rows.row('X', 'cifar_apr', 'no_reg', defence__penalty__method='exact')
  c.suite.set = 'train.epochs=2'
  cfg = suite.row_config(row, c.suite, 3)
  assert (cfg.model.width, cfg.defence.beta, cfg.defence.penalty.method) == (0.25, 0.0, 'exact')
  assert (cfg.train.epochs, cfg.seed, cfg.eval.seed) == (2, 3, 3)
  assert suite.spec_of(row) == "cifar_apr:no_reg defence.penalty.method='exact'"
  # The table shows the value the row ran with: the suite's override wins.
  assert suite.spec_of(row, "defence.penalty.method='fd',train.epochs=2") == (
    "cifar_apr:no_reg defence.penalty.method='fd'"
  )
  # The table's rows are paired: the same 500 fixed images, DE 400 x 30 and
  # the gradient-ranked search at DE's 10-generation budget (on the CPU).
  ev = suite.row_config(c.suite.rows[0], c.suite, 0).eval
  assert (ev.image_set, ev.num_images, ev.maxiter, ev.gradient_ranked) == ('fixed', 500, 30, 4400)
  full = suite_table3.get_config().suite
  assert suite.row_config(full.rows[0], full, 0).eval.gradient_ranked == 8192
  curve = suite.mean_curve(
    [dict(budget=[10, 30], asr=[0.2, 0.4]), dict(budget=[20, 30], asr=[0.1, 0.3])]
  )
  assert curve == dict(budget=[10, 20, 30], asr=pytest.approx([0.1, 0.15, 0.35]))


@pytest.mark.slow
def test_one_seed_autoencoder_suite_uses_wilson_and_reads_back(shared_data, tmp_path):
  del shared_data
  from jaxpix.repro.configs import suite_autoencoder

  c = suite_autoencoder.get_config('test')
  c.suite.only = 'LeNet'
  c.suite.set = 'train.steps=20,eval.num_images=8'
  res = suite.run(c, str(tmp_path))
  row = json.loads((tmp_path / 'results.json').read_text())['rows']['LeNet']
  t = row['per_seed'][0]['autoencoder_table4']
  for m in ('asr_no_defence', 'asr_adaptive', 'asr_transfer', 'performance_loss'):
    k, n = t['counts'][m]
    assert row['summary'][m]['interval'] == f'Wilson 95% over {n} images'
    assert row['summary'][m]['mean'] == pytest.approx(k / n)
  assert row['summary']['clean_accuracy_cost']['interval'] == 'none (one value)'
  assert row['paper'] == suite.paper.AE_TABLE4['LeNet']
  # The paired tests of the pipeline against the bare classifier, per seed,
  # in the suite's table and in the row's own results.md.
  a = t['paired']['adaptive']
  assert a['n'] == t['counts']['asr_no_defence'][1]
  assert a['only_b'] - a['only_a'] == (
    t['counts']['asr_adaptive'][0] - t['counts']['asr_no_defence'][0]
  )
  line = f'| LeNet | 0 | adaptive | {a["only_a"]} | {a["only_b"]} | {a["n"]} | {a["p"]:.3g} |'
  assert line in (tmp_path / 'results.md').read_text()
  own = (tmp_path / 'lenet' / 'seed0' / 'eval' / 'results.md').read_text()
  assert line.replace('| LeNet | 0 ', '') in own
  md = (tmp_path / 'results.md').read_text()
  assert f'| LeNet | {stats.fmt_percent(row["summary"]["asr_no_defence"])} | 61.20% |' in md
  assert res['rows']['LeNet']['spec'] == 'cifar_autoencoder:lenet'
  assert '| LeNet | `cifar_autoencoder:lenet` | lenet (1) | [0] | [8] |' in md  # the model run


@pytest.mark.slow
def test_autoencoder_rows_reuse_the_shared_rows_autoencoder(shared_data, tmp_path):
  del shared_data
  from jaxpix.repro.configs import suite_autoencoder

  c = suite_autoencoder.get_config('test')
  assert c.suite.shared_autoencoder == 'LeNet'
  c.suite.only = 'Pure CNN'  # the LeNet row's training runs all the same
  c.suite.set = 'train.steps=12,eval.num_images=4,eval.maxiter=1'
  suite.run(c, str(tmp_path))
  owner = tmp_path / 'lenet' / 'seed0' / 'train'
  assert (owner / 'checkpoints').is_dir() and not (tmp_path / 'lenet' / 'seed0' / 'eval').exists()
  logged = [
    json.loads(ln)
    for ln in (tmp_path / 'pure_cnn' / 'seed0' / 'train' / 'metrics.jsonl').read_text().splitlines()
  ]
  assert [ln['autoencoder_from'] for ln in logged if 'autoencoder_from' in ln] == [str(owner)]
  res = json.loads((tmp_path / 'results.json').read_text())
  assert list(res['rows']) == ['Pure CNN']
  assert res['rows']['Pure CNN']['per_seed'][0]['config']['defence']['autoencoder'] == str(owner)


def test_a_shared_autoencoder_must_name_a_row(tmp_path):
  from jaxpix.repro.configs import suite_autoencoder

  c = suite_autoencoder.get_config('test')
  c.suite.shared_autoencoder = 'Lenet'
  with pytest.raises(ValueError, match="shared_autoencoder='Lenet' is not a row; the rows are"):
    suite.run(c, str(tmp_path))
  assert not list(tmp_path.iterdir())  # refused before anything ran


@pytest.mark.slow
def test_a_suite_runs_from_the_package_alone(shared_data, tmp_path):
  """As after a non-editable ``pip install .``: only the package's files, in
  another folder, imported from elsewhere (no repository, no configs/ link)."""
  import pathlib
  import shutil
  import subprocess
  import sys

  root = pathlib.Path(__file__).resolve().parents[1]
  site = tmp_path / 'site'
  shutil.copytree(root / 'jaxpix', site / 'jaxpix', ignore=shutil.ignore_patterns('__pycache__'))
  script = (
    'import jaxpix\n'
    f'assert jaxpix.__file__.startswith({str(site)!r}), jaxpix.__file__\n'
    'from jaxpix.repro import suite\n'
    'from jaxpix.repro.configs import suite_table1\n'
    "c = suite_table1.get_config('test')\n"
    "c.suite.only, c.suite.overhead = 'No Defence', False\n"
    "c.suite.set = 'train.steps=4,eval.num_images=2,eval.popsize=4,eval.maxiter=1'\n"
    "suite.run(c, 'out')\n"
  )
  env = dict(PYTHONPATH=str(site), JAXPIX_DATA=str(shared_data), PATH='/usr/bin:/bin')
  r = subprocess.run(
    [sys.executable, '-c', script], cwd=tmp_path, env=env, capture_output=True, text=True
  )
  assert r.returncode == 0, r.stderr[-3000:]
  rows = json.loads((tmp_path / 'out' / 'results.json').read_text())['rows']
  assert list(rows) == ['No Defence']
  assert rows['No Defence']['per_seed'][0]['num_images_requested'] == 2


@pytest.mark.slow
def test_rows_on_a_fixed_image_set_are_paired_and_tested(shared_data, tmp_path):
  del shared_data
  c = suite_table1.get_config('test')
  c.suite.only, c.suite.overhead = 'No Defence,IT', False
  c.suite.set = (
    'eval.image_set=fixed,eval.num_images=16,eval.maxiter=2,eval.gradient_ranked=64,'
    'eval.targeted=True,eval.targeted_images=3'
  )
  res = suite.run(c, str(tmp_path))
  ev = {
    name: json.loads((tmp_path / suite.slug(name) / 'seed0' / 'eval' / 'results.json').read_text())
    for name in ('No Defence', 'IT')
  }
  assert ev['IT']['fixed_images'] == ev['No Defence']['fixed_images']
  fixed = ev['IT']['fixed_images']
  a, b = set(ev['IT']['robust_images']), set(ev['No Defence']['robust_images'])
  want = stats.mcnemar([i in a for i in fixed], [i in b for i in fixed])
  (t,) = res['rows']['IT']['mcnemar']['No Defence']
  assert t == dict(seed=0, **want)
  s = res['rows']['IT']['summary']['robust_accuracy']
  assert s['mean'] == len(a) / 16 and s['interval'] == 'Wilson 95% over 16 images'
  # The worst case over DE and the gradient-ranked search: a column of its own.
  worst = res['rows']['IT']['summary']['robust_accuracy_all']
  assert worst['mean'] == len(ev['IT']['robust_images_all']) / 16 <= s['mean']
  assert set(ev['IT']['robust_images_all']) <= a
  md = (tmp_path / 'results.md').read_text()
  assert f'| IT | No Defence | 0 | {t["only_a"]} | {t["only_b"]} |' in md
  # The targeted column: Su et al.'s rate over the first 3 attacked images
  # (fewer where the barely trained model gets fewer right).
  tg = ev['IT']['attacks']['de_targeted']
  n = min(3, ev['IT']['attacks']['de']['attacks'])
  assert n > 0 and (tg['images'], tg['attacks']) == (n, 9 * n)
  s = res['rows']['IT']['summary']['targeted_any']
  assert s['mean'] == tg['images_fooled_any_target']
  assert s['interval'] == f'Wilson 95% over {n} images'
  assert '| Targeted: fooled towards >= 1 class | paper |' in md


def test_the_library_runner_hands_suites_to_the_reproduction():
  c = suite_table1.get_config('test')
  with pytest.raises(
    ValueError, match=r'reproduction: run it with run.py .*jaxpix.repro.suite.run'
  ):
    experiment.run(c, 'unused')
