"""Trains or evaluates one experiment, or runs a suite of them.

    python run.py --config configs/cifar_baseline.py:cpu --workdir workdir/baseline_cpu
    python run.py --config configs/cifar_baseline.py --config.train.epochs=3 --workdir ...
    python run.py --config configs/cifar_apr.py --config.mode=eval \
        --config.checkpoint=workdir/apr --workdir workdir/apr_eval
    python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --workdir workdir/table1_cpu
    python run.py --config ... --workdir ... --coordinator_address=HOST0:1234 \
        --num_processes=2 --process_id=0   # and =1 on the second host

Kept thin (as flax's examples/mnist/main.py) so that everything it does lives
in the package, where it is tested: see ``jaxpix.experiment.run``.
"""

import json
import os
import pathlib
import sys
import traceback

import jax
from absl import app, flags
from ml_collections import config_flags

from jaxpix import checkpoint, experiment, preemption

_CONFIG = config_flags.DEFINE_config_file(
  'config', None, 'Experiment config file.', lock_config=True
)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
_CACHE = flags.DEFINE_string(
  'compilation_cache',
  str(experiment.DEFAULT_CACHE),
  "JAX's persistent compilation cache, shared by runs ('' = off).",
)
# Several processes (one per host, or several on one host): see docs/operations.md,
# "More than one host", and jaxpix.experiment.init_distributed.
_COORDINATOR = flags.DEFINE_string(
  'coordinator_address', None, 'host:port of process 0, for a run over several processes.'
)
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'How many processes take part.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, "This process's index, from 0.")
_DISTRIBUTED = flags.DEFINE_bool(
  'distributed', False, 'Join a multi-process run whose settings JAX detects (TPU pod, SLURM).'
)
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  experiment.init_distributed(
    _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=_DISTRIBUTED.value
  )
  # SIGTERM and Ctrl-C stop cleanly (training saves first); after joining the
  # runtime, whose own SIGTERM handler would otherwise replace this one.
  preemption.install()
  if _CACHE.value:
    experiment.enable_compilation_cache(_CACHE.value)
  if _CONFIG.value.mode == 'suite':  # the papers' reproduction, built on the library
    from jaxpix.repro import suite

    result = suite.run(_CONFIG.value, _WORKDIR.value)
  else:
    result = experiment.run(_CONFIG.value, _WORKDIR.value)
  if jax.process_index():
    return  # process 0 reports for all
  table = pathlib.Path(_WORKDIR.value) / 'results.md'
  if _CONFIG.value.mode in ('eval', 'suite') and table.exists():
    print(table.read_text())  # results.json beside it has every number
  else:
    print(json.dumps(result))


def _quiet_after(error: BaseException) -> None:
  """Prints ``error`` as the last thing on stderr, then silences stderr.

  When orbax fails to read a checkpoint, the other reads it had started in
  background threads and tasks fail the same way; their tracebacks surface
  when they are collected, at times that vary with load (sometimes after the
  real error, at interpreter exit). The user's error must be the last line.
  """
  traceback.print_exception(error)
  sys.stderr.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, 2)
  sys.stderr = open(os.devnull, 'w')  # noqa: SIM115 - stays open until exit


if __name__ == '__main__':
  try:
    app.run(main)
  except checkpoint.CheckpointError as e:
    _quiet_after(e)
    sys.exit(1)
  except preemption.Stopped as e:
    print(e.message, file=sys.stderr)  # one line: where it stopped, how to resume
    sys.exit(e.exit_code)
