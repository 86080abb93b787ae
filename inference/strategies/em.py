"""Expectation-maximization with the model's closed-form E and M steps (:mod:`inference.em`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference.em import fit_em
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register


@dataclass(frozen=True)
class EMOptions:
    n_init: int | None = field(default=None, metadata={
        "help": "EM restarts; the best likelihood is kept (default 1)", "min": 1})
    init: str | None = field(default=None, metadata={
        "help": "EM initialization (model-specific, e.g. kmeans++; default: the model's first)"})
    tol: float | None = field(default=None, metadata={
        "help": "EM tolerance on the change of log p(x), nats per datapoint (default 1e-6)",
        "positive": True})
    max_iter: int | None = field(default=None, metadata={
        "help": "EM iterations at most (default 500)", "min": 1})


class ExpectationMaximization(Strategy):
    name = "em"
    summary = "expectation-maximization with the model's closed-form E and M steps"
    Options = EMOptions
    baseline = True

    def applies(self, spec) -> bool:
        return spec.em is not None

    def fit(self, spec, config, x, options: EMOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        chosen = {k: v for k, v in vars(options).items() if v is not None}
        return fit_em(spec, config, x, seed=context.seed, progress=context.progress, **chosen)


register(ExpectationMaximization())
