"""What the comparison keeps of each fit while it judges, aligns and exports them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from inference import posterior_export as export
from inference.fitting import Fitted
from inference.strategies import Cell


@dataclass
class Fit:
    """One cell of the grid at one seed: the fit in memory, its record and its draws."""

    cell: Cell
    seed: int
    fitted: Fitted
    baseline: bool  # a closed-form / EM fit: the anchor others are aligned to
    draws: export.PosteriorDraws | None = None  # the chosen rows' posterior draws
    reference: export.PosteriorDraws | None = None  # NUTS at this fit's parameters
    permutation: torch.Tensor | None = None  # labels matched to the anchor fit (mixtures)
    idata: object = None  # az.InferenceData of ``draws``
    reference_idata: object = None  # az.InferenceData of ``reference``
    measures: dict = field(default_factory=dict)  # what the comparison adds to the record
    run_dir: Path | None = None  # its run folder, once written

    @property
    def result(self):
        return self.fitted.result

    @property
    def record(self) -> dict:
        """The fit's JSON record with what the comparison added (read-only: see ``add``)."""
        return self.fitted.fit_record(
            measures=dict(self.measures),
            run_dir=None if self.run_dir is None else str(self.run_dir)).to_dict()

    def add(self, **fields) -> None:
        """Add fields to the record (the comparison's measures)."""
        self.measures.update(fields)


def anchor_of(fits: list[Fit]) -> Fit | None:
    """The fit the others are aligned to: the first baseline (closed form, EM) of the first
    seed, else the first fit with posterior draws."""
    with_draws = [f for f in fits if f.draws is not None]
    baselines = [f for f in with_draws if f.baseline]
    return (baselines or with_draws or [None])[0]
