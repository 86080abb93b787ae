"""Guides q(z | x) for the Gaussian mixture's assignments, each with the model's signature.

- ``exact``: the true posterior p(z | x) under the model's current parameters (the E-step),
  held fixed while the parameters take a gradient step: the ELBO is tight and its gradient is
  the gradient of log p(x) (Fisher's identity), so SVI climbs to the EM fixed point.
- ``mean-field``: one free categorical per datapoint, ``softmax(assignment_logits[n])``,
  indexed by the data plate's subsample indices, so it stays correct under minibatching.
- ``amortized``: an MLP encoder x -> logits, registered with ``pyro.module`` in the guide;
  its default estimator is ``TraceEnum_ELBO`` (its q(z | x) enumerated: an exact expectation;
  with z sampled, the score-function noise let a component die mid-fit on iris).
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

import math

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import nn

from guides.registry import register
from zoo.errors import InputError
from zoo.gmm import (
    GaussianMixtureModel,
    GMMConfig,
    SingularCovarianceError,
    from_labels,
    lloyd,
    log_marginal,
    log_responsibilities,
    m_step,
)
from zoo.gmm_init import lloyd_tolerance
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


WARM_UP_ROWS = 65536  # rows the amortized guide's EM warm-up runs on at most
WARM_UP_ITERATIONS = 200  # its EM iterations at most, under an enumerating ELBO (the default)


class AmortizedGuide(AssignmentGuide):
    """An MLP encoder from x to the logits of q(z | x), shared by all datapoints.

    The encoder standardizes its input with the mean and standard deviation of the data it
    first sees (fixed buffers), then applies ``hidden_layers`` Softplus layers of
    ``hidden_size`` units. :meth:`setup` (which the SVI strategy runs before SVI starts) first
    warms the mixture up with the exact guide (:meth:`warm_up`: its coordinate ascent, EM, from
    the model's start and from Lloyd's k-means of its means), which the model then starts
    from (by default only under an enumerating ELBO, this guide's default: with z sampled,
    Adam's noise-driven first steps walk away from an optimum, on Old Faithful 300 steps at lr
    0.02 ended 0.023 nats per row below EM with the warm-up, 3e-4 without); then it fits the
    encoder for ``warm_start_steps`` Adam steps to the exact posterior there (on at most 4096
    rows; on iris, KL(p || q) of 5e-4 nats per row after 1000 steps, 0.035 after 200). An
    encoder that starts uniform pulls the components onto each other in the first steps (the
    collapse of Pyro issue #635), and an encoder and mixture that move together from a k-means
    start let a component die (a weight of 1e-12, an EM fixed point: on standardized iris with
    K=3, 0.22 nats per row below EM's optimum in 3 seeds of 3 at lr 0.05, 1 of 3 at lr 0.01).
    SVI then keeps the optimum at the guide's learning rate (:attr:`svi_defaults`, 0.01: at
    the mixture's 0.05 the encoder's first Adam steps throw the fit off it). Calling the guide
    never trains it.
    """

    # what SVI runs this guide with, over the model's svi_defaults (the strategy reads it)
    svi_defaults = {"lr": 1e-2}

    def __init__(self, model: GaussianMixtureModel, config: GMMConfig, *,
                 hidden_size: int = 32, hidden_layers: int = 2, warm_start_steps: int = 1000,
                 warm_up_iterations: int | None = None, enumerate: bool = False,
                 name: str = ""):
        super().__init__(model, config, enumerate=enumerate, name=name)
        if warm_up_iterations is None:  # the warm-up holds only where q is enumerated
            warm_up_iterations = WARM_UP_ITERATIONS if enumerate else 0
        if hidden_size < 1 or hidden_layers < 0 or warm_start_steps < 0 or warm_up_iterations < 0:
            raise InputError(f"hidden_size={hidden_size} must be at least 1, hidden_layers="
                             f"{hidden_layers}, warm_start_steps={warm_start_steps} and "
                             f"warm_up_iterations={warm_up_iterations} at least 0")
        self.warm_up_iterations = warm_up_iterations
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
        """Place the encoder on ``x``, warm the mixture up (:meth:`warm_up`) and fit the
        encoder to the exact posterior of the model's start (``warm_start_steps`` Adam steps,
        cross-entropy)."""
        self._place(x)
        if self.warm_up_iterations:
            self.warm_up(x)
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

    def warm_up(self, x: torch.Tensor) -> int:
        """EM (the exact guide's coordinate ascent) on ``x`` (at most :data:`WARM_UP_ROWS`
        rows, a seeded draw) from two starts: the model's, and the M-step of the labels of
        Lloyd's k-means from its means (EM's own ``kmeans`` start); each runs up to
        ``warm_up_iterations`` iterations, until one gains less than 1e-6 nats per row. The
        model starts from the better end (its ``initial_params``). Returns the iterations
        taken."""
        rows = x
        if x.shape[0] > WARM_UP_ROWS:
            draw = torch.Generator().manual_seed(0)
            rows = x[torch.randperm(x.shape[0], generator=draw)[:WARM_UP_ROWS].to(x.device)]
        with pyro.get_param_store().scope():  # the model's start, read without keeping it
            start = self._model_params(rows)
        starts = [start]
        with torch.no_grad():
            try:
                labels = lloyd(rows, start["means"], tol=lloyd_tolerance(rows)).labels
                starts.append(from_labels(self.config, rows, labels))
            except SingularCovarianceError:
                pass
            ends = [self._em(rows, params) for params in starts]
        params = max(ends, key=lambda end: end[1])[0]
        self.model.initial_params = {name: value.detach().clone()
                                     for name, value in params.items()}
        return sum(end[2] for end in ends)

    def _em(self, rows: torch.Tensor, params) -> tuple[dict, float, int]:
        """EM from ``params``: the last good iterate, its mean log-likelihood, iterations."""
        before = float(log_marginal(self.config, params, rows).mean())
        taken = 0
        while taken < self.warm_up_iterations:
            taken += 1
            try:
                update = m_step(self.config, rows,
                                log_responsibilities(self.config, params, rows).exp())
            except SingularCovarianceError:
                break
            after = float(log_marginal(self.config, update, rows).mean())
            if not after >= before - 1e-9:  # EM never falls; NaN or a fall: stop here
                break
            params, gain, before = update, after - before, after
            if gain < 1e-6:
                break
        return params, (-math.inf if math.isnan(before) else before), taken

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
             elbo="TraceEnum_ELBO" if _name in ("enumerate", "amortized") else "Trace_ELBO")
