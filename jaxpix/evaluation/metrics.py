"""The numbers of an evaluation, from the per-image attack records: attack
success rate with its interval and its curve against the query budget, and
the autoencoder paper's Table 4."""

from __future__ import annotations

import jax
import numpy as np

from jaxpix import attack, stats
from jaxpix.attack import perturb


def asr_curve(records: list[dict], max_budget: int) -> dict:
  """Attack success rate against query budget: an attack succeeds within
  budget b when it succeeded with at most b model evaluations. Exact for the
  early-stopping searches here: an image's search up to b evaluations is the
  same whatever the final budget."""
  q = np.array([r['queries'] for r in records if r['success']], np.int64)
  budgets = np.unique(np.concatenate([q, [max_budget]])).astype(np.int64)
  n = max(len(records), 1)
  return dict(budget=budgets.tolist(), asr=[float(np.sum(q <= b) / n) for b in budgets])


def summarise_attack(records: list[dict], max_budget: int, targeted: bool) -> dict:
  succ = np.array([r['success'] for r in records], bool)
  queries = np.array([r['queries'] for r in records], np.float64)
  conf_key = 'target_prob' if targeted else 'adv_prob'
  conf = np.array([r[conf_key] for r in records], np.float64)
  k, n = int(succ.sum()), len(records)
  lo, hi = stats.wilson(k, n)
  out = dict(
    attacks=n,
    successes=k,
    attack_success_rate=k / n if n else float('nan'),
    asr_wilson95=[lo, hi],
    robustness=1 - k / n if n else float('nan'),
    mean_queries=float(queries.mean()) if n else float('nan'),
    mean_queries_successful=float(queries[succ].mean()) if k else float('nan'),
    mean_confidence_successful=float(conf[succ].mean()) if k else float('nan'),
    max_budget=max_budget,
    curve=asr_curve(records, max_budget),
  )
  if targeted:  # Su et al.'s "perturbed to at least one target class" rate, per image
    by_image: dict[int, bool] = {}
    for r in records:
      by_image[r['index']] = by_image.get(r['index'], False) or r['success']
    ki, ni = sum(by_image.values()), len(by_image)
    out.update(
      images=ni,
      images_fooled_any_target=ki / ni if ni else float('nan'),
      any_target_wilson95=list(stats.wilson(ki, ni)),
    )
  return out


def adversarial_images(records: list[dict], images: np.ndarray, mode: str) -> np.ndarray:
  """The adversarial image of each record (its best candidate applied)."""
  idx = np.array([r['index'] for r in records], np.int64)
  vec = np.array([r['vec'] for r in records], np.float32)
  return attack.apply_candidates(images[idx], vec, mode)


def result_from_records(
  records: list[dict], images: np.ndarray, labels: np.ndarray, clean_probs: np.ndarray, mode: str
) -> attack.AttackResult:
  """An :class:`AttackResult` rebuilt from log records (for the gallery)."""
  idx = np.array([r['index'] for r in records], np.int64)
  vec = np.array([r['vec'] for r in records], np.float32)
  x = images[idx]
  h, w, c = x.shape[1:]
  pos, val = jax.device_get(perturb.decode(jax.numpy.asarray(vec), h, w, c, mode))
  y = labels[idx]
  return attack.AttackResult(
    adv_images=adversarial_images(records, images, mode),
    success=np.array([r['success'] for r in records]),
    queries=np.array([r['queries'] for r in records]),
    positions=pos,
    colors=val,
    true_prob=np.array([r['true_prob'] for r in records]),
    adv_prob=np.array([r['adv_prob'] for r in records]),
    adv_label=np.array([r['adv_label'] for r in records]),
    target_prob=None,
    fitness=np.array([r['fitness'] for r in records]),
    labels=y,
    targets=None,
    clean_label=clean_probs[idx].argmax(-1),
    clean_true_prob=clean_probs[idx, y],
  )


def table4(
  bare: list[dict],
  adaptive: list[dict],
  transferred: np.ndarray,
  pipe_correct: np.ndarray,
  bare_correct_all: np.ndarray,
  pipe_correct_all: np.ndarray,
) -> dict:
  """The autoencoder paper's Table 4 on the attacked images, with the
  definitions its counts imply (jaxpix/defences/autoencoder.py gives the
  evidence from all six of its rows).

  Args:
    bare: the records of the attack on the bare classifier, one per attacked
      image: every chosen image the bare classifier classifies correctly.
    adaptive: the records of the attack on the whole pipeline (the adaptive
      attacker, who knows the autoencoder is there), over the attacked images
      the pipeline classifies correctly.
    transferred: bool [len(bare)]: the pipeline misclassifies the bare attack's
      final image (the transfer setting: the attacker does not know), for
      every attacked image, fooled or not.
    pipe_correct: bool [len(bare)]: the pipeline classifies the clean image
      correctly. An image it already gets wrong needs no adaptive attack: it
      counts as a success of the adaptive attack (a defence failure).
    bare_correct_all, pipe_correct_all: bool over all test images: the clean
      accuracy of the classifier and of the pipeline.

  With N attacked images, F the bare attack's successes and W the images whose
  attacked image the pipeline misclassifies:
  ASR = |F| / N; ASR after reconstruction = |F and W| / N; defence rate =
  |F and not W| / |F|; performance loss = |W, not F| / (N - |F and W|), the
  images the reconstruction gets wrong although the attack did not fool the
  classifier, among those not counted as attack successes. ``paired`` holds
  two exact McNemar tests of the pipeline against the bare classifier (see
  the comment there).
  """
  fooled = np.array([r['success'] for r in bare], bool)
  wrong = np.asarray(transferred, bool)
  pipe_correct = np.asarray(pipe_correct, bool)
  if not (len(wrong) == len(pipe_correct) == len(fooled)):
    raise ValueError('table4: transferred and pipe_correct need one entry per bare record')
  if len(adaptive) != int(pipe_correct.sum()):
    raise ValueError('table4: the adaptive attack runs on the images the pipeline gets right')
  # The adaptive outcome of every attacked image, matched by test-image index
  # (the two attacks' logs need not list the images in one order).
  by_index = {r['index']: r['success'] for r in adaptive}
  missing = [
    r['index']
    for r, ok in zip(bare, pipe_correct, strict=True)
    if ok and r['index'] not in by_index
  ]
  if missing:
    raise ValueError(f'table4: no adaptive attack record for test images {missing[:5]}')
  beaten = np.array(
    [not ok or by_index[r['index']] for r, ok in zip(bare, pipe_correct, strict=True)], bool
  )  # the adaptive attacker wins: the pipeline gets the image wrong, clean or attacked
  n, still = len(bare), wrong & fooled
  counts = dict(
    asr_no_defence=[int(fooled.sum()), n],
    asr_adaptive=[int(beaten.sum()), n],
    asr_transfer=[int(still.sum()), n],
    defence_rate=[int((fooled & ~wrong).sum()), int(fooled.sum())],
    performance_loss=[int((wrong & ~fooled).sum()), n - int(still.sum())],
  )
  rate = lambda k, m: k / m if m else float('nan')
  bare_acc, pipe_acc = float(np.mean(bare_correct_all)), float(np.mean(pipe_correct_all))
  return dict(
    counts=counts,
    **{name: rate(*km) for name, km in counts.items()},
    clean_accuracy_classifier=bare_acc,
    clean_accuracy_pipeline=pipe_acc,
    # Not the paper's performance loss: the clean accuracy the reconstruction
    # costs on all test images.
    clean_accuracy_cost=bare_acc - pipe_acc,
    # Not in the paper: exact McNemar tests over the attacked images, the
    # autoencoder's pipeline against the bare classifier, outcome "correct
    # after the attack". transfer: only_a = the defence rate's numerator
    # (fooled images undone), only_b = the performance loss's (images the
    # reconstruction breaks): does the autoencoder undo more than it breaks?
    # adaptive: robust only behind the autoencoder against the attack that
    # knows it, against robust only bare: does it help that attacker's victim?
    paired=dict(
      transfer=stats.mcnemar(~wrong, ~fooled),
      adaptive=stats.mcnemar(~beaten, ~fooled),
    ),
  )
