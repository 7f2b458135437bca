"""How much the first-order training adversary loses when its input gradient
is one step old, as ``defence.replay`` gives it, against a fresh one.

    python benchmarks/replay_adversary.py --workdir RUN/train --step 1000 --images 1024 \
        --json benchmarks/results/replay_adversary_cpu.json

From a checkpoint of an APR/AT run taken mid-training (its parameters theta,
its optimiser state and step, so the learning rate is the run's there), for
each batch of the run's epoch order (unaugmented): the plain visit's step
(theta -> theta', the run's optimiser), which records every image's train-mode
input gradient at theta; then, at theta', the run's first-order adversary
attacks every image of the batch:

- ``replay``: candidates ranked by the recorded gradient, the verifications
  split by the train-mode logits at theta' (what the replayed batch's
  defended visit does);
- ``fresh``: ranked by the train-mode input gradient at theta' (what the step
  without replay computes), the same logits;
- ``replay_stale_logits``: the recorded gradient and the logits at theta
  (what the plain visit's own pass could have kept).

Every batch starts from the checkpoint. Paired per image: still correct after
each (eval mode, as the adversary verifies, and train mode, as the training
pass sees the batch), the drop from clean accuracy at theta', and exact
McNemar between the two adversaries.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxpix import build, data, defences, models, restore, stats, steps
from jaxpix import train as train_module
from jaxpix.defences import apr


def measure(workdir: str, step: int, images: int, batch: int) -> dict:
  cfg = restore.run_config(workdir)
  cfg.checkpoint, cfg.eval.step = str(workdir), step
  if not cfg.defence.adversarial or cfg.defence.adv.method != 'first_order':
    raise SystemExit(f'{workdir}: not a run with the first-order adversary')
  train, _, _ = data.load(cfg.data)
  graphdef, state, at = restore.load_state(cfg, train.num_classes)
  # The run's own schedule (a replayed run has twice the steps per epoch).
  total = train_module._Plan(cfg.train, len(train), 1, defences.visits(cfg)).total
  tx = build.optimizer_for(cfg, total)
  record = jax.jit(steps.make_train_step(graphdef, tx, [], False, visits=2, visit=0))
  adversary = apr.make_adversary(cfg.defence.adv)

  @jax.jit
  def logits_at(state, xu8):
    model = nnx.merge(graphdef, state['params'], state['rest'])
    model.train()
    return apr.current_logits(model, data.levels(xu8))

  @jax.jit
  def attack_all(after, xu8, y, grads, old_logits):
    model = nnx.merge(graphdef, after['params'], after['rest'])
    model.train()
    x = data.levels(xu8)
    fresh_g, _ = apr.input_gradient(model, x, y, False)
    logits = apr.current_logits(model, x)
    predict = models.as_predict(model)
    key = jax.random.key(0)  # the first-order adversary draws nothing
    out = {'clean': x}
    out['fresh'], _ = adversary(predict, x, y, key, fresh_g, logits)
    out['replay'], _ = adversary(predict, x, y, key, grads, logits)
    # The logits at theta instead: the split of the verifications by which
    # images the model got right before the plain step trained on them.
    out['replay_stale_logits'], _ = adversary(predict, x, y, key, grads, old_logits)
    correct = {}
    for name, a in out.items():
      correct[f'{name}_eval'] = jnp.argmax(predict(a), -1) == y
      m = nnx.merge(graphdef, after['params'], after['rest'], copy=True)
      m.train()
      correct[f'{name}_train'] = jnp.argmax(m(a), -1) == y
    return correct

  order = data.epoch_order(len(train), cfg.seed, 0)
  per: dict[str, list] = {}
  t0 = time.perf_counter()
  n = images // batch * batch
  for i in range(0, n, batch):
    idx = order[i : i + batch]
    xu8, y = jnp.asarray(train.images[idx]), jnp.asarray(train.labels[idx])
    old_logits = logits_at(state, xu8)
    after, _ = record(steps.with_replay(state, batch, train.images.shape[1:]), xu8, y)
    out = attack_all(after, xu8, y, after['replay']['grads'], old_logits)
    for key, v in out.items():
      per.setdefault(key, []).append(np.asarray(v))
  per = {key: np.concatenate(v) for key, v in per.items()}
  out_names = [key[: -len('_eval')] for key in per if key.endswith('_eval') and key != 'clean_eval']
  acc = {key: float(v.mean()) for key, v in per.items()}
  result = dict(
    workdir=str(workdir),
    step=at,
    total_steps=total,
    images=n,
    adversary=cfg.defence.adv.to_dict(),
    seconds=time.perf_counter() - t0,
    accuracy=acc,
  )
  for mode in ('eval', 'train'):
    result[f'drop_{mode}'] = {
      name: acc[f'clean_{mode}'] - acc[f'{name}_{mode}'] for name in out_names
    }
    # Robust (still correct) per image: the adversary that fools more leaves fewer.
    result[f'mcnemar_{mode}'] = {
      name: stats.mcnemar(per[f'{name}_{mode}'], per[f'fresh_{mode}'])
      for name in out_names
      if name != 'fresh'
    }
  return result


def main(argv=None):
  ap = argparse.ArgumentParser()
  ap.add_argument('--workdir', required=True, help="a training run's folder (its checkpoints)")
  ap.add_argument('--step', type=int, default=0, help='which checkpoint (0: the latest)')
  ap.add_argument('--images', type=int, default=1024)
  ap.add_argument('--batch', type=int, default=128)
  ap.add_argument('--json', default='')
  args = ap.parse_args(argv)
  r = measure(args.workdir, args.step, args.images, args.batch)
  print(json.dumps(r), flush=True)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(r, indent=1) + '\n')


if __name__ == '__main__':
  main(sys.argv[1:])
