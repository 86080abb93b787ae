"""Two-state hidden Markov models from posteriordb, the hidden states summed out.

    theta_j ~ Dirichlet(a_j) (row j of the transition matrix),  z_1 uniform,
    z_t | z_{t-1} = j ~ Categorical(theta_j),  y_t | z_t = k ~ emission_k

hmm_example: y_t ~ N(mu_k, 1) with mu positive and ordered, mu_1 ~ N(3, 1), mu_2 ~ N(10, 1).
hmm_drive_0 (basketball drives, Lopez-style player tracking): two emissions per step, 1/speed
u_t ~ Exponential(phi_k) and distance to the hoop v_t ~ Exponential(lambda_k), phi and lambda
positive and ordered with N(0, 1) and N(3, 1) on their elements.

The Stan programs run the forward algorithm; here Pyro's ``DiscreteHMM`` does, as a parallel
scan. The rows are the T time steps (jointly dependent: no subsampling); every latent is global.
The ordering makes the states identifiable, as in Stan; the positive ordered vectors are
unconstrained as Stan does it (``base.CumulativeExp``), not by Pyro's doubly exponential map.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from zoo.posteriordb.base import (
    OrderedNormal,
    SuiteConfig,
    config_class,
    load_data,
    named,
    need_rows,
    posterior,
    vector,
)


def _transitions(concentration: torch.Tensor, steps: int) -> torch.Tensor:
    """The rows theta_j drawn, as ``DiscreteHMM``'s per-step transition logits ``(..., T, K,
    K)``. DiscreteHMM makes a transition before the first observation; Stan's forward
    algorithm starts the first step's state uniform, so that first transition is uniform."""
    rows = [pyro.sample(f"theta{j + 1}", dist.Dirichlet(concentration[j]))
            for j in range(concentration.shape[0])]
    logits = torch.stack(rows, -2).log().unsqueeze(-3)
    first = torch.zeros_like(logits)
    return torch.cat([first, logits.expand(*logits.shape[:-3], steps - 1, -1, -1)], -3)


def hmm_example_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (T, 1)``, one Gaussian emission per step."""
    x = need_rows(x, "hmm_example-hmm_example", ("y",), subsample_size, exchangeable=False)
    transition = _transitions(x.new_ones(2, 2), x.shape[0])  # uniform on each simplex, as Stan
    mu = pyro.sample("mu", OrderedNormal(x.new_tensor([3.0, 10.0]), 1.0, positive=True))
    emission = dist.Normal(mu.unsqueeze(-2), x.new_tensor(1.0))  # (..., 1, K)
    hmm = dist.DiscreteHMM(x.new_zeros(2), transition, emission)
    pyro.sample("y", hmm, obs=x[:, 0])


def hmm_drive_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (T, 2)``, columns (u, v): two exponential emissions per step."""
    x = need_rows(x, "bball_drive_event_0-hmm_drive_0", ("u", "v"), subsample_size,
                  exchangeable=False)
    transition = _transitions(x.new_tensor(config.transition_prior), x.shape[0])
    means = x.new_tensor([0.0, 3.0])
    phi = pyro.sample("phi", OrderedNormal(means, 1.0, positive=True))
    lam = pyro.sample("lambda", OrderedNormal(means, 1.0, positive=True))
    rates = torch.stack([phi, lam], -1).unsqueeze(-3)  # (..., 1, K, 2)
    hmm = dist.DiscreteHMM(x.new_zeros(2), transition, dist.Exponential(rates).to_event(1))
    pyro.sample("y", hmm, obs=x)


def _report(*vectors):
    return lambda sites: {key: value for name in vectors
                          for key, value in named(name, sites[name]).items()}


def _latent(*vectors):
    return lambda columns: {name: vector(columns, name) for name in vectors}


def hmm_example():
    return posterior(
        "hmm_example-hmm_example", model=hmm_example_model, config=SuiteConfig,
        data={"y": load_data("hmm_example")["y"]}, reported=_report("theta1", "theta2", "mu"),
        latent_values=_latent("theta1", "theta2", "mu"),
        notes="As the Stan program, its implicit uniform priors on the simplexes written "
              "Dirichlet(1, 1) (the same density); the states summed out by DiscreteHMM. "
              "log densities omit the constant log-probability of the ordering under the "
              "normal priors on mu. NUTS runs its potential eagerly (extra['nuts']): the "
              "JIT-compiled one took 3.3x as long per gradient (14.9 vs 4.5 ms, same load).",
        nuts={"jit": False})


def hmm_drive_0():
    data = load_data("bball_drive_event_0")
    config = config_class("HmmDriveConfig", transition_prior=tuple(
        tuple(float(a) for a in row) for row in data["alpha"]))
    return posterior(
        "bball_drive_event_0-hmm_drive_0", model=hmm_drive_model, config=config,
        data={"u": data["u"], "v": data["v"]},
        reported=_report("theta1", "theta2", "phi", "lambda"),
        latent_values=_latent("theta1", "theta2", "phi", "lambda"),
        notes="As the Stan program; the states summed out by DiscreteHMM. log densities omit "
              "the constant log-probability of the orderings under the normal priors.")


POSTERIORS = {"hmm_example-hmm_example": hmm_example,
              "bball_drive_event_0-hmm_drive_0": hmm_drive_0}
