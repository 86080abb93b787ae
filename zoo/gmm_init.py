"""Starting points for the Gaussian mixture: k-means++ seeding and Lloyd's algorithm.

K-means is EM's hard-assignment limit, so its clusters make good starts. :func:`initialize`
takes one M-step from the hard labels of Lloyd's K-means run from k-means++ seeds
(``"kmeans"``, the default: scikit-learn's ``init_params="kmeans"``, which runs
``KMeans(n_init=1)`` with its tolerance), from the labels of the k-means++ seeds alone
(``"kmeans++"``), or from uniform random responsibilities (``"random"``). The M-step from hard
labels sorts the rows by cluster once (:func:`zoo.gmm_em.label_statistics`). Distances are one
GEMM per assignment, vectorized, the same code on CPU and CUDA. Everything public here is
re-exported by :mod:`zoo.gmm`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from zoo.errors import InputError
from zoo.gmm_config import GMMConfig, _check_data, check_components
from zoo.gmm_em import from_labels, m_step
from zoo.registry import Params

INIT_METHODS = ("kmeans", "kmeans++", "random")  # the first is EM's default
LLOYD_TOL = 1e-4  # scikit-learn's KMeans tol: relative to the mean per-feature variance


def squared_distances(x: torch.Tensor, centers: torch.Tensor,
                      x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """``|x_n - c_j|²`` for ``x : (N, D)``, ``centers : (J, D)``, shape ``(N, J)``, one GEMM."""
    if x_squared is None:
        x_squared = x.square().sum(1)
    cross = torch.addmm(centers.square().sum(1), x, centers.T, alpha=-2.0)
    return cross.add_(x_squared[:, None]).clamp_min_(0.0)


def kmeans_plus_plus(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new centre is the best, by total squared distance, of ``local_trials`` (default
    ``2 + log k``) candidates drawn with probability proportional to the squared distance to
    the nearest centre so far. Returns ``(centers : (k, D), indices : (k,))``.
    """
    num_data = x.shape[0]
    check_components(k, num_data)
    trials = local_trials or 2 + int(math.log(k))
    x_squared = x.square().sum(1)
    first = torch.randint(num_data, (1,), generator=generator, device=x.device)
    indices = [first]
    closest = squared_distances(x, x[first], x_squared)[:, 0]
    for _ in range(1, k):
        weights = closest if bool(closest.sum() > 0) else torch.ones_like(closest)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        trial = torch.minimum(closest[:, None], squared_distances(x, x[candidates], x_squared))
        best = torch.argmin(trial.sum(0))
        closest = trial[:, best]
        indices.append(candidates[best].reshape(1))
    indices = torch.cat(indices)
    return x[indices].clone(), indices


def nearest_centers(x: torch.Tensor, centers: torch.Tensor,
                    x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """The index of the nearest centre of every row, shape ``(N,)``: the argmin over ``j`` of
    ``|c_j|² - 2 x·c_j``, one GEMM (``|x|²`` is the same for every centre; ``x_squared`` is
    accepted for symmetry with :func:`squared_distances` and not needed)."""
    cross = torch.addmm(centers.square().sum(1), x, centers.T, alpha=-2.0)
    return cross.argmin(1)


def _cluster_means(x, labels, centers):
    """The mean of each cluster's rows, one GEMM with the one-hot labels; an empty cluster
    takes the row farthest from its centre (scikit-learn's remedy)."""
    k = centers.shape[0]
    counts = torch.bincount(labels, minlength=k)
    if bool((counts == 0).any()):
        empty = (counts == 0).nonzero()[:, 0]
        far = (x - centers[labels]).square().sum(1).topk(empty.numel()).indices
        labels = labels.clone()
        labels[far] = empty
        counts = torch.bincount(labels, minlength=k)
    one_hot = x.new_zeros(x.shape[0], k).scatter_(1, labels[:, None], 1.0)
    return (one_hot.T @ x) / counts[:, None].to(x.dtype)


class LloydResult(NamedTuple):
    centers: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) index of each row's centre
    inertia: float  # Σ_n |x_n - c_{label_n}|²
    n_iter: int  # Lloyd iterations run
    converged: bool  # labels stopped changing, or the centres moved less than tol


def lloyd(x: torch.Tensor, centers: torch.Tensor, *, max_iter: int = 300,
          tol: float = 0.0) -> LloydResult:
    """Lloyd's algorithm from ``centers : (K, D)``: assign every row to its nearest centre,
    move each centre to its rows' mean; stop when no label changes or the total squared centre
    shift is at most ``tol`` (absolute, as scikit-learn's scaled tolerance)."""
    previous = None
    converged = strict = False
    n_iter = 0
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        labels = nearest_centers(x, centers)
        moved = _cluster_means(x, labels, centers)
        shift = float((moved - centers).square().sum())
        centers = moved
        if previous is not None and torch.equal(labels, previous):
            converged = strict = True
            break
        if shift <= tol:
            converged = True
            break
        previous = labels
    if not strict:
        labels = nearest_centers(x, centers)
    inertia = float(centers[labels].sub_(x).square_().sum())
    return LloydResult(centers, labels, inertia, n_iter, converged)


def lloyd_tolerance(x: torch.Tensor, tol: float = LLOYD_TOL) -> float:
    """scikit-learn's absolute K-means tolerance: ``tol`` times the mean per-feature variance
    (one pass over the centred rows, squared in place: on a CPU every large temporary costs its
    page faults, and a column-wise ``var`` is slower still)."""
    return tol * float((x - x.mean(0)).square_().mean())


def initialize(config: GMMConfig, x: torch.Tensor, generator: torch.Generator | None = None,
               method: str = INIT_METHODS[0]) -> Params:
    """Starting parameters from the data: one M-step from the hard labels of Lloyd's K-means
    from k-means++ seeds (``"kmeans"``, scikit-learn's default start: 300 Lloyd iterations at
    most, its relative tolerance 1e-4), from the nearest-seed labels of the k-means++ seeds
    (``"kmeans++"``), or from uniform random responsibilities (``"random"``, as
    scikit-learn)."""
    config.validate(x.shape[0])
    _check_data(config, x)
    k = config.components
    if method in ("kmeans++", "kmeans"):
        centers, _ = kmeans_plus_plus(x, k, generator=generator)
        if method == "kmeans":
            labels = lloyd(x, centers, tol=lloyd_tolerance(x)).labels
        else:
            labels = nearest_centers(x, centers)
        return from_labels(config, x, labels)
    if method == "random":
        resp = torch.rand(x.shape[0], k, generator=generator, dtype=x.dtype, device=x.device)
        resp /= resp.sum(1, keepdim=True)
        return m_step(config, x, resp)
    raise InputError(f"unknown init {method!r}; choose one of: " + ", ".join(INIT_METHODS))


def init_params(config: GMMConfig, x: torch.Tensor,
                generator: torch.Generator | None = None) -> Params:
    """SVI's starting point: the k-means++ start, one of EM's (restarts vary the generator)."""
    return initialize(config, x, generator, "kmeans++")


def _em_initialize(config: GMMConfig, x: torch.Tensor, generator, method) -> Params:
    if config.prior:
        raise InputError("EM here maximizes the likelihood and ignores priors; for the MAP "
                         "estimate under --prior use --inference svi, or drop --prior")
    return initialize(config, x, generator, method)
