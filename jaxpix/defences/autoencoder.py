"""An autoencoder placed before a frozen classifier (the autoencoder paper).

The autoencoder learns to map clean images and images with one to a few
pixels changed to extreme colours back to the clean image; at test time the
classifier, unchanged, sees ``AE(x)``. Any classifier of the zoo works: it is
loaded from its own checkpoint and enters the pipeline as a frozen ``predict``.

Metrics of the paper's Table 4, as jaxpix defines them (eval mode,
``jaxpix.evaluation.metrics.table4``), on ``eval.num_images`` test images that
both the classifier and the pipeline classify correctly, so that every rate
has the same denominator:

- ``asr_no_defence``: one-pixel attack success rate against the bare classifier;
- ``asr_adaptive``: success rate of the attack re-run against the whole
  pipeline (classifier o AE);
- ``asr_transfer``: share of the images whose attack fooled the bare
  classifier and whose adversarial image still fools the pipeline (the
  paper's "ASR after reconstruction": its counts are fooled - undone, e.g.
  162 - 139 = 23 of 1,000 for Pure CNN);
- ``defence_rate``: among successful attacks on the bare classifier, the share
  whose adversarial image the pipeline classifies correctly (undone by the AE);
- ``performance_loss``: clean accuracy of the bare classifier minus that of
  the pipeline, on all test images.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jaxpix.attack import perturb, search


class ConvAutoencoder(nnx.Module):
  """Two stride-2 encoder convolutions and two transposed-convolution decoder
  stages with a skip-free bottleneck at 1/4 resolution; sigmoid output in [0, 1]."""

  def __init__(self, width: int = 32, channels: int = 3, *, rngs: nnx.Rngs):
    w = width
    self.enc = nnx.List(
      [
        nnx.Conv(channels, w, (3, 3), rngs=rngs),
        nnx.Conv(w, 2 * w, (3, 3), (2, 2), rngs=rngs),
        nnx.Conv(2 * w, 2 * w, (3, 3), (2, 2), rngs=rngs),
      ]
    )
    self.dec = nnx.List(
      [
        nnx.ConvTranspose(2 * w, 2 * w, (3, 3), (2, 2), rngs=rngs),
        nnx.ConvTranspose(2 * w, w, (3, 3), (2, 2), rngs=rngs),
      ]
    )
    self.out = nnx.Conv(w, channels, (3, 3), rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    for conv in self.enc:
      x = nnx.relu(conv(x))
    for conv in self.dec:
      x = nnx.relu(conv(x))
    return nnx.sigmoid(self.out(x))


class Reconstructed(nnx.Module):
  """``classifier(AE(x))``, the classifier a frozen ``predict`` (not trained,
  not in this module's state or checkpoints)."""

  def __init__(self, autoencoder: ConvAutoencoder, classifier_predict):
    self.autoencoder = autoencoder
    self.classifier_predict = classifier_predict

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classifier_predict(self.autoencoder(x))


def corrupt(key, x: jax.Array, max_pixels: int = 3) -> jax.Array:
  """Sets 0..max_pixels random pixels of each image to random colour-cube
  corners (k drawn uniformly, so a 1 / (max_pixels + 1) share stays clean):
  the perturbations of one-pixel attacks, whose successful colours are mostly
  extreme. Example b uses fold_in(key, b)."""
  b, h, w, c = x.shape
  cube = jnp.asarray(search.corners(c))

  def one(i, img):
    k = jax.random.fold_in(key, i)
    kn, kp, kc = jax.random.split(k, 3)
    n = jax.random.randint(kn, (), 0, max_pixels + 1)
    flat = jax.random.randint(kp, (max_pixels,), 0, h * w)
    pos = jnp.stack([flat // w, flat % w], -1)
    vals = cube[jax.random.randint(kc, (max_pixels,), 0, cube.shape[0])]
    for j in range(max_pixels):
      changed = perturb.apply(img, pos[j : j + 1], vals[j : j + 1], 'replace')
      img = jnp.where(j < n, changed, img)
    return img

  return jax.vmap(one)(jnp.arange(b), x)


def reconstruction_term(max_pixels: int):
  """Mean squared error between AE(corrupted x) and the clean x."""

  def term(model, x, y, key):
    recon = model.autoencoder(corrupt(key, x, max_pixels))
    loss = jnp.mean((recon - x) ** 2)
    logits = model.classifier_predict(recon)
    return loss, {'recon_mse': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}

  return term


def loss_terms(config):
  return [('recon', 1.0, reconstruction_term(config.defence.ae_max_pixels))]


__all__ = [
  'ConvAutoencoder',
  'Reconstructed',
  'corrupt',
  'loss_terms',
  'reconstruction_term',
]
