"""What each cell of the bench costs, for the scheduler: seconds measured per (posterior,
strategy) of the default suite at the default budget, and how a budget scales them.

The seconds are the ``wall_seconds`` (fit and metrics) of the whole-suite run recorded in
benchmarks/RESULTS.md (2026-12-06, ``lvm-zoo bench --jobs 2``, two one-thread workers on an
otherwise idle 2-core CPU; gp_pois_regr's NUTS run alone after). They are used only to order
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
    "eight_schools-eight_schools_noncentered": (8, 11, 9, 21, 30),
    "eight_schools-eight_schools_centered": (10, 13, 11, 13, 25),
    "kidiq-kidscore_momhs": (11, 11, 10, 14, 29),
    "kidiq-kidscore_momiq": (9, 11, 10, 7, 41),
    "kidiq-kidscore_interaction": (9, 10, 9, 12, 74),
    "kidiq_with_mom_work-kidscore_mom_work": (9, 13, 9, 17, 47),
    "kidiq_with_mom_work-kidscore_interaction_z": (9, 13, 10, 15, 43),
    "earnings-earn_height": (13, 15, 10, 11, 124),
    "earnings-logearn_height_male": (13, 12, 13, 15, 187),
    "earnings-logearn_interaction_z": (10, 11, 10, 12, 26),
    "earnings-logearn_logheight_male": (13, 16, 15, 19, 53),
    "mesquite-mesquite": (13, 16, 14, 13, 334),
    "mesquite-logmesquite": (13, 17, 13, 19, 75),
    "mesquite-logmesquite_logvas": (10, 16, 11, 18, 116),
    "nes1972-nes": (12, 13, 14, 18, 99),
    "kilpisjarvi_mod-kilpisjarvi": (11, 13, 13, 9, 21),
    "sblrc-blr": (12, 13, 9, 13, 38),
    "sblri-blr": (9, 11, 9, 11, 20),
    "arK-arK": (10, 12, 10, 11, 76),
    "arma-arma11": (16, 16, 15, 10, 26),
    "garch-garch11": (16, 15, 15, 17, 66),
    "hmm_example-hmm_example": (20, 21, 13, 15, 134),
    "bball_drive_event_0-hmm_drive_0": (24, 19, 16, 27, 202),
    "low_dim_gauss_mix-low_dim_gauss_mix": (12, 16, 13, 17, 38),
    "gp_pois_regr-gp_pois_regr": (18, 14, 13, 18, 471),
    "gp_pois_regr-gp_regr": (8, 8, 11, 11, 17),
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
