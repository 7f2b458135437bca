"""Certified one-pixel robustness: :func:`certify` proves that no change of one
pixel alters a model's prediction, or finds one (``bounds``, ``crown`` and
``zonotope`` hold the bound propagation it runs on the model's own
operations)."""

from jaxpix.verify.bounds import UnsupportedOperation
from jaxpix.verify.certify import Certificate, certify

__all__ = ['Certificate', 'UnsupportedOperation', 'certify']
