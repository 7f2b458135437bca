"""An autoencoder placed before a frozen classifier (the autoencoder paper).

The autoencoder learns to map clean images and images with one to a few
pixels changed to extreme colours back to the clean image; at test time the
classifier, unchanged, sees ``AE(x)``. Any classifier of the zoo works: it is
loaded from its own checkpoint and enters the pipeline as a frozen ``predict``.

Metrics of the paper's Table 4 (eval mode, ``jaxpix.evaluation.metrics.table4``).
The paper prints counts, not formulas; the definitions below are the ones
its counts imply, on every one of its six rows. The attacked images are the
N chosen test images the bare classifier classifies correctly (the paper's
A_total = 1,000 attacks per model); F is the set the attack on the bare
classifier fools, W the set whose attacked image the pipeline (classifier o
AE) misclassifies.

- ``asr_no_defence`` = |F| / N (Pure CNN 162/1,000).
- ``asr_transfer`` = |F and W| / N, the paper's "ASR after reconstruction":
  its numerators are exactly fooled - undone in all six rows (162 - 139 = 23,
  612 - 395 = 217, 286 - 235 = 51, 300 - 252 = 48, 252 - 207 = 45,
  221 - 197 = 24).
- ``defence_rate`` = |F and not W| / |F|, the fooled images the pipeline
  classifies correctly again (139/162, 395/612, ...).
- ``performance_loss`` = |W and not F| / (N - |F and W|). The paper's
  denominators are 1,000 minus the post-reconstruction successes in all six
  rows (977, 783, 949, 952, 955, 976); the numerator is read as what the
  name says, the images the reconstruction alone gets wrong, among those.
  For images the attack did not fool, W uses the attack's final image (the
  image the deployed pipeline would receive).
- ``asr_adaptive`` (not in the paper): DE re-run against the whole pipeline,
  the attacker who knows the autoencoder is there, over the same N images; an
  image the pipeline already misclassifies counts as fooled.
- ``clean_accuracy_cost`` (not in the paper): clean accuracy of the bare
  classifier minus that of the pipeline, on all test images.
- ``paired`` (not in the paper): exact McNemar tests over the N images of
  "correct after the attack", pipeline against bare classifier. ``transfer``
  sets the defence rate's numerator (undone) against the performance loss's
  (broken): whether the autoencoder undoes more than it breaks. By the
  paper's own Pure CNN counts it does not (139 undone, 131 broken,
  p = 0.67; tests/test_evaluation.py). ``adaptive``: the same for the attack
  run on the pipeline.

An earlier version attacked only the images both the classifier and the
pipeline classify correctly: that drops the images the autoencoder breaks
and biased the defence rate upwards.
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
