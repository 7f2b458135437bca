"""jaxpix: one-pixel attacks and defences in JAX, built for accelerator throughput."""

__version__ = '0.1.0'
