"""An autoencoder placed before a frozen classifier (the autoencoder paper).

The autoencoder learns to map clean images and images with one to a few
pixels changed to extreme colours back to the clean image; at test time the
classifier, unchanged, sees ``AE(x)``. Any classifier of the zoo works: it is
loaded from its own checkpoint and enters the pipeline as a frozen ``predict``.

Metrics of the paper's Table 4, as this module defines them (``table4``):

- images: the test images the bare classifier classifies correctly;
- ``asr_no_defence``: one-pixel attack success rate against the bare classifier;
- ``asr_adaptive``: success rate of the attack re-run against the whole
  pipeline (classifier o AE), on the images the pipeline classifies correctly;
- ``asr_transfer``: share of the images whose attack fooled the bare
  classifier and whose adversarial image still fools the pipeline (the
  paper's "ASR after reconstruction": its counts are fooled - undone, e.g.
  162 - 139 = 23 of 1,000 for Pure CNN);
- ``defence_rate``: among successful attacks on the bare classifier, the share
  whose adversarial image the pipeline classifies correctly (undone by the AE);
- ``performance_loss``: clean accuracy of the bare classifier minus that of
  the pipeline, on all evaluated test images.

Eval mode (``jaxpix.evaluate``) reports the same metrics, resumably, on
``eval.num_images`` images that both the classifier and the pipeline
classify correctly, so that every rate there has the same denominator.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
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


def table4(
  bare_predict, pipeline_predict, images: np.ndarray, labels: np.ndarray, *, key, **attack_kwargs
) -> dict:
  """The Table 4 metrics (module docstring) on ``images`` with ``one_pixel``."""
  from jaxpix import attack

  def acc(predict, x):
    return np.concatenate(
      [np.asarray(jax.jit(predict)(x[i : i + 500])).argmax(-1) for i in range(0, len(x), 500)]
    )

  bare_pred, pipe_pred = acc(bare_predict, images), acc(pipeline_predict, images)
  ok = np.flatnonzero(bare_pred == labels)
  x, y = images[ok], labels[ok]
  before = attack.one_pixel(bare_predict, x, y, key=key, indices=ok, **attack_kwargs)
  both = pipe_pred[ok] == y
  after = attack.one_pixel(
    pipeline_predict, x[both], y[both], key=key, indices=ok[both], **attack_kwargs
  )
  fooled = before.success
  transferred = (acc(pipeline_predict, before.adv_images) != y) & fooled
  return dict(
    images=len(images),
    attacked=len(ok),
    attacked_pipeline=int(both.sum()),
    clean_accuracy=float(np.mean(bare_pred == labels)),
    clean_accuracy_pipeline=float(np.mean(pipe_pred == labels)),
    performance_loss=float(np.mean(bare_pred == labels) - np.mean(pipe_pred == labels)),
    asr_no_defence=float(fooled.mean()),
    asr_adaptive=float(after.success.mean()) if both.any() else float('nan'),
    asr_transfer=float(transferred.mean()),
    defence_rate=float(np.mean(~transferred[fooled])) if fooled.any() else float('nan'),
  )


def loss_terms(config):
  return [('recon', 1.0, reconstruction_term(config.defence.ae_max_pixels))]


__all__ = [
  'ConvAutoencoder',
  'Reconstructed',
  'corrupt',
  'loss_terms',
  'reconstruction_term',
  'table4',
]
