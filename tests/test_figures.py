"""Figures: captions name the dataset's own classes, never CIFAR-10's by default."""

import types

import jax.numpy as jnp
import numpy as np
import pytest

from jaxpix import data, figures


@pytest.fixture
def titles(monkeypatch):
  """The titles the figures set on their axes, in order."""
  import matplotlib.axes

  seen = []
  original = matplotlib.axes.Axes.set_title

  def record(self, label, *args, **kwargs):
    seen.append(label)
    return original(self, label, *args, **kwargs)

  monkeypatch.setattr(matplotlib.axes.Axes, 'set_title', record)
  return seen


class _Attention:
  """A model whose attention map is its input (all attention_maps needs)."""

  def attention_map(self, x):
    return jnp.asarray(x)


def _images(n, size=8):
  return np.random.default_rng(0).random((n, size, size, 3)).astype(np.float32)


def _result(labels, adv_labels):
  n = len(labels)
  return types.SimpleNamespace(
    success=np.ones(n, bool),
    labels=np.asarray(labels),
    clean_true_prob=np.full(n, 0.9),
    adv_images=_images(n),
    positions=np.zeros((n, 1, 2), np.int32),
    adv_label=np.asarray(adv_labels),
    adv_prob=np.full(n, 0.6),
  )


def test_caption():
  assert figures.caption(417) == 'class 417'
  assert figures.caption(np.int32(3), data.class_names('cifar10')) == 'cat'
  names = [None] * 1000
  names[0] = 'tench'
  assert figures.caption(0, names) == 'tench'
  assert figures.caption(1, names) == 'class 1'  # the data has no name for it
  with pytest.raises(ValueError, match=r'label 417 has no entry in class_names \(10 names\)'):
    figures.caption(417, data.CIFAR10_CLASSES)


def test_attention_maps_of_imagenet_labels_are_not_cifar_names(tmp_path, titles):
  # ImageNet labels, some below 10: the old default called 0, 3, 5 airplane, cat, dog.
  labels = np.array([417, 3, 999, 0, 3, 5])
  p = figures.attention_maps(_Attention(), _images(6), labels, tmp_path / 'att.png')
  assert p.is_file()
  assert titles == ['class 0', 'class 3', 'class 5', 'class 417', 'class 999']
  titles.clear()
  names = [f'synset {k}' for k in range(1000)]
  figures.attention_maps(_Attention(), _images(6), labels, tmp_path / 'att.png', class_names=names)
  assert titles == ['synset 0', 'synset 3', 'synset 5', 'synset 417', 'synset 999']


def test_attention_maps_of_cifar10_keep_its_names_and_ten_columns(tmp_path, titles):
  from PIL import Image

  labels = np.arange(20) % 10
  p = figures.attention_maps(
    _Attention(), _images(20), labels, tmp_path / 'att.png', class_names=data.class_names('cifar10')
  )
  assert titles == list(data.CIFAR10_CLASSES)
  assert Image.open(p).size[0] >= 10 * 100  # one column per class
  titles.clear()
  figures.attention_maps(_Attention(), _images(30), np.arange(30), tmp_path / 'att.png')
  assert titles == [f'class {k}' for k in range(10)]  # max_classes: the first ten present


def test_gallery_of_imagenet_labels_are_not_cifar_names(tmp_path, titles):
  r = _result([417, 3], [3, 999])
  p = figures.adversarial_gallery(r, _images(2), tmp_path / 'gallery.png')
  assert p.is_file()
  assert [t.split('\n')[0] for t in titles] == ['class 417', 'class 3', 'class 3', 'class 999']
  assert titles[0] == 'class 417\np=0.90' and titles[1] == 'class 3\np=0.60'
  # Names of another dataset are refused rather than printed.
  with pytest.raises(ValueError, match='label 417 has no entry'):
    figures.adversarial_gallery(
      r, _images(2), tmp_path / 'g.png', class_names=data.class_names('cifar10')
    )


def test_gallery_with_the_imagenet_sample_names(tmp_path, titles, shared_data):
  names = data.class_names('imagenet_sample', shared_data / 'imagenet_sample')
  r = _result([0, 4], [417, 2])
  figures.adversarial_gallery(r, _images(2), tmp_path / 'gallery.png', class_names=names)
  # 417 is odd, so the sample has no name for it: captioned by index.
  assert [t.split('\n')[0] for t in titles] == [
    'tench',
    'class 417',
    'hammerhead',
    'great_white_shark',
  ]


def test_attention_summary_measures_how_much_each_map_varies():
  x = np.zeros((4, 10, 10, 3), np.float32)
  x[:2] = 0.5  # flat maps
  x[2:, :5] = 0.2  # maps with two values, half each: std 0.3, span 0.6
  x[2:, 5:] = 0.8
  s = figures.attention_summary(_Attention(), x, batch=3)
  assert s['images'] == 4 and s['min'] == pytest.approx(0.2) and s['max'] == pytest.approx(0.8)
  assert s['mean'] == pytest.approx(0.5)
  assert s['median_std'] == pytest.approx(0.15)  # median of 0, 0, 0.3, 0.3
  assert s['median_span_1_99'] == pytest.approx(0.3)  # median of 0, 0, 0.6, 0.6


@pytest.mark.slow
def test_attention_maps_script_on_the_committed_apr_checkpoint(shared_data, tmp_path, capsys):
  """docs/attention_maps.py: the numbers docs/results.md quotes for the
  operating-point APR model (its first 500 test images)."""
  import importlib.util
  import json
  import pathlib

  del shared_data
  docs = pathlib.Path(__file__).resolve().parents[1] / 'docs'
  spec = importlib.util.spec_from_file_location('attention_maps', docs / 'attention_maps.py')
  script = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(script)
  ckpt = docs / 'results' / 'table1_paired_targeted' / 'apr' / 'seed0' / 'train'
  s = script.main([str(ckpt), '--out', str(tmp_path / 'att.png')])
  assert json.loads(capsys.readouterr().out) == s
  assert (tmp_path / 'att.png').stat().st_size > 1000
  # Nearly flat maps: about 0.55 everywhere, each varying by under 0.1.
  assert s['images'] == 500 and 0.5 < s['mean'] < 0.6
  assert s['median_std'] < 0.03 and s['median_span_1_99'] < 0.1
  with pytest.raises(SystemExit):
    script.main([str(ckpt), '--config', 'cifar_baseline:cpu'])
