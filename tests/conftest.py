"""Test session set-up: four fake CPU devices, so sharding tests run anywhere;
full float32 arithmetic on every platform.

The flag must be set before JAX initialises its backends, i.e. before any test
module touches a device.
"""

import os
import pathlib

# The tests compile hundreds of small programs and run each briefly, so
# compilation is most of their time: on the CPU (jax 0.10) every parameter
# shape a model initialises compiles its own random-number program, 1.5-2.5 s
# each at XLA's default optimisation level and about 0.15 s at level 0 (the
# quick loop: 4 min 15 s -> 2 min 49 s on one core, 2026-12-06). Level 0
# changes how fast the compiled code runs, not what it computes, and the tests
# assert values, never speed (benchmarks/ measures speed). Set before JAX
# reads XLA_FLAGS, and inherited by the subprocesses the tests start;
# JAXPIX_TEST_XLA_DEFAULT=1 keeps XLA's default.
if not os.environ.get('JAXPIX_TEST_XLA_DEFAULT'):
  os.environ['XLA_FLAGS'] = (
    os.environ.get('XLA_FLAGS', '') + ' --xla_backend_optimization_level=0'
  ).strip()

import jax  # noqa: E402
import pytest

jax.config.update('jax_num_cpu_devices', 4)
# Full float32 in matrix products and convolutions: the tests compare with
# float64 references at float32 tolerances, and GPUs default to TF32 (10-bit
# mantissa), which put three tests 1e-5 to 4e-4 (relative) off their
# references on an H200. The CPU computes float32 either way.
jax.config.update('jax_default_matmul_precision', 'highest')

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / 'shared' / 'data'


@pytest.fixture(scope='session')
def shared_data() -> pathlib.Path:
  """``../shared/data``; skipped where absent, a failure under .ci/run."""
  if not (SHARED_DATA / 'cifar10' / 'test.npz').is_file():
    msg = f'real data not found at {SHARED_DATA}'
    if os.environ.get('JAXPIX_REQUIRE_DATA'):
      pytest.fail(msg + ' (JAXPIX_REQUIRE_DATA is set, as in .ci/run)')
    pytest.skip(msg)
  return SHARED_DATA


@pytest.fixture(scope='session')
def tiny_checkpoint(shared_data, tmp_path_factory) -> pathlib.Path:
  """A training workdir holding the ``cifar_baseline.py:test`` model after 40
  steps on real CIFAR-10: trained once per test run, read by every test that
  needs a trained checkpoint (it must not write there)."""
  del shared_data
  from jaxpix import train
  from jaxpix.configs import cifar_baseline

  d = tmp_path_factory.mktemp('tiny_checkpoint')
  c = cifar_baseline.get_config('test')
  c.train.steps = 40
  train.train_and_evaluate(c, str(d))
  return d
