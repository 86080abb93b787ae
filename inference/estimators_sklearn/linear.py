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
What the two share (sizes, options, the density's methods) is their base class, in
:mod:`inference.estimators_sklearn.linear_gaussian`; here is what differs.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, RealNotInt, StrOptions
from sklearn.utils.validation import check_is_fitted

from inference.em import MAX_ITER, TOL
from inference.estimators_sklearn.base import as_numpy, register_estimator
from inference.estimators_sklearn.linear_gaussian import _LINEAR_CONSTRAINTS, _LinearGaussian
from inference.estimators_sklearn.support import StrategyOption
from inference.results import FitResult
from zoo.ppca import factor_analysis_svd, log_marginal, orthomax, tipping_bishop


def minka_dimension(spectrum: np.ndarray, n_samples: int) -> int:
    """The number of principal components that maximizes Minka's Laplace approximation of
    the PPCA evidence (Minka, *Automatic choice of dimensionality for PCA*, NIPS 2000, eqs.
    30-31), over 1 .. D - 1, for the covariance eigenvalues ``spectrum`` (D,), largest first,
    of ``n_samples`` rows."""
    d, n = spectrum.shape[0], n_samples
    tiny = 1e-15
    best, best_k = -np.inf, 1
    for k in range(1, d):
        if spectrum[k - 1] < tiny:
            continue  # a zero eigenvalue among the kept: no evidence
        rest = d - np.arange(1, k + 1) + 1  # d - i + 1 for i = 1..k
        prior = -k * math.log(2.0) + sum(math.lgamma(r / 2) for r in rest) \
            - math.log(math.pi) * rest.sum() / 2
        kept = -n / 2 * np.log(spectrum[:k]).sum()
        noise = max(tiny, spectrum[k:].mean())
        discarded = -n * (d - k) / 2 * math.log(noise)
        dimension = d * k - k * (k + 1) / 2
        volume = math.log(2 * math.pi) * (dimension + k) / 2
        # the Hessian's log-determinant: pairs i < k, j > i, the discarded values set to noise
        capped = np.concatenate([spectrum[:k], np.full(d - k, noise)])
        i, j = np.triu_indices(d, 1)
        pairs = i < k
        i, j = i[pairs], j[pairs]
        hessian = (np.log((spectrum[i] - spectrum[j]) * (1 / capped[j] - 1 / capped[i]))
                   + math.log(n)).sum()
        evidence = prior + kept + discarded + volume - hessian / 2 - k * math.log(n) / 2
        if evidence > best:
            best, best_k = evidence, k
    return best_k


@register_estimator
class PPCA(_LinearGaussian):
    """Probabilistic PCA (Tipping & Bishop): closed form (default), EM or SVI.

    Fitted attributes: ``components_`` (n_components, n_features), the principal axes (rows
    orthonormal, each row's largest entry positive, as scikit-learn's ``PCA``),
    ``explained_variance_`` (the model's variance along them, s_k^2 + sigma^2),
    ``noise_variance_`` (sigma^2), ``mean_``, ``n_components_``, ``loadings_`` (W^T, the
    zoo's ``weight`` transposed), ``n_iter_``, ``converged_``, ``lower_bound_``,
    ``n_features_in_``; and ``params_`` / ``guide_params_`` / ``history_``.

    scikit-learn's ``PCA`` parameters, where they mean something for a density: under the
    closed form ``n_components`` may be 0 (noise only) up to n_features (then the noise
    variance is 0 and the density is the sample covariance's), or a float in (0, 1), the
    fraction of the variance to keep (the fewest components whose eigenvalues reach it);
    ``whiten=True`` scales ``transform``'s output to unit variance per coordinate under the
    model and, as scikit-learn's ``PCA``, makes ``score`` / ``score_samples`` /
    ``get_covariance`` / ``get_precision`` those of PCA's whitened density (each component
    scaled by sqrt(``explained_variance_``); ``sample`` still draws from the fitted model).
    ``svd_solver``, ``iterated_power``, ``n_oversamples``,
    ``power_iteration_normalizer`` and ``copy`` are accepted for compatibility: every solver is
    the exact eigendecomposition here. Differences from ``PCA`` (deliberate): ``transform`` is
    the posterior mean E[z | x], a shrunken projection on the same subspace; the covariance is
    the maximum-likelihood one (divided by N, not N - 1); the noise variance averages all
    D - q discarded eigenvalues (Tipping & Bishop), not min(N, D) - q of them; ``tol`` is EM's.
    ``n_components="mle"`` picks q by Minka's evidence (:func:`minka_dimension`), on
    scikit-learn's spectrum (the covariance divided by N - 1), so the same q as ``PCA``.
    """

    _model = "ppca"
    _parameter_constraints: dict = {
        **_LINEAR_CONSTRAINTS,
        "n_components": [Interval(Integral, 0, None, closed="left"),
                         Interval(RealNotInt, 0, 1, closed="neither"), StrOptions({"mle"}),
                         None],
        "copy": ["boolean"],
        "whiten": ["boolean"],
        "svd_solver": [StrOptions({"auto", "covariance_eigh", "full", "arpack",
                                   "randomized"})],
        "iterated_power": [Interval(Integral, 0, None, closed="left"), StrOptions({"auto"})],
        "n_oversamples": [Interval(Integral, 1, None, closed="left")],
        "power_iteration_normalizer": [StrOptions({"auto", "QR", "LU", "none"})],
        "inference": [StrategyOption("ppca")],
    }

    def __init__(self, n_components=None, *, copy=True, whiten=False, svd_solver="auto",
                 tol=TOL, iterated_power="auto", n_oversamples=10,
                 power_iteration_normalizer="auto", random_state=None,
                 inference="closed-form", max_iter=MAX_ITER, guide=None, elbo=None,
                 steps=None, lr=None, batch_size=None, device="cpu"):
        self.n_components = n_components
        self.copy = copy
        self.whiten = whiten
        self.svd_solver = svd_solver
        self.iterated_power = iterated_power
        self.n_oversamples = n_oversamples
        self.power_iteration_normalizer = power_iteration_normalizer
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

    # --- scikit-learn's n_components: ints from 0 to n_features, fractions of the variance ----

    def _inspect(self, X: np.ndarray) -> None:
        self._fraction_q = None
        if self.n_components == "mle":
            if X.shape[0] < X.shape[1]:
                raise ValueError("n_components='mle' is only supported if n_samples >= "
                                 "n_features")
            values = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2 / (X.shape[0] - 1)
            self._fraction_q = minka_dimension(values, X.shape[0])
        elif isinstance(self.n_components, Real) and not isinstance(self.n_components,
                                                                     Integral):
            values = np.linalg.svd(X - X.mean(0), compute_uv=False) ** 2
            ratio = np.cumsum(values) / values.sum()
            self._fraction_q = int(np.searchsorted(ratio, self.n_components, side="right")) + 1

    def _latent_dim(self, n_samples: int, n_features: int) -> int:
        if getattr(self, "_fraction_q", None) is not None:
            return self._fraction_q
        return super()._latent_dim(n_samples, n_features)

    def _fits_itself(self, n_samples: int, n_features: int) -> bool:
        q = self._latent_dim(n_samples, n_features)
        return self.inference == "closed-form" and not (1 <= q < n_features
                                                         and n_samples >= q + 2)

    def _check_sizes(self, n_samples, n_features) -> None:
        q = self._latent_dim(n_samples, n_features)
        if self.inference == "closed-form" and q > n_features:
            raise ValueError(f"n_components={q} must be between 0 and n_features={n_features}")
        super()._check_sizes(n_samples, n_features)

    def _run(self, spec, config, x, seed):
        if not self._fits_itself(*x.shape):
            return super()._run(spec, config, x, seed)
        params, _ = tipping_bishop(x, config.latent_dim)
        with torch.no_grad():
            log_likelihood = float(self._log_density(params, x).mean())
        result = FitResult(model=spec.name, inference="closed-form", guide=None, params=params,
                           history={"log_likelihood": [log_likelihood]}, steps=0,
                           converged=True, device=str(x.device), seed=seed)
        return result, None

    # --- a noise variance of 0 (n_components = n_features): the dense Gaussian ------------

    def _noiseless(self) -> bool:
        return bool(self.params_["noise"] == 0)

    @staticmethod
    def _log_density(params, x: torch.Tensor) -> torch.Tensor:
        """log p(x) per row; where the noise is 0, the density of the (possibly degenerate)
        Gaussian N(mean, W W^T) on the span of W, the rows projected onto it."""
        if not bool(params["noise"] == 0):
            return log_marginal(None, params, x)
        weight = params["weight"]
        values, vectors = torch.linalg.eigh(weight @ weight.T)
        keep = values > values.amax().clamp_min(0) * weight.shape[0] * torch.finfo(
            values.dtype).eps
        values, vectors = values[keep], vectors[:, keep]
        projected = (x - params["loc"]) @ vectors
        quadratic = (projected.square() / values).sum(-1)
        return -0.5 * (values.shape[0] * math.log(2 * math.pi) + values.log().sum()
                       + quadratic)

    def _log_px(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self._log_density(self._density_params(self._params_on(x)), x)

    def _density_params(self, params: dict) -> dict:
        """``whiten=True``: scikit-learn's ``PCA`` density, whose ``get_covariance`` scales
        each component by the square root of its explained variance, C^T diag(ev (ev -
        sigma^2)) C + sigma^2 I where the fitted model's is C^T diag(ev - sigma^2) C + sigma^2
        I (ev = ``explained_variance_``); with W = U S V^T that is the loading U diag(S sqrt(S^2
        + sigma^2)) in place of W. ``score``, ``score_samples``, ``get_covariance`` and
        ``get_precision`` describe it, as scikit-learn's do (its issue #13898)."""
        if not self.whiten or params["weight"].shape[1] == 0:
            return params
        axes, singular, _ = torch.linalg.svd(params["weight"], full_matrices=False)
        scale = singular * (singular.square() + params["noise"]).sqrt()
        return {**params, "weight": axes * scale}

    def get_precision(self) -> np.ndarray:
        """The inverse covariance (Woodbury; the inverse of W W^T where the noise is 0)."""
        check_is_fitted(self)
        if self._noiseless():
            return self._out(np.linalg.pinv(self.get_covariance().astype(np.float64)))
        return super().get_precision()

    def transform(self, X) -> np.ndarray:
        """The posterior mean E[z | x] of every row (the least-squares coordinates where the
        noise is 0), shape (n_samples, n_components); with ``whiten=True`` scaled to unit
        variance per coordinate under the model: E[z | x] (I - G)^-1/2, G the posterior
        covariance."""
        x = self._checked(X)
        params = self._params_on(x)
        weight = params["weight"]
        with torch.no_grad():
            if self._noiseless():
                mean = torch.linalg.lstsq(weight, (x - params["loc"]).T).solution.T
                covariance = torch.zeros(weight.shape[1], weight.shape[1], dtype=x.dtype)
            else:
                posterior = self._spec().posterior(self._config(), params, x)
                mean, covariance = posterior.mean, posterior.covariance_matrix[:1][0] \
                    if x.shape[0] else torch.eye(weight.shape[1], dtype=x.dtype)
            if self.whiten and weight.shape[1]:
                eye = torch.eye(weight.shape[1], dtype=x.dtype, device=x.device)
                values, vectors = torch.linalg.eigh(eye - covariance)
                mean = mean @ (vectors * values.clamp_min(0).rsqrt()) @ vectors.T
        return self._out(as_numpy(mean))

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


@register_estimator
class FactorAnalysis(_LinearGaussian):
    """Factor analysis: EM (default) or SVI, with scikit-learn's ``FactorAnalysis`` names.

    Fitted attributes (scikit-learn's): ``components_`` (n_components, n_features), the
    loadings W^T; ``noise_variance_`` (n_features,), psi; ``mean_``; ``n_iter_``;
    ``loglike_`` (EM: the total log-likelihood per iteration); plus ``n_components_``,
    ``converged_``, ``lower_bound_``, ``n_features_in_``, ``params_``, ``history_``.

    ``inference="em"`` (default) is scikit-learn's algorithm, the SVD iteration
    (:func:`zoo.ppca.factor_analysis_svd`), so ``n_iter_``, ``loglike_`` and the fitted
    parameters are scikit-learn's; ``n_components`` may be 0 (noise only) up to n_features
    (``None``: n_features) and any number of rows is fitted. ``svd_method`` is accepted, and
    both methods compute the SVD exactly ("randomized" approximates the same one, so
    ``iterated_power`` has nothing to do); ``noise_variance_init`` starts psi;
    ``rotation="varimax"`` / ``"quartimax"`` rotate ``components_`` (:func:`zoo.ppca.orthomax`).
    ``inference="svi"`` fits the zoo's model by SVI (1 <= n_components < n_features).
    """

    _model = "fa"
    _total_tol = True
    _parameter_constraints: dict = {
        **_LINEAR_CONSTRAINTS,
        "n_components": [Interval(Integral, 0, None, closed="left"), None],
        "copy": ["boolean"],
        "noise_variance_init": ["array-like", None],
        "svd_method": [StrOptions({"randomized", "lapack"})],
        "iterated_power": [Interval(Integral, 0, None, closed="left")],
        "rotation": [StrOptions({"varimax", "quartimax"}), None],
        "inference": [StrategyOption("fa")],
    }

    def __init__(self, n_components=None, *, tol=1e-2, copy=True, max_iter=1000,
                 noise_variance_init=None, svd_method="randomized", iterated_power=3,
                 rotation=None, random_state=0, inference="em", guide=None, elbo=None,
                 steps=None, lr=None, batch_size=None, device="cpu"):
        self.n_components = n_components
        self.inference = inference
        self.tol = tol
        self.copy = copy
        self.max_iter = max_iter
        self.noise_variance_init = noise_variance_init
        self.svd_method = svd_method
        self.iterated_power = iterated_power
        self.rotation = rotation
        self.random_state = random_state
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.device = device

    def _latent_dim(self, n_samples: int, n_features: int) -> int:
        if self.n_components is None and self._fits_itself(n_samples, n_features):
            return n_features  # scikit-learn's: None means n_features
        return super()._latent_dim(n_samples, n_features)

    def _fits_itself(self, n_samples: int, n_features: int) -> bool:
        return self.inference == "em"

    def _check_sizes(self, n_samples, n_features) -> None:
        super()._check_sizes(n_samples, n_features)
        if self.noise_variance_init is not None:
            size = len(np.atleast_1d(self.noise_variance_init))
            if size != n_features:
                raise ValueError("noise_variance_init dimension does not with number of "
                                 f"features : {size} != {n_features}")

    def _run(self, spec, config, x, seed):
        if self.inference != "em":
            return super()._run(spec, config, x, seed)
        noise = (None if self.noise_variance_init is None else
                 torch.as_tensor(np.asarray(self.noise_variance_init, dtype=np.float64)))
        fit = factor_analysis_svd(x, config.latent_dim, tol=float(self.tol),
                                  max_iter=self.max_iter, noise_init=noise)
        params = dict(fit.params)
        if self.rotation is not None and config.latent_dim > 1:
            params["weight"] = orthomax(params["weight"],
                                        {"varimax": 1.0, "quartimax": 0.0}[self.rotation])
        if not fit.converged:
            warnings.warn("FactorAnalysis did not converge. You might want to increase the "
                          "number of iterations.", ConvergenceWarning, stacklevel=3)
        n = x.shape[0]
        result = FitResult(model=spec.name, inference="em", guide=None, params=params,
                           history={"log_likelihood": [t / n for t in fit.log_likelihood]},
                           steps=len(fit.log_likelihood), converged=fit.converged,
                           device=str(x.device), seed=seed)
        return result, None

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
