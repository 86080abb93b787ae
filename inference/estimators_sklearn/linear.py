"""``PPCA`` and ``FactorAnalysis``: the linear-Gaussian model with scikit-learn's interface.

    z ~ N(0, I_q),  x | z ~ N(W z + mean, Psi),  Psi = sigma^2 I (PPCA) or diag(psi) (FA)

Parameters as scikit-learn's ``PCA`` / ``FactorAnalysis`` where they share a meaning:
``n_components`` (q; the config's ``latent_dim``; ``None`` takes the most the data allow,
``min(n_features - 1, n_samples - 2)``), ``tol``, ``max_iter``, ``random_state``; plus
``inference`` (PPCA: ``"closed-form"`` (default, Tipping & Bishop), ``"em"``, ``"svi"``; FA:
``"em"`` (default), ``"svi"``), ``guide``, ``elbo``, ``steps``, ``lr``, ``batch_size``,
``device``. ``tol`` is EM's: for PPCA on the change of the mean log-likelihood per datapoint
(the zoo's unit); for FA on the change of the *total* log-likelihood, scikit-learn's
``FactorAnalysis`` rule (it is divided by n_samples for the zoo's EM); under SVI it is the
stopping rule's ``stop_tol`` in the same units.

``transform`` is the exact posterior mean E[z | x] (as scikit-learn's ``FactorAnalysis``; for
PPCA this is not ``PCA.transform``'s projection but its shrunken version, the same subspace),
``inverse_transform`` the mean of p(x | z), ``score`` / ``score_samples`` the exact log p(x)
(PPCA's maximum likelihood divides the covariance by N where ``PCA`` divides by N - 1, so its
closed-form score exceeds ``PCA.score`` by D/2 (log k + 1/k - 1), k = N / (N - 1)).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.utils._param_validation import Interval, StrOptions
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

    def _latent_dim(self, n_samples: int, n_features: int) -> int:
        if self.n_components is not None:
            return int(self.n_components)
        return max(min(n_features - 1, n_samples - 2), 0)

    def _check_sizes(self, n_samples, n_features) -> None:
        q = self._latent_dim(n_samples, n_features)
        if q < 1 or q >= n_features:
            raise ValueError(f"n_components={q} must be between 1 and n_features - 1; the data "
                             f"have n_features={n_features}")
        if n_samples <= q + 1:
            raise ValueError(f"n_components={q} needs at least {q + 2} samples, got "
                             f"n_samples={n_samples}")

    def _config_options(self, n_samples, n_features) -> dict:
        return {"latent_dim": self._latent_dim(n_samples, n_features)}

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
            return as_numpy(self._spec().posterior(self._config(), self._params_on(x), x).mean)

    def inverse_transform(self, X) -> np.ndarray:
        """The mean of p(x | z), W z + mean, for latent rows ``X`` (n_samples, n_components)."""
        z = check_latent(self, X, self.n_components_)
        params = self._params_on(z)
        return as_numpy(z @ params["weight"].T + params["loc"])

    def get_covariance(self) -> np.ndarray:
        """The model's covariance of x, W W^T + Psi (n_features, n_features)."""
        check_is_fitted(self)
        weight = self.params_["weight"].double()
        psi = self.params_["noise"].double().expand(weight.shape[0])
        return as_numpy(weight @ weight.T + torch.diag(psi))

    def get_precision(self) -> np.ndarray:
        """The inverse covariance, by Woodbury: Psi^-1 - Psi^-1 W (I + W^T Psi^-1 W)^-1 W^T
        Psi^-1."""
        check_is_fitted(self)
        weight = self.params_["weight"].double()
        psi = self.params_["noise"].double().expand(weight.shape[0])
        scaled = weight / psi[:, None]
        inner = torch.eye(weight.shape[1], dtype=weight.dtype) + weight.T @ scaled
        return as_numpy(torch.diag(1 / psi) - scaled @ torch.linalg.solve(inner, scaled.T))

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


class PPCA(_LinearGaussian):
    """Probabilistic PCA (Tipping & Bishop): closed form (default), EM or SVI.

    Fitted attributes: ``components_`` (n_components, n_features), the principal axes (rows
    orthonormal, each row's largest entry positive, as scikit-learn's ``PCA``),
    ``explained_variance_`` (the model's variance along them, s_k^2 + sigma^2),
    ``noise_variance_`` (sigma^2), ``mean_``, ``n_components_``, ``loadings_`` (W^T, the
    zoo's ``weight`` transposed), ``n_iter_``, ``converged_``, ``lower_bound_``,
    ``n_features_in_``; and ``params_`` / ``guide_params_`` / ``history_``.
    """

    _model = "ppca"
    _parameter_constraints: dict = {
        **_LINEAR_CONSTRAINTS,
        "inference": [StrOptions({"closed-form", "em", "svi"})],
    }

    def __init__(self, n_components=None, *, inference="closed-form", tol=TOL,
                 max_iter=MAX_ITER, random_state=None, guide=None, elbo=None, steps=None,
                 lr=None, batch_size=None, device="cpu"):
        self.n_components = n_components
        self.inference = inference
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.device = device

    def _derive(self) -> None:
        super()._derive()
        weight = self.params_["weight"].double()
        axes, singular, _ = torch.linalg.svd(weight, full_matrices=False)  # W = U S V^T
        components = axes.T
        sign = torch.sign(components.gather(1, components.abs().argmax(1, keepdim=True)))
        self.components_ = as_numpy(components * sign)
        self.explained_variance_ = as_numpy(singular.square()
                                            + self.params_["noise"].double())
        self.loadings_ = as_numpy(weight.T)


class FactorAnalysis(_LinearGaussian):
    """Factor analysis: EM (default) or SVI, with scikit-learn's ``FactorAnalysis`` names.

    Fitted attributes (scikit-learn's): ``components_`` (n_components, n_features), the
    loadings W^T; ``noise_variance_`` (n_features,), psi; ``mean_``; ``n_iter_``;
    ``loglike_`` (EM: the total log-likelihood per iteration); plus ``n_components_``,
    ``converged_``, ``lower_bound_``, ``n_features_in_``, ``params_``, ``history_``. The
    zoo's EM is PX-EM on standardized columns, not scikit-learn's SVD iteration: the same
    maximum, reached along another path (``n_iter_`` differs).
    """

    _model = "fa"
    _total_tol = True
    _parameter_constraints: dict = {
        **_LINEAR_CONSTRAINTS,
        "inference": [StrOptions({"em", "svi"})],
    }

    def __init__(self, n_components=None, *, inference="em", tol=1e-2, max_iter=1000,
                 random_state=0, guide=None, elbo=None, steps=None, lr=None, batch_size=None,
                 device="cpu"):
        self.n_components = n_components
        self.inference = inference
        self.tol = tol
        self.max_iter = max_iter
        self.random_state = random_state
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.device = device

    def _derive(self) -> None:
        super()._derive()
        self.components_ = as_numpy(self.params_["weight"].double().T)
        self.noise_variance_ = np.broadcast_to(self.noise_variance_,
                                               self.mean_.shape).astype(np.float64)
        history = self.history_.get("log_likelihood")
        if history is not None:
            self.loglike_ = list(np.asarray(history) * self._num_train)

    def _store(self, spec, config, result, seed, state, x=None) -> None:
        if x is not None:
            self._num_train = int(x.shape[0])
        super()._store(spec, config, result, seed, state, x)

    def _restore(self, spec, config, run, params, guide_params, metrics, history,
                 state) -> None:
        self._num_train = int(metrics.get("n_train") or 1)
        super()._restore(spec, config, run, params, guide_params, metrics, history, state)

    @classmethod
    def _params_from_run(cls, spec, config, run, metrics) -> dict:
        chosen = super()._params_from_run(spec, config, run, metrics)
        if "tol" in chosen:  # the run's tol is per datapoint; this class's is a total
            chosen["tol"] = chosen["tol"] * int(metrics.get("n_train") or 1)
        return chosen
