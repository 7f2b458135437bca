"""Randomized ablation (Levine & Feizi, AAAI 2020): a smoothed classifier
with a certificate against a few changed pixels.

The base classifier sees an image with all but ``k`` of its H x W pixels
ablated: each kept pixel is encoded as the 6 values (x, 1 - x) and each
ablated one as zeros, which no real pixel gives, so the classifier can tell
"ablated" from "black". The smoothed classifier returns the class the base
classifier returns most often over uniformly random sets of ``k`` kept pixels.
Changing ``rho`` pixels changes only the ablated images that keep one of
them, a share ``delta = 1 - C(n - rho, k) / C(n, k)`` of them (``n = H W``;
``k / n`` = 7.3% for one pixel of a CIFAR image at the paper's k = 75), so a
class whose probability is above ``1/2 + delta`` stays the prediction
whatever those pixels become. That probability is estimated by Monte Carlo
with a Clopper-Pearson bound (:func:`certify`), as the paper does: the
certificate holds with probability ``1 - alpha`` per image.

Training (:func:`ablation_term`) is plain cross-entropy on ablated images, a
fresh set of kept pixels per image per step (the reference code draws one set
per mini-batch; per image costs nothing more here and varies the gradient less).

``Ablated.__call__`` is a deterministic stand-in for the smoothed classifier
(its log mean softmax over ``votes`` fixed sets), used only for the
validation accuracy printed while training and by tools that want a plain
``images -> logits`` function. The evaluation of this defence
(:mod:`jaxpix.evaluation.smoothed`) certifies and attacks the smoothed
classifier itself.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats
from flax import nnx

ENCODED_CHANNELS = 6  # (x, 1 - x) per colour channel


def keep_masks(key: jax.Array, count: int, pixels: int, k: int) -> jax.Array:
  """``count`` uniformly random sets of ``k`` of ``pixels`` positions: bool [count, pixels].

  The ``k`` largest of i.i.d. uniform scores are a uniform ``k``-subset;
  ``top_k`` finds them ~10x faster than sorting on the CPU."""
  if not 1 <= k <= pixels:
    raise ValueError(f'k (pixels kept) must be in [1, {pixels}], got {k!r}')
  _, idx = jax.lax.top_k(jax.random.uniform(key, (count, pixels)), k)
  return jnp.zeros((count, pixels), bool).at[jnp.arange(count)[:, None], idx].set(True)


def encode(images: jax.Array, keep: jax.Array) -> jax.Array:
  """Images [..., H, W, 3] in [0, 1] with only ``keep`` [..., H, W] kept
  (broadcasting): [..., H, W, 6], (x, 1 - x) where kept, zeros elsewhere."""
  both = jnp.concatenate([images, 1.0 - images], -1)
  return both * keep[..., None].astype(images.dtype)


def delta(pixels: int, k: int, rho: int = 1) -> float:
  """The probability that a random ``k``-subset of ``pixels`` keeps at least
  one of ``rho`` given pixels: how far changing them can move any class's
  probability under the smoothing."""
  return 1.0 - math.comb(pixels - rho, k) / math.comb(pixels, k)


def lower_bound(successes: np.ndarray, n: int, alpha: float) -> np.ndarray:
  """One-sided Clopper-Pearson lower confidence bound at level ``1 - alpha``
  for a binomial proportion (0 where there are no successes)."""
  s = np.asarray(successes)
  bound = scipy.stats.beta.ppf(alpha, np.maximum(s, 1), n - s + 1)
  return np.where(s > 0, bound, 0.0)


class Ablated(nnx.Module):
  """A classifier of ablated images (``classifier``: 6 input channels) and
  the deterministic stand-in for its smoothed classifier (``__call__``)."""

  def __init__(self, classifier: nnx.Module, keep: int, votes: int = 8, seed: int = 0):
    if votes < 1:
      raise ValueError(f'votes must be >= 1, got {votes!r}')
    self.classifier = classifier
    self.keep, self.votes, self.seed = keep, votes, seed

  def classify(self, images: jax.Array, keep: jax.Array) -> jax.Array:
    """The base classifier's logits of ``images`` [B, H, W, 3] ablated to
    ``keep`` [B, H, W]."""
    return self.classifier(encode(images, keep))

  def __call__(self, images: jax.Array) -> jax.Array:
    b, h, w, _ = images.shape
    keep = keep_masks(jax.random.key(self.seed), self.votes, h * w, self.keep).reshape(-1, h, w)
    logits = self.classifier(encode(images[:, None], keep[None]).reshape(b * self.votes, h, w, -1))
    probs = jax.nn.softmax(logits.reshape(b, self.votes, -1), -1).mean(1)
    return jnp.log(jnp.maximum(probs, 1e-30))


def ablation_term(k: int):
  """The loss term: cross-entropy of the base classifier on ablated images,
  ``k`` random pixels kept per image."""

  def term(model, x, y, key):
    b, h, w, _ = x.shape
    keep = keep_masks(key, b, h * w, k).reshape(b, h, w)
    logits = model.classify(x, keep)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], -1).mean()
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    return loss, {'clean_loss': loss, 'accuracy': acc}

  return term


def vote_counts(classify, images, key, *, k: int, samples: int, chunk: int, classes: int):
  """How often the base classifier returns each class over ``samples``
  random ablations of each image: int32 [B, classes].

  ``classify(encoded [N, H, W, 6]) -> logits``. The ablations come ``chunk``
  at a time, shared by the images of the batch (each image's counts are still
  a sum of independent draws, which is all its bound needs)."""
  if samples % chunk:
    raise ValueError(f'samples ({samples}) must be a multiple of chunk ({chunk})')
  b, h, w, _ = images.shape

  def body(counts, key):
    keep = keep_masks(key, chunk, h * w, k).reshape(chunk, h, w)
    enc = encode(images[:, None], keep[None]).reshape(b * chunk, h, w, ENCODED_CHANNELS)
    votes = jax.nn.one_hot(jnp.argmax(classify(enc), -1), classes, dtype=jnp.int32)
    return counts + votes.reshape(b, chunk, classes).sum(1), None

  counts, _ = jax.lax.scan(
    body, jnp.zeros((b, classes), jnp.int32), jax.random.split(key, samples // chunk)
  )
  return counts
