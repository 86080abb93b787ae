"""``GaussianMixture``: scikit-learn's estimator of that name, fitted by the zoo.

The parameters are scikit-learn's (``n_components``, ``covariance_type``, ``tol``,
``reg_covar``, ``max_iter``, ``n_init``, ``init_params``, ``weights_init``, ``means_init``,
``precisions_init``, ``random_state``, ``warm_start``, ``verbose``) with the same meanings and
defaults, plus ``inference`` (``"em"``, ``"online-em"``, ``"svi"`` or ``"kmeans"``), ``guide``,
``elbo``, ``steps``, ``lr``, ``batch_size``, ``passes``, ``step_decay`` and ``device``. Names
map onto the zoo's: ``n_components`` is the config's ``components``; ``init_params``
``"kmeans"`` / ``"k-means++"`` / ``"random"`` are EM's ``init`` ``"kmeans"`` / ``"kmeans++"`` /
``"random"``; ``tol`` is EM's, on the change of the mean log-likelihood per datapoint
(scikit-learn's rule and unit), under online EM the same between its last two passes, or under
SVI the stopping rule's ``stop_tol`` (nats per datapoint per window).

``inference="online-em"`` is stepwise EM (:mod:`inference.online_em`): ``fit`` makes ``passes``
passes (default 1) of minibatches of ``batch_size`` rows; ``partial_fit(X)`` is one update on
the rows of ``X`` (one minibatch, whatever ``batch_size``), so a stream of ``partial_fit`` calls
is online EM. The first call on an unfitted estimator starts from its rows, by
``init_params`` (as scikit-learn's ``MiniBatchKMeans.partial_fit``); later calls continue the
running statistics (``statistics_``, normalized to one datapoint) and the step count
(``n_steps_``, which sets the step size ``η_t = t^-step_decay``) kept on the estimator. After a
fit by another strategy, or a run folder loaded, the first call continues from the fitted
parameters with fresh statistics. ``n_iter_`` counts the updates and ``lower_bounds_`` holds
every minibatch's mean log-likelihood before its update; ``converged_`` is False after
``partial_fit`` (a stream has no convergence test). With ``inference="svi"``, ``partial_fit`` is
the base class's: one epoch of SVI on ``X``.

Differences from scikit-learn: ``covariance_type="tied"`` is not offered; ``lower_bound_`` is
the exact mean log-likelihood of the returned parameters (EM), or the last ELBO (SVI);
``sample`` returns the rows in the order drawn, not grouped by component; ``verbose`` shows a
progress bar (``verbose_interval`` is not a parameter).
"""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, validate_data

from inference import online_em
from inference.em import MAX_ITER, TOL, fit_em
from inference.estimators_sklearn.base import (
    COMMON_CONSTRAINTS,
    LatentModelEstimator,
    _can_partial_fit,
    as_numpy,
    kept_random_state,
    seed_from,
    strategy_options,
)
from inference.results import FitResult
from inference.svi import STOP_TOL
from zoo import gmm
from zoo.registry import ModelSpec, Params

# scikit-learn's init_params -> the zoo's EM init (and K-means' start)
EM_INIT = {"kmeans": "kmeans", "k-means++": "kmeans++", "random": "random"}
KMEANS_INIT = {"kmeans": "k-means++", "k-means++": "k-means++", "random": "random",
               "random_from_data": "random"}
SKLEARN_INIT = {"kmeans": "kmeans", "kmeans++": "k-means++", "random": "random"}


class GaussianMixture(LatentModelEstimator, DensityMixin, BaseEstimator):
    """Gaussian mixture with scikit-learn's interface: EM (default), online EM, SVI or K-means.

    Fitted attributes (scikit-learn's): ``weights_``, ``means_``, ``covariances_``,
    ``precisions_``, ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_``,
    ``lower_bounds_``, ``n_features_in_``; and the zoo's ``params_`` / ``guide_params_`` (tensors
    keyed by ``pyro.param`` names), ``history_``, ``inference_``, ``guide_``, ``seed_``; after
    online EM also ``statistics_`` (the running E-step statistics of one datapoint) and
    ``n_steps_`` (its updates).
    """

    _model = "gmm"
    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "covariance_type": [StrOptions(set(gmm.COVARIANCE_TYPES))],
        "tol": [Interval(Real, 0.0, None, closed="left")],
        "reg_covar": [Interval(Real, 0.0, None, closed="left")],
        "max_iter": [Interval(Integral, 0, None, closed="left")],
        "n_init": [Interval(Integral, 1, None, closed="left")],
        "init_params": [StrOptions({"kmeans", "k-means++", "random", "random_from_data"})],
        "weights_init": ["array-like", None],
        "means_init": ["array-like", None],
        "precisions_init": ["array-like", None],
        "warm_start": ["boolean"],
        "verbose": ["verbose"],
        "inference": [StrOptions({"em", "online-em", "svi", "kmeans"})],
        "passes": [Interval(Integral, 1, None, closed="left"), None],
        "step_decay": [Interval(Real, 0.5, 1.0, closed="right"), None],
        **COMMON_CONSTRAINTS,
    }

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None, warm_start=False,
                 verbose=0, inference="em", guide=None, elbo=None, steps=None, lr=None,
                 batch_size=None, passes=None, step_decay=None, device="cpu"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.warm_start = warm_start
        self.verbose = verbose
        self.inference = inference
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.passes = passes
        self.step_decay = step_decay
        self.device = device

    # --- the zoo's names -----------------------------------------------------------------------

    def _config_options(self, n_samples, n_features) -> dict:
        return {"components": self.n_components, "covariance_type": self.covariance_type,
                "reg_covar": float(self.reg_covar)}

    def _tol(self) -> float:
        return float(self.tol) if self.tol > 0 else math.ulp(0.0)  # tol=0: only a fixed point

    def _candidate_options(self, n_samples) -> dict:
        return {"n_init": self.n_init, "init": EM_INIT.get(self.init_params),
                "kmeans_init": KMEANS_INIT[self.init_params], "tol": self._tol(),
                "max_iter": self.max_iter or None, "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, "elbo": self.elbo, "stop_tol": float(self.tol),
                "passes": self.passes, "step_decay": self._step_decay()}

    def _step_decay(self) -> float | None:
        return None if self.step_decay is None else float(self.step_decay)

    def _check_sizes(self, n_samples, n_features) -> None:
        if n_samples < self.n_components:
            raise ValueError("Expected n_samples >= n_components but got n_components = "
                             f"{self.n_components}, n_samples = {n_samples}")
        self._initial_arrays(n_features)  # shapes and values of weights/means/precisions_init

    # --- starts of our own: given arrays, random_from_data, warm start, max_iter=0 ----------

    def _initial_arrays(self, n_features: int) -> dict:
        k, d = self.n_components, n_features
        arrays = {}
        if self.weights_init is not None:
            weights = check_array(self.weights_init, dtype=np.float64, ensure_2d=False)
            if weights.shape != (k,):
                raise ValueError(f"The parameter 'weights_init' should have the shape of "
                                 f"({k},), but got {weights.shape}")
            if weights.min() < 0 or weights.max() > 1 or not np.isclose(weights.sum(), 1.0):
                raise ValueError("The parameter 'weights_init' should be in the range [0, 1] "
                                 f"and sum to 1, but got {weights}")
            arrays["weights"] = weights
        if self.means_init is not None:
            means = check_array(self.means_init, dtype=np.float64)
            if means.shape != (k, d):
                raise ValueError(f"The parameter 'means_init' should have the shape of "
                                 f"({k}, {d}), but got {means.shape}")
            arrays["means"] = means
        if self.precisions_init is not None:
            shape = {"full": (k, d, d), "diag": (k, d), "spherical": (k,)}[self.covariance_type]
            precisions = check_array(self.precisions_init, dtype=np.float64, ensure_2d=False,
                                     allow_nd=True)
            if precisions.shape != shape:
                raise ValueError(f"The parameter 'precisions_init' should have the shape of "
                                 f"{shape} for covariance_type={self.covariance_type!r}, but "
                                 f"got {precisions.shape}")
            if self.covariance_type == "full":
                if not np.allclose(precisions, precisions.transpose(0, 2, 1)) or (
                        np.linalg.eigvalsh(precisions).min() <= 0):
                    raise ValueError("The parameter 'precisions_init' should be symmetric, "
                                     "positive-definite matrices")
            elif precisions.min() <= 0:
                raise ValueError("The parameter 'precisions_init' should be positive")
            arrays["precisions"] = precisions
        return arrays

    def _start(self, spec: ModelSpec, config, x: torch.Tensor,
               generator: torch.Generator) -> Params:
        """One start as scikit-learn makes it: the init method's parameters, with the given
        weights, means and precisions put in their place."""
        k = config.components
        if self.init_params == "random_from_data":
            rows = torch.randperm(x.shape[0], generator=generator, device=x.device)[:k]
            resp = x.new_zeros(x.shape[0], k)
            resp[rows, torch.arange(k, device=x.device)] = 1.0
            params = gmm.m_step(config, x, resp)
        else:
            params = spec.em.init(config, x, generator, EM_INIT[self.init_params])
        arrays = self._initial_arrays(config.dim)
        like = {"dtype": x.dtype, "device": x.device}
        if "weights" in arrays:
            params["weights"] = torch.tensor(arrays["weights"], **like)
        if "means" in arrays:
            params["means"] = torch.tensor(arrays["means"], **like)
        if "precisions" in arrays:
            precisions = torch.tensor(arrays["precisions"], **like)
            if config.covariance_type == "full":
                params["scale_tril"] = torch.linalg.cholesky(torch.linalg.inv(precisions))
            else:
                params["scale"] = precisions.rsqrt()
        return params

    def _warm_params(self, config) -> Params | None:
        if not (self.warm_start and self.__sklearn_is_fitted__()):
            return None
        old = self.params_
        scale = gmm.SCALE_NAME[config.covariance_type]
        if scale not in old or tuple(old["means"].shape) != (config.components, config.dim):
            return None  # another mixture than the fitted one: start afresh
        return dict(old)

    def _run(self, spec, config, x, seed):
        if self.inference == "online-em":
            return self._fit_online(spec, config, x, seed)
        if self.inference != "em":
            return self._fit_strategy(spec, config, x, seed)
        warm = self._warm_params(config)
        custom = (warm is not None or self.max_iter == 0 or self.init_params == "random_from_data"
                  or any(a is not None for a in (self.weights_init, self.means_init,
                                                 self.precisions_init)))
        if not custom:
            return self._fit_strategy(spec, config, x, seed)
        generator = torch.Generator(device=x.device).manual_seed(seed)
        restarts = 1 if warm is not None else self.n_init
        best = None
        for _ in range(restarts):
            start = ({k: v.to(x) for k, v in warm.items()} if warm is not None
                     else self._start(spec, config, x, generator))
            if self.max_iter == 0:
                log_likelihood = float(spec.log_marginal(config, start, x).mean())
                result = FitResult(model=spec.name, inference="em", guide=None, params=start,
                                   history={"log_likelihood": [log_likelihood]}, steps=0,
                                   converged=False, device=str(x.device), seed=seed)
            else:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", ConvergenceWarning)  # warned once below
                    result = fit_em(spec, config, x, init=start, tol=self._tol(),
                                    max_iter=self.max_iter, seed=seed, progress=self._progress())
            if best is None or result.history["log_likelihood"][-1] > \
                    best.history["log_likelihood"][-1]:
                best = result
        if self.max_iter > 0 and not best.converged:
            warnings.warn("Best performing initialization did not converge. Try different init "
                          "parameters, or increase max_iter, tol, or check for degenerate data.",
                          ConvergenceWarning, stacklevel=3)
        return best, None

    # --- online EM: fit and partial_fit -----------------------------------------------------

    def _online_settings(self, n_features: int) -> dict:
        """The step-size schedule and warm-up of :func:`inference.online_em.stepwise_update`:
        ``fit``'s defaults, so that ``partial_fit`` on the same minibatches is ``fit``."""
        step_decay = self._step_decay()
        return {"step_decay": online_em.STEP_DECAY if step_decay is None else step_decay,
                "step_offset": online_em.STEP_OFFSET,
                "warmup": online_em.default_warmup(n_features)}

    def _fit_online(self, spec, config, x, seed):
        """``fit`` by online EM: the start by ``init_params`` (or the given arrays, or the
        warm start) on online EM's init subsample, then ``passes`` passes of minibatches."""
        options = self._options_for("online-em", x.shape[0])
        options.pop("init", None)
        warm = self._warm_params(config)
        init = ({k: v.to(x) for k, v in warm.items()} if warm is not None
                else lambda config, rows, generator: self._start(spec, config, rows, generator))
        options.update(self._online_settings(x.shape[1]))
        return online_em.run_online_em(spec, config, x, init=init, seed=seed,
                                       progress=self._progress(), **options)

    def _supports_partial_fit(self) -> bool:
        if self.inference == "online-em":
            return True
        return super()._supports_partial_fit()

    @available_if(_can_partial_fit)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Online EM (``inference="online-em"``): one stepwise-EM update on the rows of ``X``,
        continuing the running statistics and step count; the first call on an unfitted
        estimator starts from ``X`` (see the module docstring). SVI: one epoch of SVI steps
        on ``X``, continuing the fit before it."""
        if self.inference != "online-em":
            return super().partial_fit(X, y)
        first = not self.__sklearn_is_fitted__()
        X = validate_data(self, X, reset=first, dtype=np.float64, ensure_min_samples=1)
        spec = self._spec()
        device = self._device()
        history: list[float] = []
        if first:
            config = self._make_config(spec, *X.shape)
            seed = seed_from(self.random_state)
            x = torch.tensor(X, dtype=self._dtype_default, device=device)
            generator = torch.Generator(device=device).manual_seed(seed)
            with kept_random_state(device):
                state = online_em.StepwiseState(self._start(spec, config, x, generator))
        else:
            config, seed = self._config(), self.seed_
            x = torch.tensor(X, dtype=self._dtype(), device=device)
            state = getattr(self, "_online_state", None)
            if state is None:  # fitted by another strategy, or loaded: fresh statistics
                state = online_em.StepwiseState(self._params_on(x))
            else:
                history = list(self.history_.get("log_likelihood", []))
        history.append(online_em.stepwise_update(spec, config, state, x,
                                                 **self._online_settings(X.shape[1])))
        result = FitResult(model=spec.name, inference="online-em", guide=None,
                           params=state.params, history={"log_likelihood": history},
                           steps=state.updates, converged=False, device=str(device), seed=seed,
                           info={"updates": state.updates, "rows_seen": state.rows})
        self._store(spec, config, result, seed, state, x)
        return self

    def _store(self, spec, config, result, seed, state, x=None) -> None:
        online = state if isinstance(state, online_em.StepwiseState) else None
        super()._store(spec, config, result, seed, None if online is not None else state, x)
        self._online_state = online
        for name in ("statistics_", "n_steps_"):
            vars(self).pop(name, None)
        if online is not None:
            self.statistics_ = online.statistics
            self.n_steps_ = int(online.updates)

    # --- fitted attributes (scikit-learn's) ---------------------------------------------------

    def _derive(self) -> None:
        p = {k: v.double() for k, v in self.params_.items()}
        self.weights_ = as_numpy(p["weights"])
        self.means_ = as_numpy(p["means"])
        if "scale_tril" in p:
            tril = p["scale_tril"]
            eye = torch.eye(tril.shape[-1], dtype=tril.dtype).expand_as(tril)
            inverse = torch.linalg.solve_triangular(tril, eye, upper=False)  # L^-1
            cholesky = inverse.transpose(-1, -2)  # scikit-learn's: precision = U U^T
            self.covariances_ = as_numpy(tril @ tril.transpose(-1, -2))
            self.precisions_cholesky_ = as_numpy(cholesky)
            self.precisions_ = as_numpy(cholesky @ cholesky.transpose(-1, -2))
        else:
            variance = p["scale"].square()
            self.covariances_ = as_numpy(variance)
            self.precisions_cholesky_ = as_numpy(p["scale"].reciprocal())
            self.precisions_ = as_numpy(variance.reciprocal())
        self.lower_bounds_ = list(self.history_.get("log_likelihood", [])[:-1]
                                  or self.history_.get("elbo", []))

    # --- methods ---------------------------------------------------------------------------

    def _log_resp(self, X) -> torch.Tensor:
        x = self._checked(X)
        with torch.no_grad():
            return gmm.log_responsibilities(self._config(), self._params_on(x), x)

    def predict(self, X) -> np.ndarray:
        """The most probable component of every row, shape (n_samples,)."""
        return as_numpy(self._log_resp(X).argmax(1))

    def predict_proba(self, X) -> np.ndarray:
        """p(component | x) for every row, shape (n_samples, n_components)."""
        return as_numpy(self._log_resp(X).exp())

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit, then the most probable component of every row of ``X``."""
        return self.fit(X).predict(X)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: ``n_samples`` draws and the component each came from."""
        x, z = self._draw(n_samples)
        return as_numpy(x), as_numpy(z)

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        covariance = {"full": k * d * (d + 1) / 2, "diag": k * d,
                      "spherical": k}[self._config().covariance_type]
        return int(covariance + k * d + k - 1)

    def bic(self, X) -> float:
        """Bayesian information criterion of the fit on ``X`` (lower is better)."""
        n = np.asarray(X).shape[0] if hasattr(X, "shape") else len(X)
        return -2 * self.score(X) * n + self._n_parameters() * np.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion of the fit on ``X`` (lower is better)."""
        n = np.asarray(X).shape[0] if hasattr(X, "shape") else len(X)
        return -2 * self.score(X) * n + 2 * self._n_parameters()

    @classmethod
    def _params_from_run(cls, spec, config, run, metrics) -> dict:
        options = strategy_options(run)
        init = SKLEARN_INIT.get(options.get("init") or "kmeans++", "k-means++")
        if run["inference"] == "kmeans":
            init = "random" if options.get("kmeans_init") == "random" else "k-means++"
        chosen = {"n_components": config.components, "covariance_type": config.covariance_type,
                  "reg_covar": config.reg_covar, "inference": run["inference"],
                  "guide": run["guide"], "random_state": run["seed"], "init_params": init,
                  "n_init": options.get("n_init"),
                  # the zoo's defaults where the run took them, so that a refit is the run's
                  "max_iter": options.get("max_iter", {"em": MAX_ITER, "kmeans": 300}.get(
                      run["inference"])),
                  "tol": {"em": options.get("tol", TOL),
                          "online-em": options.get("tol", online_em.TOL)}.get(
                      run["inference"], options.get("stop_tol", STOP_TOL)),
                  "steps": options.get("steps"), "lr": options.get("lr"),
                  "elbo": options.get("elbo"), "batch_size": options.get("batch_size"),
                  "passes": options.get("passes"), "step_decay": options.get("step_decay")}
        return {k: v for k, v in chosen.items() if v is not None or k == "guide"}
