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
Each is a :class:`~pyro.nn.PyroModule`: its parameters (``PyroParam``s, the encoder submodule)
are its ``state_dict()``, named in the param store from the module's own ``name`` (``""`` by
default: ``z_loc``, ``z_scale``, ``z_scale_tril``, ``encoder$$$...``). Parameters whose shape
depends on the data are made on the first call, from x's rows, dtype and device.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule, PyroParam
from torch import nn
from torch.distributions import constraints

from guides.registry import register
from zoo.errors import InputError
from zoo.ppca import LinearGaussianModel, PPCAConfig, posterior
from zoo.registry import DATA_PLATE


def _needs_data(x, name: str) -> torch.Tensor:
    if x is None:
        raise InputError(f"the {name} guide needs data x; it approximates p(z | x)")
    return x


class _Guide(PyroModule):
    """The frame of the linear-Gaussian guides: model, config and a name prefix."""
    per_datapoint = False  # free parameters for each training row

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig, *, name: str = ""):
        super().__init__(name)
        self.model, self.config = model, config

    def setup(self, x: torch.Tensor) -> None:
        """Prepare for fitting ``x`` before SVI starts (nothing to do: parameters start on
        the first call)."""


class ExactGuide(_Guide):
    """The exact posterior from the model's current parameters (read from the param store
    without making ``pyro.param`` sites, so they stay the model's parameters)."""

    def forward(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "exact")
        params = self.model.params(x, record=False)
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            pyro.sample("z", posterior(self.config, params, x[idx]))


class MeanFieldGuide(_Guide):
    """A free diagonal Gaussian per datapoint; indexed by the data plate's subsample indices,
    so it only applies to the rows it was fitted on. Starts at the prior N(0, I)."""
    per_datapoint = True  # free parameters for each training row

    def forward(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "mean-field")
        size, q = x.shape[0], self.config.latent_dim
        if "z_loc" not in self._pyro_params:
            self.z_loc = PyroParam(lambda: x.new_zeros(size, q))
            self.z_scale = PyroParam(lambda: x.new_ones(size, q), constraints.positive)
        loc, scale = self.z_loc, self.z_scale
        if loc.shape[0] != size:
            raise InputError(f"the mean-field guide was fitted on {loc.shape[0]} rows and cannot "
                             f"describe {size}; it has parameters per training row only")
        with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size, device=x.device) as idx:
            pyro.sample("z", dist.Normal(loc[idx], scale[idx]).to_event(1))


class AmortizedGuide(_Guide):
    """A linear encoder for the mean, ``z_mean = A x + b`` (the exact posterior mean is linear
    in x), and one learned Cholesky factor ``z_scale_tril (q, q)`` shared by all rows (the
    exact posterior covariance does not depend on x). The encoder is a submodule registered
    with Pyro under the guide's name (``encoder``) and built on the first call, in x's dtype."""

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig, *, name: str = ""):
        super().__init__(model, config, name=name)
        self.encoder: nn.Module | None = None

    def _build(self, x: torch.Tensor) -> nn.Module:
        return nn.Linear(self.config.dim, self.config.latent_dim)

    def _encoder(self, x: torch.Tensor) -> nn.Module:
        if self._modules.get("encoder") is None:  # self.encoder would register it with Pyro
            self.encoder = self._build(x).to(dtype=x.dtype, device=x.device)
        # update_module_params: a new guide over a filled param store (a loaded run) takes the
        # stored weights
        return pyro.module(self._pyro_get_fullname("encoder"), self._modules["encoder"],
                           update_module_params=True)

    def _distribution(self, encoder: nn.Module, batch: torch.Tensor):
        q = self.config.latent_dim
        if "z_scale_tril" not in self._pyro_params:
            self.z_scale_tril = PyroParam(
                lambda: torch.eye(q, dtype=batch.dtype, device=batch.device),
                constraints.lower_cholesky)
        scale_tril = self.z_scale_tril
        return dist.MultivariateNormal(encoder(batch),
                                       scale_tril=scale_tril.expand(batch.shape[0], q, q))

    def forward(self, x=None, *, num_data=None, subsample_size=None):
        x = _needs_data(x, "amortized")
        encoder = self._encoder(x)
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            pyro.sample("z", self._distribution(encoder, x[idx]))


class AmortizedMLPGuide(AmortizedGuide):
    """An MLP encoder ``x -> (mean, softplus scale)``: a diagonal Gaussian per row, the usual
    VAE encoder; ``hidden`` units in one hidden layer."""

    def __init__(self, model: LinearGaussianModel, config: PPCAConfig, hidden: int = 64, *,
                 name: str = ""):
        super().__init__(model, config, name=name)
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
