"""``partial_fit`` by SVI: one epoch of SVI steps on a batch, continuing the fit before it.

:class:`SVIContinuation` is a mixin of :class:`.base.LatentModelEstimator` (split out of it; it
uses the base class's ``_spec``, ``_config``, ``_fit_strategy``, ``_store``, ...). The state it
continues is the SVI checkpoint of :mod:`inference.svi` kept in memory (``_svi_state``):
parameters, Adam's moments, the random stream; after a fit by another strategy (EM) or a load
without a checkpoint, :meth:`SVIContinuation._state_from_params` makes one from the fitted
parameters with a fresh Adam.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pyro
import torch
from sklearn.base import _fit_context
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import validate_data

from inference.estimators_sklearn.support import (
    NEVER,
    _svi_strategy_module,
    kept_random_state,
    seed_from,
)
from inference.evaluate import fitted
from zoo.errors import InputError
from zoo.registry import ModelSpec


def _can_partial_fit(estimator) -> bool:
    try:
        return estimator._supports_partial_fit()
    except (InputError, ValueError, KeyError):
        return False


class SVIContinuation:
    """``partial_fit`` (SVI only, guides without per-datapoint parameters); see the module
    docstring."""

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
        X = validate_data(self, X, reset=first, dtype=[np.float64, np.float32],
                          ensure_min_samples=1)
        spec = self._spec()
        device = self._device()
        if first:  # fit's dtype rules: float32 kept float32 on a GPU and in the attributes
            self._output_dtype = X.dtype
            config = self._make_config(spec, *X.shape)
            seed, state = seed_from(self.random_state), None
            x = torch.tensor(X, dtype=self._compute_dtype(X.dtype, device), device=device)
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
        # one epoch on every row of the batch: no held-out rows (inference.svi_validation)
        unsplit = ({"validation": 0.0} if "validation" in
                   {f.name for f in dataclasses.fields(svi.SVIOptions)} else {})
        with kept_random_state(device):
            result, state = self._fit_strategy(
                spec, config, x, seed, strategy="svi", resume_state=state,
                steps=done + steps, stop_tol=0.0, stop_window=NEVER, **unsplit)
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
