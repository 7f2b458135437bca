"""The device mesh and the placement of host batches on it.

Every device (of every process) sits on one ``data`` axis; a global batch is
split over it. On several hosts each process puts on its devices their rows
of the (identical) global batch.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """All devices (of every host; or ``devices``) on one ``data`` axis.

  Auto axis type: XLA propagates the batch sharding through the step (explicit
  sharding, the default of ``jax.make_mesh`` today, would make every vmap over
  the batch spell out its sharding).
  """
  devices = jax.devices() if devices is None else devices
  return jax.make_mesh(
    (len(devices),), ('data',), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def sharded(mesh) -> NamedSharding:
  """Split along the leading (batch) axis over ``data``."""
  return NamedSharding(mesh, P('data'))


def global_batch(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
  """Host arrays of one global batch -> arrays sharded over ``data``.

  Every process holds the whole global batch on the host (all load the same
  data and draw the same order); each of its devices takes the rows it owns
  in the mesh, wherever the mesh placed it (``jax.make_mesh`` may order a TPU
  pod's devices by topology rather than by process).
  """
  s = sharded(mesh)
  return tuple(jax.make_array_from_callback(a.shape, s, lambda i, a=a: a[i]) for a in arrays)
