"""Defences: APR and adversarial training (``apr``), input transformations
(``transforms``), defensive distillation (``distillation``) and an autoencoder
before a frozen classifier (``autoencoder``)."""

from jaxpix.defences import apr, autoencoder, distillation
from jaxpix.defences.apr import Attended, PixelAttention
from jaxpix.defences.transforms import Transformed, bit_depth, jpeg, median_filter


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
  return apr.loss_terms(config)


__all__ = [
  'Attended',
  'PixelAttention',
  'Transformed',
  'bit_depth',
  'jpeg',
  'loss_terms',
  'median_filter',
]
