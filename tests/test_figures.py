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


def _result(labels, adv_labels, success=None, misclassified=None):
  n = len(labels)
  return types.SimpleNamespace(
    success=np.ones(n, bool) if success is None else np.asarray(success),
    misclassified=np.zeros(n, bool) if misclassified is None else np.asarray(misclassified),
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


def test_gallery_never_draws_an_image_the_model_got_wrong_unchanged(tmp_path, titles):
  # Image 0 was misclassified before any change: never drawn, even flagged a
  # success (as results from before the flag counted it).
  r = _result([0, 1, 2], [5, 6, 7], success=[True, True, False], misclassified=[1, 0, 0])
  figures.adversarial_gallery(r, _images(3), tmp_path / 'g.png')
  assert titles == ['class 1\np=0.90', 'class 6\np=0.60']
  # No success among the attacked: the unsuccessful attacked ones, still not image 0.
  titles.clear()
  r = _result([0, 1, 2], [5, 1, 2], success=[True, False, False], misclassified=[1, 0, 0])
  figures.adversarial_gallery(r, _images(3), tmp_path / 'g.png')
  assert [t.split('\n')[0] for t in titles] == ['class 1', 'class 1', 'class 2', 'class 2']
  # None attacked: a figure that says so, no image.
  titles.clear()
  r = _result([0, 1], [0, 1], success=[False, False], misclassified=[1, 1])
  p = figures.adversarial_gallery(r, _images(2), tmp_path / 'g.png')
  assert p.is_file() and titles == []


def test_gallery_of_a_real_attack_leaves_out_the_misclassified(tmp_path, titles):
  from jaxpix import attack

  import toy_models as toy

  # Class 0 unless pixel (1, 2) is magenta; image 1 is labelled 1: wrong already.
  x = toy.cifar_like(3, 4, 5)
  x[:, 1, 2] = 128 / 255
  y = np.array([0, 1, 0], np.int32)
  r = attack.extreme_colour(toy.exact_corner((1, 2), (255, 0, 255)), x, y, chunk=16)
  assert list(r.misclassified) == [False, True, False] and r.success_rate == 1.0
  figures.adversarial_gallery(r, x, tmp_path / 'g.png')
  # Images 0 and 2, fooled into class 1; image 1 (a success under the old
  # counting) is not among them.
  assert [t.split('\n')[0] for t in titles] == ['class 0', 'class 1', 'class 0', 'class 1']


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
def test_attention_maps_script_on_the_retrained_apr(shared_data, tmp_path, capsys):
  """jaxpix.repro.attention_maps: the numbers docs/results.md quotes for the
  retrained APR (the zoo's resnet18_w0.25-apr; its first 500 test images)."""
  import json

  from jaxpix.repro import attention_maps

  del shared_data
  s = attention_maps.main(['zoo:resnet18_w0.25-apr', '--out', str(tmp_path / 'att.png')])
  assert json.loads(capsys.readouterr().out) == s
  assert (tmp_path / 'att.png').stat().st_size > 1000
  # Nearly flat maps: about 0.55 everywhere, each varying by under 0.1.
  assert s['images'] == 500 and 0.5 < s['mean'] < 0.6
  assert s['median_std'] < 0.03 and s['median_span_1_99'] < 0.1
  with pytest.raises(SystemExit):
    attention_maps.main(['zoo:resnet18_w0.25-apr', '--config', 'cifar_baseline:cpu'])
