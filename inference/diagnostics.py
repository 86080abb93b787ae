"""Did the fit work? Pareto-smoothed importance sampling k̂ from a yardstick's log-weights.

The yardstick already draws importance weights ``w = p(x, z) / q(z | x)`` with the fit's guide
as the proposal. Fitting a generalized Pareto distribution to their largest values gives k̂
(Yao, Vehtari, Simpson & Gelman 2018, "Yes, but did it work?"; Vehtari et al. 2024): the
proposal's tails are heavy enough for the importance-sampled log p(x) to be trusted when
k̂ < 0.7 (k̂ < 0.5: the weights' variance is finite); above 0.7 the estimate (and the ELBO's
view of the posterior) should not be trusted. ArviZ computes it (``az.psislw``); nothing of
it is rewritten here.

``log_weights : (K, N)``: K importance samples for each of N rows (an amortized or per-row
proposal: one k̂ per row), or ``(K,)`` / ``(K, 1)`` for one joint estimate (models with global
latents: one k̂ for the fit).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

THRESHOLD = 0.7  # above it the importance-sampled estimate is not to be trusted
EXPLAINED = ("PSIS k̂ (Yao et al. 2018): how heavy the tails of p/q are under the fit's guide; "
             "k̂ < 0.7 means the importance-sampled log p(x) can be trusted, above 0.7 the "
             "guide misses mass the posterior has")


@dataclass(frozen=True)
class ParetoK:
    """k̂ of one fit: the largest over rows, the median, and the share of rows above
    :data:`THRESHOLD` (one row, and share 0 or 1, for a joint estimate)."""

    max: float
    median: float
    share_above: float
    rows: int
    samples: int

    @property
    def trusted(self) -> bool:
        return self.max < THRESHOLD

    def record(self) -> dict:
        """The JSON record's fields."""
        return {"pareto_k": self.max, "pareto_k_median": self.median,
                "pareto_k_share_above_0.7": self.share_above, "pareto_k_rows": self.rows}


def pareto_k(log_weights: torch.Tensor | np.ndarray) -> np.ndarray:
    """k̂ for each row of ``log_weights : (K, N)`` (or one for ``(K,)``), by ArviZ's PSIS."""
    import arviz as az  # imported where used: it is slow to import and most commands never ask

    weights = log_weights.detach().cpu().double().numpy() if isinstance(
        log_weights, torch.Tensor) else np.asarray(log_weights, dtype=np.float64)
    if weights.ndim == 1:
        weights = weights[:, None]
    if weights.ndim != 2 or weights.shape[0] < 2:
        raise ValueError(f"log-weights of shape {weights.shape}: give (K, N) with K >= 2 "
                         "importance samples per row")
    # ArviZ takes samples on the last axis; rows whose weights are all equal have k̂ = -inf
    _, k = az.psislw(np.ascontiguousarray(weights.T), reff=1.0)
    k = np.atleast_1d(np.asarray(k, dtype=np.float64))
    # ArviZ answers inf both when one draw carries all the weight (the others > 745 nats
    # below it: the tail is as heavy as it gets) and when every weight is equal (the proposal
    # is the target: nothing to fit, k̂ = -inf here)
    spread = weights.max(0) - weights.min(0)
    return np.where(np.isinf(k) & (spread < 1e-6), -np.inf, k)


def summarize(log_weights: torch.Tensor | np.ndarray) -> ParetoK:
    """:class:`ParetoK` of a yardstick's log-weights ``(K, N)``."""
    k = pareto_k(log_weights)
    finite = np.where(np.isnan(k), -np.inf, k)  # -inf: a row whose weights are all equal
    samples = int(np.shape(log_weights)[0])
    return ParetoK(max=float(finite.max()), median=float(np.median(finite)),
                   share_above=float(np.mean(finite > THRESHOLD)), rows=int(k.size),
                   samples=samples)
