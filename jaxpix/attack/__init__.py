"""One-pixel / few-pixel attacks, batched and compiled with ``jit``/``vmap``.

``from jaxpix import attack``; then ``attack.one_pixel(predict, images, labels,
key=jax.random.key(0))``. ``predict`` is any pure JAX function from float
images in [0, 1] [B, H, W, C] to logits [B, K].

Modules, each one job: ``attacks`` (the public attacks, one calling
convention), ``runner`` (how an attack runs over a data set, and its
``AttackResult``), ``adversaries`` (the training adversaries: pure, jittable,
fixed cost), ``checks`` (input checks), ``search`` (what a search is:
differential evolution, the exhaustive corner sweep, its gradient-ranked
order), ``engine`` (one batched step of a search: candidates scored, best
kept), ``loop`` (steps in a compiled loop over queued images, per device,
and its host driver), ``perturb`` (how a candidate vector becomes an image),
``forward`` (the user's model called in batches, with or without ``params``)
and ``linearised`` (every one-pixel candidate scored from one input
gradient).
"""

# Grouped by what the names are for, not sorted by module.
# isort: off
# The attacks: a data set in, an AttackResult out; swap one for another by name.
from jaxpix.attack.attacks import (
  RunOptions,
  extreme_colour,
  gradient_ranked,
  one_pixel,
  random_search,
)
from jaxpix.attack.runner import AttackResult

# Training adversaries: pure and jittable, a fixed cost, for inside a train step.
from jaxpix.attack.adversaries import (
  FirstOrderResult,
  FixedBudgetResult,
  de_fixed_budget,
  first_order,
)

# Presets: differential evolution's settings.
from jaxpix.attack.search import KERAS, PRESETS, SU, DEConfig

# Low-level helpers, used by the evaluation and the benchmarks.
from jaxpix.attack.forward import batched_probs
from jaxpix.attack.perturb import apply_candidates
from jaxpix.attack.runner import default_batch

# isort: on

__all__ = [
  # attacks
  'one_pixel',
  'random_search',
  'extreme_colour',
  'gradient_ranked',
  'AttackResult',
  'RunOptions',
  # training adversaries
  'first_order',
  'de_fixed_budget',
  'FirstOrderResult',
  'FixedBudgetResult',
  # presets
  'DEConfig',
  'SU',
  'KERAS',
  'PRESETS',
  # low-level helpers
  'apply_candidates',
  'batched_probs',
  'default_batch',
]
