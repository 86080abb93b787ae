"""What :mod:`inference.estimators_sklearn.linear`'s ``PPCA`` and ``FactorAnalysis`` share.

Both fit the linear-Gaussian model, z ~ N(0, I_q), x | z ~ N(W z + mean, Psi); this is their
common base: the number of components (``None``: the most the data allow) and its checks,
the options handed to a zoo strategy (``tol`` per datapoint, or FA's total), the fitted
attributes derived from the zoo's parameters, and the methods of the density, ``transform``
(the posterior mean E[z | x]), ``inverse_transform``, ``get_covariance`` and ``get_precision``
(Woodbury), with the parameter constraints both declare.
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval
from sklearn.utils.validation import check_is_fitted

from inference.em import MAX_ITER, TOL
from inference.estimators_sklearn.base import (
    COMMON_CONSTRAINTS,
    LatentModelEstimator,
    as_numpy,
    check_latent,
    strategy_options,
)
from inference.svi import STOP_TOL


class _LinearGaussian(LatentModelEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
                      BaseEstimator):
    """What PPCA and factor analysis share."""

    _total_tol = False  # FA: tol on the total log-likelihood (scikit-learn's FactorAnalysis)

    _min_samples = 1  # as scikit-learn: any number of rows where the estimator fits itself

    def _latent_dim(self, n_samples: int, n_features: int) -> int:
        if self.n_components is not None:
            return int(self.n_components)
        return max(min(n_features - 1, n_samples - 2), 0)

    def _fits_itself(self, n_samples: int, n_features: int) -> bool:
        """Whether this fit is the estimator's own (scikit-learn's algorithm, any
        ``n_components`` from 0 to the data's size) rather than a zoo strategy's."""
        return False

    def _check_sizes(self, n_samples, n_features) -> None:
        q = self._latent_dim(n_samples, n_features)
        if self._fits_itself(n_samples, n_features):
            return
        if n_samples < 2:
            raise ValueError(f"{type(self).__name__}(inference={self.inference!r}) needs at "
                             f"least 2 samples, got n_samples={n_samples}")
        if self.n_components is None and q < 1:
            raise ValueError(f"{type(self).__name__}(inference={self.inference!r}, "
                             "n_components=None) takes min(n_features - 1, n_samples - 2) = "
                             f"{q} components here, and needs at least 1: give at least 3 "
                             f"rows and 2 features (got {n_samples} x {n_features})")
        if q < 1 or q >= n_features:
            raise ValueError(f"n_components={q} must be between 1 and n_features - 1; the data "
                             f"have n_features={n_features}")
        if n_samples <= q + 1:
            raise ValueError(f"n_components={q} needs at least {q + 2} samples, got "
                             f"n_samples={n_samples}")

    def _config_options(self, n_samples, n_features) -> dict:
        return {"latent_dim": self._latent_dim(n_samples, n_features)}

    def _make_config(self, spec, n_samples, n_features):
        if not self._fits_itself(n_samples, n_features):
            return super()._make_config(spec, n_samples, n_features)
        self._check_sizes(n_samples, n_features)
        # the zoo's checks (1 <= q < D, N >= q + 2) are its strategies'; the estimator's own
        # fit takes what scikit-learn takes
        return spec.config_class(dim=n_features,
                                 latent_dim=self._latent_dim(n_samples, n_features))

    def _candidate_options(self, n_samples) -> dict:
        tol = float(self.tol) / (n_samples if self._total_tol else 1)
        return {"tol": tol, "stop_tol": tol, "max_iter": self.max_iter, "steps": self.steps,
                "lr": self.lr, "batch_size": self.batch_size, "elbo": self.elbo}

    @property
    def _n_features_out(self) -> int:
        return self.n_components_

    def _derive(self) -> None:
        p = {k: v.double() for k, v in self.params_.items()}
        self.mean_ = as_numpy(p["loc"])
        self.n_components_ = int(p["weight"].shape[1])
        self.noise_variance_ = as_numpy(p["noise"])
        if self.noise_variance_.ndim == 0:
            self.noise_variance_ = float(self.noise_variance_)

    # --- methods ---------------------------------------------------------------------------

    def transform(self, X) -> np.ndarray:
        """The posterior mean E[z | x] of every row, shape (n_samples, n_components)."""
        x = self._checked(X)
        with torch.no_grad():
            return self._out(as_numpy(
                self._spec().posterior(self._config(), self._params_on(x), x).mean))

    def inverse_transform(self, X) -> np.ndarray:
        """The mean of p(x | z), W z + mean, for latent rows ``X`` (n_samples, n_components)."""
        z = check_latent(self, X, self.n_components_)
        params = self._params_on(z)
        return as_numpy(z @ params["weight"].T + params["loc"])

    def _density_params(self, params: dict) -> dict:
        """The parameters of the density that ``score``, ``get_covariance`` and
        ``get_precision`` describe (the fitted model's; PPCA's ``whiten=True`` rescales)."""
        return params

    def get_covariance(self) -> np.ndarray:
        """The model's covariance of x, W W^T + Psi (n_features, n_features)."""
        check_is_fitted(self)
        params = self._density_params({k: v.double() for k, v in self.params_.items()})
        weight = params["weight"]
        psi = params["noise"].expand(weight.shape[0])
        return self._out(as_numpy(weight @ weight.T + torch.diag(psi)))

    def get_precision(self) -> np.ndarray:
        """The inverse covariance, by Woodbury: Psi^-1 - Psi^-1 W (I + W^T Psi^-1 W)^-1 W^T
        Psi^-1."""
        check_is_fitted(self)
        params = self._density_params({k: v.double() for k, v in self.params_.items()})
        weight = params["weight"]
        psi = params["noise"].expand(weight.shape[0])
        scaled = weight / psi[:, None]
        inner = torch.eye(weight.shape[1], dtype=weight.dtype) + weight.T @ scaled
        return self._out(as_numpy(torch.diag(1 / psi)
                                  - scaled @ torch.linalg.solve(inner, scaled.T)))

    def sample(self, n_samples: int = 1) -> np.ndarray:
        """``n_samples`` rows from the fitted model, shape (n_samples, n_features)."""
        return super().sample(n_samples)

    @classmethod
    def _params_from_run(cls, spec, config, run, metrics) -> dict:
        options = strategy_options(run)
        if run["inference"] == "em":
            tol = options.get("tol", TOL)
        else:
            tol = options.get("stop_tol", STOP_TOL)
        chosen = {"n_components": config.latent_dim, "inference": run["inference"],
                  "guide": run["guide"], "random_state": run["seed"],
                  "max_iter": options.get("max_iter", MAX_ITER), "steps": options.get("steps"),
                  "lr": options.get("lr"), "elbo": options.get("elbo"),
                  "batch_size": options.get("batch_size"), "tol": tol}
        return {k: v for k, v in chosen.items() if v is not None or k == "guide"}


_LINEAR_CONSTRAINTS = {
    "n_components": [Interval(Integral, 1, None, closed="left"), None],
    "tol": [Interval(Real, 0.0, None, closed="neither")],
    "max_iter": [Interval(Integral, 1, None, closed="left")],
    **COMMON_CONSTRAINTS,
}
