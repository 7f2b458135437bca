"""The attacks, one family: ``one_pixel`` (differential evolution),
``extreme_colour`` (every position x every colour-cube corner) and
``gradient_ranked`` (the same candidates in the order the input gradient ranks
them).

One calling convention, so that one swaps for another by its name:
``attack(predict, images, labels, *, key, targets, <its search's keywords>,
**run)``, ``run`` the :class:`RunOptions` (how it runs: slots, batch,
devices, indices, steps_per_call, progress, params), and one result type,
:class:`AttackResult`, where the images the model already gets wrong are
flagged and not attacked.

Input checks live in ``checks.py``, the searches in ``search.py``, how an
attack runs over a data set in ``runner.py`` (and ``loop.py``), and the
training adversaries (pure, jittable) in ``adversaries.py``."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

import jax
import numpy as np

from jaxpix.attack import blackbox, checks, forward, linearised, perturb, runner, search
from jaxpix.attack.engine import Fitness, Predict
from jaxpix.attack.runner import AttackResult


class RunOptions(TypedDict, total=False):
  """How an attack runs: the same keywords, with the same meaning, for every
  attack (``**run``); all optional.

  Attributes:
    slots: images in flight per device (default: 4 forward passes' worth,
      at least 16).
    batch: images per forward pass and device, rounded down to whole
      populations (chunks), at least one: ``batch // popsize`` images'
      candidates are evaluated together. Default :func:`default_batch`
      (measured on CPU). Only the images in flight are evaluated, so a run's
      tail, with few images left, costs what they need, with no compilation
      for the smaller number.
    devices: devices to shard the images over (default: all local devices).
    indices: global indices of the images, for the per-image keys
      (``fold_in(key, indices[i])``, default ``arange(N)``); pass them when
      attacking a data set in pieces.
    steps_per_call: search steps (generations, chunks) per compiled call
      between host syncs (default 10 for ``one_pixel``, 16 for the sweeps).
    progress: ``True`` for a progress bar (images done, success rate so far,
      evaluations/s), or a function called with a dict of numpy arrays for
      the images finished after each compiled call (``gidx``, ``success``,
      ``queries``, ``fitness``, ``misclassified``, ...), e.g. to write results
      as they finish; the images the model already gets wrong come first, in
      one call before the search.
    params: the model's parameters (any pytree), passed to
      ``predict(params, images)`` as an argument of the compiled attack: a
      second call with the same ``predict`` and new parameters of the same
      shapes (another checkpoint, a training step's weights) compiles
      nothing. Without it, ``predict`` is a closure: the attack compiles once
      per ``predict`` object, with whatever it captured baked in as
      constants, so a fresh ``lambda x: model(params, x)`` per call compiles
      every call. For an NNX model, ``jaxpix.models.as_params_predict``.
  """

  slots: int | None
  batch: int | None
  devices: Sequence[Any] | None
  indices: Any
  steps_per_call: int | None
  progress: bool | Callable[[dict], None]
  params: Any


def _check_run(name: str, run: dict) -> None:
  unknown = sorted(set(run) - set(RunOptions.__annotations__))
  if unknown:
    raise TypeError(f'{name}() got an unexpected keyword argument {unknown[0]!r}')


def one_pixel(
  predict: Predict,
  images,
  labels,
  *,
  key: jax.Array,
  targets=None,
  pixels: int = 1,
  popsize: int | None = None,
  maxiter: int | None = None,
  strategy: str | search.DEConfig = 'su',
  mode: perturb.Mode = 'replace',
  l2_penalty: float = 0.0,
  stop_threshold: float | None = None,
  **run: Unpack[RunOptions],
) -> AttackResult:
  """The one-pixel (k-pixel) attack by differential evolution, batched.

  Args:
    predict: pure function ``images [B, H, W, C] in [0, 1] -> logits [B, K]``;
      put any defence (input transformation, autoencoder) inside it. With
      ``params``, ``predict(params, images)`` instead.
    images: float [N, H, W, C], 8-bit values scaled to [0, 1].
    labels: int [N], the true classes.
    key: a ``jax.random.key``; image i uses ``fold_in(key, indices[i])``.
    targets: int [N] target classes for a targeted attack, or None.
    pixels: how many pixels the attack may change (k).
    popsize, maxiter: override the strategy's population size / generations.
    strategy: ``'su'`` (Su et al.: rand/1, F = 0.5, no crossover, 400 x 100),
      ``'keras'`` (the reference Keras implementation's best1bin variant) or a
      :class:`DEConfig`.
    mode: ``'replace'`` a pixel's colour or ``'add'`` a clipped delta.
    l2_penalty: lambda of the APR paper's regularised fitness
      ``f_t(x + d) - lambda ||d||_2`` (0 = Su et al.'s plain probability).
    stop_threshold: also require p(true) <= threshold (p(target) >= threshold)
      before stopping an image early, e.g. 0.05 for Su et al.'s ImageNet runs.
    **run: the :class:`RunOptions` (slots, batch, devices, indices,
      steps_per_call, progress, params).

  Returns:
    An :class:`AttackResult`. An image the model already gets wrong is not
    attacked (``misclassified``, no query spent).

  Example:
    >>> result = attack.one_pixel(predict, images, labels, key=jax.random.key(0))
    >>> result.success_rate  # over the images the model got right
    >>> fn, params = models.as_params_predict(model)  # compile once per architecture
    >>> result = attack.one_pixel(fn, images, labels, key=key, params=params)
  """
  _check_run('one_pixel', run)
  cfg = checks.de_config(strategy, popsize, maxiter)
  x = checks.images(images)
  n, h, w, c = x.shape
  checks.pixels(pixels, h, w)
  checks.mode(mode)
  checks.key(key)
  checks.stop_threshold(stop_threshold)
  checks.l2_penalty(l2_penalty)
  fit = Fitness(
    targeted=targets is not None,
    l2_penalty=float(l2_penalty),
    stop_threshold=stop_threshold,
    mode=mode,
  )
  srch = search.differential_evolution(cfg, pixels, h, w, c, mode)
  return runner.run(srch, fit, predict, x, labels, targets, key, pixels, run, steps_per_call=10)


def extreme_colour(
  predict: Predict,
  images,
  labels,
  *,
  key: jax.Array | None = None,
  targets=None,
  early_stop: bool = True,
  chunk: int = 512,
  **run: Unpack[RunOptions],
) -> AttackResult:
  """Exhaustive one-pixel search over every position x every colour-cube corner.

  For RGB this is H * W * 8 evaluations per image (8,192 on CIFAR-10), ``chunk``
  of them per image per forward pass. Run with ``early_stop=False`` it is a
  check as well as an attack: an image it does not fool is robust to every
  extreme-colour one-pixel change, and ``fitness`` is the lowest true-class
  probability any of them reached.

  Args:
    predict, images, labels, targets, **run: as in :func:`one_pixel`.
    key: unused (the sweep draws nothing); accepted so that the attacks take
      the same keywords.
    early_stop: stop an image at the first chunk that fools the model.
    chunk: candidates per image per step (a divisor of H * W * 8 wastes nothing).

  Returns:
    An :class:`AttackResult` (``positions`` [N, 1, 2], ``colors`` in {0, 255}).
  """
  _check_run('extreme_colour', run)
  x = checks.images(images)
  n, h, w, c = x.shape
  checks.positive_int('chunk', chunk)
  key = _unused_key(key)
  fit = Fitness(targeted=targets is not None, early_stop=early_stop)
  srch = search.exhaustive_corners(h, w, c, chunk)
  return runner.run(srch, fit, predict, x, labels, targets, key, 1, run, steps_per_call=16)


def gradient_ranked(
  predict: Predict,
  images,
  labels,
  *,
  key: jax.Array | None = None,
  targets=None,
  budget: int | None = None,
  chunk: int = 200,
  early_stop: bool = True,
  refine: bool = True,
  radius: int = 2,
  **run: Unpack[RunOptions],
) -> AttackResult:
  """The extreme-colour search in the order the input gradient ranks it.

  Every (pixel, colour-cube corner) candidate of :func:`extreme_colour` is
  scored by the first-order change of the loss
  (:func:`jaxpix.attack.linearised.linearised_gain`, one gradient per image),
  and the candidates are evaluated best first, ``chunk`` per step, until one
  fools the model or ``budget`` have been tried. With ``refine`` (the
  default) the order adapts to what the model answers: after each step the
  measured losses correct the estimates of the untried corners of the same
  pixel and of the pixels within ``radius`` of it
  (:func:`jaxpix.attack.search.refined_corners`), which matters where the
  linearisation is poor (a full-range colour change on a deep network). No
  candidate is tried twice, so with the whole budget (the default, H * W * 2^C)
  it fools exactly the images the exhaustive search fools, only sooner; a
  smaller budget trades that guarantee for time. It needs ``predict`` to be
  differentiable JAX (the gradient is free then: one backward pass per image,
  not counted in ``queries``); for a black-box model use :func:`one_pixel`.

  Args:
    predict, images, labels, targets, **run: as in :func:`one_pixel`.
      Targeted: ranked by the first-order increase of log p(target).
    key: unused (the order is the search: nothing is drawn); accepted so that
      the attacks take the same keywords.
    budget: candidates tried per image at most (default all).
    chunk: candidates per image per step (with ``refine``, the order is
      corrected between steps: smaller chunks adapt sooner).
    early_stop: stop an image at the first chunk that fools the model.
    refine: correct the order by the measured losses (False: the fixed
      gradient order).
    radius: with ``refine``, a measured pixel's error also corrects the
      estimates of unmeasured pixels up to ``radius`` rows and columns away.

  Returns:
    An :class:`AttackResult` (``positions`` [N, 1, 2], ``colors`` in {0, 255}).

  Example:
    >>> r = attack.gradient_ranked(predict, images, labels, budget=4400)
  """
  _check_run('gradient_ranked', run)
  x = checks.images(images)
  n, h, w, c = x.shape
  total = h * w * 2**c
  budget = total if budget is None else budget
  if (
    isinstance(budget, bool)
    or not isinstance(budget, (int, np.integer))
    or not 1 <= budget <= total
  ):
    raise ValueError(
      f'budget must be an int in [1, H * W * 2^C] = [1, {total}] (candidates per image), '
      f'got {budget!r}'
    )
  checks.positive_int('chunk', chunk)
  if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
    raise ValueError(f'radius must be an int >= 0 (pixels), got {radius!r}')
  key = _unused_key(key)
  budget, targeted = int(budget), targets is not None
  if refine:
    srch = search.refined_corners(h, w, c, budget, chunk, int(radius), targeted)
    data = linearised.candidate_gains
  else:
    srch = search.ranked_corners(h, w, c, budget, chunk)
    data = functools.partial(linearised.candidate_ranking, budget=budget)
  fit = Fitness(targeted=targeted, early_stop=early_stop)
  return runner.run(
    srch, fit, predict, x, labels, targets, key, 1, run, steps_per_call=16, search_data=data
  )


def random_search(
  predict: Predict,
  images,
  labels,
  *,
  key: jax.Array,
  targets=None,
  pixels: int = 1,
  budget: int = 10_000,
  mode: perturb.Mode = 'replace',
  **run: Unpack[RunOptions],
) -> AttackResult:
  """A black-box search over extreme colours for one or ``pixels`` pixels,
  query-efficient from its first query: only ``predict``'s outputs are used.

  One pixel: the H * W * 2^C extreme-colour candidates, never one twice, best
  first by an estimate that every measured loss corrects (a pixel's other
  corners and its neighbours rise when it measured well), starting from a
  prior (corners far from the pixel's own colour first). ``pixels`` > 1:
  Sparse-RS's L0 random search (Croce et al., AAAI 2022): a set of k pixels
  with corner colours, each query moving some of them (fewer as the budget
  goes) to new positions and corners, kept when the loss drops; the new
  ones are drawn from the same prior (far corners, and the pixels that
  have them, more often), not uniformly.
  :mod:`jaxpix.attack.blackbox` says more.

  Every step gives each image in flight as many candidates as fill the
  forward passes (``batch`` candidates each): one or a few while many
  images are in flight (the search adapts after each), more as they finish,
  so a small N and a run's tail still use whole passes. So an image's result
  depends on the key, the image and how many images run beside it (the slots
  and the batch): a rerun of the same call gives the same result, a run over
  another set of images may give an equally valid other one.

  Args:
    predict, images, labels, targets, **run: as in :func:`one_pixel`
      (``batch``: candidates per forward pass; ``slots``: images in flight,
      default ``batch // 4``, at least 16).
    key: a ``jax.random.key``; image i uses ``fold_in(key, indices[i])``.
    pixels: how many pixels the attack may change (k).
    budget: model evaluations per image at most; one pixel: at most
      H * W * 2^C (every extreme colour of every pixel, then it stops).
    mode: ``'replace'`` (colours 0 or 255 per channel) or ``'add'`` (deltas
      of -255 or +255, clipped: the same images).

  Returns:
    An :class:`AttackResult` (``colors`` in {0, 255}, or {-255, 255} for
    ``add``); ``queries`` counts every evaluation, as Sparse-RS counts them.

  Example:
    >>> r = attack.random_search(predict, images, labels, key=jax.random.key(0), budget=1000)
  """
  _check_run('random_search', run)
  x = checks.images(images)
  n, h, w, c = x.shape
  checks.pixels(pixels, h, w)
  checks.mode(mode)
  checks.key(key)
  total = h * w * 2**c
  if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or budget < 1:
    raise ValueError(f'budget must be an int >= 1 (model evaluations per image), got {budget!r}')
  budget, targeted = int(budget), targets is not None
  fit = Fitness(targeted=targeted, mode=mode)
  if pixels == 1:
    make = lambda p: blackbox.corner_search(h, w, c, min(p, total), targeted, mode)  # noqa: E731
    data = functools.partial(_corner_data, budget=min(budget, total))
  else:
    make = lambda p: blackbox.sparse_search(h, w, c, pixels, p, mode)  # noqa: E731
    data = lambda fn, params, xs, ys, ts: blackbox.sparse_data(xs, budget)  # noqa: E731
  return runner.run(
    make, fit, predict, x, labels, targets, key, pixels, run, steps_per_call=32, search_data=data
  )


def _corner_data(fn, params, x, y, t, *, budget: int) -> np.ndarray:
  """The one-pixel search's data: the prior's distances, the clean objective
  (-log p(label), or log p(target)), the budget; float32 [N, T + 2]."""
  logits = forward.batched_logits(fn, x, params=params)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.sum(np.exp(logp), -1, keepdims=True))
  cls = y if t is None else t
  own = logp[np.arange(len(x)), cls]
  base = own if t is not None else -own
  tail = np.stack([base, np.full(len(x), budget)], 1)
  return np.concatenate([blackbox.corner_prior(x), tail], 1).astype(np.float32)


def _unused_key(key):
  """The key of a search that draws nothing: checked if given (a wrong key is
  a mistake either way), else a fixed one (the engine's state holds a key)."""
  if key is None:
    return jax.random.key(0)
  checks.key(key)
  return key
