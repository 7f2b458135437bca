"""Defensive distillation (Papernot et al. 2016; the APR paper's DD baseline).

1. A teacher is trained with its softmax at temperature T: cross-entropy of
   ``softmax(logits / T)`` against the labels.
2. A student of the same architecture is trained at the same temperature on
   the teacher's soft labels ``softmax(teacher_logits / T)`` (computed on the
   student's augmented batch, from the frozen teacher in eval mode).
3. The student is deployed at T = 1: its plain logits are the classifier.

The default T = 100 is Papernot et al.'s CIFAR-10 setting. At T = 1 the
deployed softmax is then nearly one-hot, so probability-based attacks (the one
pixel attack's fitness is a probability) see a flat landscape; that is the
mechanism of this defence, and the evaluation should report it as such.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def tempered_term(temperature: float):
  """The teacher's loss: cross-entropy of softmax(logits / T) against labels."""

  def term(model, x, y, key):
    del key
    logits = model(x)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits / temperature, y).mean()
    return loss, {'clean_loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}

  return term


def soft_labels(teacher_logits: jax.Array, temperature: float) -> jax.Array:
  return jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)


def distillation_term(teacher_predict, temperature: float):
  """The student's loss: cross-entropy of softmax(student / T) against the
  teacher's softmax(teacher / T) on the same batch (no gradient to the teacher)."""

  def term(model, x, y, key):
    del key
    targets = jax.lax.stop_gradient(soft_labels(teacher_predict(x), temperature))
    logits = model(x)
    loss = optax.softmax_cross_entropy(logits / temperature, targets).mean()
    return loss, {
      'distill_loss': loss,
      'accuracy': jnp.mean(jnp.argmax(logits, -1) == y),
      'teacher_agreement': jnp.mean(jnp.argmax(logits, -1) == jnp.argmax(targets, -1)),
    }

  return term
