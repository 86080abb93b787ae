"""Guides for the deep Gaussian latent-variable model: what we believe about z given x.

- ``amortized``: an encoder network, q_φ(z | x) = N(μ_φ(x), diag σ²_φ(x)), one set of weights
  for every datapoint (the VAE). It works on rows it has never seen.
- ``mean-field``: free N(m_n, diag s_n²) per datapoint. The same ELBO without amortization, so
  on a subset it measures the amortization gap (:func:`inference.estimators.amortization_gap`);
  it has no parameters for new rows (``per_datapoint = True``).

No exact posterior exists for a nonlinear decoder; the reference for log p(x) is importance
sampling with a guide as proposal (:mod:`inference.evaluate`).

Both guides have the model's signature ``guide(x, *, num_data=None, subsample_size=None)``,
draw z inside the same ``pyro.plate("data", ...)`` with ``.to_event(1)``, and scale the z site
by the model's β so the ELBO is E[log p(x | z)] − β KL(q ‖ p). With ``reparameterized=False``
(or ``config.score_function``) z is drawn without ``rsample`` and Trace_ELBO falls back on the
score-function (log-trick) gradient.

Both are :class:`~pyro.nn.PyroModule` objects whose parameters are their ``state_dict()``,
named in the param store from the module's own ``name`` (``""`` by default: ``encoder$$$...``,
the name a VampPrior model shares; ``z_loc``, ``z_scale``).
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from guides.registry import register
from zoo.dglvm import DGLVMConfig, Encoder, check_data
from zoo.errors import InputError
from zoo.registry import DATA_PLATE


class ScoreFunctionNormal(dist.Normal):
    """A Normal whose draws carry no reparameterization, so ELBO estimators fall back on the
    score-function (log-trick) gradient ∇ log q(z) · (log p − log q).

    A subclass rather than ``Normal(...).has_rsample_(False)``: the plate's broadcasting
    re-expands the distribution, and after ``.to_event(1)`` Pyro 1.9 cannot copy the instance
    flag onto the expanded ``Independent`` (AttributeError); a class attribute survives
    ``expand``.
    """

    has_rsample = False


def _posterior_site(loc, scale, reparameterized: bool) -> dist.TorchDistribution:
    normal = dist.Normal if reparameterized else ScoreFunctionNormal
    return normal(loc, scale).to_event(1)


class AmortizedGuide(PyroModule):
    """The encoder guide (the VAE); its encoder is registered with Pyro under the guide's name
    (``encoder``, which a VampPrior model shares)."""

    per_datapoint = False

    def __init__(self, model, config: DGLVMConfig, *, reparameterized: bool | None = None,
                 name: str = ""):
        super().__init__(name)
        self.config = config
        self.reparameterized = (not config.score_function if reparameterized is None
                                else reparameterized)
        self.encoder = Encoder(config)
        # weights are drawn on the first call, after the fit has seeded the generator
        self._draw_weights = True

    def setup(self, x: torch.Tensor) -> None:
        """Prepare for fitting ``x`` before SVI starts (nothing to do: the weights are drawn on
        the first call, from the generator the fit has seeded)."""

    def _prepare(self, x: torch.Tensor) -> nn.Module:
        encoder = self._modules["encoder"]  # self.encoder would register it with Pyro
        if self._draw_weights:
            for layer in encoder.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            self._draw_weights = False
        weight = encoder.net[0].weight
        if weight.device != x.device or weight.dtype != x.dtype:
            encoder.to(device=x.device, dtype=x.dtype)
        return encoder

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z | x) for ``x : (N, D)``, each (N, Q), without Pyro."""
        return self._prepare(x)(x)

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise InputError("the amortized guide needs the data x: it encodes q(z | x)")
        # update_module_params: a VampPrior model that registered "encoder" first shares it
        encoder = pyro.module(self._pyro_get_fullname("encoder"), self._prepare(x),
                              update_module_params=True)
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            loc, scale = encoder(x[idx])
            with poutine.scale(scale=self.config.beta):
                return pyro.sample("z", _posterior_site(loc, scale, self.reparameterized))


class MeanFieldGuide(PyroModule):
    """Free per-datapoint Gaussians: ``PyroParam`` attributes ``z_loc``, ``z_scale``, (N, Q),
    indexed by the data plate's subsample indices, made on the first call from x's rows.
    ``init_loc``/``init_scale`` (N, Q) start them, e.g. at an encoder's output; by default loc 0
    and scale ``init_scale_value``."""

    per_datapoint = True

    def __init__(self, model, config: DGLVMConfig, *, reparameterized: bool | None = None,
                 init_loc: torch.Tensor | None = None, init_scale: torch.Tensor | None = None,
                 init_scale_value: float = 0.1, name: str = ""):
        super().__init__(name)
        self.config = config
        self.reparameterized = (not config.score_function if reparameterized is None
                                else reparameterized)
        self.init_loc, self.init_scale = init_loc, init_scale
        self.init_scale_value = init_scale_value

    def setup(self, x: torch.Tensor) -> None:
        """Prepare for fitting ``x`` before SVI starts (nothing to do: the parameters start on
        the first call)."""

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise InputError("the mean-field guide needs the data x it was fitted on")
        if x.shape[-1] != self.config.dim:
            check_data(self.config, x)
        num_data, latent_dim = x.shape[0], self.config.latent_dim
        options = {"dtype": x.dtype, "device": x.device}
        if "z_loc" not in self._pyro_params:
            self.z_loc = PyroParam(lambda: (
                torch.zeros(num_data, latent_dim, **options) if self.init_loc is None
                else self.init_loc.detach().to(**options).clone()))
            self.z_scale = PyroParam(lambda: (
                torch.full((num_data, latent_dim), self.init_scale_value, **options)
                if self.init_scale is None else self.init_scale.detach().to(**options).clone()),
                constraints.positive)
        loc, scale = self.z_loc, self.z_scale
        if loc.shape[0] != num_data:
            raise InputError(f"the mean-field guide holds parameters for {loc.shape[0]} rows "
                             f"but got {num_data}; it has none for new rows: use the "
                             "amortized guide on held-out data")
        with pyro.plate(DATA_PLATE, num_data, subsample_size=subsample_size,
                        device=x.device) as idx:
            with poutine.scale(scale=self.config.beta):
                return pyro.sample("z", _posterior_site(loc[idx], scale[idx],
                                                        self.reparameterized))


register("dglvm", "amortized", AmortizedGuide, default=True)
register("dglvm", "mean-field", MeanFieldGuide, elbo="TraceMeanField_ELBO")
