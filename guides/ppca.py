"""Guides for PPCA and factor analysis: q(z_n | x_n) for the linear-Gaussian model.

- :class:`ExactGuide` (``exact``): the true posterior N(G W^T Psi^-1 (x_n - mu), G) computed
  from the model's current parameters. The ELBO is then log p(x) for every draw of z.
- :class:`MeanFieldGuide` (``mean-field``): a free diagonal Gaussian per datapoint,
  N(m_n, diag(s_n^2)), parameters ``z_loc (N, q)`` and ``z_scale (N, q)``.
- :class:`AmortizedGuide` (``amortized``): a linear encoder x -> A x + b for the mean and one
  free full covariance (``z_scale_tril``), which can represent the exact posterior exactly.
- :class:`AmortizedMLPGuide` (``amortized-mlp``): an MLP encoder x -> (mean, diagonal scale),
  the usual VAE encoder.

Every guide is built as ``Guide(model, config)`` and called like the model,
``guide(x, *, num_data=None, subsample_size=None)``, inside the same ``pyro.plate("data")``.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.distributions import constraints

from guides.registry import register
from zoo.errors import InputError
from zoo.ppca import LinearGaussianModel, PPCAConfig, posterior


def _needs_data(x, name: str) -> torch.Tensor:
    if x is None:
        raise InputError(f"the {name} guide needs data x; it approximates p(z | x)")
    return x


class ExactGuide:
    """The exact posterior from the model's current parameters (read from the param store
    without making ``pyro.param`` sites, so they stay the model's parameters)."""
    per_datapoint = False  # free parameters for each training row

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig):
        self.model, self.config = model, config

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "exact")
        params = self.model.params(x, record=False)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as idx:
            pyro.sample("z", posterior(self.config, params, x[idx]))


class MeanFieldGuide:
    """A free diagonal Gaussian per datapoint; indexed by the data plate's subsample indices,
    so it only applies to the rows it was fitted on. Starts at the prior N(0, I)."""
    per_datapoint = True  # free parameters for each training row

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig):
        self.config = config

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "mean-field")
        size, q = x.shape[0], self.config.latent_dim
        loc = pyro.param("z_loc", lambda: x.new_zeros(size, q))
        scale = pyro.param("z_scale", lambda: x.new_ones(size, q), constraint=constraints.positive)
        if loc.shape[0] != size:
            raise InputError(f"the mean-field guide was fitted on {loc.shape[0]} rows and cannot "
                             f"describe {size}; it has parameters per training row only")
        with pyro.plate("data", size, subsample_size=subsample_size, device=x.device) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))


class AmortizedGuide:
    """A linear encoder for the mean, ``z_mean = A x + b`` (the exact posterior mean is linear
    in x), and one learned Cholesky factor ``z_scale_tril (q, q)`` shared by all rows (the
    exact posterior covariance does not depend on x). The encoder is registered as
    ``pyro.module("encoder")`` inside the guide and built on the first call, in x's dtype."""
    per_datapoint = False  # free parameters for each training row

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig):
        self.config = config
        self.encoder: nn.Module | None = None

    def _build(self, x: torch.Tensor) -> nn.Module:
        return nn.Linear(self.config.dim, self.config.latent_dim)

    def _encoder(self, x: torch.Tensor) -> nn.Module:
        if self.encoder is None:
            self.encoder = self._build(x).to(dtype=x.dtype, device=x.device)
        return pyro.module("encoder", self.encoder, update_module_params=True)

    def _distribution(self, encoder: nn.Module, batch: torch.Tensor):
        q = self.config.latent_dim
        scale_tril = pyro.param("z_scale_tril", lambda: torch.eye(q, dtype=batch.dtype,
                                                                  device=batch.device),
                                constraint=constraints.lower_cholesky)
        return dist.MultivariateNormal(encoder(batch),
                                       scale_tril=scale_tril.expand(batch.shape[0], q, q))

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "amortized")
        encoder = self._encoder(x)
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as idx:
            pyro.sample("z", self._distribution(encoder, x[idx]))


class AmortizedMLPGuide(AmortizedGuide):
    """An MLP encoder ``x -> (mean, softplus scale)``: a diagonal Gaussian per row, the usual
    VAE encoder; ``hidden`` units in one hidden layer."""

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig, hidden: int = 64):
        super().__init__(model, config)
        if hidden < 1:
            raise InputError(f"hidden={hidden} must be at least 1")
        self.hidden = hidden

    def _build(self, x: torch.Tensor) -> nn.Module:
        return nn.Sequential(nn.Linear(self.config.dim, self.hidden), nn.Softplus(),
                             nn.Linear(self.hidden, 2 * self.config.latent_dim))

    def _distribution(self, encoder: nn.Module, batch: torch.Tensor):
        mean, raw_scale = encoder(batch).chunk(2, dim=-1)
        return dist.Normal(mean, nn.functional.softplus(raw_scale) + 1e-6).to_event(1)


_ELBOS = {ExactGuide: "Trace_ELBO", MeanFieldGuide: "TraceMeanField_ELBO",
          AmortizedGuide: "Trace_ELBO", AmortizedMLPGuide: "TraceMeanField_ELBO"}
for _model in ("ppca", "fa"):  # factor analysis shares the linear-Gaussian guides
    for _name, _guide in (("exact", ExactGuide), ("mean-field", MeanFieldGuide),
                          ("amortized", AmortizedGuide), ("amortized-mlp", AmortizedMLPGuide)):
        register(_model, _name, _guide, elbo=_ELBOS[_guide], default=_name == "exact")
