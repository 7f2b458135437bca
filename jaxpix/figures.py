"""PNG figures: APR attention maps per class and an adversarial-example gallery."""

from __future__ import annotations

import pathlib

import jax
import numpy as np

from jaxpix import data

# Kept for old imports; the names belong to the data (jaxpix.data.class_names).
CIFAR10_CLASSES = data.CIFAR10_CLASSES


def caption(label, class_names=None) -> str:
  """The caption of class ``label``: ``class_names[label]`` where the data
  names it, otherwise ``'class <label>'``.

  Args:
    label: a class index.
    class_names: ``names[label]`` (entries may be None) or None, as
      :func:`jaxpix.data.class_names` gives them.

  Raises:
    ValueError: ``label`` lies beyond ``class_names``, i.e. the names are
      another dataset's (CIFAR-10's ten names for ImageNet labels, say).

  Example::

    caption(417)  # 'class 417'
    caption(3, data.class_names('cifar10'))  # 'cat'
  """
  label = int(label)
  if class_names is None:
    return f'class {label}'
  if not 0 <= label < len(class_names):
    raise ValueError(
      f'label {label} has no entry in class_names ({len(class_names)} names); '
      'pass the names of the dataset the labels come from (jaxpix.data.class_names)'
    )
  name = class_names[label]
  return str(name) if name else f'class {label}'


def _pyplot():
  import matplotlib

  matplotlib.use('Agg')  # files only, no display
  import matplotlib.pyplot as plt

  return plt


def attention_maps(
  model,
  images: np.ndarray,
  labels: np.ndarray,
  path,
  *,
  class_names=None,
  max_classes: int = 10,
) -> pathlib.Path:
  """One image per class (the first of each) above its attention map A(x)
  (mean over channels), as in the APR paper's section V.F: once on the
  common 0-1 scale, once stretched to the map's own range (printed under
  it), where a map that barely varies still shows what it picks out.

  Args:
    model: an :class:`jaxpix.defences.Attended` (has ``attention_map``).
    images: float [N, H, W, 3] in [0, 1]; labels: int [N].
    path: the PNG to write.
    class_names: the captions, ``names[label]``, e.g.
      ``jaxpix.data.class_names(dataset, directory)``; None (or a None entry)
      captions a class ``'class <label>'``.
    max_classes: how many classes to show, the lowest class indices present.
  """
  classes = np.unique(np.asarray(labels))[:max_classes]
  titles = [caption(c, class_names) for c in classes]
  first = np.array([np.flatnonzero(labels == c)[0] for c in classes])
  amap = np.asarray(jax.jit(model.attention_map)(images[first])).mean(-1)  # [K, H, W]
  plt = _pyplot()
  fig, ax = plt.subplots(3, len(classes), figsize=(1.6 * len(classes), 5.2), squeeze=False)
  for j, (title, i) in enumerate(zip(titles, first, strict=True)):
    ax[0, j].imshow(images[i])
    ax[0, j].set_title(title, fontsize=8)
    im = ax[1, j].imshow(amap[j], cmap='viridis', vmin=0, vmax=1)
    lo, hi = float(amap[j].min()), float(amap[j].max())
    ax[2, j].imshow(amap[j], cmap='viridis', vmin=lo, vmax=hi + 1e-6)
    ax[2, j].text(
      0.5,
      -0.12,
      f'{lo:.2f}-{hi:.2f}',
      transform=ax[2, j].transAxes,
      ha='center',
      va='top',
      fontsize=7,
    )
    for a in ax[:, j]:
      a.axis('off')
  fig.colorbar(im, ax=ax[1, :].tolist(), fraction=0.02, label='A(x)')
  fig.text(0.11, 0.2, 'own range', rotation=90, va='center', fontsize=8)
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def attention_summary(model, images: np.ndarray, batch: int = 250) -> dict:
  """How much the attention map A(x) (mean over channels) varies, over
  ``images`` (float [N, H, W, 3] in [0, 1]): its mean and extremes, and the
  median over images of each map's standard deviation and of its 1st-99th
  percentile span. A map near one value everywhere weighs every pixel alike;
  the paper's section V.F shows maps that single out the object.
  """
  fn = jax.jit(model.attention_map)
  amap = np.concatenate(
    [np.asarray(fn(images[i : i + batch])).mean(-1) for i in range(0, len(images), batch)]
  )
  per = amap.reshape(len(amap), -1)
  lo, hi = np.percentile(per, [1, 99], axis=1)
  return dict(
    images=len(per),
    mean=float(per.mean()),
    min=float(per.min()),
    max=float(per.max()),
    median_std=float(np.median(per.std(1))),
    median_span_1_99=float(np.median(hi - lo)),
  )


def adversarial_gallery(
  result, images: np.ndarray, path, *, n: int = 8, class_names=None
) -> pathlib.Path:
  """Original and attacked image side by side for up to ``n`` successful
  attacks (unsuccessful ones if none), the changed pixels circled, with the
  labels and probabilities before and after. Images the model got wrong
  before any change (``result.misclassified``) were not attacked and are
  never drawn; if every image is one, the figure says so.

  Args:
    result: an :class:`jaxpix.attack.AttackResult` on ``images``.
    class_names: the captions, ``names[label]``, e.g.
      ``jaxpix.data.class_names(dataset, directory)``; None (or a None entry)
      captions a class ``'class <label>'``.
  """
  attacked = ~np.asarray(result.misclassified, bool)
  pick = np.flatnonzero(attacked & np.asarray(result.success, bool))[:n]
  if not len(pick):
    pick = np.flatnonzero(attacked)[:n]
  if not len(pick):
    return _note(path, f'no image attacked: the model got all {len(attacked)} wrong unchanged')
  plt = _pyplot()
  fig, ax = plt.subplots(2, len(pick), figsize=(1.9 * len(pick), 4.2), squeeze=False)
  for j, i in enumerate(pick):
    y = result.labels[i]
    ax[0, j].imshow(images[i])
    ax[0, j].set_title(f'{caption(y, class_names)}\np={result.clean_true_prob[i]:.2f}', fontsize=7)
    ax[1, j].imshow(result.adv_images[i])
    for r, c in result.positions[i]:
      ax[1, j].add_patch(plt.Circle((c, r), 1.5, fill=False, color='red', lw=1.2))
    ax[1, j].set_title(
      f'{caption(result.adv_label[i], class_names)}\np={result.adv_prob[i]:.2f}', fontsize=7
    )
    for a in ax[:, j]:
      a.axis('off')
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def _note(path, text: str) -> pathlib.Path:
  """A small PNG that says ``text``, where a figure has nothing to draw."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(4, 1))
  ax.text(0.5, 0.5, text, ha='center', va='center', fontsize=8)
  ax.axis('off')
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def asr_vs_budget(curves: dict, path, *, title: str = '') -> pathlib.Path:
  """Attack success rate against query budget, one step curve per entry of
  ``curves`` (``{label: {'budget': [...], 'asr': [...]}}``, as
  ``jaxpix.evaluation.metrics.asr_curve`` makes them; with ``'low'``/``'high'`` lists a
  band is drawn too)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5, 3.4))
  for label, c in curves.items():
    b = np.concatenate([[0], np.asarray(c['budget'], np.float64)])
    a = np.concatenate([[0], np.asarray(c['asr'], np.float64)])
    ax.step(b, a, where='post', label=label)
    if 'low' in c:
      ax.fill_between(
        b, np.concatenate([[0], c['low']]), np.concatenate([[0], c['high']]), step='post', alpha=0.2
      )
  ax.set_xlabel('model evaluations per image (query budget)')
  ax.set_ylabel('attack success rate')
  ax.set_ylim(0, 1)
  ax.grid(alpha=0.3)
  if title:
    ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  path = pathlib.Path(path)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
