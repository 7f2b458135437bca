"""What ``run.py`` dispatches to, by ``config.mode``: train and eval here;
run.py hands a suite (the papers' reproduction) to ``jaxpix.repro.suite``."""

from __future__ import annotations

import logging
import os
import pathlib

import ml_collections

MODES = ('train', 'eval', 'suite')
# run.py's default for --compilation_cache: compiled programs persist across
# processes, so the second run of a config (or an eval after its training)
# does not compile the same step or attack again.
DEFAULT_CACHE = pathlib.Path('~/.cache/jaxpix/xla').expanduser()


def enable_compilation_cache(directory) -> None:
  """JAX's persistent compilation cache in ``directory`` (created if
  missing); programs that take under a second to compile are not stored.
  Where the folder cannot be made (a read-only home), the run goes on
  without the cache, with a warning: it is an optimisation only."""
  import jax

  path = pathlib.Path(directory).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
      raise PermissionError(f'{path} is not writable')
  except OSError as e:
    logging.warning(
      'compilation cache off (%s): programs will be compiled again in each process; '
      'pass --compilation_cache=DIR (a writable folder) to keep them',
      e,
    )
    return
  jax.config.update('jax_compilation_cache_dir', str(path))
  jax.config.update('jax_persistent_cache_min_compile_time_secs', 1.0)


def init_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  auto: bool = False,
) -> bool:
  """Joins JAX's multi-controller runtime (``jax.distributed.initialize``), as
  ``run.py``'s ``--coordinator_address``, ``--num_processes``,
  ``--process_id`` and ``--distributed`` ask; must run before anything
  touches a device.

  Args:
    coordinator_address: ``host:port`` of process 0, which every process can
      reach (process 0 listens on that port).
    num_processes: how many processes take part.
    process_id: this process's index, in ``[0, num_processes)``.
    auto: let JAX detect the cluster (Cloud TPU pod slices, SLURM, Open MPI);
      any of the three given above overrides what it detects.

  Returns:
    Whether the runtime was initialised (``False``: nothing asked for, one
    process as before).

  Example::

    init_distributed('10.0.0.1:1234', num_processes=2, process_id=0)
  """
  given = dict(
    coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
  )
  missing = [f'--{k}' for k, v in given.items() if v is None]
  if not auto and len(missing) == 3:
    return False
  if not auto and missing:
    raise ValueError(
      f'{", ".join(missing)} missing: several processes need all of --coordinator_address '
      '(host:port of process 0), --num_processes and --process_id, or --distributed alone '
      'to let JAX detect them on a TPU pod slice or a SLURM allocation'
    )
  if coordinator_address is not None:
    host, _, port = coordinator_address.rpartition(':')
    if not host or not port.isdigit():
      raise ValueError(
        f'--coordinator_address={coordinator_address!r} is not host:port; give the address '
        'of process 0 and a free port on it, e.g. --coordinator_address=10.0.0.1:1234'
      )
  if num_processes is not None and num_processes < 1:
    raise ValueError(f'--num_processes={num_processes} must be at least 1')
  if process_id is not None and not 0 <= process_id < (num_processes or process_id + 1):
    raise ValueError(
      f'--process_id={process_id} must be in [0, --num_processes={num_processes}): '
      'number the processes 0, 1, ... with process 0 at --coordinator_address'
    )
  import jax

  # Cross-process collectives on CPU (multi-process tests, CPU clusters): JAX
  # 0.10 defaults to gloo; older versions have none unless asked. A choice
  # made already (e.g. JAX_CPU_COLLECTIVES_IMPLEMENTATION=mpi) is kept.
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(**{k: v for k, v in given.items() if v is not None})
  return True


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  if config.mode == 'train':
    from jaxpix import train

    return train.train_and_evaluate(config, workdir)
  if config.mode == 'eval':
    from jaxpix import evaluation

    return evaluation.evaluate(config, workdir)
  if config.mode == 'suite':
    raise ValueError(
      "a suite (config.mode=suite) is part of the papers' reproduction: run it with run.py "
      '(python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --workdir ...) or '
      'jaxpix.repro.suite.run(config, workdir)'
    )
  raise ValueError(f'config.mode must be one of {MODES}, got {config.mode!r}')
