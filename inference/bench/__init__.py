"""``lvm-zoo bench``: inference strategies against posteriordb's reference posteriors.

For each posterior of a suite (default: :func:`zoo.posteriordb.suite`) and each strategy
(``auto-normal``, ``auto-lowrank``, ``auto-mvn``, ``flow``, ``nuts``; CAVI applies to no
posterior of the suite) one cell fits the posterior (:mod:`inference.bench.fits`), measures
the fit's draws against the reference (:mod:`inference.bench.metrics`: mean error and sd ratio
in reference sds, 1-Wasserstein distances, PSIS k̂, NUTS within Monte Carlo error) and is
written as one JSON file (:mod:`inference.bench.runner`: resumable, ``jobs`` processes);
:mod:`inference.bench.report` writes the CSV, the HTML report and the summary figure.
"""

from __future__ import annotations

from inference.bench.fits import STRATEGIES, VARIATIONAL, Budget
from inference.bench.runner import DEFAULT_SUITE, load_suite, run_cell, run_grid

__all__ = ["DEFAULT_SUITE", "STRATEGIES", "VARIATIONAL", "Budget", "load_suite", "run_cell",
           "run_grid"]
