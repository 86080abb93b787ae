"""A strategy that fits any model offering the plugin's MOMENTS capability."""

import time

from inference.results import FitResult
from inference.strategies import DEFAULT_CONTEXT, Strategy, register
from lvm_zoo_toy_plugin import MOMENTS


class Moments(Strategy):
    name = "toy-moments"
    summary = "maximum likelihood from the data's moments (a plugin's strategy)"
    requires = (MOMENTS,)
    baseline = True

    def fit(self, spec, config, x, options, *, guide=None, context=DEFAULT_CONTEXT):
        start = time.perf_counter()
        params = spec.capability(MOMENTS)(config, x)
        return FitResult(model=spec.name, inference=self.name, guide=None, params=params,
                         seconds=time.perf_counter() - start, steps=1, converged=True,
                         device=str(x.device), seed=context.seed)


register(Moments())
