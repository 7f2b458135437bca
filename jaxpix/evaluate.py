"""Evaluation of a trained checkpoint (``config.mode == 'eval'``).

Loads the model named by the config from ``config.checkpoint`` (a training
workdir, or its ``checkpoints/`` folder), refuses a checkpoint of another
model, and reports clean accuracy on the test split.
"""

from __future__ import annotations

import json
import pathlib

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jaxpix import checkpoint, data, train


def checkpoint_dir(path: str) -> pathlib.Path:
  if not path:
    raise ValueError('config.checkpoint is empty; set it to a training workdir, e.g. '
                     '--config.checkpoint=workdir/cifar_baseline')
  p = pathlib.Path(path)
  if (p / 'checkpoints').is_dir():
    p = p / 'checkpoints'
  if not p.is_dir():
    raise checkpoint.CheckpointError(f'checkpoint directory {p} does not exist')
  return p


def load_state(config, num_classes: int):
  """(graphdef, state restored from config.checkpoint, mesh, step)."""
  ckpt = checkpoint.Checkpointer(checkpoint_dir(config.checkpoint))
  step = config.train.resume_step or None
  train.check_meta(ckpt.meta(step), train.checkpoint_meta(config, num_classes), ckpt.directory)
  mesh = train.make_mesh()
  classifier = None
  if config.defence.name == 'autoencoder':  # its classifier sits beside the checkpoint
    cdir = train.classifier_dir(config, config.checkpoint)
    classifier = train.pretrained_predict(train.sub_config(config, 'none'), cdir, num_classes,
                                          fit=False)
  model = train.build_model(config, num_classes, classifier)
  tx = train.make_optimizer(config.train, 1)
  graphdef, like = train.init_state(model, tx, config.seed)
  like = jax.device_put(like, NamedSharding(mesh, P()))
  state = ckpt.restore(like, step)
  ckpt.close()
  return graphdef, state, mesh, int(state['step'])


def evaluate(config, workdir: str) -> dict:
  cfg = config.data
  get = (lambda s: data.load_npz(cfg.dataset, s, cfg.dir)) if cfg.source == 'npz' else (
      lambda s: data.load_tfds(cfg.dataset, s, cfg.dir or None))
  test = get(cfg.eval_split)
  graphdef, state, mesh, step = load_state(config, test.num_classes)
  repl, shard = NamedSharding(mesh, P()), NamedSharding(mesh, P('data'))
  eval_step = jax.jit(train.make_eval_step(graphdef), in_shardings=(repl, shard, shard, shard),
                      out_shardings=repl)
  acc = train.accuracy(mesh, eval_step, state, test, config.train.eval_batch_size)
  result = dict(checkpoint=str(checkpoint_dir(config.checkpoint)), step=step,
                test_images=len(test), clean_accuracy=acc)
  out = pathlib.Path(workdir)
  out.mkdir(parents=True, exist_ok=True)
  (out / 'eval.json').write_text(json.dumps(result, indent=1) + '\n')
  return result
