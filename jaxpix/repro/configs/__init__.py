"""The suites' configs: one per table of the papers, run by ``run.py``
(``python run.py --config jaxpix/repro/configs/suite_table1.py:cpu --workdir
...``); each row names a library config (``jaxpix/configs``)."""
