"""Eval mode for randomized ablation (``defence.name='ablation'``): the
smoothed classifier's certificate against one changed pixel, and an attack on
the smoothed classifier itself, on the fixed test images.

**Certificate** (Levine & Feizi 2020, as their code): per image, ``n0``
random ablations select the class cA, ``n`` fresh ones count it; with the
one-sided Clopper-Pearson lower bound pA of its probability at ``alpha``, the
image is certified when pA - delta > 1/2 (delta = k / (H W) for one pixel:
jaxpix.defences.ablation.delta), and certified-correct when also cA is the
label. The prediction (clean accuracy) is the most frequent class of the
``n`` estimation samples.

**Attack** (adaptive, built for this defence; not in the paper): one pixel
can only change the base classifier's votes on ablations that keep it.
Through ``attack_ablations`` shared ablations, the gradient of the true
class's log-probability ranks every (pixel, extreme colour) pair; the best
``attack_candidates`` pairs are verified by re-running exactly the ablations
that keep that pixel (the others' votes do not change), and the pair that
leaves the true class the smallest vote margin is judged by ``check`` fresh
Monte Carlo samples: the image is fooled when their most frequent class is
not the label. Extreme colours only, as the gradient-ranked search: the
certificate covers every colour, the attack the 8 corners (the colours a
one-pixel attack almost always ends at).

Both run image by image into resumable logs (``certify_ablation.jsonl``,
``attack_ablation.jsonl``), each record depending only on its image's index
(``fold_in(eval.seed, index)``), so an interrupted run resumes to the same
results.
"""

from __future__ import annotations

import logging
import math
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxpix import configs, data, models, records, restore, stats
from jaxpix.defences import ablation
from jaxpix.evaluation import attack_log, metrics
from jaxpix.evaluation import protocol as proto

CORNERS = np.array([[(i >> 2) & 1, (i >> 1) & 1, i & 1] for i in range(8)], np.float32)
ATTACK = 'ablation_search'


def check_smoothing(config) -> None:
  s = config.eval.smoothing
  for field in ('n0', 'n', 'chunk', 'attack_ablations', 'attack_candidates', 'check'):
    v = s[field]
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f'config.eval.smoothing.{field} must be an int >= 1, got {v!r}')
  for field in ('n0', 'n', 'check'):
    if s[field] % s.chunk:
      raise ValueError(
        f'config.eval.smoothing.{field}={s[field]} must be a multiple of '
        f'eval.smoothing.chunk={s.chunk} (the ablations drawn per batched call)'
      )
  if not 0 < s.alpha < 1:
    raise ValueError(f'config.eval.smoothing.alpha must be in (0, 1), got {s.alpha!r}')
  if config.eval.image_set != 'fixed':
    raise ValueError(
      "randomized ablation is evaluated on eval.image_set='fixed' (its clean accuracy "
      'needs Monte Carlo per image); set --config.eval.image_set=fixed'
    )


def _image_keys(seed: int, index: np.ndarray, stream: int) -> jax.Array:
  base = jax.random.key(seed)
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(base, i), stream))(
    jnp.asarray(index, jnp.int32)
  )


def make_counts(classify, *, k: int, chunk: int, classes: int):
  """``counts(images [B, H, W, 3], keys [B], samples) -> int32 [B, classes]``,
  jitted; each image's ablations drawn from its own key."""

  def counts(images, keys, samples):
    b, h, w, _ = images.shape

    def body(acc, c):
      keep = jax.vmap(lambda key: ablation.keep_masks(jax.random.fold_in(key, c), chunk, h * w, k))(
        keys
      )
      enc = ablation.encode(images[:, None], keep.reshape(b, chunk, h, w))
      votes = jnp.argmax(classify(enc.reshape(b * chunk, h, w, -1)), -1)
      return acc + jax.nn.one_hot(votes, classes, dtype=jnp.int32).reshape(b, chunk, -1).sum(
        1
      ), None

    acc, _ = jax.lax.scan(body, jnp.zeros((b, classes), jnp.int32), jnp.arange(samples // chunk))
    return acc

  return jax.jit(counts, static_argnums=2)


def make_search(classify, *, k: int, masks: int, candidates: int, classes: int, hw: tuple):
  """``(search, queries)``: the attack's search on one image, jitted,
  ``search(image, label, key) -> (pixel, corner, vote margin left)`` (see
  the module docstring), and the base classifier's forward passes it spends."""
  h, w = hw
  n = h * w
  # Ablations among ``masks`` that keep a given pixel: ~ masks k / n; room for
  # 6 standard deviations more (a truncated list only weakens the search).
  mean = masks * k / n
  room = min(masks, math.ceil(mean + 6 * math.sqrt(mean) + 1))
  corners = jnp.asarray(CORNERS)

  def search(image, label, key):
    keep = ablation.keep_masks(key, masks, n, k)

    def true_logp(x):
      enc = ablation.encode(x[None], keep.reshape(masks, h, w))
      logits = classify(enc)
      return jax.nn.log_softmax(logits)[:, label].sum(), jnp.argmax(logits, -1)

    (_, votes0), grad = jax.value_and_grad(true_logp, has_aux=True)(image)
    counts0 = jax.nn.one_hot(votes0, classes, dtype=jnp.int32).sum(0)
    # First-order change of the true class's log-probability, per pixel x corner.
    flat, g = image.reshape(n, 3), grad.reshape(n, 3)
    score = jnp.einsum('pc,pkc->pk', g, corners[None] - flat[:, None])
    _, best = jax.lax.top_k(-score.reshape(-1), candidates)
    pix, corner = best // 8, best % 8

    def margin(p, c):
      idx = jnp.nonzero(keep[:, p], size=room, fill_value=0)[0]
      valid = (jnp.arange(room) < keep[:, p].sum()).astype(jnp.int32)
      x = flat.at[p].set(corners[c]).reshape(h, w, 3)
      enc = ablation.encode(x[None], keep[idx].reshape(room, h, w))
      new = jnp.argmax(classify(enc), -1)
      hot = lambda v: (jax.nn.one_hot(v, classes, dtype=jnp.int32) * valid[:, None]).sum(0)  # noqa: E731
      cnt = counts0 - hot(votes0[idx]) + hot(new)
      return cnt[label] - jnp.max(jnp.where(jnp.arange(classes) == label, -1, cnt))

    margins = jax.lax.map(lambda pc: margin(*pc), (pix, corner))
    j = jnp.argmin(margins)
    return pix[j], corner[j], margins[j]

  queries = masks + candidates * room
  return jax.jit(search), queries


def evaluate(config, out: pathlib.Path) -> dict:
  """Certifies and attacks the smoothed classifier; writes results.json."""
  t_start = time.perf_counter()
  check_smoothing(config)
  ecfg, s, k = config.eval, config.eval.smoothing, config.defence.ablation.keep
  test = data.load_test(config.data)
  classes = test.num_classes
  restored = restore.load_predict(config, classes)
  model = restored.model
  classify = models.as_predict(model.classifier)
  x = data.to_float(test.images)
  hw = x.shape[1:3]
  _, fixed = proto.choose(ecfg, np.zeros(len(test), bool))
  session = records.provenance()
  images_sha1 = proto.images_digest(test.images, test.labels, fixed)
  base = dict(
    step=restored.step,
    **{'params_sha1.model': restore.params_digest(model)},
    images_sha1=images_sha1,
    **configs.flatten(config, proto.NOT_IN_PROTOCOL),
  )
  counts = make_counts(classify, k=k, chunk=s.chunk, classes=classes)
  group = max(1, 4096 // s.chunk)  # images per call: ~4k ablated images in flight
  dlt = ablation.delta(hw[0] * hw[1], k)

  cert = attack_log.AttackLog(out / 'certify_ablation.jsonl', dict(base, attack='certify'), session)
  todo = [int(i) for i in fixed if int(i) not in cert.records]
  for start in range(0, len(todo), group):
    idx = np.array(todo[start : start + group])
    c0 = np.asarray(counts(x[idx], _image_keys(ecfg.seed, idx, 0), s.n0))
    c1 = np.asarray(counts(x[idx], _image_keys(ecfg.seed, idx, 1), s.n))
    top = c0.argmax(-1)
    lower = ablation.lower_bound(c1[np.arange(len(idx)), top], s.n, s.alpha)
    cert.append(
      [
        dict(
          key=int(i),
          index=int(i),
          label=int(test.labels[i]),
          selected=int(top[j]),
          prediction=int(c1[j].argmax()),
          counts=[int(v) for v in c1[j]],
          p_lower=float(lower[j]),
          certified=bool(lower[j] - dlt > 0.5),
        )
        for j, i in enumerate(idx)
      ]
    )
    logging.info('certify: %d of %d images', len(cert.records), len(fixed))
  crec = [cert.records[int(i)] for i in fixed]
  correct = [r['index'] for r in crec if r['prediction'] == r['label']]
  certified = [r['index'] for r in crec if r['certified'] and r['selected'] == r['label']]

  search, queries = make_search(
    classify, k=k, masks=s.attack_ablations, candidates=s.attack_candidates, classes=classes, hw=hw
  )
  log = attack_log.AttackLog(out / f'attack_{ATTACK}.jsonl', dict(base, attack=ATTACK), session)
  t0 = time.perf_counter()
  for i in [i for i in correct if i not in log.records]:
    pix, corner, margin = (
      int(v) for v in search(x[i], int(test.labels[i]), _image_keys(ecfg.seed, [i], 2)[0])
    )
    adv = x[i].reshape(-1, 3).copy()
    adv[pix] = CORNERS[corner]
    adv = adv.reshape(x[i].shape)
    c = np.asarray(counts(adv[None], _image_keys(ecfg.seed, [i], 3), s.check))[0]
    y = int(test.labels[i])
    pred = int(c.argmax())
    log.append(
      [
        dict(
          key=i,
          index=i,
          success=pred != y,
          queries=queries + s.check,
          true_prob=float(c[y] / s.check),
          adv_label=pred,
          adv_prob=float(c[pred] / s.check),
          margin_left=margin,
          vec=[float(pix % hw[1]), float(pix // hw[1]), *(float(v) for v in CORNERS[corner])],
        )
      ]
    )
    logging.info('%s: %d of %d images', ATTACK, len(log.records), len(correct))
  recs = [log.records[i] for i in correct]
  summary = metrics.summarise_attack(recs, queries + s.check, False)
  summary['seconds_this_run'] = time.perf_counter() - t0
  summary['sessions'] = log.sessions
  fooled = {r['index'] for r in recs if r['success']}
  robust = [i for i in correct if i not in fooled]
  n_fixed = len(fixed)
  results = dict(
    **proto.results_header(config, restored.step, session),
    # The smoothed classifier's accuracy costs Monte Carlo per image: measured
    # on the fixed images only.
    test_images=n_fixed,
    clean_accuracy=len(correct) / n_fixed,
    clean_accuracy_wilson95=list(stats.wilson(len(correct), n_fixed)),
    correctly_classified=len(correct),
    num_images_requested=ecfg.num_images,
    num_images=len(correct),
    images=correct,
    fixed_images=[int(i) for i in fixed],
    smoothing=dict(
      keep=k, pixels=hw[0] * hw[1], delta=dlt, **{f: s[f] for f in ('n0', 'n', 'alpha')}
    ),
    certified_images=certified,
    certified_accuracy=len(certified) / n_fixed,
    certified_accuracy_wilson95=list(stats.wilson(len(certified), n_fixed)),
    primary_attack=ATTACK,
    attacks={ATTACK: summary},
    robust_images=robust,
    robust_accuracy=len(robust) / n_fixed,
    robust_accuracy_wilson95=list(stats.wilson(len(robust), n_fixed)),
    robust_attacks=[ATTACK],
    robust_images_all=robust,
    robust_accuracy_all=len(robust) / n_fixed,
    robust_accuracy_all_wilson95=list(stats.wilson(len(robust), n_fixed)),
    certified_fooled=sorted(set(certified) & fooled),
  )
  results['seconds_this_run'] = time.perf_counter() - t_start
  if records.writer():
    results['figures'] = {}
    records.write_json(out / 'results.json', results)
    (out / 'results.md').write_text(markdown(results))
  return results


def markdown(results: dict) -> str:
  """results.md of a smoothed classifier's evaluation."""
  cfg, sm = results['config'], results['smoothing']
  att = results['attacks'][ATTACK]
  n = len(results['fixed_images'])

  def row(name, key, count):
    lo, hi = results[f'{key}_wilson95']
    return (
      f'| {name} | {100 * results[key]:.2f}% ({count}/{n}) | [{100 * lo:.1f}, {100 * hi:.1f}] |'
    )

  return '\n'.join(
    [
      f'# Evaluation: {cfg["model"]["name"]} (width {cfg["model"]["width"]}), randomized ablation',
      '',
      f'Checkpoint `{results["checkpoint"]}` at step {results["step"]}; commit '
      f'`{results["commit"]}`; device {results["device"]}; {results["date"]}.',
      '',
      f'Smoothing: {sm["keep"]} of {sm["pixels"]} pixels kept; certificate from n0 = {sm["n0"]} '
      f'selection and n = {sm["n"]} estimation samples, Clopper-Pearson at alpha = '
      f'{sm["alpha"]}, certified when p_lower - {sm["delta"]:.4f} > 1/2 (one pixel, any '
      f'colour). Attack: `{ATTACK}` (jaxpix.evaluation.smoothed), {att["max_budget"]} base '
      f'forward passes per image. Over the {n} fixed test images; Wilson 95% intervals.',
      '',
      '| Metric | Value | 95% CI |',
      '|---|---|---|',
      row('Clean accuracy (smoothed)', 'clean_accuracy', len(results['images'])),
      row('Certified accuracy (one pixel)', 'certified_accuracy', len(results['certified_images'])),
      row(
        'Robust accuracy (not fooled by the attack)',
        'robust_accuracy',
        len(results['robust_images']),
      ),
      '',
      f'Attack success rate over the correctly classified: {att["successes"]}/{att["attacks"]}; '
      f'certified images the attack fooled: {len(results["certified_fooled"])} (each certificate '
      f'fails with probability <= alpha).',
      '',
    ]
  )
