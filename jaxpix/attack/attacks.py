"""Public attacks: ``one_pixel`` (differential evolution), ``extreme_colour``
(exhaustive search) and ``de_fixed_budget`` (the jittable core for training).

Input checks live in ``checks.py``, the searches in ``search.py``, the
batched loop that runs them in ``engine.py`` and the model's forward passes on
host arrays in ``forward.py``."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import checks, engine, forward, loop, perturb, search
from jaxpix.attack.engine import Fitness, Predict

# Default forward batch per device, by backend, rounded down to whole
# populations (at least one). CPU: the CIFAR zoo's forward rate, measured over
# batch sizes by benchmarks/attack_throughput.py (benchmarks/README.md), is
# best at a few hundred images and falls by ~10% towards 4k as caches
# overflow. Accelerators want large batches to fill the device; 4096 is not
# measured here (no GPU): pass ``batch`` or use :func:`tune_batch`.
DEFAULT_BATCH = {'cpu': 400}
_ACCELERATOR_BATCH = 4096


def default_batch(devices=None) -> int:
  """The forward batch per device an attack uses when ``batch`` is not given."""
  platform = (list(devices)[0] if devices else jax.local_devices()[0]).platform
  return DEFAULT_BATCH.get(platform, _ACCELERATOR_BATCH)


@dataclasses.dataclass
class AttackResult:
  """What an attack found, one entry per image (numpy arrays).

  Attributes:
    adv_images: [N, H, W, C] float32 in [0, 1]: the best candidate found
      applied to the image, whether or not it fools the model.
    success: bool [N], misclassified (untargeted) or classified as the target.
    queries: int [N], model evaluations spent on the image: the initial
      population plus every trial evaluated (padding excluded).
    positions: int [N, k, 2], (row, col) of each perturbed pixel.
    colors: int [N, k, C], each pixel's new colour (``replace``) or its delta
      (``add``), in 8-bit units.
    true_prob, adv_prob, adv_label: the model on ``adv_images``: probability of
      the true label, of its predicted label, and that label.
    target_prob: probability of the target class (targeted attacks), else None.
    fitness: the best energy reached (lower is better).
    labels, targets: what was attacked.
    clean_label, clean_true_prob: the model on the unperturbed images (one
      extra forward pass per image, not counted in ``queries``).
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

  @property
  def success_rate(self) -> float:
    return float(np.mean(self.success))


# --------------------------------------------------------------------------- #
# Attacks
# --------------------------------------------------------------------------- #


def one_pixel(
  predict: Predict,
  images,
  labels,
  *,
  key: jax.Array,
  pixels: int = 1,
  popsize: int | None = None,
  maxiter: int | None = None,
  strategy: str | search.DEConfig = 'su',
  targets=None,
  mode: perturb.Mode = 'replace',
  l2_penalty: float = 0.0,
  stop_threshold: float | None = None,
  slots: int | None = None,
  batch: int | None = None,
  devices=None,
  indices=None,
  steps_per_call: int = 10,
  progress: bool | Callable[[dict], None] = False,
  params=None,
) -> AttackResult:
  """The one-pixel (k-pixel) attack by differential evolution, batched.

  Args:
    predict: pure function ``images [B, H, W, C] in [0, 1] -> logits [B, K]``;
      put any defence (input transformation, autoencoder) inside it. With
      ``params``, ``predict(params, images)`` instead.
    images: float [N, H, W, C], 8-bit values scaled to [0, 1].
    labels: int [N], the true classes.
    key: a ``jax.random.key``; image i uses ``fold_in(key, indices[i])``.
    pixels: how many pixels the attack may change (k).
    popsize, maxiter: override the strategy's population size / generations.
    strategy: ``'su'`` (Su et al.: rand/1, F = 0.5, no crossover, 400 x 100),
      ``'keras'`` (the reference Keras implementation's best1bin variant) or a
      :class:`DEConfig`.
    targets: int [N] target classes for a targeted attack, or None.
    mode: ``'replace'`` a pixel's colour or ``'add'`` a clipped delta.
    l2_penalty: lambda of the APR paper's regularised fitness
      ``f_t(x + d) - lambda ||d||_2`` (0 = Su et al.'s plain probability).
    stop_threshold: also require p(true) <= threshold (p(target) >= threshold)
      before stopping an image early, e.g. 0.05 for Su et al.'s ImageNet runs.
    slots: images in flight per device (default: 4 forward passes' worth,
      at least 16).
    batch: images per forward pass and device, rounded down to whole
      populations (at least one): ``batch // popsize`` images' candidates are
      evaluated together. Default :func:`default_batch` (measured on CPU);
      :func:`tune_batch` measures it for a model. Only the images in flight
      are evaluated, so a run's tail, with few images left, costs what they
      need, with no compilation for the smaller number.
    devices: devices to shard the images over (default: all local devices).
    indices: global indices of the images for the per-image keys (default
      ``arange(N)``); pass them when attacking a dataset in pieces.
    steps_per_call: generations per compiled call between host syncs.
    progress: ``True`` for a progress bar (images done, success rate so far,
      evaluations/s), or a function called with a dict of numpy arrays for
      the images finished after each compiled call (``gidx``, ``success``,
      ``queries``, ...), e.g. to write results as they finish.
    params: the model's parameters (any pytree), passed to
      ``predict(params, images)`` as an argument of the compiled attack: a
      second call with the same ``predict`` and new parameters of the same
      shapes (another checkpoint, a training step's weights) compiles
      nothing. Without it, ``predict`` is a closure: the attack compiles once
      per ``predict`` object, with whatever it captured baked in as
      constants, so a fresh ``lambda x: model(params, x)`` per call compiles
      every call. For an NNX model, ``jaxpix.models.as_params_predict``.

  Returns:
    An :class:`AttackResult`.

  Example:
    >>> result = attack.one_pixel(predict, images, labels, key=jax.random.key(0))
    >>> result.success_rate
    >>> fn, params = models.as_params_predict(model)  # compile once per architecture
    >>> result = attack.one_pixel(fn, images, labels, key=key, params=params)
  """
  cfg = checks.de_config(strategy, popsize, maxiter)
  x = checks.images(images)
  n, h, w, c = x.shape
  checks.pixels(pixels, h, w)
  checks.mode(mode)
  return _attack(
    search.differential_evolution(cfg, pixels, h, w, c, mode),
    predict,
    x,
    labels,
    targets=targets,
    key=key,
    pixels=pixels,
    mode=mode,
    l2_penalty=l2_penalty,
    stop_threshold=stop_threshold,
    slots=slots,
    batch=batch,
    devices=devices,
    indices=indices,
    steps_per_call=steps_per_call,
    progress=progress,
    params=params,
  )


def extreme_colour(
  predict: Predict,
  images,
  labels,
  *,
  targets=None,
  early_stop: bool = True,
  chunk: int = 512,
  slots: int | None = None,
  batch: int | None = None,
  devices=None,
  indices=None,
  steps_per_call: int = 16,
  progress: bool | Callable[[dict], None] = False,
  params=None,
) -> AttackResult:
  """Exhaustive one-pixel search over every position x every colour-cube corner.

  For RGB this is H * W * 8 evaluations per image (8,192 on CIFAR-10), ``chunk``
  of them per image per forward pass. Run with ``early_stop=False`` it is a
  check as well as an attack: an image it does not fool is robust to every
  extreme-colour one-pixel change, and ``fitness`` is the lowest true-class
  probability any of them reached.

  Args:
    predict, images, labels, targets, slots, batch, devices, indices,
    progress, params: as in :func:`one_pixel`.
    early_stop: stop an image at the first chunk that fools the model.
    chunk: candidates per image per step (a divisor of H * W * 8 wastes nothing).

  Returns:
    An :class:`AttackResult` (``positions`` [N, 1, 2], ``colors`` in {0, 255}).
  """
  x = checks.images(images)
  n, h, w, c = x.shape
  checks.positive_int('chunk', chunk)
  return _attack(
    search.exhaustive_corners(h, w, c, chunk),
    predict,
    x,
    labels,
    targets=targets,
    key=jax.random.key(0),  # the sweep draws nothing
    pixels=1,
    mode='replace',
    early_stop=early_stop,
    slots=slots,
    batch=batch,
    devices=devices,
    indices=indices,
    steps_per_call=steps_per_call,
    progress=progress,
    params=params,
  )


# One compiled call, not one per operation (a first run would compile each).
_decode = jax.jit(perturb.decode, static_argnums=(1, 2, 3, 4))


def _attack(
  srch: search.Search,
  predict: Predict,
  x: np.ndarray,
  labels,
  *,
  targets,
  key: jax.Array,
  pixels: int,
  mode: perturb.Mode,
  l2_penalty: float = 0.0,
  stop_threshold: float | None = None,
  early_stop: bool = True,
  slots: int | None,
  batch: int | None,
  devices,
  indices,
  steps_per_call: int,
  progress: bool | Callable[[dict], None],
  params=None,
  search_data=None,
) -> AttackResult:
  """Checks the remaining arguments (as in :func:`one_pixel`), then runs ``srch``
  over the checked images ``x`` and gathers the result. ``search_data``:
  ``(fn, params, x, labels, targets or None) -> [N, ...]``, each image's input
  to a search that takes one."""
  n, h, w, c = x.shape
  fn, params = forward.with_params(predict, params)
  k = checks.num_classes(functools.partial(fn, params), (h, w, c))
  y = checks.labels('labels', labels, n, k)
  t = checks.targets(targets, y, n, k)
  idx = checks.indices(indices, n)
  checks.key(key)
  checks.stop_threshold(stop_threshold)
  checks.l2_penalty(l2_penalty)
  devices = list(jax.local_devices() if devices is None else devices)
  if batch is None:
    batch = default_batch(devices)
  checks.positive_int('batch', batch)
  per_pass = max(1, batch // srch.num_candidates)
  if slots is None:
    slots = max(4 * per_pass, 16)
  checks.positive_int('slots', slots)
  checks.positive_int('steps_per_call', steps_per_call)
  fit = Fitness(
    targeted=t is not None,
    l2_penalty=float(l2_penalty),
    stop_threshold=stop_threshold,
    early_stop=early_stop,
    mode=mode,
  )
  clean = checks.outputs(forward.batched_logits(fn, x, params=params), idx)  # [N, K]
  clean = np.exp(clean - clean.max(-1, keepdims=True))  # softmax, on the host
  clean /= clean.sum(-1, keepdims=True)
  dim = pixels * (2 + c)
  data = None if search_data is None else search_data(fn, params, x, y, t)
  callback = loop.ProgressBar(n) if progress is True else (progress or None)
  rec = loop.run(
    srch,
    fn,
    params,
    fit,
    x,
    y,
    y if t is None else t,
    idx,
    key,
    dim=dim,
    slots=slots,
    per_pass=per_pass,
    devices=devices,
    steps_per_call=steps_per_call,
    progress=callback,
    data=data,
  )
  if isinstance(callback, loop.ProgressBar):
    callback.close()
  pos, val = jax.device_get(_decode(jnp.asarray(rec['vec']), h, w, c, mode))
  adv = perturb.apply_candidates(x, rec['vec'], mode)
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
    fitness=rec['energy'],
    labels=y,
    targets=t,
    clean_label=clean.argmax(-1).astype(np.int32),
    clean_true_prob=clean[np.arange(n), y],
  )


# --------------------------------------------------------------------------- #
# The fixed-budget core, for use inside a jitted train step
# --------------------------------------------------------------------------- #


class FixedBudgetResult(NamedTuple):
  adv_images: jax.Array  # [B, H, W, C]
  success: jax.Array  # bool [B]
  queries: jax.Array  # int [B]
  fitness: jax.Array  # [B]


def de_fixed_budget(
  predict: Predict,
  images: jax.Array,
  labels: jax.Array,
  key: jax.Array,
  *,
  de: search.DEConfig,
  pixels: int = 1,
  targets: jax.Array | None = None,
  mode: perturb.Mode = 'replace',
  l2_penalty: float = 0.0,
  indices: jax.Array | None = None,
) -> FixedBudgetResult:
  """Differential evolution on a batch for exactly ``de.maxiter`` generations.

  Pure and jittable (no host syncs; only what shapes and dtypes show is
  checked, at trace time: values, such as labels in range, are not): a train
  step calls it on
  its mini-batch with the current parameters inside ``predict``. Every image
  of the batch is one slot; an image stops updating once fooled (its forward
  passes are still spent, as shapes are fixed), so it costs
  ``B * popsize * (maxiter + 1)`` evaluations in ``maxiter + 1`` forward passes.
  The adversarial images are returned under ``stop_gradient``: the search is
  not differentiated, only the loss on its result.

  Args:
    predict: ``images -> logits``, traced inside the caller's jit.
    images: [B, H, W, C] float in [0, 1]; labels: int [B].
    key: typed key; image b uses ``fold_in(key, indices[b])``.
    de: a :class:`DEConfig` with a small budget (e.g. popsize 32, maxiter 5).
    pixels, targets, mode, l2_penalty: as in :func:`one_pixel`.
    indices: per-image indices for the keys (default ``arange(B)``).

  Returns:
    A :class:`FixedBudgetResult`.
  """
  checks.traced_batch(images, labels, targets, indices)
  b, h, w, c = images.shape
  srch = search.differential_evolution(de, pixels, h, w, c, mode)
  fit = Fitness(targeted=targets is not None, l2_penalty=l2_penalty, mode=mode)
  labels = labels.astype(jnp.int32)
  idx = jnp.arange(b, dtype=jnp.int32) if indices is None else indices.astype(jnp.int32)
  st = engine.init_slots(
    srch, key, images, labels, labels if targets is None else targets, idx, pixels * (2 + c)
  )
  st = jax.lax.fori_loop(0, srch.max_steps, lambda _, s: engine.step(srch, predict, fit, s)[0], st)
  best = st['best']
  adv = jax.lax.stop_gradient(perturb.apply_each(images, best['vec'], mode))
  return FixedBudgetResult(adv, best['success'], st['queries'], best['energy'])
