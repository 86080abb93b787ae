"""Online (stepwise) EM on minibatches (:mod:`inference.online_em`): for every model whose EM
statistics combine (``EMSteps.combine``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference import online_em
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, Cell, FitContext, Strategy, register
from zoo.registry import COMBINABLE_STATISTICS, EM_STEPS


@dataclass(frozen=True)
class OnlineEMOptions:
    batch_size: int | None = field(default=None, metadata={
        "help": "minibatch rows: online EM's per update (default: about "
                f"{online_em.UPDATES_PER_PASS} updates per pass, {online_em.MIN_BATCH} to "
                f"{online_em.BATCH_SIZE} rows); SVI's per step (default: the model's, else all)",
        "min": 1})
    passes: int | None = field(default=None, metadata={
        "help": "online EM: passes over the data, each in a fresh seeded order (default 1: "
                "every row seen once)", "min": 1})
    step_decay: float | None = field(default=None, metadata={
        "help": "online EM: α of the step size η_t = (t + t0)^-α, in (0.5, 1] (default "
                f"{online_em.STEP_DECAY:g}; 1 with t0 = 0 is the running average 1/t)",
        "positive": True})
    step_offset: float | None = field(default=None, metadata={
        "help": f"online EM: t0 of the step size (default {online_em.STEP_OFFSET:g})",
        "min": 0.0})
    warmup: int | None = field(default=None, metadata={
        "help": "online EM: rows whose statistics accumulate before the first M-step "
                f"(default {online_em.WARMUP_ROWS_PER_DIM} (D + 1))", "min": 0})
    init: str | None = field(default=None, metadata={
        "help": "EM start on the init subsample, one of the model's (default: its first)"})
    init_size: int | None = field(default=None, metadata={
        "help": "online EM: rows of the seeded subsample the start is computed on (default "
                f"{online_em.INIT_ROWS}, at least one minibatch)", "min": 1})
    shuffle: bool | None = field(default=None, metadata={
        "help": "online EM: draw each pass's minibatches by a seeded permutation (default); "
                "--no-shuffle reads the rows in order (a stream already shuffled)"})
    tol: float | None = field(default=None, metadata={
        "help": "online EM: converged when the mean minibatch log p(x) of the last pass is "
                f"within this of the pass before (default {online_em.TOL:g} nats per "
                "datapoint; one pass is never 'converged')", "positive": True})


class OnlineEM(Strategy):
    name = "online-em"
    summary = ("online (stepwise) EM on minibatches, Cappé & Moulines 2009: running E-step "
               "statistics, an M-step per minibatch")
    Options = OnlineEMOptions
    requires = (EM_STEPS, COMBINABLE_STATISTICS)

    def fit(self, spec, config, x, options: OnlineEMOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        chosen = {k: v for k, v in vars(options).items() if v is not None}
        return online_em.fit_online_em(spec, config, x, seed=context.seed,
                                       progress=context.progress,
                                       checkpoint=context.checkpoint, resume=context.resume,
                                       **chosen)

    def cells(self, spec, config, x, grid_options) -> list[Cell]:
        return [Cell(self.name)]


register(OnlineEM())
