"""Maximum likelihood in closed form, where the model has one (PPCA: Tipping & Bishop)."""

from __future__ import annotations

import time

import torch

from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, FitContext, Strategy, register
from zoo.registry import CLOSED_FORM


class ClosedForm(Strategy):
    name = "closed-form"
    summary = "maximum likelihood in closed form (where the model has one)"
    requires = (CLOSED_FORM,)
    baseline = True

    def fit(self, spec, config, x, options, *, guide=None,
            context: FitContext = DEFAULT_CONTEXT) -> FitResult:
        start = time.perf_counter()
        params = spec.closed_form(config, x)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        return FitResult(model=spec.name, inference=self.name, guide=None, params=params,
                         seconds=time.perf_counter() - start, steps=1, converged=True,
                         device=str(x.device), seed=context.seed)


register(ClosedForm())
