"""A one-factor model, declared the way a user declares one:

    z_n ~ N(0, 1),   x_n | z_n ~ N(loc + weight z_n, noise I),   p(x_n) = N(loc, w wᵀ + noise I)

It offers the plugin's MOMENTS capability: maximum likelihood in closed form from the mean and
covariance (probabilistic PCA with one component, Tipping & Bishop)."""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from lvm_zoo_toy_plugin import MOMENTS
from zoo import declare
from zoo.registry import DATA_PLATE


@dataclass(frozen=True)
class FactorConfig:
    dim: int = 2


def factor_model(x=None, *, num_data=None, subsample_size=None, config: FactorConfig):
    """One latent factor behind every row."""
    like = x if x is not None else torch.zeros(())
    loc = pyro.param("loc", lambda: like.new_zeros(config.dim))
    weight = pyro.param("weight", lambda: like.new_full((config.dim,), 0.5))
    noise = pyro.param("noise", lambda: like.new_ones(()), constraint=constraints.positive)
    size = x.shape[0] if x is not None else num_data
    with pyro.plate(DATA_PLATE, size, subsample_size=subsample_size, device=like.device) as rows:
        z = pyro.sample("z", dist.Normal(like.new_zeros(()), 1.0))
        mean = loc + weight * z.unsqueeze(-1)
        return pyro.sample("x", dist.Normal(mean, noise.sqrt()).to_event(1),
                           obs=None if x is None else x[rows])


def log_marginal(config, params, x):
    """log N(x_n | loc, w wᵀ + noise I) per row, nats."""
    covariance = torch.outer(params["weight"], params["weight"]) + params["noise"] * torch.eye(
        config.dim, dtype=x.dtype, device=x.device)
    return dist.MultivariateNormal(params["loc"], covariance).log_prob(x)


def from_moments(config, x):
    """The maximum-likelihood parameters: the mean, and the covariance's leading eigenpair."""
    centred = x - x.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])  # ascending
    noise = values[:-1].mean()
    weight = vectors[:, -1] * (values[-1] - noise).clamp(min=0).sqrt()
    return {"loc": x.mean(0), "weight": weight, "noise": noise}


SPEC = declare("toy-factor", factor_model, config=FactorConfig, local_sites=("z",),
               summary="one latent factor (a plugin's model family)",
               log_marginal=log_marginal, capabilities={MOMENTS: from_moments},
               svi_defaults={"steps": 30, "lr": 0.05})
