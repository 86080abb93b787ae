"""A conjugate model whose two global latents are strongly correlated a posteriori, declared
as a user would, for simulation-based calibration (tests/inference/test_calibrate.py): a
mean-field guide cannot follow the correlation and comes out too narrow, a full-covariance
one (auto-mvn) can represent the exact posterior."""

import pyro
import pyro.distributions as dist
import torch

from zoo import declare

NOISE = 0.5  # s, known


def linear_trend(x=None, *, num_data=None, subsample_size=None):
    """beta ~ N(0, I_2); x_n | beta ~ N(beta_0 + beta_1 t_n, s²) at t_n = n / (N - 1):
    intercept and slope, correlated about -0.83 a posteriori at N = 20."""
    zero = torch.zeros(()) if x is None else x.new_zeros(())
    beta = pyro.sample("beta", dist.Normal(zero.expand(2), 1.0).to_event(1))
    rows = num_data if x is None else x.shape[0]
    times = torch.linspace(0, 1, rows, dtype=zero.dtype, device=zero.device)
    with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
        loc = beta[..., 0] + beta[..., 1] * times[idx]  # (rows,), or (particles, rows)
        pyro.sample("x", dist.Normal(loc.unsqueeze(-1), NOISE).to_event(1),
                    obs=None if x is None else x[idx])


declare("linear-trend", linear_trend, global_sites=("beta",))
