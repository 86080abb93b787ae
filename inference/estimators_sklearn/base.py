"""What every scikit-learn estimator of the zoo shares: data in and out, the fit, the yardstick.

An estimator here is a thin face over the zoo: its constructor parameters are split into the
model's config fields (:meth:`LatentModelEstimator._config_options`) and the strategy's options
(:meth:`LatentModelEstimator._candidate_options`, kept only where the chosen strategy's
``Options`` have the field), and ``fit`` calls :func:`inference.strategies.fit` on a tensor, the
same call the command line makes. The fitted state is the zoo's one parameter representation:
``params_`` (a dict of constrained tensors keyed by ``pyro.param`` names, on the CPU),
``guide_params_``, and the config's fields; every public fitted attribute (``means_``,
``components_``, ...) is derived from them by :meth:`LatentModelEstimator._derive`.

Numbers: data come in as numpy arrays, are checked by scikit-learn's ``validate_data`` and are
computed on in the parameters' dtype (float64 for a fit on the CPU; float32 data stay float32
on a GPU; the run's dtype for :func:`inference.estimators_sklearn.loading.load`); fitted
attributes and outputs come back in the dtype of the data fitted on (float32 in, float32 out,
as scikit-learn), float64 for a loaded run.

Devices: ``device`` is ``"cpu"`` (default), ``"cuda"``, ``"cuda:N"``, ``"auto"`` (CUDA when
present) or a ``torch.device``, checked as scikit-learn checks a parameter
(:class:`.support.DeviceOption`); CUDA asked for where there is none is one
:class:`zoo.errors.InputError` line (:func:`.support.resolve_device`). The data are moved to
the device once; fitted parameters come back to the CPU and the public attributes are numpy.

Randomness: ``random_state`` gives one integer seed per fit (an int is used as it is, so
``random_state=0`` is the command line's ``--seed 0``). A fit leaves the caller's random
streams (Python, numpy, torch) as they were. Monte Carlo estimates after the fit (IWAE-K)
draw from a stream seeded by the fit's seed, ``seed_``, so they are reproducible; ``sample``
follows scikit-learn: an int ``random_state`` gives the same draws on every call.

``partial_fit`` (SVI only, guides without per-datapoint parameters): one epoch of SVI steps on
the given batch, continuing the parameters, Adam's moments and the random stream of the fit
before it (the SVI checkpoint of :mod:`inference.svi`, kept in memory).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import numbers
import tempfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
from pyro import poutine
from sklearn.base import _fit_context
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from inference import strategies
from inference.estimators_sklearn.continuation import SVIContinuation, _can_partial_fit
from inference.estimators_sklearn.support import (
    _BEST_KEYS,
    _FILE_MODELS,
    COMMON_CONSTRAINTS,
    NEVER,
    _svi_strategy_module,
    as_numpy,
    config_from_fields,
    is_file_reference,
    kept_random_state,
    model_spec,
    resolve_device,
    seed_from,
    strategy_options,
    svi_state,
)
from inference.evaluate import fitted, iwae, pointwise_log_weights
from inference.results import FitResult
from zoo.plugins import Registry
from zoo.registry import DATA_PLATE, ModelSpec, Params
from zoo.seeding import own_random_stream

# re-exported: the helpers lived here before :mod:`.support` and :mod:`.continuation`
__all__ = ["_BEST_KEYS", "_FILE_MODELS", "BUILTINS", "COMMON_CONSTRAINTS", "ESTIMATORS", "NEVER",
           "LatentModelEstimator", "SVIContinuation", "_can_partial_fit", "_svi_strategy_module",
           "as_numpy", "check_latent", "config_from_fields", "is_file_reference",
           "kept_random_state", "model_spec", "register_estimator", "resolve_device", "seed_from",
           "strategy_options", "svi_state"]


# The estimator class of each model (``load(run_dir)`` makes one; any other model gets
# ``PyroLatentModel``). The built-in modules register theirs with ``@register_estimator``;
# pyproject.toml declares them under [project.entry-points."lvm_zoo.estimators"].
BUILTINS = (("mixture", "inference.estimators_sklearn.mixture"),
            ("linear", "inference.estimators_sklearn.linear"),
            ("deep", "inference.estimators_sklearn.deep"))
ESTIMATORS: Registry[type] = Registry("lvm_zoo.estimators", "estimator", BUILTINS)


def register_estimator(cls: type) -> type:
    """Class decorator: ``cls`` is the estimator of the model ``cls._model``."""
    return ESTIMATORS.register(cls._model, cls, origin=cls.__module__)


# --- the base estimator ----------------------------------------------------------------------


class LatentModelEstimator(SVIContinuation):
    """What the zoo's scikit-learn estimators share (see the module docstring). A mixin: an
    estimator lists it before scikit-learn's mixins (so that its ``score`` is the one used,
    not ``DensityMixin``'s placeholder) and ``BaseEstimator`` last."""

    _model: ClassVar[str] = ""  # the registry name; PyroLatentModel takes it as a parameter
    _dtype_default: ClassVar[torch.dtype] = torch.float64
    _min_samples: ClassVar[int] = 2  # rows a fit needs at the least
    _needs_guide_for_density: ClassVar[bool] = False

    # --- what a subclass says ----------------------------------------------------------------

    def _model_reference(self) -> str:
        return self._model

    def _config_options(self, n_samples: int, n_features: int) -> dict:
        """The model's config fields from the estimator's parameters."""
        return {}

    def _candidate_options(self, n_samples: int) -> dict:
        """Every strategy option the estimator can set (None: the default); each strategy
        takes the ones its ``Options`` have."""
        return {}

    def _check_sizes(self, n_samples: int, n_features: int) -> None:
        """ValueErrors naming the estimator's parameter, before the zoo's own checks."""

    def _fit_seed(self) -> int:
        """The fit's integer seed (``seed_``) from ``random_state``."""
        return seed_from(self.random_state)

    def _inspect(self, X: np.ndarray) -> None:
        """A look at the data before the config is made (subclasses: PPCA's fraction of the
        variance)."""

    def _derive(self) -> None:
        """Set the public fitted attributes from ``params_`` (subclasses)."""

    # --- the model, its config and where it runs --------------------------------------------

    def _spec(self) -> ModelSpec:
        return model_spec(self._model_reference())

    def _device(self) -> torch.device:
        return resolve_device(self.device, type(self).__name__)

    def _dtype(self) -> torch.dtype:
        params = getattr(self, "params_", None)
        if params:
            for value in params.values():
                if value.is_floating_point():
                    return value.dtype
        return self._dtype_default

    def _compute_dtype(self, dtype: np.dtype, device: torch.device) -> torch.dtype:
        """The fit's dtype: float64 on the CPU (scikit-learn's accuracy), float32 data kept
        float32 on a GPU."""
        if device.type == "cuda" and dtype == np.float32:
            return torch.float32
        return self._dtype_default

    def _out(self, array: np.ndarray) -> np.ndarray:
        """A float array in the dtype of the data the estimator was fitted on (scikit-learn
        keeps float32 float32)."""
        dtype = getattr(self, "_output_dtype", np.float64)
        if isinstance(array, np.ndarray) and np.issubdtype(array.dtype, np.floating):
            return array.astype(dtype, copy=False)
        return array

    def _cast_fitted(self) -> None:
        for name, value in list(vars(self).items()):
            if name.endswith("_") and not name.startswith("_"):
                vars(self)[name] = self._out(value)

    def _config(self):
        return config_from_fields(self._spec(), self._config_fields)

    @property
    def config_(self):
        """The fitted model's config dataclass (its ``dim`` is ``n_features_in_``)."""
        if "_config_fields" not in vars(self):
            raise AttributeError("config_ exists once the estimator is fitted")
        return self._config()

    def _params_on(self, x: torch.Tensor, params: Params | None = None) -> Params:
        params = self.params_ if params is None else params
        return {k: v.to(device=x.device, dtype=x.dtype) if v.is_floating_point()
                else v.to(x.device) for k, v in params.items()}

    def _strategy_name(self, spec: ModelSpec | None = None) -> str:
        return strategies.get(getattr(self, "inference", None), spec or self._spec()).name

    def _guide_name(self, spec: ModelSpec) -> str | None:
        guide = getattr(self, "guide", None)
        return guide or spec.default_guide or next(iter(spec.guides), None)

    def _progress(self) -> bool:
        return bool(getattr(self, "verbose", 0))

    def __sklearn_is_fitted__(self) -> bool:
        return "params_" in vars(self)

    # --- data ------------------------------------------------------------------------------

    def _tensor(self, X: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(X), dtype=self._dtype(), device=self._device())

    def _checked(self, X) -> torch.Tensor:
        """``X`` of a fitted estimator, as a tensor: fitted first, then the columns."""
        check_is_fitted(self)
        return self._tensor(validate_data(self, X, reset=False, dtype=np.float64))

    # --- fitting ---------------------------------------------------------------------------

    def _make_config(self, spec: ModelSpec, n_samples: int, n_features: int):
        self._check_sizes(n_samples, n_features)
        config = spec.make_config(n_features, **self._config_options(n_samples, n_features))
        config.validate(n_samples)
        return config

    def _options_for(self, strategy: str, n_samples: int) -> dict:
        fields = {f.name for f in dataclasses.fields(strategies.strategies()[strategy].Options)}
        chosen = {k: v for k, v in self._candidate_options(n_samples).items()
                  if k in fields and v is not None}
        if chosen.get("batch_size") is not None:
            chosen["batch_size"] = min(chosen["batch_size"], n_samples)  # as sklearn's MLP
        return chosen

    def _fit_strategy(self, spec: ModelSpec, config, x: torch.Tensor, seed: int, *,
                      strategy: str | None = None, resume_state: dict | None = None,
                      **overrides) -> tuple[FitResult, dict | None]:
        """One fit by the zoo's strategy registry; for SVI also its state (checkpoint)."""
        strategy = strategy or self._strategy_name(spec)
        options = {**self._options_for(strategy, x.shape[0]), **overrides}
        chosen = strategies.strategies()[strategy]
        uses_guide = chosen.uses_guide
        guide = self._guide_name(spec) if uses_guide else None
        with tempfile.TemporaryDirectory(prefix="lvm-zoo-sklearn-") as folder:
            checkpoint = Path(folder) / "checkpoint.pt" if chosen.checkpoints else None
            if resume_state is not None:
                torch.save(resume_state, checkpoint)
            with contextlib.redirect_stderr(io.StringIO()):  # "resuming from step ..."
                result = strategies.fit(spec, config, x, inference=strategy, guide=guide,
                                        seed=seed, progress=self._progress(),
                                        checkpoint=checkpoint,
                                        resume=resume_state is not None, **options)
            state = svi_state(result, checkpoint) if checkpoint is not None else None
        return result, state

    def _run(self, spec: ModelSpec, config, x: torch.Tensor, seed: int
             ) -> tuple[FitResult, dict | None]:
        """The fit itself; subclasses with starts of their own (the mixture) override it."""
        return self._fit_strategy(spec, config, x, seed)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the model to ``X`` (n_samples, n_features); ``y`` is ignored."""
        X = validate_data(self, X, dtype=[np.float64, np.float32],
                          ensure_min_samples=self._min_samples)
        self._output_dtype = X.dtype  # float32 in, float32 fitted attributes out
        self._inspect(X)
        spec = self._spec()
        config = self._make_config(spec, *X.shape)
        seed = self._fit_seed()
        device = self._device()
        x = torch.tensor(X, dtype=self._compute_dtype(X.dtype, device), device=device)
        with kept_random_state(device):
            result, state = self._run(spec, config, x, seed)
        self._store(spec, config, result, seed, state, x)
        return self

    def _store(self, spec: ModelSpec, config, result: FitResult, seed: int,
               state: dict | None, x: torch.Tensor | None = None) -> None:
        self.params_ = {k: v.detach().cpu() for k, v in result.params.items()}
        self.guide_params_ = {k: v.detach().cpu() for k, v in result.guide_params.items()}
        self.inference_ = result.inference
        self.guide_ = result.guide
        self.n_iter_ = int(result.steps)
        self.converged_ = bool(result.converged)
        self.history_ = {k: [float(v) for v in values] for k, values in result.history.items()}
        self.seed_ = int(seed)
        self._config_fields = dataclasses.asdict(config)
        self._svi_state = state
        curve = self.history_.get("log_likelihood") or self.history_.get("elbo")
        if curve:
            self.lower_bound_ = curve[-1]
        elif x is not None and spec.log_marginal is not None:
            with torch.no_grad():
                self.lower_bound_ = float(spec.log_marginal(
                    config, self._params_on(x, result.params), x).mean())
        else:
            self.lower_bound_ = math.nan
        self._derive()
        self._cast_fitted()

    # --- the yardstick ---------------------------------------------------------------------

    def _log_px(self, x: torch.Tensor) -> torch.Tensor:
        """log p(x_n) per row: exact where the model has it, else IWAE-K with the guide."""
        spec = self._spec()
        if spec.log_marginal is not None:
            with torch.no_grad():
                return spec.log_marginal(self._config(), self._params_on(x), x)
        return self._iwae(spec, x)

    def _iwae(self, spec: ModelSpec, x: torch.Tensor) -> torch.Tensor:
        guide = self.guide_
        if guide is None or guide not in spec.guides:
            raise ValueError(f"{type(self).__name__}: model '{spec.name}' has no exact log p(x) "
                             "and this fit has no guide to importance-sample it with; fit with "
                             "inference='svi'")
        if getattr(spec.guides[guide], "per_datapoint", False):
            raise ValueError(f"{type(self).__name__}: guide={guide!r} holds parameters per "
                             "training row and has none for new rows, so log p(x) cannot be "
                             "estimated; fit with an amortized guide (guide='amortized')")
        samples = int(getattr(self, "iwae_samples", 1000))
        with own_random_stream(self.seed_, x.device):
            with fitted(spec, self._config(), self._params_on(x), x, guide=guide,
                        guide_params=self._params_on(x, self.guide_params_)) as (model, q):
                return iwae(pointwise_log_weights(model, q, x, samples))

    def score_samples(self, X) -> np.ndarray:
        """log p(x) of every row of ``X`` in nats: exact where the model has it, else the IWAE
        bound with ``iwae_samples`` draws from the guide."""
        return self._out(as_numpy(self._log_px(self._checked(X))))

    def score(self, X, y=None) -> float:
        """The mean log-likelihood of ``X`` per row, in nats (higher is better)."""
        return float(np.mean(self.score_samples(X)))

    # --- sampling --------------------------------------------------------------------------

    def _draw(self, n_samples: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``n_samples`` draws ``(x, z)`` from the fitted model; an int ``random_state`` gives
        the same draws every call, as scikit-learn's ``sample``."""
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"Invalid value for 'n_samples': {n_samples}. The sampling "
                             "requires at least one sample.")
        spec, config = self._spec(), self._config()
        device, seed = self._device(), seed_from(self.random_state)
        like = torch.zeros(1, config.dim, dtype=self._dtype(), device=device)
        params = self._params_on(like)
        if spec.sample is not None:
            generator = torch.Generator(device=device).manual_seed(seed)
            with torch.no_grad():
                return spec.sample(config, params, int(n_samples), generator)
        with own_random_stream(seed, device), fitted(spec, config, params, like) as (model, _):
            with torch.no_grad(), poutine.block():
                trace = poutine.trace(model).get_trace(None, num_data=int(n_samples))
        observed = [n for n, s in trace.nodes.items() if s["type"] == "sample"
                    and n not in spec.local_sites and n not in spec.global_sites
                    and any(f.name == DATA_PLATE for f in s["cond_indep_stack"])]
        name = "x" if "x" in observed else observed[-1]
        local = [trace.nodes[s]["value"] for s in spec.local_sites if s in trace.nodes]
        return trace.nodes[name]["value"], local[0] if local else None

    def sample(self, n_samples: int = 1) -> np.ndarray:
        """``n_samples`` rows drawn from the fitted model, shape (n_samples, n_features)."""
        x, _ = self._draw(n_samples)
        return as_numpy(x)

    # --- loading (weights only) --------------------------------------------------------------

    @classmethod
    def _params_from_run(cls, spec: ModelSpec, config, run: dict, metrics: dict) -> dict:
        """Constructor parameters that refit a saved run the way it was fitted."""
        raise NotImplementedError

    def _restore(self, spec: ModelSpec, config, run: dict, params: Params,
                 guide_params: Params, metrics: dict, history: dict,
                 state: dict | None) -> None:
        """The fitted state of a saved run, without fitting."""
        steps = metrics.get("steps")
        curve = history.get("log_likelihood") or history.get("elbo") or []
        result = FitResult(model=spec.name, inference=run["inference"], guide=run["guide"],
                           params=params, guide_params=guide_params, history=history,
                           steps=int(steps if steps is not None else max(len(curve) - 1, 0)),
                           converged=bool(metrics.get("converged", True)),
                           seed=int(run["seed"]))
        self.n_features_in_ = int(config.dim)
        self._store(spec, config, result, int(run["seed"]), state)
        if not curve and metrics.get("train_log_likelihood") is not None:
            self.lower_bound_ = float(metrics["train_log_likelihood"])


def check_latent(estimator: LatentModelEstimator, Z, width: int) -> torch.Tensor:
    """Latent rows ``Z`` (n_samples, width) of a fitted estimator, as a tensor."""
    check_is_fitted(estimator)
    Z = check_array(Z, dtype=np.float64)
    if Z.shape[1] != width:
        raise ValueError(f"Z has {Z.shape[1]} columns, but {type(estimator).__name__} has "
                         f"n_components={width} latent dimensions")
    return estimator._tensor(Z)


