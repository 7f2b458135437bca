"""One-pixel / few-pixel attacks, batched and compiled with ``jit``/``vmap``.

``from jaxpix import attack``; then ``attack.one_pixel(predict, images, labels,
key=jax.random.key(0))``. ``predict`` is any pure JAX function from float
images in [0, 1] [B, H, W, C] to logits [B, K].

Modules, each one job: ``attacks`` (the public attacks), ``checks`` (their
input checks), ``search`` (what a search is: differential evolution, the
exhaustive corner sweep, its gradient-ranked order), ``engine`` (one
batched step of a search: candidates scored, best kept), ``loop`` (steps in a
compiled loop over queued images, per device, and its host driver),
``perturb`` (how a candidate vector becomes an image), ``forward`` (the
user's model called in batches, with or without ``params``) and
``linearised`` (the first-order adversary for training and the
gradient-ranked search).
"""

from jaxpix.attack.attacks import (
  AttackResult,
  FixedBudgetResult,
  de_fixed_budget,
  default_batch,
  extreme_colour,
  one_pixel,
)
from jaxpix.attack.forward import batched_logits, batched_probs
from jaxpix.attack.linearised import (
  FirstOrderResult,
  first_order,
  gradient_ranked,
  linearised_gain,
)
from jaxpix.attack.perturb import apply as apply_pixels
from jaxpix.attack.perturb import apply_candidates, decode
from jaxpix.attack.search import KERAS, PRESETS, SU, DEConfig

__all__ = [
  'KERAS',
  'PRESETS',
  'SU',
  'AttackResult',
  'DEConfig',
  'FirstOrderResult',
  'FixedBudgetResult',
  'apply_candidates',
  'apply_pixels',
  'batched_logits',
  'batched_probs',
  'de_fixed_budget',
  'decode',
  'default_batch',
  'extreme_colour',
  'first_order',
  'gradient_ranked',
  'linearised_gain',
  'one_pixel',
]
