"""Faults a user can cause: each gets a clear error naming what was wrong and
the fix, or the right answer; nothing is silent, nothing saved is lost."""

import fcntl
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import attack, checkpoint, configs, data, evaluation, records, train
from jaxpix.configs import cifar_baseline, cifar_it

import toy_models as toy

ROOT = pathlib.Path(__file__).resolve().parents[1]
H = W = 6

# --------------------------------------------------------------------------- #
# The attack API: what the model returns
# --------------------------------------------------------------------------- #


def _linear():
  return toy.linear(H, W, k=4)


@pytest.mark.parametrize('run', ['one_pixel', 'extreme_colour'])
def test_non_finite_logits_are_an_error_not_a_success(run):
  x, y = toy.cifar_like(3, H, W), np.zeros(3, np.int32)
  nan = lambda im: _linear()(im) * jnp.nan
  kw = dict(key=jax.random.key(0), popsize=8, maxiter=1) if run == 'one_pixel' else {}
  with pytest.raises(
    ValueError, match=r'NaN or infinite logits for 3 of 3 images \(indices \[0, 1, 2\]'
  ):
    getattr(attack, run)(nan, x, y, **kw)
  # Image 1 only: named.
  inf_one = lambda im: _linear()(im).at[1].set(jnp.inf) if im.shape[0] == 3 else _linear()(im)
  with pytest.raises(ValueError, match=r'1 of 3 images \(indices \[1\]'):
    getattr(attack, run)(inf_one, x, y, **kw)


@pytest.mark.slow  # several compilations: seconds, kept out of the quick loop
def test_a_model_that_turns_nan_on_perturbed_images_is_never_fooled():
  # Finite on the clean (gray) images, NaN as soon as any pixel changes: the
  # NaN logits' argmax (class 0) differs from the label, which used to count
  # as a success on every image.
  x = toy.gray_images(4, H, W)
  never = toy.never_fooled(num_classes=3)  # always class 0
  base = lambda im: jnp.roll(never(im), 2, axis=1)  # always class 2

  def predict(im):
    changed = jnp.any(jnp.abs(im - toy.GRAY) > 1e-6, axis=(1, 2, 3))
    return jnp.where(changed[:, None], jnp.nan, base(im))

  y = np.full(4, 2, np.int32)
  assert np.all(np.asarray(base(jnp.asarray(x))).argmax(1) == 2)
  r = attack.one_pixel(predict, x, y, key=jax.random.key(0), popsize=8, maxiter=2)
  assert not r.success.any()
  r = attack.extreme_colour(predict, x, y)
  assert not r.success.any()


def test_probabilities_instead_of_logits_are_named():
  x, y = toy.cifar_like(3, H, W), np.zeros(3, np.int32)
  probs = lambda im: jax.nn.softmax(_linear()(im))
  with pytest.raises(ValueError, match='seems to return probabilities'):
    attack.one_pixel(probs, x, y, key=jax.random.key(0), popsize=8, maxiter=1)
  # The fix the message gives works.
  r = attack.one_pixel(
    lambda im: jnp.log(probs(im)), x, y, key=jax.random.key(0), popsize=8, maxiter=1
  )
  ref = attack.one_pixel(_linear(), x, y, key=jax.random.key(0), popsize=8, maxiter=1)
  np.testing.assert_allclose(r.true_prob, ref.true_prob, atol=1e-5)


@pytest.mark.parametrize(
  'images, labels, exc, words',
  [
    ((toy.cifar_like(2, H, W) * 255).astype(np.uint8), np.zeros(2, np.int32), TypeError, 'float'),
    (toy.cifar_like(2, H, W)[0], np.zeros(2, np.int32), TypeError, r'\[B, H, W, C\]'),
    (toy.cifar_like(2, H, W), np.zeros(2, np.float32), TypeError, 'labels must be ints'),
    (toy.cifar_like(2, H, W), np.zeros(3, np.int32), TypeError, r'shape \(2,\)'),
  ],
)
def test_de_fixed_budget_checks_shapes_and_dtypes_at_trace_time(images, labels, exc, words):
  run = jax.jit(
    lambda x, y: attack.de_fixed_budget(
      _linear(), x, y, jax.random.key(0), de=attack.DEConfig(popsize=8, maxiter=1)
    )
  )
  with pytest.raises(exc, match=words):
    run(jnp.asarray(images), jnp.asarray(labels))


# --------------------------------------------------------------------------- #
# Configs: numbers checked where they are read
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize(
  'field, value, words',
  [
    ('train.steps', -5, r'config.train.steps must be an int >= 0, got -5'),
    ('train.batch_size', -64, r'train.batch_size must be an int >= 1, got -64'),
    ('train.batch_size', 0, r'train.batch_size must be an int >= 1, got 0'),
    ('train.checkpoint_every', 0, r'train.checkpoint_every must be an int >= 1'),
    ('train.log_every', 0, r'train.log_every must be an int >= 1'),
    ('train.keep_checkpoints', 0, r'train.keep_checkpoints must be an int >= 1'),
    ('train.lr', 0.0, r'train.lr must be > 0'),
    ('train.lr', float('inf'), r'config.train.lr must be a finite number, got inf'),
    ('train.lr', float('nan'), r'config.train.lr must be a finite number, got nan'),
    ('defence.temperature', 0.0, r'config.defence.temperature must be > 0, got 0.0'),
    ('defence.beta', float('inf'), r'config.defence.beta must be a finite number'),
    ('defence.alpha', 1.5, r'config.defence.alpha must be >= 0 and <= 1, got 1.5'),
    ('train.checkpoint_minutes', -1.0, r'train.checkpoint_minutes must be >= 0'),
    ('seed', -1, r'config.seed must be an int >= 0, got -1'),
    ('data.split_seed', -3, r'config.data.split_seed must be an int >= 0'),
    ('dtype', 'float16', r"config.dtype must be one of \['bfloat16', 'float32'\]"),
    ('defence.name', 'apr_no_adv', 'config.defence.name must be one of'),
  ],
)
def test_bad_training_numbers_are_refused_before_anything_runs(tmp_path, field, value, words):
  c = cifar_baseline.get_config('test')
  configs.set_field(c, field, value)
  with pytest.raises(ValueError, match=words):
    train.train_and_evaluate(c, str(tmp_path / 'w'))
  assert not (tmp_path / 'w' / 'checkpoints').exists()


@pytest.mark.parametrize(
  'field, value, words',
  [
    ('popsize', 2, 'eval.popsize must be an int >= 4'),
    ('maxiter', -1, 'eval.maxiter must be an int >= 0'),
    ('pixels', 0, 'eval.pixels must be an int >= 1'),
    ('num_images', 0, 'num_images must be a positive int'),
    ('batch_size', 0, 'eval.batch_size must be a positive int'),
    ('temperature', 0.0, 'temperature must be > 0'),
    ('temperature', float('inf'), 'config.eval.temperature must be a finite number, got inf'),
    ('seed', -1, r'config.eval.seed must be an int >= 0, got -1'),
    ('mode', 'swap', 'eval.mode must be one of'),
  ],
)
def test_bad_eval_settings_are_refused(tmp_path, field, value, words):
  c = cifar_baseline.get_config('test')
  c.mode, c.checkpoint = 'eval', str(tmp_path)
  c.eval[field] = value
  with pytest.raises(ValueError, match=words):
    evaluation.evaluate(c, str(tmp_path / 'ev'))


# --------------------------------------------------------------------------- #
# Files: data, logs, locks, checkpoints
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize('damage', ['truncate', 'flip'])
def test_a_corrupted_npz_is_named(shared_data, tmp_path, damage):
  d = tmp_path / 'cifar10'
  d.mkdir()
  raw = (shared_data / 'cifar10' / 'test.npz').read_bytes()
  if damage == 'truncate':
    raw = raw[: len(raw) // 2]
  else:
    i = len(raw) // 2
    raw = raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1 :]
  (d / 'test.npz').write_bytes(raw)
  with pytest.raises(ValueError, match=r'test\.npz is not a readable \.npz.*corrupted'):
    data.load_npz('cifar10', 'test', d)


def test_a_kill_during_a_log_rewrite_loses_nothing(tmp_path, monkeypatch):
  path = tmp_path / 'metrics.jsonl'
  records.JsonlLog(path).append([{'step': s, 'loss': 1.0 / s} for s in range(1, 9)])
  before = path.read_text()

  def killed(*a):
    raise KeyboardInterrupt

  monkeypatch.setattr(records.os, 'replace', killed)
  with pytest.raises(KeyboardInterrupt):
    train.metrics_log(path, keep_until=4)  # a resume cutting the log back to step 4
  assert path.read_text() == before  # the history is intact; the copy was not swapped in


def test_a_second_run_on_a_busy_workdir_is_refused(shared_data, tmp_path):
  del shared_data
  (tmp_path / '.lock').write_text('')
  holder = (tmp_path / '.lock').open('a+')
  fcntl.flock(holder, fcntl.LOCK_EX | fcntl.LOCK_NB)
  holder.write('pid 4242 on elsewhere since then\n')
  holder.flush()
  try:
    with pytest.raises(RuntimeError, match=r'in use by pid 4242 on elsewhere.*another --workdir'):
      train.train_and_evaluate(cifar_baseline.get_config('test'), str(tmp_path))
    c = cifar_baseline.get_config('test')
    c.mode, c.checkpoint = 'eval', str(tmp_path)
    with pytest.raises(RuntimeError, match='in use by pid 4242'):
      evaluation.evaluate(c, str(tmp_path))
  finally:
    holder.close()
  assert not (tmp_path / 'metrics.jsonl').exists()


def test_checkpoints_over_the_limit_are_pruned_on_open(tmp_path):
  state = {'w': jnp.arange(3.0)}
  with checkpoint.Checkpointer(tmp_path, keep=5) as ckpt:
    for s in (1, 2, 3, 4, 5):
      ckpt.save(s, state, {'step': s})
  (tmp_path / '6.orbax-checkpoint-tmp-123').mkdir()  # a save killed, or still running
  # A reader (eval mode on a run that may still be training) changes nothing.
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    assert ckpt.steps() == [1, 2, 3, 4, 5]
    assert float(ckpt.restore(state)['w'][2]) == 2.0
  assert (tmp_path / '6.orbax-checkpoint-tmp-123').is_dir()
  # The trainer (it holds the workdir's lock) cleans up.
  with checkpoint.Checkpointer(tmp_path, keep=3) as ckpt:
    assert ckpt.steps() == [3, 4, 5]
  assert sorted(p.name for p in tmp_path.iterdir()) == ['3', '4', '5']


# --------------------------------------------------------------------------- #
# Resume with changed settings
# --------------------------------------------------------------------------- #


@pytest.mark.slow
def test_training_resumed_with_another_setting_is_refused_and_the_history_kept(
  shared_data, tmp_path
):
  del shared_data
  c = cifar_it.get_config('test')
  c.train.steps = 8
  train.train_and_evaluate(c, str(tmp_path))
  for field, value in (('defence.jpeg_quality', 90), ('dtype', 'bfloat16')):
    changed = cifar_it.get_config('test')
    changed.train.steps = 12
    configs.set_field(changed, field, value)
    with pytest.raises(ValueError, match=rf'{field}: saved .*, now .*allow_changes=True'):
      train.train_and_evaluate(changed, str(tmp_path))
  # A longer run is not a change of what is trained; asked for explicitly, a
  # change goes on, and both configs stay on record.
  changed.train.allow_changes = True
  train.train_and_evaluate(changed, str(tmp_path))
  history = [json.loads(ln) for ln in (tmp_path / 'config_history.jsonl').read_text().splitlines()]
  assert [h['start_step'] for h in history] == [0, 8]
  assert [h['config']['dtype'] for h in history] == ['float32', 'bfloat16']
  assert json.loads((tmp_path / 'config.json').read_text())['dtype'] == 'bfloat16'


@pytest.mark.slow
def test_eval_resumed_with_another_setting_is_refused(tiny_checkpoint, tmp_path, monkeypatch):
  def cfg(**fields):
    c = cifar_baseline.get_config('test')
    c.train.steps = 40
    c.mode, c.checkpoint = 'eval', str(tiny_checkpoint)
    c.eval.popsize, c.eval.maxiter, c.eval.num_images, c.eval.gallery = 8, 1, 4, 0
    for k, v in fields.items():
      configs.set_field(c, k, v)
    return c

  evaluation.evaluate(cfg(), str(tmp_path))
  for field, value in (('dtype', 'bfloat16'), ('eval.mode', 'replace'), ('data.eval_subset', 100)):
    with pytest.raises(ValueError, match=rf'{field}: saved .*, now '):
      evaluation.evaluate(cfg(**{field: value}), str(tmp_path))
  # Reporting settings are not part of the protocol.
  evaluation.evaluate(cfg(**{'eval.progress': True, 'eval.batch_size': 50}), str(tmp_path))


@pytest.mark.slow
def test_a_corrupted_checkpoints_error_is_the_last_thing_printed(tiny_checkpoint, tmp_path):
  import shutil

  work = tmp_path / 'run'
  shutil.copytree(tiny_checkpoint, work)
  steps = sorted(int(p.name) for p in (work / 'checkpoints').iterdir() if p.name.isdigit())
  for f in (work / 'checkpoints' / str(steps[-1]) / 'state').rglob('*'):
    if f.is_file() and 'manifest' in f.name:
      f.write_bytes(b'garbage')
  r = subprocess.run(
    [
      sys.executable,
      'run.py',
      '--config',
      'configs/cifar_baseline.py:test',
      '--config.train.steps=44',
      f'--workdir={work}',
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS='cpu'),
  )
  lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
  assert r.returncode != 0
  assert 'CheckpointError' in lines[-1] and 'cannot be read' in lines[-1], lines[-5:]
  assert f'steps {steps[:-1]}' in lines[-1]
  assert 'Event loop is closed' not in r.stderr


# --------------------------------------------------------------------------- #
# Non-finite numbers, empty paths, names, torn history, planted files
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize('value', [float('nan'), float('inf'), -0.5])
def test_a_non_finite_or_negative_l2_penalty_is_refused(value):
  x, y = toy.cifar_like(2, H, W), np.zeros(2, np.int32)
  with pytest.raises(ValueError, match='l2_penalty must be a finite number >= 0'):
    attack.one_pixel(_linear(), x, y, key=jax.random.key(0), l2_penalty=value)


def test_a_config_seed_below_zero_is_refused_by_eval_mode(tmp_path):
  c = cifar_baseline.get_config('test')
  c.mode, c.checkpoint, c.seed = 'eval', str(tmp_path), -1
  with pytest.raises(ValueError, match=r'config.seed must be an int >= 0, got -1'):
    evaluation.evaluate(c, str(tmp_path / 'ev'))


@pytest.mark.slow
def test_training_that_turns_non_finite_stops_and_saves_nothing_non_finite(shared_data, tmp_path):
  del shared_data
  c = cifar_baseline.get_config('test')
  c.train.steps, c.train.log_every, c.train.checkpoint_every, c.train.lr = 12, 4, 4, 1e30
  with pytest.raises(FloatingPointError, match=r'training became non-finite (at|by) step \d+'):
    train.train_and_evaluate(c, str(tmp_path))
  with checkpoint.Checkpointer(tmp_path / 'checkpoints') as ckpt:
    assert ckpt.steps() == []  # the first save found the parameters non-finite
  text = (tmp_path / 'metrics.jsonl').read_text() if (tmp_path / 'metrics.jsonl').exists() else ''
  assert 'NaN' not in text and 'Infinity' not in text


@pytest.mark.parametrize('workdir', ['', '  '])
def test_an_empty_workdir_is_refused_before_anything_is_written(tmp_path, monkeypatch, workdir):
  from jaxpix.repro import suite
  from jaxpix.repro.configs import suite_table1

  monkeypatch.chdir(tmp_path)
  c = cifar_baseline.get_config('test')
  with pytest.raises(ValueError, match='the workdir is empty.*an unset variable'):
    train.train_and_evaluate(c, workdir)
  c.mode, c.checkpoint = 'eval', str(tmp_path)
  with pytest.raises(ValueError, match='the workdir is empty'):
    evaluation.evaluate(c, workdir)
  with pytest.raises(ValueError, match='the workdir is empty'):
    suite.run(suite_table1.get_config('test'), workdir)
  assert list(tmp_path.iterdir()) == []


def test_a_bare_config_name_is_ours_whatever_the_current_folder_holds(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / 'cifar_baseline.py').write_text('raise SystemExit("the user file ran")\n')
  assert configs.load('cifar_baseline:test').model.name == 'cnn6'
  (tmp_path / 'mine.py').write_text(
    'from jaxpix.configs import cifar_baseline\n'
    'def get_config(arg=None):\n'
    '  c = cifar_baseline.get_config(arg)\n'
    "  c.model.name = 'lenet'\n"
    '  return c\n'
  )
  assert configs.load('./mine.py:test').model.name == 'lenet'  # a file by its path
  with pytest.raises(FileNotFoundError, match=r'give its path, e.g. \./mine.py'):
    configs.load('mine:test')


def test_suite_rows_sharing_a_folder_or_with_a_bad_override_are_refused_first(tmp_path):
  from jaxpix.repro import suite
  from jaxpix.repro.configs import rows, suite_table1

  c = suite_table1.get_config('test')
  c.suite.rows = (rows.row('Base A', 'cifar_baseline'), rows.row('base-a', 'cifar_baseline'))
  with pytest.raises(
    ValueError, match="rows 'Base A' and 'base-a' would share the folder 'base_a'"
  ):
    suite.run(c, str(tmp_path / 's'))
  c = suite_table1.get_config('test')
  c.suite.set = 'eval.num_images=0'
  with pytest.raises(ValueError, match="suite row 'No Defence' .*num_images must be a positive"):
    suite.run(c, str(tmp_path / 's'))
  c = suite_table1.get_config('test')
  c.suite.rows = (*c.suite.rows, rows.row('Typo', 'cifar_baseline', defence__nope=1))
  with pytest.raises(ValueError, match="suite row 'Typo' .*no field 'defence.nope'"):
    suite.run(c, str(tmp_path / 's'))
  assert not (tmp_path / 's').exists()  # refused before any row trained


def test_a_torn_last_line_is_cut_before_the_next_record(tmp_path):
  path = tmp_path / 'config_history.jsonl'
  path.write_text('{"start_step": 0}\n{"start_step": 8, "conf')  # a kill mid-line
  records.JsonlLog(path).append([{'start_step': 12}])
  assert [json.loads(ln) for ln in path.read_text().splitlines()] == [
    {'start_step': 0},
    {'start_step': 12},
  ]
  path.write_text('{"a": 1}')  # a whole record whose newline was lost
  records.JsonlLog(path).append([{'b': 2}])
  assert path.read_text() == '{"a": 1}\n{"b": 2}\n'
  records.JsonlLog(path).append([{'loss': float('nan')}])
  assert path.read_text().splitlines()[-1] == '{"loss": null}'  # strict JSON


def test_a_planted_temporary_file_or_link_is_never_followed(tmp_path):
  target = tmp_path / 'elsewhere.txt'
  target.write_text('keep me')
  (tmp_path / 'config.json.tmp').symlink_to(target)
  records.write_json(tmp_path / 'config.json', {'a': 1})
  assert target.read_text() == 'keep me'
  assert json.loads((tmp_path / 'config.json').read_text()) == {'a': 1}
  assert oct((tmp_path / 'config.json').stat().st_mode & 0o777) != oct(0o600)
  assert sorted(p.name for p in tmp_path.iterdir()) == [
    'config.json',
    'config.json.tmp',
    'elsewhere.txt',
  ]
  (tmp_path / '.lock').symlink_to(target)  # nor the workdir's lock
  with pytest.raises(RuntimeError, match=r'\.lock cannot be opened as a lock file'):
    with records.workdir_lock(tmp_path):
      pass
  assert target.read_text() == 'keep me'


@pytest.mark.slow
def test_resuming_on_other_training_data_is_refused(shared_data, tmp_path):
  other = tmp_path / 'other_cifar10'
  other.mkdir()
  for f in (shared_data / 'cifar10').iterdir():
    if f.name != 'train_1.npz':
      (other / f.name).symlink_to(f)
  z = np.load(shared_data / 'cifar10' / 'train_1.npz')
  arrays = {k: z[k] for k in z.files}
  arrays['labels'] = (arrays['labels'] + 1) % 10
  np.savez(other / 'train_1.npz', **arrays)
  c = cifar_baseline.get_config('test')
  c.train.steps = 4
  train.train_and_evaluate(c, str(tmp_path / 'w'))
  c.train.steps, c.data.dir = 8, str(other)  # data.dir may change (a copy elsewhere) ...
  with pytest.raises(ValueError, match='trained on other data than config.data.dir'):
    train.train_and_evaluate(c, str(tmp_path / 'w'))  # ... the data it holds may not


@pytest.mark.slow
def test_a_step_pruned_while_read_is_replaced_by_the_new_latest(
  tiny_checkpoint, tmp_path, monkeypatch
):
  import shutil

  from jaxpix import restore

  run = tmp_path / 'run'
  shutil.copytree(tiny_checkpoint, run)
  c = cifar_baseline.get_config('test')
  c.checkpoint = str(run)
  real, calls = checkpoint.Checkpointer.latest_step, []

  def pruned_first(self):  # the first read names a step the trainer has just pruned
    calls.append(1)
    return 999 if len(calls) == 1 else real(self)

  monkeypatch.setattr(checkpoint.Checkpointer, 'latest_step', pruned_first)
  restored = restore.load_predict(c, 10)
  assert restored.step == 40 and len(calls) >= 2


def test_a_compilation_cache_that_cannot_be_made_is_skipped_with_a_warning(tmp_path, caplog):
  from jaxpix import experiment

  (tmp_path / 'home').write_text('a file, not a folder: as a read-only home, mkdir fails')
  before = jax.config.jax_compilation_cache_dir
  with caplog.at_level('WARNING'):
    experiment.enable_compilation_cache(tmp_path / 'home' / '.cache' / 'jaxpix')
  assert 'compilation cache off' in caplog.text and '--compilation_cache=DIR' in caplog.text
  assert jax.config.jax_compilation_cache_dir == before
