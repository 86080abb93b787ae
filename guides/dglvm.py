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
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from torch import nn
from torch.distributions import constraints

from guides.registry import register
from zoo.dglvm import DGLVMConfig, Encoder, check_data
from zoo.errors import InputError


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


class AmortizedGuide(nn.Module):
    """The encoder guide (the VAE); registered as ``pyro.module("encoder", ...)``."""

    per_datapoint = False

    def __init__(self, model, config: DGLVMConfig, *, reparameterized: bool | None = None):
        super().__init__()
        self.config = config
        self.reparameterized = (not config.score_function if reparameterized is None
                                else reparameterized)
        self.encoder = Encoder(config)
        # weights are drawn on the first call, after the fit has seeded the generator
        self._draw_weights = True

    def _prepare(self, x: torch.Tensor) -> None:
        if self._draw_weights:
            for layer in self.encoder.modules():
                if isinstance(layer, nn.Linear):
                    layer.reset_parameters()
            self._draw_weights = False
        weight = self.encoder.net[0].weight
        if weight.device != x.device or weight.dtype != x.dtype:
            self.encoder.to(device=x.device, dtype=x.dtype)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loc, scale) of q(z | x) for ``x : (N, D)``, each (N, Q), without Pyro."""
        self._prepare(x)
        return self.encoder(x)

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise InputError("the amortized guide needs the data x: it encodes q(z | x)")
        self._prepare(x)
        # update_module_params: a VampPrior model that registered "encoder" first shares it
        pyro.module("encoder", self.encoder, update_module_params=True)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            loc, scale = self.encoder(x[idx])
            with poutine.scale(scale=self.config.beta):
                return pyro.sample("z", _posterior_site(loc, scale, self.reparameterized))


class MeanFieldGuide(nn.Module):
    """Free per-datapoint Gaussians: params ``z_loc`` and ``z_scale``, each (N, Q), indexed by
    the data plate's subsample indices. ``init_loc``/``init_scale`` (N, Q) start them, e.g. at
    an encoder's output; by default loc 0 and scale ``init_scale_value``."""

    per_datapoint = True

    def __init__(self, model, config: DGLVMConfig, *, reparameterized: bool | None = None,
                 init_loc: torch.Tensor | None = None, init_scale: torch.Tensor | None = None,
                 init_scale_value: float = 0.1):
        super().__init__()
        self.config = config
        self.reparameterized = (not config.score_function if reparameterized is None
                                else reparameterized)
        self.init_loc, self.init_scale = init_loc, init_scale
        self.init_scale_value = init_scale_value

    def forward(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                subsample_size: int | None = None) -> torch.Tensor:
        if x is None:
            raise InputError("the mean-field guide needs the data x it was fitted on")
        if x.shape[-1] != self.config.dim:
            check_data(self.config, x)
        num_data, latent_dim = x.shape[0], self.config.latent_dim
        options = {"dtype": x.dtype, "device": x.device}
        loc = pyro.param("z_loc", lambda: (
            torch.zeros(num_data, latent_dim, **options) if self.init_loc is None
            else self.init_loc.detach().to(**options).clone()))
        scale = pyro.param("z_scale", lambda: (
            torch.full((num_data, latent_dim), self.init_scale_value, **options)
            if self.init_scale is None else self.init_scale.detach().to(**options).clone()),
            constraint=constraints.positive)
        if loc.shape[0] != num_data:
            raise InputError(f"the mean-field guide holds parameters for {loc.shape[0]} rows "
                             f"but got {num_data}; it has none for new rows: use the "
                             "amortized guide on held-out data")
        with pyro.plate("data", num_data, subsample_size=subsample_size,
                        device=x.device) as idx:
            with poutine.scale(scale=self.config.beta):
                return pyro.sample("z", _posterior_site(loc[idx], scale[idx],
                                                        self.reparameterized))


register("dglvm", "amortized", AmortizedGuide, default=True)
register("dglvm", "mean-field", MeanFieldGuide, elbo="TraceMeanField_ELBO")
