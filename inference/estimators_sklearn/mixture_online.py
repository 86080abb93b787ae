"""``GaussianMixture`` by online EM: ``fit`` in passes of minibatches and ``partial_fit`` as one
stepwise-EM update (:mod:`inference.online_em`); see :mod:`.mixture`'s docstring.

:class:`OnlineEM` is a mixin of :class:`.mixture.GaussianMixture`, listed before
:class:`.base.LatentModelEstimator` (split out of it; it uses the estimator's ``_start``,
``_warm_params``, ``_options_for``, ...). Under any other strategy it defers to the base class.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import _fit_context
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import validate_data

from inference import online_em
from inference.estimators_sklearn.continuation import _can_partial_fit
from inference.estimators_sklearn.support import kept_random_state, seed_from
from inference.results import FitResult


class OnlineEM:
    """Online EM's ``fit`` and ``partial_fit``, and the running state it keeps."""

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
                else lambda config, rows, generator: self._start(config, rows,
                                                                  np.random.RandomState(seed)))
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
        X = validate_data(self, X, reset=first, dtype=[np.float64, np.float32],
                          ensure_min_samples=1)
        spec = self._spec()
        device = self._device()
        history: list[float] = []
        if first:  # fit's dtype rules: float32 kept float32 on a GPU and in the attributes
            self._output_dtype = X.dtype
            config = self._make_config(spec, *X.shape)
            seed = seed_from(self.random_state)
            x = torch.tensor(X, dtype=self._compute_dtype(X.dtype, device), device=device)
            with kept_random_state(device):
                state = online_em.StepwiseState(
                    self._start(config, x, np.random.RandomState(seed)))
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

