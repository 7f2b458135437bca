"""The zoo: every published model loads offline and scores its recorded clean
accuracy; files are checked against the manifest's sha256; any run folder
comes back from its own config.json; eval mode takes a zoo name."""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

from jaxpix import checkpoint, data, models, restore, zoo
from jaxpix.attack import forward
from jaxpix.configs import cifar_apr, cifar_autoencoder, cifar_baseline, common
from jaxpix.repro import publish_zoo

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_the_zoo_lists_the_models_the_docs_quote():
  names = zoo.list()
  for name in (
    'resnet18_w0.25-none',
    'resnet18_w0.25-apr',
    'resnet18_w0.25-it',
    'resnet18_w0.25-median',
    'resnet18_w0.25-ablation',
    'autoencoder_w32',
    *(
      f'{m}-{d}'
      for m in (
        'lenet',
        'pure_cnn_w0.25',
        'nin_w0.25',
        'resnet32_w0.5',
        'densenet_bc40_w0.5',
        'wrn16_8_w0.125',
      )
      for d in ('none', 'autoencoder')
    ),
  ):
    assert name in names
  for name in names:
    record = zoo.info(name)
    assert record['kind'] in zoo.KINDS
    assert all(r.startswith('docs/results/') for r in record['results'])
    if record['kind'] != 'pipeline':
      assert len(record['sha256']) == 64 and record['file'] == f'weights/{name}.safetensors'
      assert not (zoo.ROOT / record['file']).stat().st_size > 4e6


@pytest.mark.slow
@pytest.mark.parametrize('name', [n for n in zoo.list() if zoo.info(n)['kind'] != 'autoencoder'])
def test_every_zoo_model_scores_its_recorded_clean_accuracy(shared_data, name):
  test = data.load_npz('cifar10', 'test', shared_data / 'cifar10')
  m = zoo.load(name)
  # A smoothed classifier (randomized ablation) records its Monte Carlo
  # accuracy on the fixed images, and its predict's (a stand-in) apart.
  smoothed = 'predict_accuracy' in m.record
  assert len(test) == (m.record['predict_accuracy_images'] if smoothed else 1000)
  assert m.record['clean_accuracy_images'] == (500 if smoothed else 1000)
  logits = forward.batched_logits(m.predict, data.to_float(test.images), 500, params=m.params)
  accuracy = float(np.mean(logits.argmax(-1) == test.labels))
  # Recorded by the evaluation on this CPU; another device's float rounding
  # may flip an image or two whose top two logits nearly tie.
  expected = m.record['predict_accuracy'] if smoothed else m.record['clean_accuracy']
  assert accuracy == pytest.approx(expected, abs=0.002)
  # ... and is the number of the committed results the record names.
  results = json.loads((REPO / m.record['results'][0]).read_text())
  recorded = results.get('autoencoder_table4', {})
  assert m.record['clean_accuracy'] in (
    results['clean_accuracy'],
    recorded.get('clean_accuracy_classifier'),
  )


def test_the_autoencoder_reconstructs_images():
  m = zoo.load('autoencoder_w32')
  x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
  out = np.asarray(m.predict(m.params, x))
  assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
  assert np.abs(out - x).mean() < 0.25  # close to its input, not a constant


def _tiny_zoo(tmp_path, name='lenet-none'):
  root = tmp_path / 'zoo'
  (root / 'weights').mkdir(parents=True)
  record = zoo.info(name)
  shutil.copy(zoo.ROOT / record['file'], root / record['file'])
  (root / 'manifest.json').write_text(json.dumps({name: record}))
  return root


def test_the_zoo_refuses_unknown_names_missing_and_altered_files(tmp_path, monkeypatch):
  with pytest.raises(zoo.ZooError, match="no model 'lenet'.*lenet-none"):
    zoo.load('lenet')
  root = _tiny_zoo(tmp_path)
  monkeypatch.setenv('JAXPIX_ZOO', str(root))
  assert zoo.list() == ['lenet-none']
  zoo.load('lenet-none')
  path = root / 'weights' / 'lenet-none.safetensors'
  blob = bytearray(path.read_bytes())
  blob[-1] ^= 1
  path.write_bytes(bytes(blob))
  with pytest.raises(zoo.ZooError, match='sha256 .* the manifest says'):
    zoo.load('lenet-none')
  path.unlink()
  with pytest.raises(zoo.ZooError, match='is missing'):
    zoo.load('lenet-none')


def test_publish_then_load_gives_the_same_function(tmp_path):
  model = models.create('cnn6', num_classes=10, width=0.125, seed=3)
  config = common.base()
  config.model.name, config.model.width = 'cnn6', 0.125
  record = dict(kind='classifier', config=config.to_dict(), num_classes=10, step=0, results=['x'])
  zoo.publish('cnn6_tiny', model, record, root=tmp_path)
  m = zoo.load('cnn6_tiny', root=tmp_path)
  x = np.random.default_rng(1).random((3, 32, 32, 3), np.float32)
  np.testing.assert_allclose(
    np.asarray(m.predict(m.params, x)), np.asarray(models.as_predict(model)(x)), rtol=1e-6
  )
  with pytest.raises(ValueError, match='use letters, digits'):
    zoo.publish('../escape', model, record, root=tmp_path)
  assert zoo.info('cnn6_tiny', root=tmp_path)['sha256'] == zoo.sha256(
    tmp_path / 'weights' / 'cnn6_tiny.safetensors'
  )


def test_the_publisher_refuses_an_unknown_model_before_reading_any_run(tmp_path, capsys):
  with pytest.raises(SystemExit):
    publish_zoo.main(['--runs', str(tmp_path / 'absent'), '--only', 'resnet18_w0.25-at'])
  err = capsys.readouterr().err
  assert "unknown model(s) ['resnet18_w0.25-at']" in err and 'resnet18_w0.25-it' in err


@pytest.mark.slow
def test_a_run_folder_comes_back_from_its_own_config(tiny_checkpoint):
  c = cifar_baseline.get_config('test')
  c.checkpoint = str(tiny_checkpoint)
  by_config = restore.load_predict(c, 10)
  by_folder = restore.from_workdir(tiny_checkpoint)
  assert by_folder.step == by_config.step == 40
  assert by_folder.config.model.width == c.model.width
  x = np.random.default_rng(2).random((4, 32, 32, 3), np.float32)
  np.testing.assert_array_equal(
    np.asarray(jax.jit(by_folder.predict)(x)), np.asarray(jax.jit(by_config.predict)(x))
  )
  with pytest.raises(checkpoint.CheckpointError, match='no config.json'):
    restore.from_workdir(tiny_checkpoint / 'checkpoints')


@pytest.mark.slow
def test_eval_config_naming_a_zoo_model_is_checked_against_its_record():
  c = cifar_apr.get_config('cpu')
  c.checkpoint = 'zoo:resnet18_w0.25-apr'
  restored = restore.load_predict(c, 10)
  assert restored.step == zoo.info('resnet18_w0.25-apr')['step']
  c.defence.attention_kernel = 5  # shapes the attention's weights
  with pytest.raises(checkpoint.CheckpointError, match='defence.attention_kernel: saved 3, now 5'):
    restore.load_predict(c, 10)
  c = cifar_apr.get_config('cpu')
  c.checkpoint = 'zoo:resnet18_w0.25-none'  # no defence, the config asks for APR
  with pytest.raises(checkpoint.CheckpointError, match="defence='none'"):
    restore.load_predict(c, 10)
  c.checkpoint = 'zoo:nope'
  with pytest.raises(checkpoint.CheckpointError, match='no model'):
    restore.load_predict(c, 10)
  # A pipeline: its classifier is the config's model, its autoencoder the one
  # every row shares (trained before LeNet), whatever the classifier.
  c = cifar_autoencoder.get_config('cpu,nin')
  c.defence.ae_width, c.checkpoint = 32, 'zoo:nin_w0.25-autoencoder'
  restored = restore.load_predict(c, 10)
  assert restored.classifier is not None and restored.step == 2808
  c.checkpoint = 'zoo:lenet-autoencoder'  # another classifier than the config's
  with pytest.raises(checkpoint.CheckpointError, match="model='lenet'.*model='nin'"):
    restore.load_predict(c, 10)


@pytest.mark.slow
def test_resuming_with_a_field_that_shapes_the_model_is_refused_even_when_allowed(
  shared_data, tmp_path
):
  from jaxpix import train

  del shared_data
  c = cifar_apr.get_config('test')
  c.train.steps = 4
  train.train_and_evaluate(c, str(tmp_path))
  c.train.steps, c.train.allow_changes, c.defence.attention_kernel = 8, True, 5
  with pytest.raises(checkpoint.CheckpointError, match='defence.attention_kernel: saved 3, now 5'):
    train.train_and_evaluate(c, str(tmp_path))
