"""Expectation-maximization with the model's closed-form E and M steps (:mod:`inference.em`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from inference import em
from inference.catalog import models
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register
from zoo.registry import EM_STEPS


def _em_models() -> dict:
    return {name: spec for name, spec in models(guides=False).items()
            if spec.has(EM_STEPS)}


def _init_help() -> str:
    starts = "; ".join(f"{name}: {', '.join(spec.em.init_methods)}"
                       for name, spec in _em_models().items())
    return ("EM start, one of the model's; its first is the default (" + starts + "). gmm: "
            "kmeans is Lloyd's K-means from k-means++ seeds, then one M-step from its labels "
            "(scikit-learn's init_params='kmeans'; past 20,000 rows, or 2,500 a component, "
            "seeds and Lloyd run on a seeded sample and every row takes its nearest centre), "
            "kmeans++ the same from the seeds alone, "
            "random one M-step from random responsibilities; ppca, fa: random is a random W; "
            "mppca, student-t-mixture: k-means++ seeds and a few K-means passes")


def _accelerate_help() -> str:
    on = [name for name, spec in _em_models().items() if em.accelerates_by_default(spec)]
    return ("SQUAREM-accelerated EM (Varadhan & Roland 2008): two EM updates, an extrapolation "
            "in unconstrained coordinates and a stabilizing update, kept only if log p(x) "
            "rises, so the history stays monotone (default: on for "
            + (", ".join(on) or "no model") + ", off for the others)")


@dataclass(frozen=True)
class EMOptions:
    n_init: int | None = field(default=None, metadata={
        "help": "EM restarts; the best likelihood is kept (default 1)", "min": 1})
    init: str | None = field(default=None, metadata={"help": _init_help()})
    tol: float | None = field(default=None, metadata={
        "help": "EM stops when an iteration changes the mean log p(x) by less than this, in "
                f"nats per datapoint (scikit-learn's unit; its default is 1e-3; default "
                f"{em.TOL:g}); with --accelerate an iteration is one SQUAREM step",
        "positive": True})
    max_iter: int | None = field(default=None, metadata={
        "help": f"EM updates (M-steps) at most (default {em.MAX_ITER})", "min": 1})
    accelerate: bool | None = field(default=None, metadata={"help": _accelerate_help()})


class ExpectationMaximization(Strategy):
    name = "em"
    summary = "expectation-maximization with the model's closed-form E and M steps"
    Options = EMOptions
    requires = (EM_STEPS,)
    baseline = True

    def fit(self, spec, config, x, options: EMOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        chosen = {k: v for k, v in vars(options).items() if v is not None}
        return em.fit_em(spec, config, context.rows(x), seed=context.seed,
                         progress=context.progress, checkpoint=context.checkpoint,
                         resume=context.resume, **chosen)


register(ExpectationMaximization())
