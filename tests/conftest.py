"""Test session set-up: four fake CPU devices, so sharding tests run anywhere.

The flag must be set before JAX initialises its backends, i.e. before any test
module touches a device.
"""

import jax

jax.config.update('jax_num_cpu_devices', 4)
