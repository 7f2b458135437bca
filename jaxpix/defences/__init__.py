"""Defences: APR and adversarial training (``apr``); input transformations,
distillation and the autoencoder follow."""

from jaxpix.defences.apr import Attended, PixelAttention, loss_terms

__all__ = ['Attended', 'PixelAttention', 'loss_terms']
