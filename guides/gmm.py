"""Guides q(z | x) for the Gaussian mixture's assignments, each with the model's signature.

- ``exact``: the true posterior p(z | x) under the model's current parameters (the E-step),
  held fixed while the parameters take a gradient step: the ELBO is tight and its gradient is
  the gradient of log p(x) (Fisher's identity), so SVI climbs to the EM fixed point.
- ``mean-field``: one free categorical per datapoint, ``softmax(assignment_logits[n])``,
  indexed by the data plate's subsample indices, so it stays correct under minibatching.
- ``amortized``: an MLP encoder x -> logits, registered with ``pyro.module`` in the guide.
- ``enumerate``: no guide for z under ``TraceEnum_ELBO``, which sums z out of the model
  exactly; the exact guide under any other estimator.

Every guide is a :class:`~pyro.nn.PyroModule`: its parameters are attributes (``PyroParam``s
and the encoder submodule), so its state is its ``state_dict()``; their param-store names come
from the module's own name (``name=""`` by default: ``assignment_logits``, ``encoder$$$...``).
Whether the ELBO enumerates is said at construction (``enumerate=True``, set by the SVI
strategy for ``TraceEnum_ELBO``): the first three guides then mark z for parallel enumeration,
so the expectation over q(z) is exact (zero-variance), and ``enumerate`` leaves z to the model;
otherwise they sample z. Preparation that is not a parameter's start (the amortized encoder's
warm start) is an explicit :meth:`AssignmentGuide.setup` step the strategy runs before SVI.
Every guide exposes ``posterior(x) -> {"z": Categorical}`` for evaluation, e.g. the exact ELBO
gap ``log p(x) - ELBO = KL(q || p(z | x))`` via :func:`zoo.gmm.elbo`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import nn

from guides.registry import register
from zoo.errors import InputError
from zoo.gmm import GaussianMixtureModel, GMMConfig, log_responsibilities
from zoo.registry import DATA_PLATE, Params


class AssignmentGuide(PyroModule):
    """Base of the GMM guides: validates its arguments, opens the data plate, samples z.

    Subclasses say how the logits of ``q(z_n)`` for the rows ``index`` are computed.
    ``enumerate=True``: the ELBO is ``TraceEnum_ELBO``, so z is marked for parallel
    enumeration instead of sampled. ``name`` prefixes the param-store names of its parameters.
    """

    per_datapoint = False  # whether it holds free parameters for each training row

    def __init__(self, model: GaussianMixtureModel, config: GMMConfig, *,
                 enumerate: bool = False, name: str = ""):
        if not isinstance(model, GaussianMixtureModel):
            raise InputError(f"{type(self).__name__} guides a Gaussian mixture; got a model of "
                             f"type {type(model).__name__}; build it with zoo.gmm.make_model")
        if (config.components, config.dim) != (model.config.components, model.config.dim):
            raise InputError(f"the guide's config (components={config.components}, dim="
                             f"{config.dim}) differs from the model's (components="
                             f"{model.config.components}, dim={model.config.dim}); pass the "
                             "model's own config")
        super().__init__(name)
        self.model = model
        self.config = config
        self.enumerate = bool(enumerate)

    def setup(self, x: torch.Tensor) -> None:
        """Prepare for fitting ``x : (N, D)`` before SVI starts (nothing to do by default)."""

    def logits(self, x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Unnormalized log q(z_n = k) for the rows ``x[index]``, shape ``(len(index), K)``."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise InputError(f"the {type(self).__name__} q(z | x) needs the data x; sampling "
                             "from the prior needs the model alone")
        _check_subsample(x, subsample_size)
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as index:
            infer = {"enumerate": "parallel"} if self.enumerate else {}
            return pyro.sample("z", dist.Categorical(logits=self.logits(x, index)), infer=infer)

    def posterior(self, x: torch.Tensor) -> dict[str, dist.Categorical]:
        """``{"z": q(z | x)}`` for every row of ``x : (N, D)``, with the current parameters."""
        with torch.no_grad(), poutine.block(), self._pyro_context:
            index = torch.arange(x.shape[0], device=x.device)
            return {"z": dist.Categorical(logits=self.logits(x, index).detach())}

    def _model_params(self, x: torch.Tensor) -> Params:
        # Read (and on the first call create) the model's pyro.params without recording them in
        # this guide's trace, so that they stay model parameters; detached: q is held fixed.
        with poutine.block():
            return {name: value.detach() for name, value in self.model.current_params(x).items()}


def _check_subsample(x: torch.Tensor, subsample_size: int | None) -> None:
    if subsample_size is not None and not 1 <= subsample_size <= x.shape[0]:
        raise InputError(f"subsample_size={subsample_size} must be between 1 and the "
                         f"{x.shape[0]} datapoints")


class ExactGuide(AssignmentGuide):
    """q(z | x) = p(z | x) under the model's current parameters (the responsibilities)."""

    def logits(self, x, index):
        return log_responsibilities(self.config, self._model_params(x), x[index])


class MeanFieldGuide(AssignmentGuide):
    """Free per-datapoint categoricals, the ``PyroParam`` ``assignment_logits : (N, K)``,
    started at the exact posterior of the model's initial parameters (when first called on
    ``x``, unless the param store already holds them: a loaded fit)."""

    per_datapoint = True

    def logits(self, x, index):
        if "assignment_logits" not in self._pyro_params:
            self.assignment_logits = PyroParam(
                lambda: log_responsibilities(self.config, self._model_params(x), x))
        logits = self.assignment_logits
        if logits.shape != (x.shape[0], self.config.components):
            raise InputError(f"the mean-field guide holds logits for {logits.shape[0]} "
                             f"datapoints but got {x.shape[0]}; build a new guide for new data")
        return logits[index]


class AmortizedGuide(AssignmentGuide):
    """An MLP encoder from x to the logits of q(z | x), shared by all datapoints.

    The encoder standardizes its input with the mean and standard deviation of the data it
    first sees (fixed buffers), then applies ``hidden_layers`` Softplus layers of
    ``hidden_size`` units. :meth:`setup` (which the SVI strategy runs before SVI starts) fits
    it for ``warm_start_steps`` Adam steps to the exact posterior under the model's initial
    parameters (on at most 4096 rows), as the mean-field guide starts there: an encoder that
    starts uniform pulls the components onto each other in the first steps, the collapse of
    Pyro issue #635. Calling the guide never trains it.
    """

    def __init__(self, model: GaussianMixtureModel, config: GMMConfig, *,
                 hidden_size: int = 32, hidden_layers: int = 2, warm_start_steps: int = 200,
                 enumerate: bool = False, name: str = ""):
        super().__init__(model, config, enumerate=enumerate, name=name)
        if hidden_size < 1 or hidden_layers < 0 or warm_start_steps < 0:
            raise InputError(f"hidden_size={hidden_size} must be at least 1, hidden_layers="
                             f"{hidden_layers} and warm_start_steps={warm_start_steps} at least 0")
        sizes = [config.dim] + [hidden_size] * hidden_layers
        layers: list[nn.Module] = []
        for inputs, outputs in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(inputs, outputs), nn.Softplus()]
        layers.append(nn.Linear(sizes[-1], config.components))
        self.encoder = nn.Sequential(*layers)
        self.warm_start_steps = warm_start_steps
        self._placed = False

    def _place(self, x: torch.Tensor) -> None:
        # The encoder takes the data's dtype, device and input scaling once.
        encoder = self._modules["encoder"]  # not self.encoder: that registers it with Pyro
        scale = x.std(0) if x.shape[0] > 1 else torch.ones_like(x[0])
        encoder.register_buffer("input_mean", x.mean(0).detach().clone())
        encoder.register_buffer("input_scale",
                                torch.where(scale > 0, scale, torch.ones_like(scale)))
        encoder.to(dtype=x.dtype, device=x.device)
        self._placed = True

    def setup(self, x: torch.Tensor) -> None:
        """Place the encoder on ``x`` and fit it to the exact posterior of the model's
        initial parameters (``warm_start_steps`` Adam steps, cross-entropy)."""
        self._place(x)
        if not self.warm_start_steps:
            return
        encoder = self._modules["encoder"]
        rows = x if x.shape[0] <= 4096 else x[torch.randperm(x.shape[0], device=x.device)[:4096]]
        with pyro.get_param_store().scope():  # the model's start, read without keeping it
            target = log_responsibilities(self.config, self._model_params(x), rows).exp()
        inputs = (rows - encoder.input_mean) / encoder.input_scale
        optimizer = torch.optim.Adam(encoder.parameters(), lr=1e-2)
        with torch.enable_grad():
            for _ in range(self.warm_start_steps):
                log_q = torch.log_softmax(encoder(inputs), dim=-1)
                loss = -(target * log_q).sum(-1).mean()  # cross-entropy to p(z | x)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

    def logits(self, x, index):
        if not self._placed:
            self._place(x)
        # update_module_params: a new guide over a filled param store (evaluation, a loaded
        # run) must use the stored weights, not its own fresh ones
        encoder = pyro.module(self._pyro_get_fullname("encoder"), self._modules["encoder"],
                              update_module_params=True)
        rows = (x[index] - encoder.input_mean) / encoder.input_scale
        return encoder(rows)


class EnumerateGuide(ExactGuide):
    """No q for z under ``TraceEnum_ELBO`` (``enumerate=True``), which sums z out of the
    model: ELBO = log p(x) exactly. Otherwise (another estimator, evaluation) it is the exact
    guide, so its ELBO means the same thing everywhere."""

    def forward(self, x=None, *, num_data=None, subsample_size=None):
        if x is None or not self.enumerate:
            return super().forward(x, num_data=num_data, subsample_size=subsample_size)
        _check_subsample(x, subsample_size)
        # The guide owns the subsample: the model replays this plate's indices.
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size, device=x.device):
            pass


GUIDES = {
    "exact": ExactGuide,
    "mean-field": MeanFieldGuide,
    "amortized": AmortizedGuide,
    "enumerate": EnumerateGuide,
}
for _name, _guide in GUIDES.items():
    register("gmm", _name, _guide, default=_name == "exact",
             elbo="TraceEnum_ELBO" if _name == "enumerate" else "Trace_ELBO")
