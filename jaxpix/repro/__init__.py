"""The papers' reproduction, built on the library: their numbers, the suites
that train and evaluate a table's rows, the tables' reports, the overhead
measurement, and the scripts behind ``docs/results.md``.

The library (``jaxpix.attack``, ``models``, ``defences``, ``data``, ``train``,
``evaluation``, ``zoo``, ...) imports nothing from here (tested), as
big_vision keeps one paper's code under ``proj/``.
"""
