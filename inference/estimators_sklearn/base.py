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
computed on in the parameters' dtype (float64 for a fit here, as scikit-learn; the run's dtype
for :func:`inference.estimators_sklearn.loading.load`); arrays come back as float64.

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
import random
import tempfile
from collections.abc import Iterator
from numbers import Integral, Real
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pyro
import torch
from pyro import poutine
from sklearn.base import _fit_context
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from inference import strategies
from inference.catalog import get_model
from inference.data import choose_device
from inference.evaluate import fitted, iwae, pointwise_log_weights
from inference.results import FitResult
from inference.runs import load_checkpoint
from inference.svi import ELBOS
from zoo.errors import InputError
from zoo.registry import ModelSpec, Params
from zoo.seeding import own_random_stream

NEVER = 2**62  # a stop_window no history reaches: partial_fit's SVI never stops by itself
_BEST_KEYS = ("best_step", "best_window", "best_params")

# Parameters every estimator takes the same way (each class adds its own).
COMMON_CONSTRAINTS: dict[str, list] = {
    "guide": [str, None],
    "elbo": [StrOptions(set(ELBOS)), None],
    "steps": [Interval(Integral, 1, None, closed="left"), None],
    "lr": [Interval(Real, 0.0, None, closed="neither"), None],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "random_state": ["random_state"],
    "device": [str],
}


# --- small helpers --------------------------------------------------------------------------


def _svi_strategy_module():
    """:mod:`inference.strategies.svi`, imported only after the registry has loaded every
    built-in strategy: importing it first would register SVI ahead of EM and so change the
    default strategy (``strategies.get(None, spec)``) of every model in the process."""
    strategies.strategies()
    from inference.strategies import svi

    return svi


_FILE_MODELS: dict[str, str] = {}  # "path/file.py:NAME" -> NAME, once the file is imported


def is_file_reference(reference: str) -> bool:
    return ":" in reference and reference.split(":", 1)[0].endswith(".py")


def model_spec(reference: str) -> ModelSpec:
    """The catalog's spec for a registry name or ``path/file.py:NAME`` (a file is imported
    once per process; later look-ups use the name it registered)."""
    name = _FILE_MODELS.get(reference)
    if name is not None:
        with contextlib.suppress(InputError):
            return get_model(name)
    spec = get_model(reference)
    if is_file_reference(reference):
        _FILE_MODELS[reference] = spec.name
    return spec


def seed_from(random_state) -> int:
    """One integer seed: an int ``random_state`` as it is, else a draw from it (None: numpy's
    global stream, as scikit-learn)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def kept_random_state(device: torch.device) -> Iterator[None]:
    """The caller's Python, numpy and torch streams are as they were afterwards (the zoo's
    fits call ``pyro.set_rng_seed``, which seeds all three)."""
    # the legacy global stream is the one pyro.set_rng_seed seeds, so it is the one to restore
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 (or integer) numpy array of a tensor, on the CPU."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def svi_state(result: FitResult, checkpoint: Path, kept: str | None = None) -> dict | None:
    """The SVI checkpoint of the state ``result`` returned (its best restart's file), with the
    best-window bookkeeping removed (a continuation starts its own), or None."""
    restart = int(result.info.get("best_restart", 0) or 0)
    path = _svi_strategy_module().restart_checkpoint(checkpoint, restart)
    if path is None or not Path(path).is_file():
        return None
    state = load_checkpoint(path)
    if (kept or result.info.get("kept")) == "best" and "best_params" in state:
        state["params"] = state["best_params"]  # the fit returned the best window's state
    for key in _BEST_KEYS:
        state.pop(key, None)
    return state


def config_from_fields(spec: ModelSpec, fields: dict):
    """The config dataclass from its fields (lists from JSON become tuples)."""
    return spec.config_class(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in fields.items()})


def _can_partial_fit(estimator) -> bool:
    try:
        return estimator._supports_partial_fit()
    except (InputError, ValueError, KeyError):
        return False


# --- the base estimator ----------------------------------------------------------------------


class LatentModelEstimator:
    """What the zoo's scikit-learn estimators share (see the module docstring). A mixin: an
    estimator lists it before scikit-learn's mixins (so that its ``score`` is the one used,
    not ``DensityMixin``'s placeholder) and ``BaseEstimator`` last."""

    _model: ClassVar[str] = ""  # the registry name; PyroLatentModel takes it as a parameter
    _dtype_default: ClassVar[torch.dtype] = torch.float64
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

    def _derive(self) -> None:
        """Set the public fitted attributes from ``params_`` (subclasses)."""

    # --- the model, its config and where it runs --------------------------------------------

    def _spec(self) -> ModelSpec:
        return model_spec(self._model_reference())

    def _device(self) -> torch.device:
        return choose_device(self.device)

    def _dtype(self) -> torch.dtype:
        params = getattr(self, "params_", None)
        if params:
            for value in params.values():
                if value.is_floating_point():
                    return value.dtype
        return self._dtype_default

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
        uses_guide = strategies.strategies()[strategy].uses_guide
        guide = self._guide_name(spec) if uses_guide else None
        with tempfile.TemporaryDirectory(prefix="lvm-zoo-sklearn-") as folder:
            checkpoint = Path(folder) / "checkpoint.pt" if strategy == "svi" else None
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
        X = validate_data(self, X, dtype=np.float64, ensure_min_samples=2)
        spec = self._spec()
        config = self._make_config(spec, *X.shape)
        seed = seed_from(self.random_state)
        device = self._device()
        x = torch.tensor(X, dtype=self._dtype_default, device=device)
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

    # --- partial_fit (SVI) -----------------------------------------------------------------

    def _supports_partial_fit(self) -> bool:
        spec = self._spec()
        if self._strategy_name(spec) != "svi":
            return False
        guide = self._guide_name(spec)
        return guide in spec.guides and not getattr(spec.guides[guide], "per_datapoint", False)

    @available_if(_can_partial_fit)
    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One epoch of SVI steps on the batch ``X`` (``ceil(n_samples / batch_size)`` steps),
        continuing the fit before it: parameters, Adam's moments, the random stream. After a
        fit by another strategy (EM) or a load without an SVI checkpoint it continues from the
        fitted parameters with a fresh Adam; the first call on an unfitted estimator starts a
        fit of one epoch."""
        first = not self.__sklearn_is_fitted__()
        X = validate_data(self, X, reset=first, dtype=np.float64, ensure_min_samples=1)
        spec = self._spec()
        device = self._device()
        if first:
            config = self._make_config(spec, *X.shape)
            seed, state = seed_from(self.random_state), None
            x = torch.tensor(X, dtype=self._dtype_default, device=device)
        else:
            config, seed = self._config(), self.seed_
            config.validate(X.shape[0])
            x = torch.tensor(X, dtype=self._dtype(), device=device)
            state = getattr(self, "_svi_state", None)
            if state is None:  # fitted by another strategy, or loaded without a checkpoint
                with kept_random_state(device):
                    state = self._state_from_params(spec, config, x, seed)
        done = 0 if state is None else int(state["step"])
        svi = _svi_strategy_module()
        options = svi.SVIOptions(**self._options_for("svi", x.shape[0]))
        settings = svi.StochasticVariationalInference.settings(spec, config, x, options,
                                                               self._guide_name(spec))
        batch = settings.get("batch_size") or x.shape[0]
        steps = math.ceil(x.shape[0] / min(batch, x.shape[0]))
        with kept_random_state(device):
            result, state = self._fit_strategy(
                spec, config, x, seed, strategy="svi", resume_state=state,
                steps=done + steps, stop_tol=0.0, stop_window=NEVER)
        self._store(spec, config, result, seed, state, x)
        return self

    def _state_from_params(self, spec: ModelSpec, config, x: torch.Tensor, seed: int) -> dict:
        """An SVI checkpoint that starts from the fitted parameters (and the guide's, where the
        fit has them; a fresh guide otherwise) with a fresh Adam: what ``partial_fit``
        continues when the fit kept no SVI state of its own."""
        guide = self._guide_name(spec)
        torch.manual_seed(seed)
        with fitted(spec, config, self._params_on(x), x, guide=guide,
                    guide_params=self._params_on(x, self.guide_params_)):
            values = {n: p.detach().clone() for n, p in
                      pyro.get_param_store().named_parameters()}
        names = sorted(values)
        optimizer = torch.optim.Adam([values[n].requires_grad_() for n in names])
        history = self.history_.get("elbo", []) if self.inference_ == "svi" else []
        return {"step": len(history), "seed": seed,
                "history": torch.tensor(history, dtype=torch.float64), "params": values,
                "optimizer": optimizer.state_dict(), "rng": torch.get_rng_state(),
                **({"cuda_rng": torch.cuda.get_rng_state(x.device)}
                   if x.device.type == "cuda" else {})}

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
        return as_numpy(self._log_px(self._checked(X)))

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
                    and any(f.name == "data" for f in s["cond_indep_stack"])]
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


def strategy_options(run: dict) -> dict[str, Any]:
    """A run's strategy options (``run.json``'s ``options``)."""
    options = run.get("options")
    return dict(options) if isinstance(options, dict) else {}
