"""``GaussianMixture``: scikit-learn's estimator of that name, fitted by the zoo.

The parameters are scikit-learn's (``n_components``, ``covariance_type``, ``tol``,
``reg_covar``, ``max_iter``, ``n_init``, ``init_params``, ``weights_init``, ``means_init``,
``precisions_init``, ``random_state``, ``warm_start``, ``verbose``) with the same meanings and
defaults, plus ``inference`` (``"em"``, ``"online-em"``, ``"svi"`` or ``"kmeans"``), ``guide``,
``elbo``, ``steps``, ``lr``, ``batch_size``, ``passes``, ``step_decay`` and ``device``. Names
map onto the zoo's: ``n_components`` is the config's ``components``; ``tol`` is EM's, on the
change of the mean log-likelihood per datapoint (scikit-learn's rule and unit), under online EM
the same between its last two passes, or under SVI the stopping rule's ``stop_tol`` (nats per
datapoint per window).

EM (the default) is scikit-learn's fit, step for step: every restart starts from
responsibilities drawn as scikit-learn draws them (:mod:`.starts`: ``"kmeans"``,
``"k-means++"`` (the seed rows alone), ``"random"``, ``"random_from_data"``, from one
``RandomState``, an instance being consumed as scikit-learn consumes it), the restart with the
highest ``lower_bound_`` (log p(x) before the last M-step) is kept, and a warm start measures
its first change from the previous fit's lower bound, so that repeated ``max_iter=1`` fits
converge after the second. The same ``random_state`` gives scikit-learn's ``n_iter_``, labels
and score (``tests/inference/test_sklearn_agreement.py``). ``covariance_type="tied"`` keeps K
equal Cholesky factors in ``params_`` and scikit-learn's (D, D) arrays as attributes.
``reg_covar`` is scikit-learn's: a fit fails (ValueError, scikit-learn's message) only where a
covariance is not positive definite. float32 data give float32 fitted attributes and outputs
(computed in float64 on the CPU). ``sample`` draws scikit-learn's rows (numpy, the same
``random_state``), grouped by component.

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

Differences from scikit-learn: ``history_["log_likelihood"]`` ends with log p(x) of the
returned parameters (one entry more than ``lower_bounds_``); under SVI ``lower_bound_`` is the
last ELBO; ``verbose`` shows a progress bar (``verbose_interval`` is not a parameter); under
SVI ``"tied"`` ties the covariances through the mean of the K factors.
"""

from __future__ import annotations

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from inference import online_em
from inference.em import MAX_ITER, TOL, fit_em
from inference.estimators_sklearn import starts
from inference.estimators_sklearn.base import (
    COMMON_CONSTRAINTS,
    LatentModelEstimator,
    as_numpy,
    register_estimator,
    seed_from,
    strategy_options,
)
from inference.estimators_sklearn.mixture_init import (
    CONVERGENCE_MESSAGE,
    EM_INIT,
    KMEANS_INIT,
    SINGULAR_MESSAGE,
    SKLEARN_INIT,
    _lower_bound,
    initial_arrays,
    with_given,
)
from inference.estimators_sklearn.mixture_online import OnlineEM
from inference.estimators_sklearn.support import StrategyOption
from inference.results import FitResult
from inference.svi import STOP_TOL
from zoo import gmm
from zoo.registry import Params

# re-exported: these lived here before :mod:`.mixture_init` and :mod:`.mixture_online`
__all__ = ["CONVERGENCE_MESSAGE", "EM_INIT", "KMEANS_INIT", "SINGULAR_MESSAGE", "SKLEARN_INIT",
           "GaussianMixture", "OnlineEM", "_lower_bound"]


@register_estimator
class GaussianMixture(OnlineEM, LatentModelEstimator, DensityMixin, BaseEstimator):
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
        "inference": [StrategyOption("gmm")],
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
                "reg_covar": float(self.reg_covar), "singular": "cholesky"}

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

    def _initial_arrays(self, n_features: int, components: int | None = None) -> dict:
        """The given ``weights_init`` / ``means_init`` / ``precisions_init``, checked with
        scikit-learn's messages."""
        return initial_arrays(self.weights_init, self.means_init, self.precisions_init,
                              components or self.n_components, n_features, self.covariance_type)

    def _start(self, config, x: torch.Tensor, rng: np.random.RandomState) -> Params:
        """One start as scikit-learn makes it (:mod:`.starts`, the same draws from ``rng``),
        with the given weights, means and precisions put in their place."""
        return self._with_given(config, starts.start(self.init_params, config, x, rng), x)

    def _with_given(self, config, params: Params, x: torch.Tensor) -> Params:
        """``params`` with ``weights_init`` / ``means_init`` / ``precisions_init`` in place."""
        return with_given(self._initial_arrays(config.dim, config.components), config, params, x)

    # --- scikit-learn's private hooks that its own tests call ----------------------------------

    def _initialize(self, X, resp) -> None:
        """scikit-learn's ``_initialize``: the parameters of one M-step from the
        responsibilities ``resp`` (n_samples, n_components), with the given ``*_init`` arrays
        in their place, as the fitted state."""
        X = validate_data(self, X, dtype=[np.float64, np.float32])
        self._output_dtype = X.dtype
        spec = self._spec()
        resp = np.asarray(resp)
        config = spec.make_config(X.shape[1], **{**self._config_options(*X.shape),
                                                 "components": resp.shape[1]})
        x = torch.tensor(X, dtype=self._dtype_default)
        resp = torch.as_tensor(resp, dtype=x.dtype)
        params = self._with_given(config, gmm.m_step(config, x, resp), x)
        result = FitResult(model=spec.name, inference="em", guide=None, params=params,
                           history={"log_likelihood": []}, steps=0, converged=False,
                           device=str(x.device), seed=0)
        self._store(spec, config, result, 0, None, None)

    def _set_parameters(self, params) -> None:
        """scikit-learn's ``_set_parameters``: its ``(weights, means, covariances,
        precisions_cholesky)`` as the fitted attributes, ``precisions_`` derived from the
        Cholesky factors (``U U^T``) in their dtype."""
        weights, means, covariances, cholesky = (np.asarray(a) for a in params)
        self.weights_, self.means_, self.covariances_ = weights, means, covariances
        self.precisions_cholesky_ = cholesky
        if self.covariance_type == "full":
            self.precisions_ = cholesky @ cholesky.transpose(0, 2, 1)
        elif self.covariance_type == "tied":
            self.precisions_ = cholesky @ cholesky.T
        else:
            self.precisions_ = cholesky ** 2

    def _warm_params(self, config) -> Params | None:
        if not (self.warm_start and self.__sklearn_is_fitted__()):
            return None
        old = self.params_
        same = self._config_fields.get("covariance_type") == config.covariance_type
        if not same or tuple(old["means"].shape) != (config.components, config.dim):
            return None  # another mixture than the fitted one: start afresh
        return dict(old)

    def _run(self, spec, config, x, seed):
        if self.inference == "online-em":
            return self._fit_online(spec, config, x, seed)
        if self.inference != "em":
            return self._fit_strategy(spec, config, x, seed)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # warned once below
                best = self._fit_em(spec, config, x, seed)
        except gmm.SingularCovarianceError as error:
            raise ValueError(SINGULAR_MESSAGE + f" ({error})") from error
        if self.max_iter > 0 and not best.converged:
            warnings.warn(CONVERGENCE_MESSAGE, ConvergenceWarning, stacklevel=3)
        return best, None

    def _fit_seed(self) -> int:
        """As scikit-learn, a ``RandomState`` instance itself draws the starts (and is
        consumed, restart after restart); ``seed_`` is then read from a copy of it."""
        stream = self.random_state
        if isinstance(stream, np.random.RandomState):
            self._start_stream = stream
            return seed_from(copy.deepcopy(stream))
        self._start_stream = None
        return super()._fit_seed()

    def _fit_em(self, spec, config, x, seed) -> FitResult:
        """scikit-learn's fit: ``n_init`` starts drawn from one ``RandomState(seed)`` (or the
        warm start), EM from each, the restart with the highest lower bound kept. Under a warm
        start the first iteration's change is measured from the previous fit's lower bound,
        so that repeated ``fit`` calls of ``max_iter=1`` converge as scikit-learn's."""
        warm = self._warm_params(config)
        rng = getattr(self, "_start_stream", None) or np.random.RandomState(seed)
        best = None
        for _ in range(1 if warm is not None else self.n_init):
            start = ({k: v.to(x) for k, v in warm.items()} if warm is not None
                     else self._start(config, x, rng))
            if self.max_iter == 0:
                log_likelihood = float(spec.log_marginal(config, start, x).mean())
                result = FitResult(model=spec.name, inference="em", guide=None, params=start,
                                   history={"log_likelihood": [log_likelihood]}, steps=0,
                                   converged=False, device=str(x.device), seed=seed)
            else:
                history = self.history_.get("log_likelihood", []) if warm is not None else []
                result = fit_em(spec, config, x, init=start, tol=self._tol(),
                                max_iter=self.max_iter, seed=seed, progress=self._progress(),
                                previous=history[-2] if len(history) > 1 else None)
            if best is None or _lower_bound(result) > _lower_bound(best):
                best = result
        return best

    # --- fitted attributes (scikit-learn's) ---------------------------------------------------

    def _derive(self) -> None:
        p = {k: v.double() for k, v in self.params_.items()}
        self.weights_ = as_numpy(p["weights"])
        self.means_ = as_numpy(p["means"])
        if "scale_tril" in p:
            tril = p["scale_tril"]
            if self._config_fields.get("covariance_type") == "tied":
                tril = tril[0]  # the one shared factor (all K are equal)
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
        if self.inference_ == "em" and self.lower_bounds_:
            self.lower_bound_ = self.lower_bounds_[-1]  # scikit-learn's: before the last M-step

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
        return self._out(as_numpy(self._log_resp(X).exp()))

    def fit_predict(self, X, y=None) -> np.ndarray:
        """Fit, then the most probable component of every row of ``X``."""
        return self.fit(X).predict(X)

    def sample(self, n_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """``(X, y)``: ``n_samples`` draws and the component each came from, scikit-learn's
        draws from the same ``random_state``: the counts per component from one multinomial,
        then each component's rows in turn (so the rows come grouped by component)."""
        check_is_fitted(self)
        if not isinstance(n_samples, Integral) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling "
                             "requires at least one sample.")
        rng = check_random_state(self.random_state)
        weights = self.weights_.astype(np.float64)
        counts = rng.multinomial(n_samples, weights / weights.sum())
        kind = self._config_fields.get("covariance_type")
        rows = []
        for k, (mean, count) in enumerate(zip(self.means_.astype(np.float64), counts,
                                              strict=True)):
            if kind in gmm.FULL_MATRICES:
                covariance = self.covariances_ if kind == "tied" else self.covariances_[k]
                rows.append(rng.multivariate_normal(mean, covariance.astype(np.float64),
                                                    int(count)))
            else:
                scale = np.sqrt(self.covariances_[k].astype(np.float64))
                rows.append(mean + rng.standard_normal(size=(int(count), mean.shape[0]))
                            * scale)
        labels = np.concatenate([np.full(count, k, dtype=int)
                                 for k, count in enumerate(counts)])
        return self._out(np.vstack(rows)), labels

    def _n_parameters(self) -> int:
        k, d = self.means_.shape
        covariance = {"full": k * d * (d + 1) / 2, "tied": d * (d + 1) / 2, "diag": k * d,
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
