"""Public attacks: ``one_pixel`` (differential evolution), ``extreme_colour``
(exhaustive search) and ``de_fixed_budget`` (the jittable core for training)."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import engine, perturb, search
from jaxpix.attack.engine import Fitness, Predict

# Default forward batch per device: slots = this // popsize. The CPU forward
# rate of a CIFAR CNN is flat from ~1k to ~4k images and drops at ~10k as caches
# overflow (DESIGN.md), so ~4k keeps a CPU busy and a GPU well fed.
_DEFAULT_BATCH = 4096


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
# Input checks: every message names the argument and the fix.
# --------------------------------------------------------------------------- #


def _check_images(images) -> np.ndarray:
  if not hasattr(images, 'shape') or not hasattr(images, 'dtype'):
    raise TypeError(f'images must be an array [N, H, W, C], got {type(images).__name__}')
  if images.ndim != 4:
    raise ValueError(f'images must be 4-D [N, H, W, C], got shape {tuple(images.shape)}')
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
      f'images must be float in [0, 1], got dtype {images.dtype}; '
      'for uint8 data pass images.astype(np.float32) / 255'
    )
  x = np.asarray(images, np.float32)
  if x.shape[0] == 0 or 0 in x.shape[1:]:
    raise ValueError(f'images is empty: shape {x.shape}')
  lo, hi = float(x.min()), float(x.max())
  if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0 or hi > 1:
    raise ValueError(f'images must lie in [0, 1], got min {lo} and max {hi}')
  off = float(np.max(np.abs(x * 255 - np.round(x * 255))))
  if off > 1e-3:
    raise ValueError(
      'images must be 8-bit images scaled to [0, 1] (uint8 / 255) so that a one-pixel '
      f'change stays a valid 8-bit image; values are up to {off:.3g} / 255 off that grid. '
      'Quantise them first: images = np.round(images * 255) / 255'
    )
  return x


def _check_labels(name, labels, n, num_classes) -> np.ndarray:
  y = np.asarray(labels)
  if y.shape != (n,):
    raise ValueError(f'{name} must have shape [N] = ({n},), got {y.shape}')
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f'{name} must be integers, got dtype {y.dtype}')
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(
      f'{name} must lie in [0, {num_classes}) (the model has {num_classes} '
      f'classes), got min {y.min()} and max {y.max()}'
    )
  return y.astype(np.int32)


def _num_classes(predict, image_shape) -> int:
  probe = jax.ShapeDtypeStruct((2,) + tuple(image_shape), jnp.float32)
  try:
    out = jax.eval_shape(predict, probe)
  except Exception as e:  # noqa: BLE001 - re-raised with what was tried
    raise ValueError(f'predict failed on a float32 batch of shape {probe.shape}: {e}') from e
  shape = getattr(out, 'shape', None)
  if shape is None or len(shape) != 2 or shape[0] != 2 or shape[1] < 2:
    raise ValueError(
      'predict must map images [B, H, W, C] to logits [B, num_classes]; '
      f'on a batch of shape {probe.shape} it returned {shape}'
    )
  return int(shape[1])


def _check_pixels(pixels, h, w):
  if (
    not isinstance(pixels, (int, np.integer))
    or isinstance(pixels, bool)
    or not (1 <= pixels <= h * w)
  ):
    raise ValueError(f'pixels must be an int in [1, H*W] = [1, {h * w}], got {pixels!r}')


def _check_targets(targets, labels, n, k):
  if targets is None:
    return None
  t = _check_labels('targets', targets, n, k)
  same = np.flatnonzero(t == labels)
  if len(same):
    raise ValueError(
      f'targets must differ from labels; they are equal for images {same[:10].tolist()}'
      f'{" ..." if len(same) > 10 else ""}'
    )
  return t


def _check_indices(indices, n):
  if indices is None:
    return np.arange(n, dtype=np.int32)
  idx = np.asarray(indices)
  if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f'indices must be integers of shape ({n},), got {idx.dtype} {idx.shape}')
  if len(np.unique(idx)) != n or idx.min() < 0:
    raise ValueError('indices must be distinct non-negative global image indices')
  return idx.astype(np.int32)


def _de_config(strategy, popsize, maxiter) -> search.DEConfig:
  if isinstance(strategy, str):
    if strategy not in search.PRESETS:
      raise ValueError(
        f'strategy must be one of {sorted(search.PRESETS)} or a DEConfig, got {strategy!r}'
      )
    strategy = search.PRESETS[strategy]
  if not isinstance(strategy, search.DEConfig):
    raise TypeError(f'strategy must be a preset name or a DEConfig, got {type(strategy).__name__}')
  repl = {k: v for k, v in (('popsize', popsize), ('maxiter', maxiter)) if v is not None}
  return dataclasses.replace(strategy, **repl)


def _check_mode(mode):
  if mode not in perturb.MODES:
    raise ValueError(f'mode must be one of {perturb.MODES}, got {mode!r}')


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
  devices=None,
  indices=None,
  steps_per_call: int = 10,
  progress: bool | Callable[[dict], None] = False,
) -> AttackResult:
  """The one-pixel (k-pixel) attack by differential evolution, batched.

  Args:
    predict: pure function ``images [B, H, W, C] in [0, 1] -> logits [B, K]``;
      put any defence (input transformation, autoencoder) inside it.
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
    slots: images in flight per device (default: 4096 // popsize).
    devices: devices to shard the images over (default: all local devices).
    indices: global indices of the images for the per-image keys (default
      ``arange(N)``); pass them when attacking a dataset in pieces.
    steps_per_call: generations per compiled call between host syncs.
    progress: ``True`` for a progress bar (images done, success rate so far,
      evaluations/s), or a function called with a dict of numpy arrays for
      the images finished after each compiled call (``gidx``, ``success``,
      ``queries``, ...), e.g. to write results as they finish.

  Returns:
    An :class:`AttackResult`.

  Example:
    >>> result = attack.one_pixel(predict, images, labels, key=jax.random.key(0))
    >>> result.success_rate
  """
  cfg = _de_config(strategy, popsize, maxiter)
  x = _check_images(images)
  n, h, w, c = x.shape
  _check_pixels(pixels, h, w)
  _check_mode(mode)
  srch = search.differential_evolution(cfg, pixels, h, w, c, mode)
  return _attack(
    srch,
    predict,
    x,
    labels,
    targets,
    key,
    pixels,
    mode,
    l2_penalty,
    stop_threshold,
    True,
    slots,
    devices,
    indices,
    steps_per_call,
    progress,
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
  devices=None,
  indices=None,
  steps_per_call: int = 16,
  progress: bool | Callable[[dict], None] = False,
) -> AttackResult:
  """Exhaustive one-pixel search over every position x every colour-cube corner.

  For RGB this is H * W * 8 evaluations per image (8,192 on CIFAR-10), ``chunk``
  of them per image per forward pass. Run with ``early_stop=False`` it is a
  check as well as an attack: an image it does not fool is robust to every
  extreme-colour one-pixel change, and ``fitness`` is the lowest true-class
  probability any of them reached.

  Args:
    predict, images, labels, targets, slots, devices, indices, progress: as in
      :func:`one_pixel`.
    early_stop: stop an image at the first chunk that fools the model.
    chunk: candidates per image per step (a divisor of H * W * 8 wastes nothing).

  Returns:
    An :class:`AttackResult` (``positions`` [N, 1, 2], ``colors`` in {0, 255}).
  """
  x = _check_images(images)
  n, h, w, c = x.shape
  if not isinstance(chunk, int) or chunk < 1:
    raise ValueError(f'chunk must be a positive int, got {chunk!r}')
  srch = search.extreme_colour(h, w, c, chunk)
  return _attack(
    srch,
    predict,
    x,
    labels,
    targets,
    jax.random.key(0),
    1,
    'replace',
    0.0,
    None,
    early_stop,
    slots,
    devices,
    indices,
    steps_per_call,
    progress,
  )


def _attack(
  srch,
  predict,
  x,
  labels,
  targets,
  key,
  pixels,
  mode,
  l2_penalty,
  stop_threshold,
  early_stop,
  slots,
  devices,
  indices,
  steps_per_call,
  progress,
) -> AttackResult:
  n, h, w, c = x.shape
  k = _num_classes(predict, (h, w, c))
  y = _check_labels('labels', labels, n, k)
  t = _check_targets(targets, y, n, k)
  idx = _check_indices(indices, n)
  if not isinstance(key, jax.Array) or not jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    raise TypeError('key must be a typed key from jax.random.key(seed)')
  if stop_threshold is not None and not 0 < stop_threshold < 1:
    raise ValueError(f'stop_threshold must be None or in (0, 1), got {stop_threshold!r}')
  if l2_penalty < 0:
    raise ValueError(f'l2_penalty must be >= 0, got {l2_penalty!r}')
  devices = list(jax.local_devices() if devices is None else devices)
  if slots is None:
    slots = max(1, _DEFAULT_BATCH // srch.num_candidates)
  if not isinstance(slots, int) or slots < 1:
    raise ValueError(f'slots must be a positive int, got {slots!r}')
  if not isinstance(steps_per_call, int) or steps_per_call < 1:
    raise ValueError(f'steps_per_call must be a positive int, got {steps_per_call!r}')
  fit = Fitness(
    targeted=t is not None,
    l2_penalty=float(l2_penalty),
    stop_threshold=stop_threshold,
    early_stop=early_stop,
    mode=mode,
  )
  dim = pixels * (2 + c)
  callback = _ProgressBar(n) if progress is True else (progress or None)
  rec = engine.run(
    srch,
    predict,
    fit,
    x,
    y,
    y if t is None else t,
    idx,
    key,
    dim=dim,
    slots=slots,
    devices=devices,
    steps_per_call=steps_per_call,
    progress=callback,
  )
  if isinstance(callback, _ProgressBar):
    callback.close()
  pos, val = jax.device_get(perturb.decode(jnp.asarray(rec['vec']), h, w, c, mode))
  adv = _apply_all(x, rec['vec'], mode)
  clean_label, clean_true = _clean(predict, x, y)
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
    clean_label=clean_label,
    clean_true_prob=clean_true,
  )


class _ProgressBar:
  """tqdm bar: images done, success rate so far and model evaluations/s."""

  def __init__(self, total):
    from tqdm.auto import tqdm

    self.bar = tqdm(total=total, unit='img', desc='attack')
    self.done = self.fooled = self.queries = 0

  def __call__(self, finished):
    self.done += len(finished['gidx'])
    self.fooled += int(finished['success'].sum())
    self.queries += int(finished['queries'].sum())
    rate = self.queries / max(self.bar.format_dict['elapsed'], 1e-9)
    self.bar.set_postfix(asr=f'{self.fooled / self.done:.3f}', evals_s=f'{rate:.0f}')
    self.bar.update(len(finished['gidx']))

  def close(self):
    self.bar.close()


@functools.partial(jax.jit, static_argnames='mode')
def _apply_batch(images, vecs, mode):
  return jax.vmap(lambda im, v: perturb.apply_vectors(im, v[None], mode)[0])(images, vecs)


def _apply_all(x, vecs, mode, batch=1024):
  return np.concatenate(
    [
      np.asarray(_apply_batch(x[i : i + batch], vecs[i : i + batch], mode))
      for i in range(0, len(x), batch)
    ]
  )


@functools.lru_cache(maxsize=4)
def _softmax_fn(predict):
  return jax.jit(lambda im: jax.nn.softmax(predict(im).astype(jnp.float32), axis=-1))


def _clean(predict, x, y, batch=1024):
  fn = _softmax_fn(predict)
  probs = np.concatenate([np.asarray(fn(x[i : i + batch])) for i in range(0, len(x), batch)])
  return probs.argmax(-1).astype(np.int32), probs[np.arange(len(y)), y]


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
  config: search.DEConfig,
  pixels: int = 1,
  targets: jax.Array | None = None,
  mode: perturb.Mode = 'replace',
  l2_penalty: float = 0.0,
  indices: jax.Array | None = None,
) -> FixedBudgetResult:
  """Differential evolution on a batch for exactly ``config.maxiter`` generations.

  Pure and jittable (no host syncs, no input checks): a train step calls it on
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
    config: a :class:`DEConfig` with a small budget (e.g. popsize 32, maxiter 5).
    pixels, targets, mode, l2_penalty: as in :func:`one_pixel`.
    indices: per-image indices for the keys (default ``arange(B)``).

  Returns:
    A :class:`FixedBudgetResult`.
  """
  b, h, w, c = images.shape
  srch = search.differential_evolution(config, pixels, h, w, c, mode)
  fit = Fitness(targeted=targets is not None, l2_penalty=l2_penalty, mode=mode)
  labels = labels.astype(jnp.int32)
  idx = jnp.arange(b, dtype=jnp.int32) if indices is None else indices.astype(jnp.int32)
  st = engine.init_slots(
    srch, key, images, labels, labels if targets is None else targets, idx, pixels * (2 + c)
  )
  st = jax.lax.fori_loop(0, srch.max_steps, lambda _, s: engine.step(srch, predict, fit, s)[0], st)
  best = st['best']
  adv = jax.vmap(lambda im, v: perturb.apply_vectors(im, v[None], mode)[0])(images, best['vec'])
  adv = jax.lax.stop_gradient(adv)
  return FixedBudgetResult(adv, best['success'], st['queries'], best['energy'])
