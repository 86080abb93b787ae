"""Conjugate models with global latents, declared as a user would, whose evidence and
posterior predictive have closed forms (tests/inference/test_global_latents.py)."""

import pyro
import pyro.distributions as dist
import torch

from zoo import declare

PRIOR_SCALE, NOISE = 2.0, 0.7


def normal_normal(x=None, *, num_data=None, subsample_size=None):
    """mu ~ N(0, s0²); x_n | mu ~ N(mu, s²): a global mean, no local latent."""
    zero = torch.zeros(()) if x is None else x.new_zeros(())
    mu = pyro.sample("mu", dist.Normal(zero, PRIOR_SCALE))
    rows = num_data if x is None else x.shape[0]
    with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
        pyro.sample("x", dist.Normal(mu.unsqueeze(-1), NOISE).to_event(1),
                    obs=None if x is None else x[idx])


def normal_normal_local(x=None, *, num_data=None, subsample_size=None):
    """mu ~ N(0, s0²); z_n ~ N(0, 1); x_n | mu, z_n ~ N(mu + z_n, s²): global and local."""
    zero = torch.zeros(()) if x is None else x.new_zeros(())
    mu = pyro.sample("mu", dist.Normal(zero, PRIOR_SCALE))
    rows = num_data if x is None else x.shape[0]
    with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
        z = pyro.sample("z", dist.Normal(zero.expand(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(mu.unsqueeze(-1) + z, NOISE).to_event(1),
                    obs=None if x is None else x[idx])


declare("normal-normal", normal_normal, global_sites=("mu",))
declare("normal-normal-local", normal_normal_local, global_sites=("mu",), local_sites=("z",))


def bayesian_mixture(x=None, *, num_data=None, subsample_size=None):
    """A two-component 1-D mixture with priors on its means (ordered: the second is the first
    plus a positive gap), scales and weight; the component is summed out (no local latent)."""
    zero = torch.zeros(()) if x is None else x.new_zeros(())
    low = pyro.sample("low", dist.Normal(zero, 5.0))
    gap = pyro.sample("gap", dist.LogNormal(zero, 1.0))
    scales = pyro.sample("scales", dist.LogNormal(zero.expand(2), 1.0).to_event(1))
    weight = pyro.sample("weight", dist.Beta(zero + 2.0, zero + 2.0))
    mixture = dist.MixtureSameFamily(
        dist.Categorical(probs=torch.stack([weight, 1 - weight], -1)),
        dist.Normal(torch.stack([low, low + gap], -1), scales))
    rows = num_data if x is None else x.shape[0]
    with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
        pyro.sample("x", mixture, obs=None if x is None else x[idx, 0])


declare("bayesian-mixture", bayesian_mixture,
        global_sites=("low", "gap", "scales", "weight"))
