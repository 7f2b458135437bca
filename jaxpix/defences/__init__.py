"""Defences: APR and adversarial training (``apr``), input transformations
(``transforms``); distillation and the autoencoder follow."""

from jaxpix.defences.apr import Attended, PixelAttention, loss_terms
from jaxpix.defences.transforms import Transformed, bit_depth, jpeg

__all__ = ['Attended', 'PixelAttention', 'Transformed', 'bit_depth', 'jpeg', 'loss_terms']
