"""Defences: APR and adversarial training (``apr``), input transformations
(``transforms``), defensive distillation (``distillation``), an autoencoder
before a frozen classifier (``autoencoder``) and randomized ablation
(``ablation``)."""

from jaxpix.defences import ablation, apr, autoencoder, distillation
from jaxpix.defences.ablation import Ablated
from jaxpix.defences.apr import Attended, PixelAttention
from jaxpix.defences.transforms import Transformed, bit_depth, jpeg, median_filter


def visits(config) -> int:
  """Steps per batch: 2 with ``defence.replay`` (a plain step that records the
  input gradient, then the defended step that reads it), else 1."""
  d = config.defence
  if not d.replay:
    return 1
  if d.name not in ('apr', 'at'):
    raise ValueError(
      f'config.defence.replay=True applies to APR and adversarial training '
      f"(defence.name 'apr' or 'at'), not {d.name!r}: set defence.replay=False"
    )
  apr.check_replay(config)
  return 2


def loss_terms(config, teacher_predict=None):
  """The weighted loss terms (name, weight, term) of ``config.defence``."""
  d = config.defence
  if d.name == 'dd_teacher':
    return [('clean', 1.0, distillation.tempered_term(d.temperature))]
  if d.name == 'dd':
    if teacher_predict is None:
      raise ValueError('defensive distillation needs the trained teacher (teacher_predict)')
    return [('distill', 1.0, distillation.distillation_term(teacher_predict, d.temperature))]
  if d.name == 'autoencoder':
    return autoencoder.loss_terms(config)
  if d.name == 'ablation':
    return [('ablation', 1.0, ablation.ablation_term(d.ablation.keep))]
  return apr.loss_terms(config)


__all__ = [
  'Ablated',
  'Attended',
  'PixelAttention',
  'Transformed',
  'bit_depth',
  'jpeg',
  'loss_terms',
  'median_filter',
  'visits',
]
