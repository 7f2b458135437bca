"""Test session set-up: four fake CPU devices, so sharding tests run anywhere.

The flag must be set before JAX initialises its backends, i.e. before any test
module touches a device.
"""

import os
import pathlib

import jax
import pytest

jax.config.update('jax_num_cpu_devices', 4)

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
