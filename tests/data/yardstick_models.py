"""Models declared as users write them, for the yardstick's hard cases
(tests/inference/test_yardstick_models.py): a regression written ``x @ beta`` (it does not
broadcast over the yardstick's particle dimension), a hierarchical model with a local latent
per group (eight-schools-like: known per-group sd), and a mixture with a discrete local
latent and known variances."""

import pyro
import pyro.distributions as dist
import torch

from zoo import declare

BETA_SCALE, NOISE = 1.0, 0.5  # the regression's prior sd and its known noise sd
MU_SCALE, TAU_SCALE = 5.0, 5.0  # the hierarchical model's priors
MEANS, SD = (-2.0, 0.0, 3.0), 0.6  # the mixture's fixed component means and known sd


def matmul_regression(x=None, *, num_data=None, subsample_size=None):
    """beta ~ N(0, I); y_n | beta ~ N(X_n @ beta, s²): the last column is y, the others X."""
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(x.shape[1] - 1), BETA_SCALE).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as idx:
        features = x[idx, :-1]
        pyro.sample("y", dist.Normal(features @ beta, NOISE), obs=x[idx, -1])


def schools(x=None, *, num_data=None, subsample_size=None):
    """mu ~ N(0, 5²), tau ~ HalfNormal(5); theta_j ~ N(mu, tau²) per group (a local latent);
    y_j ~ N(theta_j, sigma_j²) with sigma_j known: x[:, 0] is y, x[:, 1] is sigma."""
    zero = x.new_zeros(())
    mu = pyro.sample("mu", dist.Normal(zero, MU_SCALE))
    tau = pyro.sample("tau", dist.HalfNormal(zero + TAU_SCALE))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as idx:
        theta = pyro.sample("theta", dist.Normal(mu, tau))
        pyro.sample("y", dist.Normal(theta, x[idx, 1]), obs=x[idx, 0])


def known_gmm(x=None, *, num_data=None, subsample_size=None):
    """c_n ~ Categorical(w); x_n | c_n ~ N(m_c, s²) with the means and sd fixed; the weights w
    a parameter."""
    weights = pyro.param("weights", x.new_ones(len(MEANS)) / len(MEANS),
                         constraint=dist.constraints.simplex)
    means = torch.tensor(MEANS, dtype=x.dtype, device=x.device)
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size, device=x.device) as idx:
        c = pyro.sample("c", dist.Categorical(weights))
        pyro.sample("x", dist.Normal(means[c], SD), obs=x[idx, 0])


declare("matmul-regression", matmul_regression, global_sites=("beta",))
declare("schools", schools, global_sites=("mu", "tau"), local_sites=("theta",))
declare("known-gmm", known_gmm, local_sites=("c",))
