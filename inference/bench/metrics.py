"""How far a fit's draws are from a posterior's reference: the numbers of one bench cell.

Every figure is in the reference's own units (its per-parameter sd), so that posteriors of
any scale sit in one table:

- **mean error**: |mean_q − mean_ref| / sd_ref per parameter (its max and mean over the
  parameters);
- **sd ratio**: sd_q / sd_ref per parameter (below 1: too narrow, mean-field's habit);
- **W1, marginal**: the mean over parameters of the one-dimensional 1-Wasserstein distance
  between the fit's and the reference's draws of that parameter, each divided by sd_ref
  (:func:`scipy.stats.wasserstein_distance`, exact for one dimension);
- **W1, joint**: the multivariate 1-Wasserstein distance between equal-size subsamples of the
  two draws (Euclidean cost, in sd_ref-standardized coordinates and in the raw ones, as
  Pathfinder reports it). Between two empirical measures of n equally weighted points the
  optimal plan is a permutation (Birkhoff), so it is an assignment problem solved exactly by
  :func:`scipy.optimize.linear_sum_assignment`; no optimal-transport package is needed. Two
  samples of the same distribution are not at distance 0, so the distance between two
  halves of the reference's draws is reported beside it (``w1_joint_floor``);
- **k̂**: PSIS k̂ (ArviZ) of the log-weights log p(θ, x) − log q(θ) of the fit's own draws,
  :mod:`inference.diagnostics`;
- **NUTS against the reference**: each parameter's mean and sd difference in units of their
  Monte Carlo standard errors (ArviZ's ``mcse``), Bonferroni-corrected over the parameters.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import optimize, stats

from inference.diagnostics import THRESHOLD, summarize

GOOD_MEAN_ERROR = 0.1  # a fit "reaches" the reference when every mean is within 0.1 sd
JOINT_POINTS = 500  # points per side of the joint W1's assignment problem
REFERENCE_EFFECTIVE_DRAWS = 10_000  # posteriordb's reference: 10 chains x 1000 thinned draws
AGREEMENT_LEVEL = 0.01  # NUTS agrees when no parameter is off at this family-wise level


def moment_errors(draws: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> dict:
    """``draws : (S, P)`` against the reference's ``mean``, ``sd : (P,)``: the per-parameter
    mean error (in reference sds) and sd ratio, and their summaries."""
    draws = np.asarray(draws, dtype=np.float64)
    error = np.abs(draws.mean(0) - mean) / sd
    ratio = draws.std(0, ddof=1) / sd
    return {"mean_error_max": float(error.max()), "mean_error_mean": float(error.mean()),
            "sd_ratio_min": float(ratio.min()), "sd_ratio_max": float(ratio.max()),
            "sd_ratio_median": float(np.median(ratio)),
            "mean_error": error.tolist(), "sd_ratio": ratio.tolist()}


def w1_marginal(draws: np.ndarray, reference: np.ndarray, sd: np.ndarray) -> float:
    """Mean over the P parameters of the 1-D W1 between ``draws : (S, P)`` and
    ``reference : (R, P)``, each in units of the reference sd ``sd : (P,)``."""
    return float(np.mean([stats.wasserstein_distance(draws[:, p], reference[:, p]) / sd[p]
                          for p in range(draws.shape[1])]))


def w1_joint(a: np.ndarray, b: np.ndarray, *, points: int = JOINT_POINTS,
             seed: int = 0) -> float:
    """The multivariate W1 (Euclidean cost) between the empirical measures of ``points``
    draws of ``a : (S, P)`` and of ``b : (R, P)`` chosen at random (seeded): the mean cost of
    the optimal assignment."""
    rng = np.random.default_rng(seed)
    n = min(points, a.shape[0], b.shape[0])
    left = a[rng.choice(a.shape[0], n, replace=False)]
    right = b[rng.choice(b.shape[0], n, replace=False)]
    cost = np.sqrt(((left[:, None, :] - right[None, :, :]) ** 2).sum(-1))
    rows, columns = optimize.linear_sum_assignment(cost)
    return float(cost[rows, columns].mean())


def w1_floor(reference: np.ndarray, *, points: int = JOINT_POINTS, seed: int = 0) -> float:
    """The joint W1 between two disjoint halves of the reference's draws: what two samples of
    the same posterior differ by at this sample size (the floor of :func:`w1_joint`)."""
    rng = np.random.default_rng(seed + 1)
    order = rng.permutation(reference.shape[0])
    half = reference.shape[0] // 2
    return w1_joint(reference[order[:half]], reference[order[half:]], points=points, seed=seed)


def distances(draws: np.ndarray, reference: np.ndarray, sd: np.ndarray, *,
              seed: int = 0) -> dict:
    """The W1 figures of ``draws : (S, P)`` against the reference draws ``(R, P)``."""
    draws, reference = np.asarray(draws, np.float64), np.asarray(reference, np.float64)
    return {"w1_marginal_sd": w1_marginal(draws, reference, sd),
            "w1_joint_sd": w1_joint(draws / sd, reference / sd, seed=seed),
            "w1_joint_raw": w1_joint(draws, reference, seed=seed),
            "w1_joint_floor_sd": w1_floor(reference / sd, seed=seed)}


def pareto_k(log_weights: np.ndarray) -> float:
    """PSIS k̂ of one joint importance-sampling estimate with log-weights ``(S,)``."""
    return summarize(np.asarray(log_weights, np.float64)[:, None]).max


def mcse(chains: np.ndarray, method: str) -> np.ndarray:
    """``(P,)``: ArviZ's Monte Carlo standard error (``method`` ``"mean"`` or ``"sd"``) of
    each parameter of ``chains : (C, S, P)``, from the chains' effective sample size (for the
    sd, of the squared deviations, so that heavy tails widen it)."""
    with warnings.catch_warnings():  # ArviZ announces its refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    data = az.convert_to_dataset({"x": np.asarray(chains, np.float64)})
    return np.atleast_1d(az.mcse(data, method=method)["x"].values)


def reference_sd_error(sd: np.ndarray, draws: np.ndarray | None = None, *,
                       reference_draws: int = REFERENCE_EFFECTIVE_DRAWS) -> np.ndarray:
    """``(P,)``: the Monte Carlo standard error of the reference's sds, computed over its
    ``reference_draws`` effective draws. With its thinned ``draws : (R', P)`` (taken as one
    chain), ArviZ's sd mcse of those, scaled by √(R' / reference_draws); without them the
    normal-theory sd / √(2 R), which a heavy tail makes too small."""
    if draws is None:
        return np.asarray(sd, np.float64) / np.sqrt(2 * reference_draws)
    draws = np.asarray(draws, np.float64)
    return mcse(draws[None], "sd") * np.sqrt(draws.shape[0] / reference_draws)


def nuts_agreement(chains: np.ndarray, mean: np.ndarray, sd: np.ndarray, names: Sequence[str],
                   *, level: float = AGREEMENT_LEVEL,
                   reference_draws: int = REFERENCE_EFFECTIVE_DRAWS,
                   thinned: np.ndarray | None = None) -> dict:
    """Whether NUTS draws ``chains : (C, S, P)`` agree with the reference moments within
    Monte Carlo error: per parameter z = (m_nuts − m_ref) / √(mcse² + sd_ref² / R) for the
    mean, and likewise for the sd (ArviZ's mcse of the sd for NUTS; the reference sd's error
    from :func:`reference_sd_error`, with the reference's ``thinned`` draws where given);
    agreement when every |z| is below the two-sided Bonferroni bound at family-wise
    ``level`` over the 2P tests. ``R`` is the reference's effective draws."""
    chains = np.asarray(chains, np.float64)
    mcse_mean, mcse_sd = mcse(chains, "mean"), mcse(chains, "sd")
    sd_error = reference_sd_error(sd, thinned, reference_draws=reference_draws)
    flat = chains.reshape(-1, chains.shape[-1])
    z_mean = (flat.mean(0) - mean) / np.sqrt(mcse_mean ** 2 + sd ** 2 / reference_draws)
    z_sd = (flat.std(0, ddof=1) - sd) / np.sqrt(mcse_sd ** 2 + sd_error ** 2)
    bound = float(stats.norm.isf(level / (2 * 2 * len(names))))
    worst = int(np.argmax(np.maximum(np.abs(z_mean), np.abs(z_sd))))
    return {"agrees": bool(np.all(np.abs(z_mean) < bound) and np.all(np.abs(z_sd) < bound)),
            "z_bound": bound, "z_mean_max": float(np.abs(z_mean).max()),
            "z_sd_max": float(np.abs(z_sd).max()), "worst_parameter": names[worst],
            "test": ("per parameter, the mean and the sd of the NUTS draws against the "
                     "reference's, each in units of the combined Monte Carlo standard error "
                     "(ArviZ mcse for NUTS; for the reference sd/sqrt(R) for the mean and, "
                     "for the sd, " + ("ArviZ's sd mcse of its thinned draws scaled to R"
                                       if thinned is not None else "sd/sqrt(2R)")
                     + f", R = {reference_draws}); agrees when every |z| < {bound:.2f}, the "
                     f"two-sided Bonferroni bound at {level:g} over {2 * len(names)} tests")}


def reaches(record: dict) -> bool:
    """Whether a cell reaches the reference: max mean error < 0.1 sd and, for a fit with a
    proposal density, k̂ < 0.7 (NUTS has none and is judged on the mean error alone)."""
    error = record.get("mean_error_max")
    k = record.get("pareto_k")
    if error is None or not math.isfinite(error) or error >= GOOD_MEAN_ERROR:
        return False
    return k is None or k < THRESHOLD
