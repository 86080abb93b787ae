"""K-means as a start and a baseline for mixtures: Lloyd's hard assignments, then the
model's parameters from them (``spec.from_assignments``: the M-step on one-hot
responsibilities). It is the σ → 0 limit of EM, judged by the same yardstick as every fit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inference.kmeans import INITS, kmeans
from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register


@dataclass(frozen=True)
class KMeansOptions:
    n_init: int | None = field(default=None, metadata={
        "help": "restarts; the lowest inertia is kept (default 1)", "min": 1})
    max_iter: int | None = field(default=None, metadata={
        "help": "iterations at most (default 300 for K-means)", "min": 1})
    kmeans_init: str | None = field(default=None, metadata={
        "help": "K-means start (default k-means++)", "choices": INITS})


class KMeans(Strategy):
    name = "kmeans"
    summary = "Lloyd's K-means, then the mixture's M-step on the hard assignments"
    Options = KMeansOptions

    def applies(self, spec) -> bool:
        return spec.from_assignments is not None

    def fit(self, spec, config, x, options: KMeansOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        start = time.perf_counter()
        chosen = {"n_init": options.n_init, "max_iter": options.max_iter,
                  "init": options.kmeans_init}
        clusters = kmeans(x, config.components, seed=context.seed,
                          **{k: v for k, v in chosen.items() if v is not None})
        params = spec.from_assignments(config, x, clusters.labels)
        return FitResult(model=spec.name, inference=self.name, guide=None, params=params,
                         history={"inertia": [clusters.inertia]},
                         seconds=time.perf_counter() - start, steps=clusters.n_iter,
                         converged=clusters.converged, device=str(x.device),
                         seed=context.seed, info={"inertia": clusters.inertia})


register(KMeans())
