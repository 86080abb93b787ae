"""The Gaussian mixture's starts as scikit-learn makes them, from the same ``random_state``.

scikit-learn's ``GaussianMixture`` starts every restart from responsibilities drawn with one
numpy ``RandomState`` (consumed restart after restart):

- ``"kmeans"``: the hard labels of ``KMeans(n_init=1)``, i.e. greedy k-means++ seeds on the
  centred rows, then Lloyd's iterations to its tolerance;
- ``"k-means++"``: the k-means++ seeds alone, each seed row wholly in its component and every
  other row in none (so the M-step gives means at the seeds and covariances of ``reg_covar``);
- ``"random"``: uniform draws per row, normalized;
- ``"random_from_data"``: ``n_components`` distinct rows drawn at random, as ``"k-means++"``.

Here the random numbers are drawn from a numpy ``RandomState`` in the same order and with the
same calls, and everything else (distances, sums, Lloyd) is vectorized torch on the data's
device and dtype, so the starts, and so the fits, are scikit-learn's.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from zoo import gmm
from zoo.gmm_init import lloyd, lloyd_tolerance, squared_distances

SKLEARN_INITS = ("kmeans", "k-means++", "random", "random_from_data")


def kmeans_plus_plus(x: torch.Tensor, k: int, rng: np.random.RandomState) -> torch.Tensor:
    """Greedy k-means++ seed rows of ``x : (N, D)`` (``2 + log k`` candidates per seed, the
    one that lowers the total squared distance most kept), with scikit-learn's draws: the
    first row by ``rng.choice`` with uniform weights, then per seed ``2 + log k`` uniforms
    scaled by the current potential, located in the cumulative squared distances. Returns
    the ``(k,)`` row indices."""
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    x_squared = x.square().sum(1)
    first = int(rng.choice(n, p=np.full(n, 1.0 / n)))
    indices = [first]
    closest = squared_distances(x, x[first:first + 1], x_squared)[:, 0]
    potential = closest.sum()
    for _ in range(1, k):
        draws = torch.as_tensor(rng.uniform(size=trials), dtype=x.dtype, device=x.device)
        candidates = torch.searchsorted(torch.cumsum(closest, 0), draws * potential)
        candidates = candidates.clamp_(max=n - 1)
        trial = torch.minimum(closest[None, :], squared_distances(x[candidates], x, x_squared
                                                                  [candidates]))
        totals = trial.sum(1)
        best = int(torch.argmin(totals))
        potential, closest = totals[best], trial[best]
        indices.append(int(candidates[best]))
    return torch.tensor(indices, device=x.device)


def _seed_rows(config: gmm.GMMConfig, x: torch.Tensor, rows: torch.Tensor):
    """Responsibilities one on each seed row (row ``rows[j]`` in component ``j``), zero
    elsewhere, and their M-step.

    For ``"diag"`` / ``"spherical"`` the variances are scikit-learn's to rounding (below).
    For ``"tied"`` scikit-learn's M-step takes the pooled scatter as ``(Σ_n x_n x_nᵀ -
    Σ_k n_k μ_k μ_kᵀ) / Σ_k n_k`` with the first sum over *every* row, which is the pooled
    within-component scatter only where each row's responsibilities sum to one. From these
    starts they do not, and its start covariance is that formula's; so is ours."""
    resp = x.new_zeros(x.shape[0], config.components)
    resp[rows, torch.arange(config.components, device=x.device)] = 1.0
    params = gmm.m_step(config, x, resp)
    counts = resp.sum(0) + 10 * torch.finfo(x.dtype).eps  # scikit-learn's n_k
    means = params["means"]
    if config.covariance_type in ("diag", "spherical"):
        # scikit-learn's variances are Σ r x² / n_k - μ², which for a one-row component is
        # μ² (n_k - 1) / n_k = 10 eps μ², not 0: next to reg_covar it matters, so it is kept
        excess = (counts - resp.sum(0))[:, None] * means.square() / counts[:, None]
        if config.covariance_type == "spherical":
            excess = excess.mean(1)
        params["scale"] = (params["scale"].square() + excess).sqrt()
    if config.covariance_type == "tied":
        covariance = (x.T @ x - (counts[:, None] * means).T @ means) / counts.sum()
        covariance = covariance + config.reg_covar * torch.eye(config.dim, dtype=x.dtype,
                                                                device=x.device)
        tril = torch.linalg.cholesky(covariance)
        params["scale_tril"] = tril.expand(config.components, *tril.shape).clone()
    return params


def start(method: str, config: gmm.GMMConfig, x: torch.Tensor,
          rng: np.random.RandomState):
    """scikit-learn's start ``method`` (one of :data:`SKLEARN_INITS`) for ``x : (N, D)``:
    the parameters of one M-step from its responsibilities."""
    k = config.components
    if method == "kmeans":
        centred = x - x.mean(0)  # as KMeans: the seeds and Lloyd on the centred rows
        seeds = kmeans_plus_plus(centred, k, rng)
        labels = lloyd(centred, centred[seeds], tol=lloyd_tolerance(x)).labels
        return gmm.from_labels(config, x, labels)
    if method == "k-means++":
        return _seed_rows(config, x, kmeans_plus_plus(x, k, rng))
    if method == "random":
        resp = torch.as_tensor(rng.uniform(size=(x.shape[0], k)), dtype=x.dtype,
                               device=x.device)
        return gmm.m_step(config, x, resp / resp.sum(1, keepdim=True))
    if method == "random_from_data":
        rows = torch.as_tensor(rng.choice(x.shape[0], size=k, replace=False), device=x.device)
        return _seed_rows(config, x, rows)
    raise ValueError(f"unknown init_params={method!r}; choose one of "
                     + ", ".join(SKLEARN_INITS))
