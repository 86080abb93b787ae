"""A two-component Gaussian mixture in one dimension (posteriordb's low_dim_gauss_mix).

    mu ~ N(0, 2) on each element, mu_1 < mu_2;  sigma_k ~ half-N(0, 2);  theta ~ Beta(5, 5)
    y_n ~ theta N(mu_1, sigma_1) + (1 - theta) N(mu_2, sigma_2),   n = 1..N

The component of each row is summed out (Stan's ``log_mix``), so every latent is global and
the rows, exchangeable, may be subsampled. The ordering of mu makes the labels identifiable.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from zoo.posteriordb.base import (
    OrderedNormal,
    SuiteConfig,
    load_data,
    named,
    need_rows,
    posterior,
    scalar,
    vector,
)
from zoo.registry import DATA_PLATE


def gauss_mix_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (N, 1)``."""
    x = need_rows(x, "low_dim_gauss_mix-low_dim_gauss_mix", ("y",))
    mu = pyro.sample("mu", OrderedNormal(x.new_zeros(2), 2.0))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_full((2,), 2.0)).to_event(1))
    theta = pyro.sample("theta", dist.Beta(x.new_tensor(5.0), x.new_tensor(5.0)))
    weights = torch.stack([theta, 1 - theta], -1)
    with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                    device=x.device) as idx:
        mixture = dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                         dist.Normal(mu, sigma))
        pyro.sample("y", mixture, obs=x[idx, 0])


def low_dim_gauss_mix():
    return posterior(
        "low_dim_gauss_mix-low_dim_gauss_mix", model=gauss_mix_model, config=SuiteConfig,
        data={"y": load_data("low_dim_gauss_mix")["y"]},
        reported=lambda s: {**named("mu", s["mu"]), **named("sigma", s["sigma"]),
                            "theta": scalar(s["theta"])},
        latent_values=lambda c: {"mu": vector(c, "mu"), "sigma": vector(c, "sigma"),
                                 "theta": c["theta"]},
        notes="As the Stan program (every prior stated there). log densities omit the constant "
              "log 2 of the ordering of two independent N(0, 2) means.")


POSTERIORS = {"low_dim_gauss_mix-low_dim_gauss_mix": low_dim_gauss_mix}
