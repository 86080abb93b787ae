"""K-means, the hard-assignment limit of EM for a Gaussian mixture.

With equal weights and shared spherical covariances σ² I, as σ -> 0 the responsibilities become
one-hot on the nearest mean and EM becomes Lloyd's algorithm: assign each row to its nearest
centre, move every centre to its rows' mean. This module runs it the way scikit-learn's
``KMeans(algorithm="lloyd")`` does (k-means++ or random starts, ``n_init`` restarts keeping the
lowest inertia, a tolerance relative to the data's variance), on the numerics of
:mod:`zoo.gmm_init` (one GEMM per assignment, vectorized, the same code on CPU and CUDA).
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch

from inference.convergence import warn_not_converged
from inference.shards import Rows
from zoo.errors import InputError
from zoo.gmm_config import check_components
from zoo.gmm_init import (
    kmeans_plus_plus,
    kmeans_plus_plus_rows,
    lloyd,
    lloyd_rows,
    lloyd_tolerance_rows,
)

INITS = ("k-means++", "random")


class KMeansResult(NamedTuple):
    """One K-means fit. ``inertia`` is Σ_n |x_n - c_{label_n}|², in squared data units."""

    centers: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) int64
    inertia: float
    n_iter: int  # Lloyd iterations of the kept restart
    converged: bool
    seconds: float
    restart_inertias: tuple[float, ...] = ()  # every restart's final inertia, in order


def kmeans(
    x: torch.Tensor,
    k: int,
    *,
    init: str | torch.Tensor = "k-means++",
    n_init: int = 1,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
) -> KMeansResult:
    """Cluster ``x : (N, D)`` into ``k`` groups by Lloyd's algorithm.

    ``init`` is ``"k-means++"``, ``"random"`` (k distinct rows) or given centres ``(k, D)``
    (then ``n_init`` must be 1). ``tol`` is relative, as scikit-learn's: Lloyd stops when the
    total squared centre shift is at most ``tol`` times the mean per-feature variance, or when
    no label changes. Of ``n_init`` restarts the one with the lowest inertia is kept.
    """
    start = time.perf_counter()
    if x.dim() != 2 or not x.is_floating_point():
        raise InputError(f"x must be a floating (N, D) tensor; got shape {tuple(x.shape)} of "
                         f"{x.dtype}")
    num_data = x.shape[0]
    check_components(k, num_data)
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise InputError(f"n_init={n_init} and max_iter={max_iter} must be at least 1 and "
                         f"tol={tol} at least 0")
    given = isinstance(init, torch.Tensor)
    if given and init.shape != (k, x.shape[1]):
        raise InputError(f"initial centres have shape {tuple(init.shape)}; expected "
                         f"({k}, {x.shape[1]})")
    if given and n_init != 1:
        raise InputError("given initial centres make restarts identical; use n_init=1")
    if not given and init not in INITS:
        raise InputError(f"unknown K-means init {init!r}; choose one of: {', '.join(INITS)}, "
                         "or give the centres as a (k, D) tensor")
    absolute_tol = tol * float(x.var(0, unbiased=False).mean())
    generator = torch.Generator(device=x.device).manual_seed(seed)
    best = None
    inertias = []
    for _ in range(n_init):
        if given:
            centers = init.to(dtype=x.dtype, device=x.device)
        elif init == "k-means++":
            centers, _ = kmeans_plus_plus(x, k, generator=generator)
        else:
            rows = torch.randperm(num_data, generator=generator, device=x.device)[:k]
            centers = x[rows].clone()
        run = lloyd(x, centers, max_iter=max_iter, tol=absolute_tol)
        inertias.append(run.inertia)
        if best is None or run.inertia < best.inertia:
            best = run
    if not best.converged:
        warn_not_converged(f"K-means did not converge in max_iter={max_iter} Lloyd iterations; "
                           "raise max_iter, loosen tol, or standardize the data")
    return KMeansResult(best.centers, best.labels, best.inertia, best.n_iter, best.converged,
                        time.perf_counter() - start, tuple(inertias))


def kmeans_rows(rows: Rows, k: int, *, init: str = "k-means++", n_init: int = 1,
                max_iter: int = 300, tol: float = 1e-4, seed: int = 0) -> KMeansResult:
    """:func:`kmeans` on rows seen in shards and chunks (:class:`inference.shards.Rows`).

    Lloyd's iteration is data-parallel (:func:`zoo.gmm_init.lloyd_rows`): every rank assigns
    its rows chunk by chunk, and the per-cluster sums and counts, the changed labels and the
    inertia are summed over the ranks, so every rank moves the centres identically, as
    :func:`kmeans` alone. So are the k-means++ seeds of rows in memory
    (:func:`zoo.gmm_init.kmeans_plus_plus_rows`); the other seeds are computed once, on rank 0
    (on a seeded subsample of one chunk's size when the rows are streamed), and broadcast. The
    labels are not kept (``labels`` is empty): a streamed fit never holds N of anything. An
    empty cluster takes the row farthest from its centre over all ranks. Lloyd stops when
    no label changes (rows in memory) or the total squared centre shift is at most ``tol``
    times the mean per-feature variance."""
    start = time.perf_counter()
    check_components(k, rows.num_data)
    if init not in INITS:
        raise InputError(f"unknown K-means init {init!r}; choose one of: {', '.join(INITS)}")
    absolute_tol = lloyd_tolerance_rows(rows, tol)
    generator = torch.Generator(device=rows.device).manual_seed(seed)
    best, inertias = None, []
    for _ in range(n_init):
        if init == "k-means++" and not rows.streamed:
            centers, _ = kmeans_plus_plus_rows(rows, k, generator=generator)
        else:
            centers = _seeds_once(rows, k, init, generator)
        run = lloyd_rows(rows, centers, max_iter=max_iter, tol=absolute_tol)
        inertias.append(run.inertia)
        if best is None or run.inertia < best.inertia:
            best = run
    if not best.converged:
        warn_not_converged(f"K-means did not converge in max_iter={max_iter} Lloyd iterations; "
                           "raise max_iter, loosen tol, or standardize the data")
    empty = torch.zeros(0, dtype=torch.int64, device=rows.device)
    return KMeansResult(best.centers, empty, best.inertia, best.n_iter, best.converged,
                        time.perf_counter() - start, tuple(inertias))


def _seeds_once(rows: Rows, k: int, init: str, generator: torch.Generator) -> torch.Tensor:
    """Seeds computed on rank 0 (every row, or a seeded subsample of one chunk's size when the
    rows are streamed) and broadcast."""
    centers = None
    if rows.group is None or rows.group.is_main:
        source = (rows.sample(next(iter(rows._views)).shape[0], generator) if rows.streamed
                  else rows.x.to(rows.device))
        if init == "k-means++":
            centers, _ = kmeans_plus_plus(source, k, generator=generator)
        else:
            chosen = torch.randperm(source.shape[0], generator=generator,
                                    device=source.device)[:k]
            centers = source[chosen].clone()
    if rows.group is not None:
        centers = rows.group.broadcast({"centers": centers} if centers is not None else
                                       None, like=rows.probe(1))["centers"]
    return centers
