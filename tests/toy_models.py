"""Hand-made ``predict`` functions with known answers, shared by the tests."""

import jax.numpy as jnp
import numpy as np

GRAY = 128 / 255


def gray_images(n, h, w, c=3):
  return np.full((n, h, w, c), GRAY, np.float32)


def needle(h, w, pos, colour, pos_sigma=2.0, colour_sigma=0.3, threshold=0.9):
  """Two classes; class 1 wins only if the pixel at ``pos`` is near ``colour``.

  The score is smooth (it rises as a changed pixel nears ``pos`` and
  ``colour``), so DE has something to follow, but it crosses the decision
  threshold only at ``pos`` itself with a colour within ``radius()`` of
  ``colour`` (L2, [0, 1] units): the neighbours' position factor is
  exp(-1 / (2 sigma^2)) = 0.88 < threshold.
  """
  r0, c0 = pos
  target = jnp.asarray(colour, jnp.float32)
  rr = jnp.arange(h)[:, None]
  cc = jnp.arange(w)[None, :]
  pos_term = jnp.exp(-((rr - r0) ** 2 + (cc - c0) ** 2) / (2 * pos_sigma**2))

  def predict(x):
    col = jnp.exp(-jnp.sum((x - target) ** 2, -1) / (2 * colour_sigma**2))
    g = jnp.max((pos_term * col).reshape(x.shape[0], -1), axis=1)
    return jnp.stack([jnp.zeros_like(g), 10 * g - 10 * threshold], axis=1)

  predict.radius = colour_sigma * np.sqrt(-2 * np.log(threshold))
  return predict


def exact_corner(pos, corner):
  """Fooled (class 1) only if the pixel at ``pos`` equals ``corner`` exactly."""
  r0, c0 = pos
  want = jnp.asarray(corner, jnp.float32) / 255

  def predict(x):
    hit = jnp.all(jnp.abs(x[:, r0, c0] - want) < 1e-6, axis=-1)
    return jnp.stack([jnp.ones(x.shape[0]), jnp.where(hit, 5.0, -5.0)], axis=1)

  return predict


def never_fooled(num_classes=3):
  def predict(x):
    return (
      jnp.tile(jnp.array([5.0] + [0.0] * (num_classes - 1)), (x.shape[0], 1)) + 0 * x[:, :1, 0, 0]
    )

  return predict


def corner_classes():
  """Class k < 8 wins when some pixel is near colour-cube corner k; class 8 is 'clean'."""
  cube = ((np.arange(8)[:, None] >> np.arange(3)[None]) & 1).astype(np.float32)

  def predict(x):
    d2 = jnp.sum((x[..., None, :] - cube) ** 2, -1)  # [B, H, W, 8]
    g = jnp.max(jnp.exp(-d2 / (2 * 0.25**2)).reshape(x.shape[0], -1, 8), axis=1)
    return jnp.concatenate([10 * g - 5, jnp.zeros((x.shape[0], 1))], axis=1)

  return predict


def linear(h, w, c=3, k=10, seed=0):
  """A random linear classifier written as a per-example reduction, so that an
  example's logits do not depend on the rest of its batch (bitwise)."""
  wts = jnp.asarray(np.random.default_rng(seed).normal(size=(h, w, c, k)).astype(np.float32))

  def predict(x):
    return jnp.sum(x[..., None] * wts, axis=(1, 2, 3))

  return predict


def cifar_like(n, h, w, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, size=(n, h, w, 3)) / 255).astype(np.float32)
