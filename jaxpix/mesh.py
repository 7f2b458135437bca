"""The device mesh and the placement of host batches on it.

Every device (of every process) sits on one ``data`` axis; a global batch is
split over it. On several hosts each process contributes its slice of the
(identical) global batch.
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
  """Host arrays of one global batch -> arrays sharded over ``data``. On
  several hosts each process contributes its slice."""
  per = len(arrays[0]) // jax.process_count()
  sl = slice(jax.process_index() * per, (jax.process_index() + 1) * per)
  return tuple(jax.make_array_from_process_local_data(sharded(mesh), a[sl]) for a in arrays)
