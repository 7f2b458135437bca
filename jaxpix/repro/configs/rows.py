"""What a suite config is made of: its rows (a name, a library config and its
variants, field overrides), the paired evaluation every row of a compared
table shares, and the suite config itself (mode=suite, run by
jaxpix.repro.suite)."""

from __future__ import annotations

import ml_collections


def row(name: str, config: str, *variants: str, **overrides) -> ml_collections.ConfigDict:
  """A suite row: ``name`` in the table, the config module ``config`` (in
  jaxpix/configs) at ``variants`` plus the suite's own size, and field
  overrides given as ``field__sub=value`` keywords (``defence__beta=0.0``)."""
  r = ml_collections.ConfigDict()
  r.name = name
  r.config = config
  r.variants = tuple(variants)
  r.overrides = tuple((k.replace('__', '.'), v) for k, v in overrides.items())
  return r


def paired_eval(variants: set[str]) -> dict:
  """Row overrides for a table whose rows are compared with each other: every
  row attacked on the same fixed test images (eval.image_set = 'fixed'),
  500 of them (the test variant 16), at population 400 x 30 generations on
  the CPU (the full 100 on accelerators). A second attack, the refined
  gradient-ranked extreme-colour search (4,400 candidates per image on the
  CPU, DE's budget at 10 generations; all 8,192 on accelerators, the
  exhaustive search's outcome), gives the worst-case robust accuracy beside
  DE's (the papers' attack): at 4,400 it fooled every image the exhaustive
  search fools on four models where DE missed 8 of 51 (benchmarks/README.md)."""
  if 'test' in variants:
    return dict(eval__image_set='fixed', eval__num_images=16)
  cpu = 'cpu' in variants
  return dict(
    eval__image_set='fixed',
    eval__num_images=500,
    eval__maxiter=30 if cpu else 100,
    eval__gradient_ranked=4400 if cpu else 8192,
  )


def suite(
  table: str, rows: tuple[ml_collections.ConfigDict, ...], variants: set[str]
) -> ml_collections.ConfigDict:
  """A suite config (mode=suite, see jaxpix/repro/suite.py): ``rows`` from
  :func:`row`; the suite's own cpu/test variant is passed on to every row."""
  c = ml_collections.ConfigDict()
  c.mode = 'suite'
  c.suite = ml_collections.ConfigDict()
  c.suite.table = table  # layout and paper numbers: jaxpix.repro.paper.TABLES
  c.suite.size = tuple(sorted(variants & {'cpu', 'test'}))
  c.suite.rows = tuple(rows)
  c.suite.seeds = (0,)  # e.g. --config.suite.seeds='(0, 1, 2)'
  c.suite.only = ''  # comma-separated row names to run (default: all)
  c.suite.set = ''  # overrides for every row, e.g. 'train.epochs=2,eval.num_images=50'
  c.suite.overhead = True  # measure the Table 4 overhead of every row
  # The row whose trained autoencoder every other autoencoder row reuses
  # (config.defence.autoencoder; '' = each row trains its own).
  c.suite.shared_autoencoder = ''
  c.suite.overhead_steps = 3
  c.suite.progress = 'test' not in variants
  return c
