"""``PyroLatentModel``: any model of the zoo, built-in or declared in a user's file, as an
estimator.

``PyroLatentModel("mppca", model_options={"components": 3, "latent_dim": 2})`` or
``PyroLatentModel("my_model.py:my-model", inference="svi", guide="amortized")``: ``model`` is
what ``lvm-zoo fit`` takes, ``model_options`` the model's config fields (its ``--flags``),
``inference`` the strategy (default: the first that applies, as ``lvm-zoo fit``), and
``fit_options`` any other option of that strategy by its zoo name (``{"restarts": 3}``),
checked by the strategy as on the command line. ``tol`` is EM's tolerance (nats per datapoint)
or SVI's ``stop_tol``; ``max_iter``, ``n_init`` are EM's; ``steps``, ``lr``, ``batch_size``,
``elbo``, ``num_particles`` SVI's.

Methods: ``fit``, ``score_samples`` (exact log p(x) where the model declares ``log_marginal``,
else the IWAE bound with the guide as proposal), ``score``, ``sample`` (the model's ``sample``,
else a draw from its prior predictive), ``partial_fit`` (SVI with a guide that has no
per-datapoint parameters). A generic model has no ``transform`` or ``predict``: what its
latents mean is the model's to say.
"""

from __future__ import annotations

import dataclasses
from numbers import Integral, Real

from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils._param_validation import Interval

from inference.estimators_sklearn.base import (
    COMMON_CONSTRAINTS,
    LatentModelEstimator,
    is_file_reference,
    strategy_options,
)

_NAMED = ("n_init", "tol", "max_iter", "steps", "lr", "batch_size", "elbo", "num_particles")


class PyroLatentModel(LatentModelEstimator, DensityMixin, BaseEstimator):
    """Any registered or user-declared model of the zoo, fitted by any strategy that applies.

    Fitted attributes: ``params_`` / ``guide_params_`` (tensors keyed by ``pyro.param``
    names), ``config_`` (the model's config dataclass), ``inference_``, ``guide_``,
    ``n_iter_``, ``converged_``, ``lower_bound_``, ``history_``, ``n_features_in_``, ``seed_``.
    """

    _parameter_constraints: dict = {
        "model": [str],
        "model_options": [dict, None],
        "inference": [str, None],
        "n_init": [Interval(Integral, 1, None, closed="left"), None],
        "tol": [Interval(Real, 0.0, None, closed="neither"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left"), None],
        "num_particles": [Interval(Integral, 1, None, closed="left"), None],
        "fit_options": [dict, None],
        "iwae_samples": [Interval(Integral, 1, None, closed="left")],
        **COMMON_CONSTRAINTS,
    }

    def __init__(self, model, *, model_options=None, inference=None, guide=None, elbo=None,
                 steps=None, lr=None, batch_size=None, num_particles=None, n_init=None,
                 tol=None, max_iter=None, fit_options=None, iwae_samples=1000,
                 random_state=None, device="cpu"):
        self.model = model
        self.model_options = model_options
        self.inference = inference
        self.guide = guide
        self.elbo = elbo
        self.steps = steps
        self.lr = lr
        self.batch_size = batch_size
        self.num_particles = num_particles
        self.n_init = n_init
        self.tol = tol
        self.max_iter = max_iter
        self.fit_options = fit_options
        self.iwae_samples = iwae_samples
        self.random_state = random_state
        self.device = device

    def _model_reference(self) -> str:
        return self.model

    def _config_options(self, n_samples, n_features) -> dict:
        return dict(self.model_options or {})

    def _candidate_options(self, n_samples) -> dict:
        return {"n_init": self.n_init, "tol": self.tol, "stop_tol": self.tol,
                "max_iter": self.max_iter, "steps": self.steps, "lr": self.lr,
                "batch_size": self.batch_size, "elbo": self.elbo,
                "num_particles": self.num_particles}

    def _options_for(self, strategy, n_samples) -> dict:
        # the fit_options as given: the strategy refuses one it does not take, by name
        return {**super()._options_for(strategy, n_samples), **(self.fit_options or {})}

    @classmethod
    def _params_from_run(cls, spec, config, run, metrics) -> dict:
        options = strategy_options(run)
        named = {k: options.pop(k) for k in _NAMED if k in options}
        if "stop_tol" in options:  # the stopping rule's tolerance is the estimator's tol
            named["tol"] = options.pop("stop_tol")
        model_options = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                         if f.name != "dim"}
        reference = str(run.get("model_ref", run["model"]))
        return {"model": reference if is_file_reference(reference) else spec.name,
                "model_options": model_options, "inference": run["inference"],
                "guide": run["guide"], "random_state": run["seed"],
                "iwae_samples": run.get("iwae_samples", 1000),
                "fit_options": options or None, **named}
