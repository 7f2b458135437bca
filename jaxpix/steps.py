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
LossTerm = Callable[[nnx.Module, jax.Array, jax.Array, jax.Array], tuple[jax.Array, dict]]


def make_train_step(graphdef, tx, terms, augment: bool):
  def train_step(state, images_u8, labels):
    key = jax.random.fold_in(jax.random.wrap_key_data(state['key']), state['step'])
    k_aug, k_loss = jax.random.split(key)
    x = data.augment(k_aug, images_u8) if augment else data.levels(images_u8)

    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.train()

    def loss_fn(model):
      total, metrics = 0.0, {}
      for i, (_, weight, term) in enumerate(terms):
        value, m = term(model, x, labels, jax.random.fold_in(k_loss, i))
        total = total + weight * value
        metrics.update(m)
      metrics['loss'] = total
      return total, metrics

    # Gradients w.r.t. the parameters only; batch statistics update in place.
    (_, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    _, _, rest = nnx.split(model, nnx.Param, ...)
    updates, opt = tx.update(grads, state['opt'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    return dict(state, params=params, rest=rest, opt=opt, step=state['step'] + 1), metrics

  return train_step


def compile_train_step(m, graphdef, tx, terms, augment: bool):
  """The train step jitted over mesh ``m``: state replicated, batch sharded."""
  repl, shard = mesh.replicated(m), mesh.sharded(m)
  return jax.jit(
    make_train_step(graphdef, tx, terms, augment),
    in_shardings=(repl, shard, shard),
    out_shardings=(repl, repl),
    donate_argnums=0,
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
