"""Adaptive Pixel Resilience (APR paper, section IV) and adversarial training.

APR has three parts, each switchable for the paper's Table 3 ablation:

- pixel-wise attention at the input, ``y = f(A(x) * x)`` with
  ``A(x) = sigmoid(W_a * x + b_a)`` (:class:`Attended`);
- the mixed loss ``L = alpha L_clean + (1 - alpha) L_adv`` with one-pixel
  adversarial examples made from the current parameters at every mini-batch,
  inside the jitted train step (:func:`adversarial_term`);
- the input-gradient penalty ``R = beta ||grad_x f(x)||_2^2``
  (:func:`gradient_penalty_term`).

Adversarial training (the AT baseline) is the mixed loss alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpix import attack


class PixelAttention(nnx.Module):
  """``A(x) = sigmoid(W_a * x + b_a)``: a C -> C convolution, same shape as x.

  The paper gives no initialisation; the kernel uses the default (LeCun
  normal) and the bias starts at 0, so A starts near 0.5 everywhere and its
  gradient is not damped by a saturated sigmoid.
  """

  def __init__(self, channels: int = 3, kernel_size: int = 3, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(channels, channels, (kernel_size, kernel_size), padding='SAME', rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return nnx.sigmoid(self.conv(x))


class Attended(nnx.Module):
  """A classifier behind pixel-wise attention: ``f(A(x) * x)``.

  The attention acts on the [0, 1] image before the classifier normalises it,
  so ``A(x) * x`` stays in [0, 1]. ``attention_map(x)`` returns A(x) for
  figures.
  """

  def __init__(
    self, classifier: nnx.Module, kernel_size: int = 3, channels: int = 3, *, rngs: nnx.Rngs
  ):
    self.attention = PixelAttention(channels, kernel_size, rngs=rngs)
    self.classifier = classifier

  def attention_map(self, x: jax.Array) -> jax.Array:
    return self.attention(x)  # [B, H, W, C] in (0, 1)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.classifier(self.attention(x) * x)


# --------------------------------------------------------------------------- #
# Loss terms: (model in train mode, x [B, H, W, C] in [0, 1], labels, key) ->
# (scalar, metrics). See jaxpix.train.make_loss.
# --------------------------------------------------------------------------- #


def _eval_predict(model: nnx.Module):
  """The model as a pure predict for the attack: eval-mode batch norm (running
  averages, so the candidates of one image do not form a batch with each
  other), no gradient into the parameters, the caller's model untouched."""
  graphdef, state = nnx.split(model)
  state = jax.lax.stop_gradient(state)

  def predict(images):
    m = nnx.merge(graphdef, state, copy=True)
    m.eval()
    return m(images)

  return predict


def make_adversary(cfg):
  """``(predict, images, labels, key) -> adversarial images`` for ``config.defence.adv``.

  ``method='de'``: the paper's adversary, differential evolution (Su et al.'s
  rand/1) with a small fixed budget per mini-batch. ``method='guided'``: the
  gradient-guided extreme-colour search, ``8 * top`` evaluations per image.
  Pixel changes follow ``mode`` ('replace' or the paper's additive range).
  """
  if cfg.method == 'de':
    de = attack.DEConfig(popsize=cfg.popsize, maxiter=cfg.maxiter)

    def adversary(predict, x, y, key):
      return attack.de_fixed_budget(
        predict, x, y, key, config=de, pixels=cfg.pixels, mode=cfg.mode
      ).adv_images

  elif cfg.method == 'guided':

    def adversary(predict, x, y, key):
      del key
      return attack.gradient_extreme(predict, x, y, top=cfg.top).adv_images

  else:
    raise ValueError(f'config.defence.adv.method must be "de" or "guided", got {cfg.method!r}')
  return adversary


def clean_term(model, x, y, key):
  del key
  logits = model(x)
  loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
  return loss, {'clean_loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}


def adversarial_term(adversary):
  """L_adv: cross-entropy on one-pixel adversarial examples of the batch, made
  from the current parameters (the search itself is not differentiated)."""

  def term(model, x, y, key):
    x_adv = adversary(_eval_predict(model), x, y, key)
    logits = model(x_adv)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    changed = jnp.mean(jnp.any(x_adv != x, axis=(1, 2, 3)))
    return loss, {
      'adv_loss': loss,
      'adv_accuracy': jnp.mean(jnp.argmax(logits, -1) == y),
      'adv_changed': changed,
    }

  return term


def gradient_penalty_term(model, x, y, key):
  """mean_b ||grad_x l_b||_2^2, with l_b = -log p(y_b | x_b).

  The paper writes ``||grad_x f(x)||^2`` without saying which scalar f is. We
  differentiate the true-class log-probability (the per-example cross-entropy):
  it is the quantity a one-pixel attack drives down, so a small input gradient
  of it is what should make one pixel matter little; the gradient of a vector
  of logits would need an arbitrary norm. The gradient is taken through a copy
  of the model in train mode (the same batch statistics as the clean pass; the
  copy's statistic updates are discarded; ``copy=True`` because nnx.merge
  otherwise reuses the outer trace's variables), and the outer loss
  differentiates through it (double backprop).
  """
  del key
  graphdef, state = nnx.split(model)

  def total_ce(inputs):
    logits = nnx.merge(graphdef, state, copy=True)(inputs)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).sum()

  g = jax.grad(total_ce)(x)  # [B, H, W, C]
  penalty = jnp.mean(jnp.sum(g * g, axis=(1, 2, 3)))
  return penalty, {'grad_penalty': penalty}


def loss_terms(config):
  """The weighted loss terms for ``config.defence`` (name, weight, term)."""
  d = config.defence
  terms = []
  if d.adversarial:
    terms += [
      ('clean', d.alpha, clean_term),
      ('adv', 1.0 - d.alpha, adversarial_term(make_adversary(d.adv))),
    ]
  else:
    terms += [('clean', 1.0, clean_term)]
  if d.beta:
    terms += [('grad_penalty', d.beta, gradient_penalty_term)]
  return terms
