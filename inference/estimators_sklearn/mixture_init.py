"""``GaussianMixture``'s given starting arrays and scikit-learn's texts and names.

:func:`initial_arrays` checks ``weights_init`` / ``means_init`` / ``precisions_init`` with
scikit-learn's messages; :func:`with_given` puts them in place of a start's parameters. Split out
of :mod:`.mixture`, which re-exports every name here.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.utils.validation import check_array

from inference.results import FitResult
from zoo import gmm
from zoo.registry import Params

# scikit-learn's texts (its tests match them)
CONVERGENCE_MESSAGE = ("Best performing initialization did not converge. Try different init "
                       "parameters, or increase max_iter, tol, or check for degenerate data.")
SINGULAR_MESSAGE = ("Fitting the mixture model failed because some components have ill-defined "
                    "empirical covariance (for instance caused by singleton or collapsed "
                    "samples). Try to decrease the number of components, increase reg_covar, "
                    "or scale the input data.")


def _lower_bound(result: FitResult) -> float:
    """scikit-learn's ``lower_bound_`` of a fit: the log-likelihood of the last E-step before
    the last M-step (the final entry is that of the returned parameters)."""
    history = result.history["log_likelihood"]
    return history[-2] if len(history) > 1 else history[-1]


# scikit-learn's init_params -> the zoo's EM init (and K-means' start)
EM_INIT = {"kmeans": "kmeans", "k-means++": "kmeans++", "random": "random"}
KMEANS_INIT = {"kmeans": "k-means++", "k-means++": "k-means++", "random": "random",
               "random_from_data": "random"}
SKLEARN_INIT = {"kmeans": "kmeans", "kmeans++": "k-means++", "random": "random"}


def _checked_weights(weights_init, k: int) -> np.ndarray:
    weights = check_array(weights_init, dtype=[np.float64, np.float32], ensure_2d=False)
    if weights.shape != (k,):
        raise ValueError(f"The parameter 'weights' should have the shape of ({k},), "
                         f"but got {weights.shape}")
    if weights.min() < 0 or weights.max() > 1:
        # scikit-learn's wording, with its minimum and maximum in that order
        raise ValueError("The parameter 'weights' should be in the range [0, 1], but "
                         f"got max value {weights.min():.5f}, min value "
                         f"{weights.max():.5f}")
    atol = 1e-6 if weights.dtype == np.float32 else 1e-8  # a float32 sum's rounding
    if not np.allclose(np.abs(1.0 - weights.sum()), 0.0, atol=atol):
        raise ValueError("The parameter 'weights' should be normalized, but got "
                         f"sum(weights) = {weights.sum():.5f}")
    return weights.astype(np.float64)


def _checked_means(means_init, k: int, d: int) -> np.ndarray:
    means = check_array(means_init, dtype=[np.float64, np.float32])
    if means.shape != (k, d):
        raise ValueError(f"The parameter 'means' should have the shape of ({k}, {d}), "
                         f"but got {means.shape}")
    return means.astype(np.float64)


def _checked_precisions(precisions_init, k: int, d: int, kind: str) -> np.ndarray:
    shape = {"full": (k, d, d), "tied": (d, d), "diag": (k, d), "spherical": (k,)}[kind]
    precisions = check_array(precisions_init, dtype=[np.float64, np.float32],
                             ensure_2d=False, allow_nd=True)
    if precisions.shape != shape:
        raise ValueError(f"The parameter '{kind} precision' should have the shape of "
                         f"{shape}, but got {precisions.shape}")
    if kind in gmm.FULL_MATRICES:
        matrices = precisions.reshape(-1, d, d)
        if not np.allclose(matrices, matrices.transpose(0, 2, 1)) or (
                np.linalg.eigvalsh(matrices).min() <= 0):
            raise ValueError(f"'{kind} precision' should be symmetric, "
                             "positive-definite")
    elif precisions.min() <= 0:
        raise ValueError(f"'{kind} precision' should be positive")
    return precisions.astype(np.float64)


def initial_arrays(weights_init, means_init, precisions_init, k: int, d: int,
                   kind: str) -> dict:
    """The given arrays of ``k`` components of ``d`` features and covariance type ``kind``
    (only those not None), checked with scikit-learn's messages, as float64."""
    arrays = {}
    if weights_init is not None:
        arrays["weights"] = _checked_weights(weights_init, k)
    if means_init is not None:
        arrays["means"] = _checked_means(means_init, k, d)
    if precisions_init is not None:
        arrays["precisions"] = _checked_precisions(precisions_init, k, d, kind)
    return arrays


def with_given(arrays: dict, config, params: Params, x: torch.Tensor) -> Params:
    """``params`` with the checked ``arrays`` of :func:`initial_arrays` in place."""
    like = {"dtype": x.dtype, "device": x.device}
    if "weights" in arrays:
        params["weights"] = torch.tensor(arrays["weights"], **like)
    if "means" in arrays:
        params["means"] = torch.tensor(arrays["means"], **like)
    if "precisions" in arrays:
        precisions = torch.tensor(arrays["precisions"], **like)
        if config.full_matrices:
            tril = torch.linalg.cholesky(torch.linalg.inv(precisions))
            params["scale_tril"] = tril.expand(config.components, *tril.shape[-2:]).clone()
        else:
            params["scale"] = precisions.rsqrt()
    return params
