"""What a config builds: the model behind its defence pipeline, the optimiser,
the training state, and the metadata that identifies a checkpoint.

Everything that turns a config into objects lives here, so that training,
restoring, evaluation and the overhead measurement build the same thing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from jaxpix import checkpoint, configs, defences, models

DTYPES = {'float32': None, 'bfloat16': jnp.bfloat16}
# What config.defence.name dispatches on (jaxpix.defences.loss_terms and
# build_model): 'none' (plain cross-entropy), 'at' and 'apr' (the APR paper's
# mixed loss, attention and penalty as config.defence says), 'it' (input
# transformations), 'median' (a median filter in front), 'dd' (a distilled
# student; its teacher trains as 'dd_teacher'), 'autoencoder' (before a
# frozen classifier), 'ablation' (randomized ablation's base classifier and
# smoothing).
DEFENCES = ('none', 'at', 'apr', 'it', 'median', 'dd', 'dd_teacher', 'autoencoder', 'ablation')
# What makes two checkpoints different models even where their arrays have the
# same shapes (refused on restore). Every field that shapes the parameters is
# found from the model itself instead (:func:`shaping_fields`), so no list
# has to name them.
IDENTITY = ('model', 'width', 'defence', 'attention', 'dataset', 'num_classes')


# The float fields training reads: (lowest, whether it may equal it, highest
# or None). Every float must also be finite (configs.check_finite).
FLOAT_RANGES = {
  'train.lr': (0, False, None),
  'train.weight_decay': (0, True, None),
  'train.checkpoint_minutes': (0, True, None),
  'defence.temperature': (0, False, None),
  'defence.alpha': (0, True, 1),
  'defence.beta': (0, True, None),
  'defence.penalty.h': (0, False, None),
  'defence.penalty.fraction': (0, False, 1),
  'defence.adv.fraction': (0, False, 1),
}


def check_ints(config, fields: dict[str, int]) -> None:
  """Each dotted field an int >= its minimum, else an error naming it."""
  for field, least in fields.items():
    node = config
    for part in field.split('.'):
      node = node[part]
    if isinstance(node, bool) or not isinstance(node, int) or node < least:
      raise ValueError(f'config.{field} must be an int >= {least}, got {node!r}')


def check_train_config(config) -> None:
  """The numbers training reads, checked before anything runs."""
  check_ints(
    config,
    {
      'train.batch_size': 1,
      'train.steps': 0,
      'train.epochs': 0 if config.train.steps else 1,
      'train.log_every': 1,
      'train.checkpoint_every': 1,
      'train.keep_checkpoints': 1,
      'train.eval_batch_size': 1,
      'train.warmup_steps': 0,
      'train.resume_step': 0,
      'data.train_subset': 0,
      'data.eval_subset': 0,
      'data.validation_size': 0,
      'seed': 0,
      'data.split_seed': 0,
    },
  )
  configs.check_finite(config)
  for field, (low, low_ok, high) in FLOAT_RANGES.items():
    node = config
    for part in field.split('.'):
      node = node[part]
    if not (node > low or (low_ok and node == low)) or (high is not None and node > high):
      bound = f'{">=" if low_ok else ">"} {low}' + (f' and <= {high}' if high is not None else '')
      raise ValueError(f'config.{field} must be {bound}, got {node!r}')
  if config.dtype not in DTYPES:
    raise ValueError(f'config.dtype must be one of {sorted(DTYPES)}, got {config.dtype!r}')
  check_defence(config)
  if config.defence.autoencoder and config.defence.name != 'autoencoder':
    raise ValueError(
      f'config.defence.autoencoder={config.defence.autoencoder!r} names an autoencoder to '
      f'reuse, but config.defence.name is {config.defence.name!r}: set '
      "defence.name='autoencoder' or leave defence.autoencoder empty"
    )


def check_defence(config) -> None:
  if config.defence.name not in DEFENCES:
    raise ValueError(f'config.defence.name must be one of {DEFENCES}, got {config.defence.name!r}')


def build_model(config, num_classes: int, classifier_predict=None) -> nnx.Module:
  """The classifier of ``config.model``, behind the defence's input
  transformations (IT) and pixel-wise attention (APR) where it has them; for
  the autoencoder defence, the autoencoder before ``classifier_predict``."""
  check_defence(config)
  if config.defence.name == 'autoencoder':
    if classifier_predict is None:
      raise ValueError('the autoencoder defence needs its frozen classifier')
    ae = models.initialise(
      lambda: defences.autoencoder.ConvAutoencoder(
        config.defence.ae_width, rngs=nnx.Rngs(config.seed)
      )
    )
    return defences.autoencoder.Reconstructed(ae, classifier_predict)
  d = config.defence
  ablated = d.name == 'ablation'
  model = models.create(
    config.model.name,
    num_classes=num_classes,
    width=config.model.width,
    dtype=DTYPES[config.dtype],
    seed=config.seed,
    in_channels=defences.ablation.ENCODED_CHANNELS if ablated else 3,
  )
  if ablated:
    if d.bit_depth or d.jpeg_quality or d.median_size or d.attention:
      raise ValueError(
        "defence.name='ablation' takes no input transformation or attention: "
        'set defence.bit_depth, jpeg_quality, median_size to 0 and attention to False'
      )
    return defences.Ablated(model, d.ablation.keep, d.ablation.votes)
  if d.bit_depth or d.jpeg_quality or d.median_size:
    model = defences.Transformed(model, d.bit_depth, d.jpeg_quality, d.median_size)
  if config.defence.attention:
    model = defences.Attended(
      model, config.defence.attention_kernel, rngs=nnx.Rngs(config.seed + 1)
    )
  return model


def make_optimizer(
  cfg, total_steps: int, weight_decay: float | None = None
) -> optax.GradientTransformation:
  """Adam with coupled L2 weight decay, as PyTorch's ``Adam(weight_decay=...)``
  which the APR paper used (lr 1e-3, wd 5e-4): the decay is added to the
  gradient before the moment estimates, not decoupled as in AdamW.
  ``weight_decay`` replaces ``cfg.weight_decay`` when given."""
  if cfg.schedule == 'constant':
    lr = cfg.lr
  elif cfg.schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1)
    )
  else:
    raise ValueError(f'config.train.schedule must be "constant" or "cosine", got {cfg.schedule!r}')
  wd = cfg.weight_decay if weight_decay is None else weight_decay
  return optax.chain(optax.add_decayed_weights(wd), optax.adam(lr))


def optimizer_for(config, total_steps: int) -> optax.GradientTransformation:
  """The optimiser of what ``config`` trains: ``config.train``'s, with the
  autoencoder's own weight decay (``defence.ae_weight_decay``, unless < 0)
  when that is what it trains (its classifier keeps ``train.weight_decay``)."""
  wd = config.defence.ae_weight_decay
  ae = config.defence.name == 'autoencoder' and wd >= 0
  return make_optimizer(config.train, total_steps, wd if ae else None)


def init_state(model: nnx.Module, tx, seed: int):
  """(graphdef, the training state): a pytree of arrays (the key as raw key
  data, for orbax)."""
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  state = dict(
    params=params,
    rest=rest,
    opt=tx.init(params),
    step=jnp.zeros((), jnp.int32),
    key=jax.random.key_data(jax.random.key(seed)),
  )
  return graphdef, state


def frozen_config(config, role: str) -> ml_collections.ConfigDict:
  """The config of a model this one builds on, trained with no defence of its
  own: ``'teacher'`` (a distillation student's, trained at the temperature)
  or ``'classifier'`` (the autoencoder's)."""
  names = {'teacher': 'dd_teacher', 'classifier': 'none'}
  if role not in names:
    raise ValueError(f'role must be one of {sorted(names)}, got {role!r}')
  c = ml_collections.ConfigDict(config.to_dict())
  c.defence.name = names[role]
  c.defence.attention = False
  c.defence.bit_depth = c.defence.jpeg_quality = c.defence.median_size = 0
  c.defence.autoencoder = ''  # the autoencoder's, not the classifier's
  c.defence.ae_weight_decay = -1.0  # likewise (the value before the field existed)
  c.train.resume_step = c.eval.step = 0  # its own latest, whatever this run resumes from
  return c


def meta(config, num_classes: int, total_steps: int | None = None) -> dict:
  """What identifies a checkpoint's model (stored beside it, checked on restore)."""
  return dict(
    model=config.model.name,
    width=config.model.width,
    defence=config.defence.name,
    attention=bool(config.defence.attention),
    dataset=config.data.dataset,
    num_classes=num_classes,
    total_steps=total_steps,
  )


def structure(config, num_classes: int) -> dict[str, tuple[int, ...]]:
  """The shape of every array of ``config``'s model by flat key (as the
  checkpoints name them under ``params`` and ``rest``), built abstractly:
  nothing is allocated."""

  def make():
    # The autoencoder's frozen classifier is not part of its state.
    return build_model(config, num_classes, classifier_predict=lambda x: x)

  _, params, rest = nnx.split(nnx.eval_shape(make), nnx.Param, ...)
  return shapes(dict(params=params, rest=rest))


def shapes(tree) -> dict[str, tuple[int, ...]]:
  """Every array's shape in ``tree`` by flat key, as checkpoints name them."""
  return {k: tuple(v.shape) for k, v in checkpoint.flat(tree).items() if hasattr(v, 'shape')}


def shaping_fields(saved_config: dict, config, num_classes: int) -> list[str]:
  """``'field: saved X, now Y'`` for each config field that differs from
  ``saved_config`` (a checkpoint's flattened config) and, set back to its
  saved value alone, changes the model's array shapes: found by building the
  model abstractly, so any field the model reads is covered."""
  now = configs.flatten(config)
  mine = structure(config, num_classes)
  out = []
  for field in sorted(set(saved_config) & set(now)):
    if saved_config[field] == now[field]:
      continue
    c = ml_collections.ConfigDict(config.to_dict())
    try:
      configs.set_field(c, field, saved_config[field])
      changed = structure(c, num_classes) != mine
    except Exception:  # noqa: BLE001 - a value this model cannot take shapes nothing
      continue
    if changed:
      out.append(f'{field}: saved {saved_config[field]!r}, now {now[field]!r}')
  return out


def check_structure(stored: dict, want: dict, saved_config: dict, config, num_classes, where):
  """Refuses stored arrays (``stored``: their shapes by flat key, e.g.
  :meth:`Checkpointer.shapes`) that do not have the shapes ``config`` builds
  (``want``, :func:`shapes`), naming the config fields that make the
  difference (``saved_config``: the flattened config they were trained
  with), before any array is read."""
  tops = {k.split(']')[0] for k in want}  # "['params'", ...: the parts compared
  extra = [k for k in stored if k.split(']')[0] in tops and k not in want]
  if not extra and all(stored.get(k) == v for k, v in want.items()):
    return
  fields = shaping_fields(saved_config, config, num_classes)
  if fields:
    raise checkpoint.CheckpointError(
      f'{where} holds another model than the config builds: it was '
      f'trained with {"; ".join(fields)}. Set those fields to the saved values (or load '
      'the run with jaxpix.restore.from_workdir, which reads its own config.json)'
    )
  bad = [
    f'{k}: saved {stored.get(k, "(absent)")}, now {v}'
    for k, v in want.items()
    if stored.get(k) != v
  ] + [f'{k}: saved {stored[k]}, now (absent)' for k in extra]
  raise checkpoint.CheckpointError(
    f'{where} holds arrays of other shapes than the config builds '
    f'({"; ".join(bad[:4])}{"; ..." if len(bad) > 4 else ""}); it does not record a config '
    'that names the field: use the config it was trained with'
  )


def check_meta(saved: dict, want: dict, directory) -> None:
  """Refuses a checkpoint of another model (``IDENTITY`` fields). A field an
  older checkpoint lacks is not compared."""
  diff = [k for k in IDENTITY if k in saved and saved.get(k) != want[k]]
  if diff:
    raise checkpoint.CheckpointError(
      f'checkpoint in {directory} was trained with '
      + ', '.join(f'{k}={saved.get(k)!r}' for k in diff)
      + ' but the config asks for '
      + ', '.join(f'{k}={want[k]!r}' for k in diff)
      + '; use a fresh workdir or the matching config'
    )
