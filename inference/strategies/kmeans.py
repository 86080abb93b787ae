"""K-means as a start and a baseline for mixtures: Lloyd's hard assignments, then the
model's parameters from them (``spec.from_assignments``: the M-step on one-hot
responsibilities). It is the σ → 0 limit of EM, judged by the same yardstick as every fit."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from inference.kmeans import INITS, kmeans, kmeans_rows
from inference.results import FitResult
from inference.shards import Rows
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register
from zoo.errors import InputError
from zoo.gmm_init import nearest_centers
from zoo.registry import HARD_ASSIGNMENT_M_STEP


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
    requires = (HARD_ASSIGNMENT_M_STEP,)

    def fit(self, spec, config, x, options: KMeansOptions, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        start = time.perf_counter()
        chosen = {"n_init": options.n_init, "max_iter": options.max_iter,
                  "init": options.kmeans_init}
        chosen = {k: v for k, v in chosen.items() if v is not None}
        rows = context.rows(x)
        if rows.parted:  # shards of a process group, or chunks of a streamed file
            clusters = kmeans_rows(rows, config.components, seed=context.seed, **chosen)
            params = _from_centers(spec, config, rows, clusters.centers)
        else:
            clusters = kmeans(rows.tensor, config.components, seed=context.seed, **chosen)
            params = spec.from_assignments(config, rows.tensor, clusters.labels)
        return FitResult(model=spec.name, inference=self.name, guide=None, params=params,
                         history={"inertia": [clusters.inertia]},
                         seconds=time.perf_counter() - start, steps=clusters.n_iter,
                         converged=clusters.converged, device=str(rows.device),
                         seed=context.seed,
                         info={**rows.describe(), "inertia": clusters.inertia})


def _from_centers(spec, config, rows: Rows, centers):
    """The model's M-step on the labels of the nearest centres, chunk by chunk and rank by
    rank (the model's ``label_statistics`` and ``combine`` hooks)."""
    em = spec.em
    if em is None or em.label_statistics is None or em.combine is None:
        raise InputError(f"K-means on {rows.world_size} processes or on chunks of a file ends "
                         f"with the model's M-step on the labels, and '{spec.name}' declares "
                         "no label_statistics/combine hooks; fit it in one process with its "
                         "rows in memory")
    local = em.combine([em.label_statistics(config, chunk, nearest_centers(chunk, centers))
                        for chunk in rows.chunks()])
    return em.m_step(config, None, em.combine(rows.gather(local)))


register(KMeans())
