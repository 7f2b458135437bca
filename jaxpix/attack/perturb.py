"""How a candidate vector turns into a perturbed image.

A candidate for a k-pixel attack is a float vector of length k * (2 + C): for
each pixel its row, its column and C channel values, the (x, y, r, g, b) of
Su et al. Coordinates live in [0, H) and [0, W) and are floored; channel values
are rounded to integers, so every perturbed pixel is an exact 8-bit value:

- ``replace``: the pixel is set to the colour, values in [0, 255] (Su et al.).
- ``add``: a delta in [-255, 255] is added to the pixel's 8-bit value and the
  sum clipped to [0, 255] (the APR paper's "pixel modification range").

Everything here is pure and shape-polymorphic so that the attack engine, the
training step and the host-side reconstruction of adversarial images share one
definition of "apply a candidate".
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Mode = Literal['replace', 'add']

# uint8 / 255 as numpy computes it (correctly rounded). XLA turns "/ 255" into a
# multiply by the reciprocal, which is 1 ulp off for some levels; a table keeps
# every written pixel bit-identical to uint8 / 255.
LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)
MODES = ('replace', 'add')


def value_bounds(mode: Mode) -> tuple[float, float]:
  """The range of a channel gene for ``mode``."""
  if mode == 'replace':
    return 0.0, 255.0
  if mode == 'add':
    return -255.0, 255.0
  raise ValueError(f'mode must be one of {MODES}, got {mode!r}')


def bounds(pixels: int, height: int, width: int, channels: int, mode: Mode):
  """Lower and upper bounds of every gene, each a numpy float32 array [D].

  Numpy, not jax: searches are cached and may be built inside a trace.
  """
  lo_v, hi_v = value_bounds(mode)
  lo = np.array([0.0, 0.0] + [lo_v] * channels, np.float32)
  # Coordinates are floored, so the open upper end H (W) maps to row H - 1.
  hi = np.array([float(height), float(width)] + [hi_v] * channels, np.float32)
  return np.tile(lo, pixels), np.tile(hi, pixels)


def decode(vec: jax.Array, height: int, width: int, channels: int, mode: Mode):
  """Candidate vector(s) [..., D] -> positions int32 [..., k, 2], values int32 [..., k, C]."""
  genes = vec.reshape(vec.shape[:-1] + (-1, 2 + channels))
  rows = jnp.clip(jnp.floor(genes[..., 0]), 0, height - 1).astype(jnp.int32)
  cols = jnp.clip(jnp.floor(genes[..., 1]), 0, width - 1).astype(jnp.int32)
  lo, hi = value_bounds(mode)
  values = jnp.clip(jnp.round(genes[..., 2:]), lo, hi).astype(jnp.int32)
  return jnp.stack([rows, cols], axis=-1), values


def apply(image: jax.Array, positions: jax.Array, values: jax.Array, mode: Mode) -> jax.Array:
  """Perturbs one image [H, W, C] at positions [k, 2] with values [k, C].

  Pixels are applied in order, so a position listed twice takes the last
  colour (``replace``) or both deltas in turn (``add``); at most k pixels
  change either way.
  """
  h, w, _ = image.shape
  rr = jnp.arange(h)[:, None]
  cc = jnp.arange(w)[None, :]

  def one(img, pv):
    (r, c), v = pv
    mask = ((rr == r) & (cc == c))[..., None]  # [H, W, 1]
    if mode == 'replace':
      level = v
    else:
      # Deltas act on the 8-bit value; images are validated to lie on that grid.
      level = jnp.clip(jnp.round(img[r, c] * 255).astype(jnp.int32) + v, 0, 255)
    return jnp.where(mask, jnp.asarray(LEVELS)[level].astype(img.dtype), img), None

  out, _ = jax.lax.scan(one, image, (positions, values))
  return out


def apply_vectors(image: jax.Array, vecs: jax.Array, mode: Mode) -> jax.Array:
  """One image [H, W, C] and candidates [P, D] -> perturbed images [P, H, W, C]."""
  h, w, c = image.shape
  pos, val = decode(vecs, h, w, c, mode)
  return jax.vmap(apply, in_axes=(None, 0, 0, None))(image, pos, val, mode)


def apply_each(images: jax.Array, vecs: jax.Array, mode: Mode) -> jax.Array:
  """Images [N, H, W, C] and one candidate each [N, D] -> perturbed images [N, H, W, C]."""
  return jax.vmap(lambda im, v: apply_vectors(im, v[None], mode)[0])(images, vecs)


_apply_each_jit = jax.jit(apply_each, static_argnames='mode')


def apply_candidates(images, vecs, mode: Mode, batch: int = 1024) -> np.ndarray:
  """The adversarial images of candidate vectors, on the host, ``batch`` at a time.

  Args:
    images: [N, H, W, C] float in [0, 1], 8-bit values.
    vecs: [N, D] float, image i's candidate (e.g. ``AttackResult``'s best one,
      or a ``vec`` written to an attack log).
    mode: ``'replace'`` or ``'add'``, as the candidates were searched.
    batch: images per compiled call; bounds device memory.

  Returns:
    [N, H, W, C] numpy, the dtype of ``images``: candidate i applied to image i.

  Example:
    >>> adv = attack.apply_candidates(images, vecs, 'replace')
  """
  return np.concatenate(
    [
      np.asarray(_apply_each_jit(images[i : i + batch], vecs[i : i + batch], mode))
      for i in range(0, len(images), batch)
    ]
  )
