"""``BayesianGaussianMixture``: scikit-learn's estimator of that name, fitted by the zoo's CAVI.

The parameters are scikit-learn's, with its names, defaults and meanings
(``weight_concentration_prior_type``, ``weight_concentration_prior``, ``mean_precision_prior``,
``mean_prior``, ``degrees_of_freedom_prior``, ``covariance_prior``, ``covariance_type`` full /
tied / diag / spherical, ``init_params``, ``n_init``, ``max_iter``, ``tol``, ``reg_covar``,
``random_state``, ``warm_start``, ``verbose``, ``verbose_interval``), plus ``device``. The
numerics are :mod:`zoo.bayesian_gmm` (vectorized torch, CPU or CUDA, the data's dtype) and the
loop is :func:`inference.strategies.cavi.run_cavi`, scikit-learn's loop.

``init_params="random"`` and ``"random_from_data"`` draw from ``random_state`` exactly as
scikit-learn does, so the same ``random_state`` gives scikit-learn's start and, iteration for
iteration, its fit. ``"kmeans"`` and ``"k-means++"`` are the zoo's K-means (Lloyd from k-means++
seeds) seeded from ``random_state``: the same kind of start, not scikit-learn's draws.

Fitted attributes: scikit-learn's (``weights_``, ``means_``, ``covariances_``,
``precisions_``, ``precisions_cholesky_``, ``weight_concentration_``, ``mean_precision_``,
``degrees_of_freedom_``, the resolved priors ``*_prior_``, ``converged_``, ``n_iter_``,
``lower_bound_``, ``lower_bounds_``, ``n_features_in_``) and the zoo's ``elbo_`` and
``elbos_``: the WHOLE ELBO in nats (every constant kept; comparable with log p(x)).
``lower_bound_`` is scikit-learn's bound, ``elbo_`` minus ``elbo_offset_``
(:func:`zoo.bayesian_gmm.sklearn_bound_offset`), so the stopping rule (``tol`` on the change
of ``lower_bound_``) is scikit-learn's too. ``score_samples`` is scikit-learn's: log Σ_k ρ_nk,
the variational normalizer of each row, not a density.
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from inference.estimators_sklearn.support import DeviceOption, resolve_device
from inference.strategies.cavi import run_cavi
from zoo import bayesian_gmm as bg


def _check_shape(param: np.ndarray, shape: tuple, name: str) -> None:
    if param.shape != shape:
        raise ValueError(f"The parameter '{name}' should have the shape of {shape}, but got "
                         f"{param.shape}")


class BayesianGaussianMixture(DensityMixin, BaseEstimator):
    """Variational Bayesian Gaussian mixture (CAVI), drop-in for scikit-learn's."""

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "random", "random_from_data", "k-means++"})],
        "random_state": ["random_state"],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "verbose_interval": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(bg.COVARIANCE_TYPES))],
        "weight_concentration_prior_type": [StrOptions(set(bg.WEIGHT_PRIORS))],
        "weight_concentration_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_precision_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "mean_prior": [None, "array-like"],
        "degrees_of_freedom_prior": [None, Interval(Real, 0.0, None, closed="neither")],
        "covariance_prior": [None, "array-like", Interval(Real, 0.0, None, closed="neither")],
        "device": [DeviceOption()],
    }

    def __init__(self, *, n_components=1, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans",
                 weight_concentration_prior_type="dirichlet_process",
                 weight_concentration_prior=None, mean_precision_prior=None, mean_prior=None,
                 degrees_of_freedom_prior=None, covariance_prior=None, random_state=None,
                 warm_start=False, verbose=0, verbose_interval=10, device="cpu"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weight_concentration_prior_type = weight_concentration_prior_type
        self.weight_concentration_prior = weight_concentration_prior
        self.mean_precision_prior = mean_precision_prior
        self.mean_prior = mean_prior
        self.degrees_of_freedom_prior = degrees_of_freedom_prior
        self.covariance_prior = covariance_prior
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.device = device

    # --- the prior, resolved as scikit-learn resolves it -------------------------------------

    def _check_parameters(self, X: np.ndarray) -> None:
        """Set the ``*_prior_`` attributes from the parameters and the data (scikit-learn's
        defaults and messages)."""
        _, d = X.shape
        self.weight_concentration_prior_ = (1.0 / self.n_components
                                            if self.weight_concentration_prior is None
                                            else self.weight_concentration_prior)
        self.mean_precision_prior_ = (1.0 if self.mean_precision_prior is None
                                      else self.mean_precision_prior)
        if self.mean_prior is None:
            self.mean_prior_ = X.mean(axis=0)
        else:
            self.mean_prior_ = check_array(self.mean_prior, dtype=[np.float64, np.float32],
                                           ensure_2d=False)
            _check_shape(self.mean_prior_, (d,), "means")
        if self.degrees_of_freedom_prior is None:
            self.degrees_of_freedom_prior_ = d
        elif self.degrees_of_freedom_prior > d - 1.0:
            self.degrees_of_freedom_prior_ = self.degrees_of_freedom_prior
        else:
            raise ValueError(f"The parameter 'degrees_of_freedom_prior' should be greater than "
                             f"{d - 1}, but got {self.degrees_of_freedom_prior:.3f}.")
        kind = self.covariance_type
        if self.covariance_prior is None:
            if kind in ("full", "tied"):
                self.covariance_prior_ = np.atleast_2d(np.cov(X.T))
            else:
                variance = np.var(X, axis=0, ddof=1)
                self.covariance_prior_ = variance if kind == "diag" else variance.mean()
        elif kind in ("full", "tied"):
            prior = check_array(self.covariance_prior, dtype=[np.float64, np.float32],
                                ensure_2d=False)
            _check_shape(prior, (d, d), f"{kind} covariance_prior")
            if not (np.allclose(prior, prior.T) and np.all(np.linalg.eigvalsh(prior) > 0.0)):
                raise ValueError(f"'{kind} covariance_prior' should be symmetric, "
                                 "positive-definite")
            self.covariance_prior_ = prior
        elif kind == "diag":
            prior = check_array(self.covariance_prior, dtype=[np.float64, np.float32],
                                ensure_2d=False)
            _check_shape(prior, (d,), f"{kind} covariance_prior")
            if np.any(np.less_equal(prior, 0.0)):
                raise ValueError(f"'{kind} covariance_prior' should be positive")
            self.covariance_prior_ = prior
        else:
            self.covariance_prior_ = self.covariance_prior

    def _config(self, n_features: int) -> bg.BayesianGMMConfig:
        return bg.BayesianGMMConfig(
            dim=n_features, components=self.n_components, covariance_type=self.covariance_type,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
            reg_covar=float(self.reg_covar))

    def _priors(self, x: torch.Tensor) -> bg.Priors:
        def tensor(value):
            return torch.as_tensor(np.asarray(value, dtype=np.float64), dtype=x.dtype,
                                   device=x.device)
        covariance = tensor(self.covariance_prior_)
        if self.covariance_prior is None and self.covariance_type in ("full", "tied"):
            # the data's covariance, singular from N <= D rows: made proper for the ELBO
            # (covariance_prior_ stays scikit-learn's)
            covariance = bg.proper_covariance(covariance, float(self.reg_covar))
        return bg.Priors(tensor(self.weight_concentration_prior_),
                         tensor(self.mean_precision_prior_), tensor(self.mean_prior_),
                         tensor(self.degrees_of_freedom_prior_), covariance)

    # --- starts ------------------------------------------------------------------------------

    def _initial_resp(self, X: np.ndarray, x: torch.Tensor, random_state) -> torch.Tensor:
        """q(z) at the start: scikit-learn's draws for random / random_from_data; the zoo's
        K-means seeded from ``random_state`` for kmeans / k-means++."""
        n, k = X.shape[0], self.n_components
        if self.init_params == "random":
            resp = random_state.uniform(size=(n, k))
            resp /= resp.sum(axis=1)[:, np.newaxis]
            return torch.as_tensor(resp, dtype=x.dtype, device=x.device)
        if self.init_params == "random_from_data":
            rows = torch.as_tensor(random_state.choice(n, size=k, replace=False),
                                   device=x.device)
            resp = x.new_zeros(n, k)
            resp[rows, torch.arange(k, device=x.device)] = 1.0
            return resp
        generator = torch.Generator(device=x.device).manual_seed(
            int(random_state.randint(np.iinfo(np.int32).max)))
        return bg.initial_responsibilities(self._config(X.shape[1]), x, generator,
                                           self.init_params)

    def _initialize_parameters(self, X, random_state) -> None:
        """scikit-learn's private hook: q from the start, before any iteration."""
        x = self._tensor(X)
        config, priors = self._config(X.shape[1]), self._priors(x)
        resp = self._initial_resp(np.asarray(X), x, random_state)
        self._set(config, bg.update_globals(config, priors, x, resp))

    # --- fitting -----------------------------------------------------------------------------

    def _tensor(self, X) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(X),
                               device=resolve_device(self.device, type(self).__name__))

    def fit(self, X, y=None):
        """Fit by CAVI (``n_init`` starts, the best bound kept); returns ``self``."""
        self.fit_predict(X, y)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_predict(self, X, y=None):
        """Fit, then the label of each row under the final q (as ``fit(X).predict(X)``)."""
        X = validate_data(self, X, dtype=[np.float64, np.float32], ensure_min_samples=2)
        if X.shape[0] < self.n_components:
            raise ValueError("Expected n_samples >= n_components but got n_components = "
                             f"{self.n_components}, n_samples = {X.shape[0]}")
        self._check_parameters(X)
        x = self._tensor(X)
        config, priors = self._config(X.shape[1]), self._priors(x)
        offset = bg.sklearn_bound_offset(config, priors, X.shape[0])

        def sklearn_bound(post, elbo):  # lower_bound_: the whole ELBO less what sklearn drops
            return elbo - float(bg.sklearn_bound_offset(config, priors, X.shape[0], post))

        do_init = not (self.warm_start and hasattr(self, "converged_"))
        random_state = check_random_state(self.random_state)
        best = None
        for init in range(self.n_init if do_init else 1):
            if self.verbose:
                print(f"Initialization {init}")
            if do_init:
                resp = self._initial_resp(X, x, random_state)
                start = {"posterior": None}
                previous = {}
            else:
                resp = None
                start = {"posterior": self._posterior(x)}
                previous = {"previous_elbo": self.elbo_, "previous_bound": self.lower_bound_}
            if self.max_iter == 0:
                post = start["posterior"] or bg.update_globals(config, priors, x, resp)
                candidate = (-math.inf, post, [], [], 0, False, -math.inf, None)
            else:
                run = run_cavi(bg.COORDINATE_ASCENT, config, priors, x, resp,
                               max_iter=self.max_iter, tol=float(self.tol), bound=sklearn_bound,
                               verbose=self.verbose, **start, **previous)
                candidate = (run.bounds[-1], run.posterior, run.bounds, run.history,
                             run.n_iter, run.converged, run.elbo, run.log_rho)
                if self.verbose:
                    print(f"Initialization {'converged' if run.converged else 'did not converge'}"
                          f". lower bound {run.bounds[-1]:.5f}, ELBO {run.elbo:.5f} nats")
            if best is None or candidate[0] > best[0]:
                best = candidate
        bound, post, bounds, history, n_iter, converged, elbo, log_rho = best
        self.converged_ = converged
        if not converged and self.max_iter > 0:
            warnings.warn("Best performing initialization did not converge. Try different init "
                          "parameters, or increase max_iter, tol, or check for degenerate data.",
                          ConvergenceWarning, stacklevel=2)
        self._set(config, post)
        self.n_iter_ = n_iter
        self.lower_bound_ = bound
        self.lower_bounds_ = bounds
        self.elbo_ = elbo
        self.elbos_ = history
        self.elbo_offset_ = float(offset)
        if log_rho is None:  # no iteration ran: the E-step at the start's q
            return self._log_rho(X).argmax(1)
        return log_rho.argmax(1).cpu().numpy()  # the final E-step's, as scikit-learn's

    # --- q as scikit-learn's attributes, and back ----------------------------------------------

    def _set(self, config: bg.BayesianGMMConfig, post: bg.Posterior) -> None:
        def array(t):
            return t.detach().cpu().numpy()
        if config.stick_breaking:
            self.weight_concentration_ = tuple(array(post.weight_concentration))
        else:
            self.weight_concentration_ = array(post.weight_concentration)
        self.mean_precision_ = array(post.mean_precision)
        self.means_ = array(post.means)
        nu = array(post.degrees_of_freedom)
        self.degrees_of_freedom_ = nu[0] if self.covariance_type == "tied" else nu
        self.covariances_ = array(post.covariances)
        self.precisions_cholesky_ = array(post.precisions_cholesky)
        self.precisions_ = array(bg.precisions(config, post))
        self.weights_ = array(bg.mixture_weights(config, post))

    def _posterior(self, x: torch.Tensor) -> bg.Posterior:
        def tensor(value):
            return torch.as_tensor(np.asarray(value), dtype=x.dtype, device=x.device)
        k = self.n_components
        nu = tensor(self.degrees_of_freedom_)
        return bg.Posterior(
            tensor(np.stack(self.weight_concentration_) if isinstance(
                self.weight_concentration_, tuple) else self.weight_concentration_),
            tensor(self.mean_precision_), tensor(self.means_),
            nu.expand(k) if nu.dim() == 0 else nu, tensor(self.covariances_),
            tensor(self.precisions_cholesky_))

    def _log_rho(self, X) -> np.ndarray:
        x = self._tensor(X)
        config = self._config(X.shape[1])
        log_rho = bg.expected_log_joint(config, self._priors(x), self._posterior(x), x)
        return log_rho.cpu().numpy()

    # --- scikit-learn's read-outs -----------------------------------------------------------------

    def _checked(self, X) -> np.ndarray:
        check_is_fitted(self)
        return validate_data(self, X, reset=False, dtype=[np.float64, np.float32])

    def score_samples(self, X):
        """log Σ_k ρ_nk per row (scikit-learn's ``score_samples``), shape ``(n_samples,)``."""
        log_rho = self._log_rho(self._checked(X))
        top = log_rho.max(1, keepdims=True)
        return (top + np.log(np.exp(log_rho - top).sum(1, keepdims=True)))[:, 0]

    def score(self, X, y=None):
        """The mean of :meth:`score_samples`."""
        return float(self.score_samples(X).mean())

    def predict_proba(self, X):
        """q(z_n = k) for new rows, ``(n_samples, n_components)``."""
        log_rho = torch.as_tensor(self._log_rho(self._checked(X)))
        return bg.responsibilities(log_rho)[0].numpy()

    def predict(self, X):
        """The most probable component of each row."""
        return self._log_rho(self._checked(X)).argmax(1)

    def sample(self, n_samples=1):
        """``(X, y)``: ``n_samples`` rows from the mixture at q's means (weights_, means_,
        covariances_), grouped by component, as scikit-learn's ``sample``."""
        check_is_fitted(self)
        if n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples} . The sampling "
                             "requires at least one sample.")
        rng = check_random_state(self.random_state)
        counts = rng.multinomial(n_samples, self.weights_)
        d = self.means_.shape[1]
        kind = self.covariance_type
        rows = []
        for k, (mean, count) in enumerate(zip(self.means_, counts, strict=True)):
            if kind in ("full", "tied"):
                cov = self.covariances_[k] if kind == "full" else self.covariances_
                rows.append(rng.multivariate_normal(mean, cov, int(count)))
            else:
                scale = np.sqrt(self.covariances_[k])
                rows.append(mean + rng.standard_normal((int(count), d)) * scale)
        labels = np.repeat(np.arange(self.n_components), counts)
        return np.vstack(rows), labels
