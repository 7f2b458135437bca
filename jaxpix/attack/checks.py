"""Input checks for the public attacks: each refuses bad input with a message
that names the argument and the fix, and returns the value in the form the
engine wants (numpy, int32 labels, a resolved :class:`DEConfig`).

Host-side, except ``traced_batch``: ``de_fixed_budget`` runs inside a trace, where
only shapes and dtypes can be checked.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix.attack import perturb, search


def images(x) -> np.ndarray:
  """Float images [N, H, W, C] of 8-bit values scaled to [0, 1], as float32."""
  if not hasattr(x, 'shape') or not hasattr(x, 'dtype'):
    raise TypeError(f'images must be an array [N, H, W, C], got {type(x).__name__}')
  if x.ndim != 4:
    raise ValueError(f'images must be 4-D [N, H, W, C], got shape {tuple(x.shape)}')
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
      f'images must be float in [0, 1], got dtype {x.dtype}; '
      'for uint8 data pass images.astype(np.float32) / 255'
    )
  x = np.asarray(x, np.float32)
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


def labels(name: str, y, n: int, k: int) -> np.ndarray:
  """Class indices [N] in [0, k), as int32; ``name`` is for messages."""
  y = np.asarray(y)
  if y.shape != (n,):
    raise ValueError(f'{name} must have shape [N] = ({n},), got {y.shape}')
  if not np.issubdtype(y.dtype, np.integer):
    raise TypeError(f'{name} must be integers, got dtype {y.dtype}')
  if y.min() < 0 or y.max() >= k:
    raise ValueError(
      f'{name} must lie in [0, {k}) (the model has {k} '
      f'classes), got min {y.min()} and max {y.max()}'
    )
  return y.astype(np.int32)


def num_classes(predict, image_shape) -> int:
  """K of ``predict``: images [B, H, W, C] -> logits [B, K], probed by shape only."""
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


def pixels(k, h: int, w: int) -> None:
  """How many pixels an attack may change: an int in [1, H * W]."""
  if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or not (1 <= k <= h * w):
    raise ValueError(f'pixels must be an int in [1, H*W] = [1, {h * w}], got {k!r}')


def targets(t, y: np.ndarray, n: int, k: int) -> np.ndarray | None:
  """Target classes [N], each different from its label, as int32; None passes."""
  if t is None:
    return None
  t = labels('targets', t, n, k)
  same = np.flatnonzero(t == y)
  if len(same):
    raise ValueError(
      f'targets must differ from labels; they are equal for images {same[:10].tolist()}'
      f'{" ..." if len(same) > 10 else ""}'
    )
  return t


def indices(idx, n: int) -> np.ndarray:
  """Distinct non-negative global image indices [N] as int32; None is ``arange(N)``."""
  if idx is None:
    return np.arange(n, dtype=np.int32)
  idx = np.asarray(idx)
  if idx.shape != (n,) or not np.issubdtype(idx.dtype, np.integer):
    raise ValueError(f'indices must be integers of shape ({n},), got {idx.dtype} {idx.shape}')
  if len(np.unique(idx)) != n or idx.min() < 0:
    raise ValueError('indices must be distinct non-negative global image indices')
  return idx.astype(np.int32)


def de_config(strategy, popsize: int | None, maxiter: int | None) -> search.DEConfig:
  """A preset name or :class:`DEConfig`, with ``popsize``/``maxiter`` overrides."""
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


def mode(value) -> None:
  """The perturbation model: one of ``perturb.MODES``."""
  if value not in perturb.MODES:
    raise ValueError(f'mode must be one of {perturb.MODES}, got {value!r}')


def key(value) -> None:
  """A typed PRNG key, as ``jax.random.key`` makes."""
  if not isinstance(value, jax.Array) or not jnp.issubdtype(value.dtype, jax.dtypes.prng_key):
    raise TypeError('key must be a typed key from jax.random.key(seed)')


def stop_threshold(value) -> None:
  """None, or a probability in (0, 1)."""
  if value is not None and not 0 < value < 1:
    raise ValueError(f'stop_threshold must be None or in (0, 1), got {value!r}')


def l2_penalty(value) -> None:
  """A finite, non-negative weight (NaN or inf would make every candidate's
  fitness undefined, and the attack invent its records)."""
  if not (isinstance(value, (int, float, np.floating)) and np.isfinite(value) and value >= 0):
    raise ValueError(f'l2_penalty must be a finite number >= 0, got {value!r}')


def positive_int(name: str, value) -> None:
  """``value`` is an int >= 1; ``name`` is for the message."""
  if not isinstance(value, int) or value < 1:
    raise ValueError(f'{name} must be a positive int, got {value!r}')


def outputs(logits: np.ndarray, indices: np.ndarray) -> np.ndarray:
  """The clean logits [N, K] of the attacked images, checked: finite (else an
  attack's "success" would mean nothing), and not probabilities (softmax of
  probabilities squashes them, and every reported probability is wrong).
  ``indices``: the images' indices, for the message."""
  bad = ~np.all(np.isfinite(logits), axis=-1)
  if bad.any():
    raise ValueError(
      f'predict returned NaN or infinite logits for {int(bad.sum())} of {len(logits)} images '
      f'(indices {indices[bad][:10].tolist()}{" ..." if bad.sum() > 10 else ""}): the '
      'attack cannot tell whether they are fooled; check the model (its weights, or an '
      'input pipeline that divides by zero)'
    )
  if (
    len(logits) > 1
    and logits.shape[-1] > 1
    and np.all(logits >= 0)
    and np.allclose(logits.sum(-1), 1.0, atol=1e-3)
  ):
    raise ValueError(
      'predict seems to return probabilities (every row is non-negative and sums to 1), '
      'but the attack expects logits: the softmax it applies would squash them. Pass '
      'logits, e.g. predict=lambda x: jnp.log(model_probs(x))'
    )
  return logits


def traced_batch(images, labels, targets, indices) -> None:
  """What can be checked of a traced batch (shapes, dtypes) at trace time."""
  if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
    raise TypeError(
      f'images must be float [B, H, W, C] in [0, 1], got {images.dtype} with shape '
      f'{tuple(images.shape)}; convert uint8 with images / 255'
    )
  b = images.shape[0]
  for name, a in (('labels', labels), ('targets', targets), ('indices', indices)):
    if a is None:
      continue
    if not jnp.issubdtype(a.dtype, jnp.integer) or tuple(a.shape) != (b,):
      raise TypeError(f'{name} must be ints of shape ({b},), got {a.dtype} {tuple(a.shape)}')
