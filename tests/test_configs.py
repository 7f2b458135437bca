"""The configs in the package: loading by name or path, variants, overrides."""

import json

import pytest

from jaxpix import build, configs


def test_every_config_loads_by_name_with_its_variants():
  for name in configs.names():
    c = configs.load(name)
    if c.mode != 'suite':
      assert c.defence.name in build.DEFENCES, name
  a = configs.load('cifar_apr.py:cpu,no_reg')
  b = configs.load('configs/cifar_apr.py:cpu,no_reg')  # run.py's spelling
  assert a == b and a.defence.beta == 0.0 and a.model.width == 0.25
  with pytest.raises(ValueError, match=r"unknown config variant\(s\) \['nope'\]"):
    configs.load('cifar_apr:nope')
  with pytest.raises(FileNotFoundError, match='neither a jaxpix config'):
    configs.load('nope.py:cpu')


def test_a_config_file_outside_the_package(tmp_path):
  f = tmp_path / 'mine.py'
  f.write_text(
    'from jaxpix.configs import cifar_baseline\n\n\ndef get_config(arg=None):\n'
    '  c = cifar_baseline.get_config(arg)\n  c.train.epochs = 3\n  return c\n'
  )
  assert configs.load(f'{f}:cpu').train.epochs == 3


def test_test_variant_keeps_the_model_asked_for():
  # ':test' shrinks the run; a model variant beside it is still that model.
  assert configs.load('cifar_baseline:test').model.name == 'cnn6'
  for name in ('cifar_baseline', 'cifar_apr', 'cifar_at', 'cifar_it', 'cifar_dd'):
    assert configs.load(f'{name}:test,vgg16').model.name == 'vgg16', name
  assert configs.load('cifar_autoencoder:test,lenet').model.name == 'lenet'


def test_cpu_autoencoder_zoo_sizes():
  # At cpu each zoo model is cut to its CPU width; DenseNet-BC-100 becomes
  # DenseNet-BC-40 (a full-size run keeps the paper's model).
  got = {
    name: (c.model.name, c.model.width)
    for name in ('lenet', 'densenet_bc100', 'wrn16_8')
    for c in [configs.load(f'cifar_autoencoder:cpu,{name}')]
  }
  assert got == {
    'lenet': ('lenet', 1.0),
    'densenet_bc100': ('densenet_bc40', 0.5),
    'wrn16_8': ('wrn16_8', 0.125),
  }
  full = configs.load('cifar_autoencoder:densenet_bc100').model
  assert (full.name, full.width) == ('densenet_bc100', 1.0)


def test_overrides():
  cfg = configs.load('cifar_apr.py:cpu')
  configs.apply_overrides(cfg, 'train.epochs=2, eval.num_images=50,train.lr=1')
  assert (cfg.train.epochs, cfg.eval.num_images, cfg.train.lr) == (2, 50, 1.0)
  assert isinstance(cfg.train.lr, float)
  with pytest.raises(ValueError, match="no field 'train.epoch'"):
    configs.apply_overrides(cfg, 'train.epoch=2')
  with pytest.raises(ValueError, match='must read field=value'):
    configs.apply_overrides(cfg, 'train.epochs')


def test_defence_name_is_a_dispatch_key():
  c = configs.load('cifar_apr:cpu,no_adv')
  assert c.defence.name == 'apr' and not c.defence.adversarial
  c.defence.name = 'apr_no_adv'
  with pytest.raises(ValueError, match='config.defence.name must be one of'):
    build.check_defence(c)


def test_a_frozen_model_resumes_from_its_own_latest_checkpoint():
  # The student resuming from its step 8 says nothing of its teacher's steps.
  c = configs.load('cifar_dd:test')
  c.train.resume_step, c.eval.step = 8, 4
  t = build.frozen_config(c, 'teacher')
  assert (t.train.resume_step, t.eval.step, t.defence.name) == (0, 0, 'dd_teacher')
  assert c.train.resume_step == 8  # the run's own config is untouched


def test_a_field_added_since_is_no_change_at_its_old_behaviour():
  # Checkpoints and attack logs written before defence.autoencoder existed
  # lack it; at '' (train the autoencoder here) they resume, at a path not.
  saved = {'model.name': 'lenet'}
  assert configs.differences(saved, {'model.name': 'lenet', 'defence.autoencoder': ''}) == []
  assert configs.differences(saved, {'model.name': 'lenet', 'defence.autoencoder': 'w/a'}) == [
    "defence.autoencoder: saved '(absent)', now 'w/a'"
  ]
  # Any other field only one side has is a change, as before.
  assert configs.differences(saved, {'model.name': 'lenet', 'model.width': 1.0}) == [
    "model.width: saved '(absent)', now 1.0"
  ]


def test_inference_benchmark_reads_a_configs_overrides():
  from benchmarks import inference_time

  cfg = inference_time.load('cifar_autoencoder.py:cpu,lenet defence.ae_width=32,model.width=0.5')
  assert (cfg.model.name, cfg.model.width, cfg.defence.ae_width) == ('lenet', 0.5, 32)
  with pytest.raises(ValueError, match='defence.ae_widht'):
    inference_time.load('cifar_autoencoder.py:cpu defence.ae_widht=32')


@pytest.mark.slow
def test_inference_benchmark_times_an_autoencoders_bare_classifier(capsys):
  from benchmarks import inference_time

  argv = '--batch 4 --reps 1 --configs cifar_baseline.py:test cifar_autoencoder.py:test'
  inference_time.main(argv.split())
  rows = [json.loads(ln) for ln in capsys.readouterr().out.splitlines()]
  assert [r['defence'] for r in rows] == ['none', 'autoencoder']
  assert rows[0]['relative'] == 1.0 and 'classifier_images_per_s' not in rows[0]
  assert rows[1]['ae_width'] == 8 and rows[1]['classifier_images_per_s'] > 0
