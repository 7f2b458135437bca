"""How an attack runs over a data set, and what it returns.

:func:`run` checks the arguments every attack shares, makes the clean forward
pass, sets aside the images the model already gets wrong (they are not
attacked: no search runs and no query is spent on them), runs the search over
the others in the slot loop (``loop.py``) and gathers an :class:`AttackResult`.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import checks, forward, loop, perturb, search
from jaxpix.attack.engine import Fitness, Predict

# Default forward batch per device, by backend, rounded down to whole
# populations (at least one). CPU: the CIFAR zoo's forward rate, measured over
# batch sizes by benchmarks/attack_throughput.py (benchmarks/README.md), is
# best at a few hundred images and falls by ~10% towards 4k as caches
# overflow. Accelerators want large batches to fill the device; 4096 is not
# measured here (no GPU): pass ``batch`` (attack_throughput.py's ``--batch``
# measures one).
DEFAULT_BATCH = {'cpu': 400}
_ACCELERATOR_BATCH = 4096
# A fill search (search.Search.fill) keeps a forward pass's worth of
# candidates in flight at FILL_WIDTH per image (batch // FILL_WIDTH images,
# at least 16), so that it adapts after every few queries while the queue
# lasts; as images finish, the others get more candidates per step (up to
# FILL_WIDEN passes' worth in all), so that a run's tail and a small N still
# fill whole passes. Width 4 cost the one-pixel search nothing measurable
# against width 1 in replays on candidate tables, and amortises its per-step
# work (benchmarks/README.md).
FILL_WIDTH = 4
FILL_WIDEN = 8


def default_batch(devices=None) -> int:
  """The forward batch per device an attack uses when ``batch`` is not given."""
  platform = (list(devices)[0] if devices else jax.local_devices()[0]).platform
  return DEFAULT_BATCH.get(platform, _ACCELERATOR_BATCH)


@dataclasses.dataclass
class AttackResult:
  """What an attack found, one entry per image (numpy arrays).

  An image the model already gets wrong (``misclassified``) is not attacked:
  no search runs, ``queries`` is 0, ``success`` False, ``adv_images`` the
  image itself (``positions`` (0, 0) with its own colour, a change of
  nothing), and the model's outputs are those on it; :attr:`success_rate`
  leaves it out. Targeted: the same images are left out, whatever the target.

  Attributes:
    adv_images: [N, H, W, C] float32 in [0, 1]: the best candidate found
      applied to the image, whether or not it fools the model.
    success: bool [N], misclassified (untargeted) or classified as the target
      after the attack; False for an image not attacked.
    queries: int [N], model evaluations spent on the image: the initial
      population plus every trial evaluated (padding excluded). The clean
      forward pass of every image is not counted.
    positions: int [N, k, 2], (row, col) of each perturbed pixel.
    colors: int [N, k, C], each pixel's new colour (``replace``) or its delta
      (``add``), in 8-bit units.
    true_prob, adv_prob, adv_label: the model on ``adv_images``: probability of
      the true label, of its predicted label, and that label.
    target_prob: probability of the target class (targeted attacks), else None.
    fitness: the best fitness reached (lower is better): p(true) or
      1 - p(target), plus the L2 penalty if any.
    labels, targets: what was attacked.
    clean_label, clean_true_prob: the model on the unperturbed images.
    misclassified: bool [N], ``clean_label != labels``: the model gets the
      image wrong before any change. Derived from those two when not given
      (a result rebuilt from a log).
  """

  adv_images: np.ndarray
  success: np.ndarray
  queries: np.ndarray
  positions: np.ndarray
  colors: np.ndarray
  true_prob: np.ndarray
  adv_prob: np.ndarray
  adv_label: np.ndarray
  target_prob: np.ndarray | None
  fitness: np.ndarray
  labels: np.ndarray
  targets: np.ndarray | None
  clean_label: np.ndarray
  clean_true_prob: np.ndarray
  misclassified: np.ndarray | None = None

  def __post_init__(self):
    if self.misclassified is None:
      self.misclassified = np.asarray(self.clean_label) != np.asarray(self.labels)

  @property
  def success_rate(self) -> float:
    """The attack success rate: successes over the images attacked, those the
    model classified correctly (targeted: over their (image, target) pairs);
    NaN if none was. Not ``success.mean()``, which counts the misclassified
    images as failures."""
    attacked = ~np.asarray(self.misclassified, bool)
    return float(np.mean(self.success[attacked])) if attacked.any() else float('nan')


# One compiled call, not one per operation (a first run would compile each).
_decode = jax.jit(perturb.decode, static_argnums=(1, 2, 3, 4))


def run(
  srch: search.Search | Callable[[int], search.Search],
  fit: Fitness,
  predict: Predict,
  x: np.ndarray,
  labels,
  targets,
  key: jax.Array,
  pixels: int,
  options: dict,
  *,
  steps_per_call: int,
  search_data=None,
) -> AttackResult:
  """Runs ``srch`` over the checked images ``x``, each scored by ``fit``.

  Args:
    srch, fit: the search and its fitness. A ``fill`` search is given as
      ``p -> Search``, built once the run knows how many images are in flight
      (``p``: the most candidates an image may get in one step).
    predict, labels, targets, key: as the attack was given them (checked here).
    pixels: pixels per candidate (its length is ``pixels * (2 + C)``).
    options: the attack's run options (``attacks.RunOptions``).
    steps_per_call: the attack's default for ``options['steps_per_call']``.
    search_data: ``(fn, params, x, labels, targets or None) -> [M, ...]``, each
      attacked image's input to a search that takes one.
  """
  n, h, w, c = x.shape
  fn, params = forward.with_params(predict, options.get('params'))
  k = checks.num_classes(functools.partial(fn, params), (h, w, c))
  y = checks.labels('labels', labels, n, k)
  t = checks.targets(targets, y, n, k)
  idx = checks.indices(options.get('indices'), n)
  devices = options.get('devices')
  devices = list(jax.local_devices() if devices is None else devices)
  batch = options.get('batch')
  batch = default_batch(devices) if batch is None else batch
  checks.positive_int('batch', batch)
  slots = options.get('slots')
  if slots is not None:
    checks.positive_int('slots', slots)
  steps = options.get('steps_per_call')
  steps = steps_per_call if steps is None else steps
  checks.positive_int('steps_per_call', steps)
  per_dev = -(-n // len(devices))
  if callable(srch):  # a fill search, built for its share of each pass
    # Sized by all N images, attacked or not: the compiled loop's shapes do not
    # depend on how many the model gets right (new parameters compile nothing).
    slots = max(16, batch // FILL_WIDTH) if slots is None else slots
    slots = max(1, min(slots, per_dev))
    srch = srch(min(batch, -(-FILL_WIDEN * batch // slots)))
    per_pass = batch  # candidates per forward pass
  else:
    per_pass = max(1, batch // srch.num_candidates)
    slots = max(4 * per_pass, 16) if slots is None else slots
    slots = max(1, min(slots, per_dev))
    per_pass = min(per_pass, slots)

  clean = checks.outputs(forward.batched_logits(fn, x, params=params), idx)  # [N, K]
  clean = np.exp(clean - clean.max(-1, keepdims=True))  # softmax, on the host
  clean /= clean.sum(-1, keepdims=True)
  clean_label = clean.argmax(-1).astype(np.int32)
  wrong = clean_label != y
  cls = y if t is None else t
  rec = _unattacked(x, clean, y, cls, fit, idx, pixels)

  progress = options.get('progress', False)
  callback = loop.ProgressBar(n) if progress is True else (progress or None)
  if callback is not None and wrong.any():
    callback(_with_flags({f: v[wrong] for f, v in rec.items()}, True))
  todo = np.flatnonzero(~wrong)
  if len(todo):
    xs, ys, ts = x[todo], y[todo], None if t is None else t[todo]
    found = loop.run(
      srch,
      fn,
      params,
      fit,
      xs,
      ys,
      cls[todo],
      idx[todo],
      key,
      dim=pixels * (2 + c),
      slots=slots,
      per_pass=per_pass,
      devices=devices,
      steps_per_call=steps,
      progress=None if callback is None else lambda fin: callback(_with_flags(fin, False)),
      data=None if search_data is None else search_data(fn, params, xs, ys, ts),
    )
    for f, v in found.items():
      rec[f][todo] = v
  if isinstance(callback, loop.ProgressBar):
    callback.close()

  pos, val = jax.device_get(_decode(jnp.asarray(rec['vec']), h, w, c, fit.mode))
  adv = perturb.apply_candidates(x, rec['vec'], fit.mode)
  adv[wrong] = x[wrong]  # exactly the image, whatever float it was given as
  return AttackResult(
    adv_images=adv,
    success=rec['success'],
    queries=rec['queries'],
    positions=pos,
    colors=val,
    true_prob=rec['true_prob'],
    adv_prob=rec['pred_prob'],
    adv_label=rec['pred'],
    target_prob=None if t is None else rec['target_prob'],
    fitness=rec['fitness'],
    labels=y,
    targets=t,
    clean_label=clean_label,
    clean_true_prob=clean[np.arange(n), y],
    misclassified=wrong,
  )


def _unattacked(x, clean, y, cls, fit: Fitness, idx, pixels: int) -> dict:
  """The records (``loop.run``'s fields) of images not attacked: the model on
  the image itself, its candidate one that changes nothing (pixel (0, 0) set
  to its own colour, or moved by 0), no query, no success."""
  n, c = len(x), x.shape[-1]
  rows = np.arange(n)
  own = np.round(x[:, 0, 0] * 255) if fit.mode == 'replace' else np.zeros((n, c))
  gene = np.concatenate([np.full((n, 2), 0.5), own], 1)  # +0.5: inside pixel (0, 0)
  target_prob = clean[rows, cls]
  return dict(
    vec=np.tile(gene, (1, pixels)).astype(np.float32),
    fitness=(1.0 - target_prob if fit.targeted else clean[rows, y]).astype(np.float32),
    success=np.zeros(n, bool),
    stop=np.zeros(n, bool),
    true_prob=clean[rows, y].astype(np.float32),
    pred=clean.argmax(-1).astype(np.int32),
    pred_prob=clean.max(-1).astype(np.float32),
    target_prob=target_prob.astype(np.float32),
    gidx=idx,
    queries=np.zeros(n, np.int32),
  )


def _with_flags(finished: dict, misclassified: bool) -> dict:
  """A progress record as the callback gets it: with ``misclassified``."""
  m = len(finished['gidx'])
  return dict(finished, misclassified=np.full(m, misclassified))
