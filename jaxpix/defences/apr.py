"""Adaptive Pixel Resilience (APR paper, section IV) and adversarial training.

APR has three parts, each switchable for the paper's Table 3 ablation:

- pixel-wise attention at the input, ``y = f(A(x) * x)`` with
  ``A(x) = sigmoid(W_a * x + b_a)`` (:class:`Attended`);
- the mixed loss ``L = alpha L_clean + (1 - alpha) L_adv`` with one-pixel
  adversarial examples made from the current parameters at every mini-batch,
  inside the jitted train step;
- the input-gradient penalty ``R = beta ||grad_x f(x)||_2^2``.

The last two are one loss term (:func:`apr_term`), because they share work.
Adversarial training (the AT baseline) is the mixed loss alone.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from jaxpix import attack, models


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
# The training loss
#
# One term, (model in train mode, x [B, H, W, C] in [0, 1], labels, key) ->
# (scalar, metrics) (see jaxpix.steps.LossTerm), because its parts share
# work: the input gradient, the adversarial images and one forward pass.
#
# The batch is read in blocks of BLOCK images; a share of it (adversarial
# images, the penalty's sub-batch) is the first few positions of every block.
# Batches are shuffled, so any positions are a random sample; and positions
# within blocks keep each device's share local when the batch is sharded over
# devices in contiguous slices that are multiples of BLOCK.
# --------------------------------------------------------------------------- #

BLOCK = 8
ADVERSARIES = ('first_order', 'de')
BATCH_LAYOUTS = ('mixed', 'separate')
PENALTIES = ('fd', 'exact')
DOMAINS = ('normalised', 'pixels')


def _ce(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def make_adversary(cfg):
  """``(predict, images, labels, key, grads, logits) -> (adversarial images, fooled [B])``
  for ``config.defence.adv``.

  ``method='first_order'``: every pixel x extreme colour scored from the input
  gradient (``grads`` and the clean ``logits`` when given, else its own), ``k``
  per image verified on average (:func:`jaxpix.attack.first_order`). ``method='de'``: the paper's
  adversary, differential evolution (Su et al.'s rand/1) with a small fixed
  budget (``popsize``, ``maxiter``) per mini-batch. Pixel changes follow
  ``mode`` ('replace' or the paper's additive range).
  """
  if cfg.method == 'first_order':

    def adversary(predict, x, y, key, grads=None, logits=None):
      del key
      r = attack.first_order(
        predict, x, y, k=cfg.k, grads=grads, logits=logits, mode=cfg.mode, radius=cfg.radius
      )
      return r.adv_images, r.success

  elif cfg.method == 'de':
    de = attack.DEConfig(popsize=cfg.popsize, maxiter=cfg.maxiter)

    def adversary(predict, x, y, key, grads=None, logits=None):
      del grads, logits
      r = attack.de_fixed_budget(predict, x, y, key, de=de, pixels=cfg.pixels, mode=cfg.mode)
      return r.adv_images, r.success

  else:
    raise ValueError(f'config.defence.adv.method must be one of {ADVERSARIES}, got {cfg.method!r}')
  return adversary


def eighths(value: float, field: str) -> int:
  """A share of the batch as a count of positions per block of BLOCK."""
  m = float(value) * BLOCK
  if not 0 <= value <= 1 or abs(m - round(m)) > 1e-6:
    raise ValueError(
      f'config.{field}={value!r} must be a multiple of 1/{BLOCK} in [0, 1] (shares of the '
      f'batch are taken per block of {BLOCK} images), e.g. 0.25'
    )
  return round(m)


def input_gradient(model: nnx.Module, x, y, differentiable: bool):
  """``grad_x sum_b l_b`` [B, H, W, C] with ``l_b = -log p(y_b | x_b)``, and the logits.

  Through a copy of the model in train mode: the batch statistics of ``x``,
  as the clean pass has; the copy's statistic updates are discarded
  (``copy=True`` because nnx.merge otherwise reuses the outer trace's
  variables). ``differentiable``: keep the parameters' part of the graph, for
  the exact penalty's double backprop; otherwise it is cut.
  """
  graphdef, state = nnx.split(model)
  if not differentiable:
    state = jax.lax.stop_gradient(state)

  def total(inputs):
    logits = nnx.merge(graphdef, state, copy=True)(inputs)
    return _ce(logits, y).sum(), logits

  return jax.grad(total, has_aux=True)(x)


def current_logits(model: nnx.Module, x):
  """The logits of ``x`` in train mode (its own batch statistics) at the
  current parameters, from a copy: nothing differentiated, no statistic updated."""
  graphdef, state = nnx.split(model)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state), copy=True)(x)


def fd_shift(x, grads, scale, h: float):
  """The finite-difference point of the penalty: ``x + h * scale * d`` with
  ``d = scale * g / ||scale * g||`` per example, and ``||scale * g||`` [B].

  ``scale`` maps the [0, 1] pixels to the penalty's domain (``x = mean +
  scale * z``): ``grad_z l = scale * grad_x l``, and a step ``h d`` in z is
  ``h scale d`` in x. The point is neither clipped nor put on the 8-bit grid:
  it probes the loss surface, it is not an adversarial image.
  """
  gz = jax.lax.stop_gradient(grads) * scale
  norm = jnp.sqrt(jnp.sum(gz * gz, axis=(1, 2, 3)))
  d = gz / jnp.maximum(norm, 1e-12)[:, None, None, None]
  return x + h * scale * d, norm


def fd_surrogate(loss_at, loss_shift, norm, h: float):
  """Per example, ``2 ||g|| (l(x + h d) - l(x)) / h``: its parameter gradient
  is the finite-difference estimate of the parameter gradient of ``||g||^2``
  (CURE, Moosavi-Dezfooli et al. 2019):

      grad_theta ||g||^2 = 2 grad_theta (g . v)|_{v = g fixed}
                         = 2 ||g|| grad_theta (d . grad_x l)
                        ~= 2 ||g|| grad_theta (l(x + h d) - l(x)) / h.

  Exact as h -> 0 (then limited by float32 cancellation); a larger h averages
  the curvature over a neighbourhood of that size instead.
  """
  return 2.0 * norm * (loss_shift - loss_at) / h


def clean_term(model, x, y, key):
  """The plain cross-entropy: the undefended loss."""
  del key
  logits = model(x)
  loss = _ce(logits, y).mean()
  return loss, {'clean_loss': loss, 'accuracy': jnp.mean(jnp.argmax(logits, -1) == y)}


def penalty_scale(config) -> tuple[float, ...]:
  """Per channel, ``d x / d z`` of the penalty's domain (see ``defence.penalty.domain``).

  The shifted images of the finite-difference estimator share the main
  pass's batch-norm statistics (they are appended to it); they lie within
  ``h`` of their clean images, so they move those statistics little.
  """
  d = config.defence.penalty
  if d.domain not in DOMAINS:
    raise ValueError(f'config.defence.penalty.domain must be one of {DOMAINS}, got {d.domain!r}')
  if d.domain == 'pixels':
    return (1.0,)  # broadcasts over any number of channels
  # The statistics the zoo's models normalise with for this dataset.
  return models.CIFAR10_STD if config.data.dataset == 'cifar10' else models.IMAGENET_STD


def apr_term(config):
  """APR's loss ``alpha L_clean + (1 - alpha) L_adv + beta R`` (and its ablations, and AT).

  What each option computes, per step (U = one forward-backward of the batch):

  - ``adv.batch='mixed'``: one forward-backward over a batch whose first
    ``adv.fraction`` of every block is replaced by adversarial images;
    ``L_clean`` is the mean over the clean positions, ``L_adv`` over the
    adversarial ones, so the loss is an unbiased estimate of the paper's
    (``alpha`` weights the two means, whatever the share). ``'separate'``: the
    paper's form, a clean pass and an adversarial pass over the whole batch.
  - ``penalty.method='exact'``: ``R = mean ||grad_z l||^2`` differentiated by
    double backprop (the paper's). ``'fd'``: the same ``R``, its parameter
    gradient estimated by finite differences: ``penalty.fraction`` of the
    batch shifted along its input gradient is appended to the forward pass
    (:func:`fd_surrogate`). Either is taken on ``penalty.fraction`` of the
    batch (clean images; in 'mixed', the positions after the adversarial ones).
  - Shared work: the train-mode input gradient of the penalty's images is
    computed once (:func:`input_gradient`); with a first-order adversary and a
    penalty it is also the adversary's scoring gradient (the pass then covers
    the adversarial positions too), so the adversary needs no backward pass
    of its own. Without a penalty the first-order adversary takes the
    eval-mode gradient of the model it attacks.
  - ``defence.replay``: the term is called with ``given`` (the input
    gradients of this batch from the previous step's backward pass,
    :func:`jaxpix.steps.make_train_step`) and computes no gradient: the
    adversary ranks and the penalty points along the given one (the
    adversary's split of its verifications reads the adversarial images'
    train-mode logits, one forward pass of them).
  """
  d = config.defence
  adv, pen = d.adv, d.penalty
  if adv.batch not in BATCH_LAYOUTS:
    raise ValueError(f'config.defence.adv.batch must be one of {BATCH_LAYOUTS}, got {adv.batch!r}')
  if pen.method not in PENALTIES:
    raise ValueError(
      f'config.defence.penalty.method must be one of {PENALTIES}, got {pen.method!r}'
    )
  if not 0 <= d.alpha <= 1:
    raise ValueError(f'config.defence.alpha must be in [0, 1], got {d.alpha!r}')
  if d.beta < 0:
    raise ValueError(f'config.defence.beta (the penalty weight) must be >= 0, got {d.beta!r}')
  if config.train.batch_size % BLOCK:
    raise ValueError(
      f'config.train.batch_size={config.train.batch_size} must be a multiple of {BLOCK}: the '
      f'APR/AT loss reads the batch in blocks of {BLOCK}'
    )
  adversary = make_adversary(adv) if d.adversarial else None
  mixed = bool(d.adversarial) and adv.batch == 'mixed'
  n_adv = eighths(adv.fraction, 'defence.adv.fraction') if mixed else 0
  if mixed and not 0 < n_adv < BLOCK:
    raise ValueError(
      f'config.defence.adv.fraction={adv.fraction!r}: the mixed batch needs both clean and '
      f"adversarial images (1/{BLOCK} .. {BLOCK - 1}/{BLOCK}); use adv.batch='separate' for "
      'a whole adversarial pass'
    )
  n_pen = eighths(pen.fraction, 'defence.penalty.fraction') if d.beta else 0
  if d.beta and n_pen == 0:
    raise ValueError('config.defence.penalty.fraction must be > 0 when defence.beta > 0')
  if n_adv + n_pen > BLOCK:
    raise ValueError(
      f'config.defence.adv.fraction + penalty.fraction = {adv.fraction + pen.fraction} > 1: in '
      'the mixed batch the penalty is taken on clean images only'
    )
  check_replay(config)
  if d.beta and pen.method == 'fd' and not pen.h > 0:
    raise ValueError(f'config.defence.penalty.h must be > 0, got {pen.h!r}')
  exact, fd = pen.method == 'exact' and d.beta > 0, pen.method == 'fd' and d.beta > 0
  adv_hi = n_adv if mixed else (BLOCK if d.adversarial else 0)  # adversarial positions [0, adv_hi)
  pen_lo, pen_hi = n_adv, n_adv + n_pen  # penalty positions
  share = bool(d.adversarial) and adv.method == 'first_order' and (d.beta > 0 or d.replay)
  grad_hi = max(pen_hi, adv_hi if share else 0)  # the input-gradient pass covers [0, grad_hi)
  scale = jnp.asarray(penalty_scale(config), jnp.float32)
  alpha = d.alpha if d.adversarial else 1.0

  def term(model, x, y, key, given=None):
    b = x.shape[0]
    if b % BLOCK:
      raise ValueError(
        f'the APR/AT loss reads the batch in blocks of {BLOCK}: config.train.batch_size '
        f'(per step, {b}) must be a multiple of {BLOCK}'
      )
    blocks = lambda a: a.reshape((b // BLOCK, -1) + a.shape[1:])
    flat = lambda a: a.reshape((-1,) + a.shape[2:])
    xb, yb = blocks(x), blocks(y)
    metrics, total = {}, 0.0
    # --- the input gradient, once (penalty; first-order adversary with a penalty)
    g = g_logits = None
    if given is not None:  # a replayed batch: last step's, whole batch
      g = blocks(given['grads'])[:, :grad_hi]
    elif grad_hi:
      g, g_logits = input_gradient(model, flat(xb[:, :grad_hi]), flat(yb[:, :grad_hi]), exact)
      g, g_logits = blocks(g), blocks(g_logits)  # [B / BLOCK, grad_hi, ...]
    if d.beta:
      gz = flat(g[:, pen_lo:pen_hi]) * scale
      sq = jnp.sum(gz * gz, axis=(1, 2, 3))
      penalty = jnp.mean(sq)
      metrics['grad_penalty'] = jax.lax.stop_gradient(penalty)
      if exact:
        total = total + d.beta * penalty
      else:
        x_fd, norm = fd_shift(flat(xb[:, pen_lo:pen_hi]), flat(g[:, pen_lo:pen_hi]), scale, pen.h)
    # --- adversarial images of the first adv_hi positions of every block
    if d.adversarial:
      xa, ya = flat(xb[:, :adv_hi]), flat(yb[:, :adv_hi])
      if given is not None:
        # The verifications are split by which images the model gets right
        # now: the plain visit has just trained on these very images, and
        # its logits split them worse (benchmarks/replay_adversary.py: with
        # them the train-mode drop fell from 6.3 to 4.6 points; with these,
        # 5.7, not separable from a fresh gradient's).
        a_logits = current_logits(model, xa)
      else:
        a_logits = flat(g_logits[:, :adv_hi]) if share else None
      x_adv, fooled = adversary(
        models.as_predict(model), xa, ya, key, flat(g[:, :adv_hi]) if share else None, a_logits
      )
      metrics['adv_changed'] = jnp.mean(jnp.any(x_adv != xa, axis=(1, 2, 3)))
      metrics['adv_fooled'] = jnp.mean(fooled)
    # --- the forward pass(es) the parameter gradient comes from
    main = x
    if mixed:
      main = flat(xb.at[:, :n_adv].set(x_adv.reshape((b // BLOCK, n_adv) + x.shape[1:])))
    labels = y
    if fd:
      main = jnp.concatenate([main, x_fd])
      labels = jnp.concatenate([y, flat(yb[:, pen_lo:pen_hi])])
    logits = model(main)
    losses = _ce(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    lb, cb = blocks(losses[:b]), blocks(correct[:b])
    metrics['clean_loss'] = jnp.mean(lb[:, n_adv:])
    metrics['accuracy'] = jnp.mean(cb[:, n_adv:])
    if mixed:
      metrics['adv_loss'] = jnp.mean(lb[:, :n_adv])
      metrics['adv_accuracy'] = jnp.mean(cb[:, :n_adv])
    elif d.adversarial:
      adv_logits = model(x_adv)
      metrics['adv_loss'] = _ce(adv_logits, y).mean()
      metrics['adv_accuracy'] = jnp.mean(jnp.argmax(adv_logits, -1) == y)
    total = total + alpha * metrics['clean_loss']
    if d.adversarial:
      total = total + (1.0 - alpha) * metrics['adv_loss']
    if fd:
      sur = jnp.mean(fd_surrogate(flat(lb[:, pen_lo:pen_hi]), losses[b:], norm, pen.h))
      # The value of R, the gradient of the estimate: the logged loss is the
      # paper's L_total whichever estimator trains it.
      total = total + d.beta * (penalty + sur - jax.lax.stop_gradient(sur))
    return total, metrics

  return term


def check_replay(config) -> None:
  """``defence.replay`` needs what reads the given gradient: the first-order
  adversary or the finite-difference penalty, and nothing that needs a fresh one."""
  d = config.defence
  if not d.replay:
    return
  if not (d.adversarial or d.beta):
    raise ValueError(
      'config.defence.replay=True replays each batch to give the adversary and the penalty '
      'their input gradient, but this defence has neither (defence.adversarial is False, '
      'defence.beta is 0): set defence.replay=False'
    )
  if d.adversarial and d.adv.method != 'first_order':
    raise ValueError(
      f"config.defence.replay=True needs defence.adv.method='first_order' (it ranks its "
      f'candidates by the replayed gradient), got {d.adv.method!r}'
    )
  if d.beta and d.penalty.method != 'fd':
    raise ValueError(
      "config.defence.replay=True needs defence.penalty.method='fd': the exact penalty "
      'differentiates the gradient at the current parameters, which replay does not compute'
    )


def loss_terms(config):
  """The weighted loss terms for ``config.defence`` (name, weight, term)."""
  d = config.defence
  if not d.adversarial and not d.beta:
    return [('clean', 1.0, clean_term)]
  return [('apr', 1.0, apr_term(config))]
