"""The pure steps of training, jitted once: the train step (every loss term
of the config's defence, one gradient) and the eval step, over a device mesh
(state replicated, batch sharded), and exact accuracy over a split."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxpix import data, mesh

# A loss term: (model in train mode, images [B, H, W, C] in [0, 1], labels [B],
# key) -> (scalar, metrics). Defences add terms (adversarial examples, the
# input-gradient penalty, distillation); the clean cross-entropy is the base.
# On a replayed batch's defended visit the terms also get ``given=`` (APR's
# term reads it; see make_train_step).
LossTerm = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef, tx, terms, augment: bool, visits: int = 1, visit: int = 0):
  """The train step ``(state, images_u8, labels) -> (state, metrics)``.

  ``visits`` > 1 (``config.defence.replay``): each batch is trained on in
  ``visits`` consecutive steps with the same augmentation, and this is the
  step of visit ``visit``. Visit 0 is a plain step (the clean cross-entropy)
  whose backward pass also gives the input gradient of every example's loss:
  it is kept in ``state['replay']``. The later visits pass
  it to the loss terms (keyword ``given``), whose adversary and penalty then
  need no gradient pass of their own (a gradient one step old: "free"
  adversarial training, Shafahi et al. 2019).
  """
  record, given = visits > 1 and visit == 0, visits > 1 and visit > 0

  def train_step(state, images_u8, labels):
    base = jax.random.wrap_key_data(state['key'])
    # Every visit of a batch sees the same crops and flips; the loss terms'
    # keys differ per step. With visits = 1 both are the keys of one split.
    k_aug = jax.random.split(jax.random.fold_in(base, state['step'] // visits))[0]
    k_loss = jax.random.split(jax.random.fold_in(base, state['step']))[1]
    x = data.augment(k_aug, images_u8) if augment else data.levels(images_u8)

    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.train()

    def loss_fn(model, x):
      if record:
        logits = model(x)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
        total = jnp.mean(losses)
        correct = jnp.mean(jnp.argmax(logits, -1) == labels)
        return total, {'loss': total, 'clean_loss': total, 'accuracy': correct}
      total, metrics = 0.0, {}
      extra = {'given': state['replay']} if given else {}
      for i, (_, weight, term) in enumerate(terms):
        value, m = term(model, x, labels, jax.random.fold_in(k_loss, i), **extra)
        total = total + weight * value
        metrics.update(m)
      metrics['loss'] = total
      return total, metrics

    # Gradients w.r.t. the parameters (and, on a recording visit, the
    # images); batch statistics update in place.
    argnums = (0, 1) if record else 0
    (_, metrics), grads = nnx.value_and_grad(loss_fn, argnums=argnums, has_aux=True)(model, x)
    new = {}
    if record:
      grads, gx = grads
      # The loss is the batch mean: times B, each image's own gradient.
      new['replay'] = {'grads': gx * x.shape[0]}
    _, _, rest = nnx.split(model, nnx.Param, ...)
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return dict(state, params=params, rest=rest, opt=opt, step=state['step'] + 1, **new), metrics

  return train_step


def with_replay(state, batch: int, image_shape) -> dict:
  """``state`` with the (empty) input gradients a replayed batch keeps
  between its visits; they are saved with it, so a run stopped between two
  visits resumes exactly."""
  return dict(state, replay={'grads': jnp.zeros((batch,) + tuple(image_shape), jnp.float32)})


def state_shardings(m, state) -> dict:
  """Everything replicated but the replayed batch's gradients, sharded like the batch."""
  repl, shard = mesh.replicated(m), mesh.sharded(m)
  return {k: shard if k == 'replay' else repl for k in state}


def compile_train_steps(m, graphdef, tx, terms, augment: bool, state, visits: int = 1):
  """The train step of each visit (one unless ``visits`` > 1, see
  :func:`make_train_step`), jitted over mesh ``m``: the state replicated
  (its replay entry sharded), the batch sharded. Step ``s`` of a run is
  ``steps[s % visits]``."""
  shard, states = mesh.sharded(m), state_shardings(m, state)
  return tuple(
    jax.jit(
      make_train_step(graphdef, tx, terms, augment, visits, visit),
      in_shardings=(states, shard, shard),
      out_shardings=(states, mesh.replicated(m)),
      donate_argnums=0,
    )
    for visit in range(visits)
  )


def make_eval_step(graphdef):
  def eval_step(state, images_u8, labels, mask):
    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.eval()
    logits = model(data.levels(images_u8))
    return jnp.sum((jnp.argmax(logits, -1) == labels) & mask)

  return eval_step


def accuracy(m, eval_step, state, split: data.Split, batch_size: int) -> float:
  """Exact accuracy over a whole split (the last batch padded and masked)."""
  batch_size = -(-batch_size // m.size) * m.size  # shardable over every device
  correct = 0
  for i in range(0, len(split), batch_size):
    x, y = split.images[i : i + batch_size], split.labels[i : i + batch_size]
    pad = batch_size - len(y)
    mask = np.arange(batch_size) < len(y)
    if pad:
      x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
      y = np.concatenate([y, np.zeros(pad, y.dtype)])
    correct += int(eval_step(state, *mesh.global_batch(m, x, y, mask)))
  return correct / len(split)
