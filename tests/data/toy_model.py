"""A one-factor linear-Gaussian model declared in a user file, for the core tests.

z_n ~ N(0, 1);  x_n | z_n ~ N(loc + weight z_n, noise² I).  Marginal: N(loc, w wᵀ + noise² I).
"""

from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo import InputError, ModelSpec, register


@dataclass(frozen=True)
class ToyConfig:
    dim: int = field(default=2, metadata={"cli": False})
    init_scale: float = field(default=0.5, metadata={"help": "scale of the initial weight"})

    def validate(self, num_data: int) -> None:
        if self.dim < 2:
            raise InputError(f"toy needs at least 2 columns, got {self.dim}")


class ToyModel:
    def __init__(self, config, params=None):
        self.config, self.params = config, params

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        like = x if x is not None else torch.zeros(())
        dim = self.config.dim
        init = self.params or {
            "loc": torch.zeros(dim), "weight": torch.full((dim,), self.config.init_scale),
            "noise": torch.ones(())}
        loc = pyro.param("loc", lambda: init["loc"].to(like))
        weight = pyro.param("weight", lambda: init["weight"].to(like))
        noise = pyro.param("noise", lambda: init["noise"].to(like), constraint=constraints.positive)
        num_data = x.shape[0] if x is not None else num_data
        with pyro.plate("data", num_data, subsample_size=subsample_size,
                        device=like.device) as idx:
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=like.dtype, device=like.device),
                                             1.0))
            mean = loc + weight * z.unsqueeze(-1)
            return pyro.sample("x", dist.Normal(mean, noise).to_event(1),
                               obs=None if x is None else x[idx])


class LinearEncoder:
    per_datapoint = False

    def __init__(self, model, config):
        self.net = torch.nn.Linear(config.dim, 2)

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        pyro.module("encoder", self.net.to(x))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            out = self.net(x[idx])
            pyro.sample("z", dist.Normal(out[..., 0], out[..., 1].exp()))


def log_marginal(config, params, x):
    cov = (torch.outer(params["weight"], params["weight"])
           + params["noise"] ** 2 * torch.eye(config.dim, dtype=x.dtype, device=x.device))
    return dist.MultivariateNormal(params["loc"], covariance_matrix=cov).log_prob(x)


SPEC = register(ModelSpec(
    name="toy", summary="one-factor linear-Gaussian model (core tests)", config_class=ToyConfig,
    make_model=ToyModel, guides={"amortized": LinearEncoder}, default_data="old-faithful",
    log_marginal=log_marginal, local_sites=("z",), svi_defaults={"steps": 300, "lr": 0.05}))
