"""What each cell of the bench costs, for the scheduler: seconds measured per (posterior,
strategy) of the default suite at the default budget, and how a budget scales them.

The seconds are the ``wall_seconds`` (fit and metrics) of the whole-suite run recorded in
benchmarks/RESULTS.md ("this stop", 2026-12-06, ``lvm-zoo bench --jobs 2``, two one-thread
workers on a 2-core CPU, the generic guides' Laplace start; mesquite's NUTS with its dense
mass matrix run alone after). They are used only to order
the cells, so a slower or faster machine changes nothing but the scale.

:func:`estimate` gives one cell's expected seconds from, in this order:

1. **recorded**: the cell's own file in the output folder from an earlier run (a resumed run
   whose cell failed or was written with other settings), its ``wall_seconds``;
2. **measured**: this table;
3. **typical**: the median of this table's column for the strategy (a posterior it lacks);

each scaled by the budget's work against the work it was measured at: NUTS's gradient work
is proportional to chains × (warm-up + draws), SVI's to its step limit (the schedule may stop
sooner, which only makes the estimate an upper bound).
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping
from pathlib import Path

from inference.bench.fits import STRATEGIES, Budget

MEASURED_ON = "2026-12-06"
MEASURED_BUDGET = Budget()  # the defaults: 3000 SVI steps, NUTS 2 × (400 + 500)

# seconds per cell, columns in STRATEGIES order: auto-normal, auto-lowrank, auto-mvn, flow, nuts
SECONDS: dict[str, tuple[int, int, int, int, int]] = {
    "eight_schools-eight_schools_noncentered": (10, 11, 12, 10, 18),
    "eight_schools-eight_schools_centered": (11, 12, 11, 15, 28),
    "kidiq-kidscore_momhs": (5, 6, 5, 6, 27),
    "kidiq-kidscore_momiq": (6, 6, 5, 7, 44),
    "kidiq-kidscore_interaction": (5, 11, 6, 8, 77),
    "kidiq_with_mom_work-kidscore_mom_work": (6, 6, 6, 7, 47),
    "kidiq_with_mom_work-kidscore_interaction_z": (5, 6, 5, 7, 35),
    "earnings-earn_height": (6, 7, 6, 8, 80),
    "earnings-logearn_height_male": (6, 6, 6, 7, 152),
    "earnings-logearn_interaction_z": (5, 7, 5, 6, 23),
    "earnings-logearn_logheight_male": (6, 12, 6, 8, 37),
    "mesquite-mesquite": (5, 6, 6, 10, 132),
    "mesquite-logmesquite": (5, 6, 5, 8, 48),
    "mesquite-logmesquite_logvas": (5, 7, 5, 13, 73),
    "nes1972-nes": (5, 6, 5, 8, 80),
    "kilpisjarvi_mod-kilpisjarvi": (5, 6, 5, 12, 18),
    "sblrc-blr": (5, 5, 6, 8, 29),
    "sblri-blr": (5, 6, 5, 7, 17),
    "arK-arK": (6, 8, 6, 8, 67),
    "arma-arma11": (16, 15, 12, 8, 20),
    "garch-garch11": (11, 7, 6, 11, 46),
    "hmm_example-hmm_example": (10, 10, 9, 11, 112),
    "bball_drive_event_0-hmm_drive_0": (17, 13, 12, 15, 267),
    "low_dim_gauss_mix-low_dim_gauss_mix": (8, 9, 8, 8, 28),
    "gp_pois_regr-gp_pois_regr": (7, 12, 14, 9, 700),
    "gp_pois_regr-gp_regr": (7, 7, 7, 8, 13),
}
TYPICAL = {strategy: statistics.median(row[k] for row in SECONDS.values())
           for k, strategy in enumerate(STRATEGIES)}


def work(settings: Mapping, strategy: str) -> float:
    """The budget's work for one cell of ``strategy``, from a cell's ``settings`` (or a
    :class:`Budget` as a dict): NUTS chains × (warm-up + draws), SVI steps."""
    if strategy == "nuts":
        return float(settings["nuts_chains"] * (settings["nuts_warmup"]
                                                + settings["nuts_samples"]))
    return float(settings["steps"])


def _recorded(path: Path) -> tuple[float, Mapping] | None:
    try:
        record = json.loads(path.read_text())
        return float(record["wall_seconds"]), record["settings"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def estimate(posterior: str, strategy: str, budget: Budget,
             recorded: Path | None = None) -> tuple[float, str]:
    """``(seconds, source)``: the cell's expected seconds under ``budget`` and where the
    figure came from (``"recorded"``, ``"measured"`` or ``"typical"``; see the module)."""
    wanted = work(vars(budget), strategy)
    found = None if recorded is None else _recorded(recorded)
    if found is not None:
        seconds, settings = found
        try:
            return seconds * wanted / work(settings, strategy), "recorded"
        except (KeyError, TypeError, ZeroDivisionError):
            pass
    base = work(vars(MEASURED_BUDGET), strategy)
    row = SECONDS.get(posterior)
    if row is not None and strategy in STRATEGIES:
        return row[STRATEGIES.index(strategy)] * wanted / base, "measured"
    return TYPICAL.get(strategy, max(TYPICAL.values())) * wanted / base, "typical"
