"""The mean-field guide of Bayesian PPCA with ARD: the family CAVI optimizes over.

q(α) q(W) q(μ) q(τ) q(Z) in :class:`zoo.bayesian_ppca.Posterior`'s parametrization: Gamma
q(α_i) and q(τ), the rows of W independent N(M_k, Σ_W) with one Σ_W, q(μ) = N(m_μ, σ²_μ I).
q(z_n) is not free per row: it is CAVI's update N(m_n, Σ_z) given q over the global latents, so
it applies to held-out rows and SVI fits only the global parameters. The ``pyro.param`` names
are the ``q_``-prefixed fields that the ``cavi`` strategy returns as the fit's
``guide_params`` (:func:`zoo.bayesian_ppca.to_params`); SVI fits the same guide by gradients.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.infer.autoguide.initialization import init_to_feasible, init_to_mean
from torch.distributions import constraints

from guides.generic import GlobalGaussianGuide
from guides.registry import register
from zoo import bayesian_ppca as bp
from zoo.errors import InputError
from zoo.registry import DATA_PLATE

_CONSTRAINTS = {"w_cov": constraints.positive_definite, "alpha_concentration":
                constraints.positive, "alpha_rate": constraints.positive,
                "tau_concentration": constraints.positive, "tau_rate": constraints.positive,
                "mu_var": constraints.positive}


class MeanFieldGuide:
    """``(model, config) -> guide`` with the model's signature (see the module docstring)."""

    per_datapoint = False  # q(z_n) follows from q over the globals: no free row parameters

    def __init__(self, model, config: bp.BayesianPPCAConfig):
        self.model = model
        self.config = config

    def _initial(self, x: torch.Tensor | None) -> dict[str, torch.Tensor]:
        config = self.config
        if x is None:  # no data to start from: W = 0 with unit spreads
            d, q = config.dim, config.q
            like = torch.zeros(())
            eye = torch.eye(q, dtype=like.dtype)
            start = bp.Posterior(
                z_mean=like.new_zeros(0, q), z_cov=eye, w_mean=like.new_zeros(d, q),
                w_cov=eye.clone(), alpha_concentration=like.new_ones(q),
                alpha_rate=like.new_ones(q), tau_concentration=like.new_tensor(1.0),
                tau_rate=like.new_tensor(1.0), mu_mean=like.new_zeros(d),
                mu_var=like.new_tensor(1.0))
        else:  # CAVI's own start
            start = bp.initial_posterior(config, x, None, bp.INIT_METHODS[0])
        return bp.to_params(config, start)

    def posterior(self, x: torch.Tensor | None) -> bp.Posterior:
        """q's parameters from the param store (made from the rows ``x`` the first time) as a
        :class:`zoo.bayesian_ppca.Posterior` over the global latents (q(Z) of no rows)."""
        store, initial, values = pyro.get_param_store(), None, {}
        for key in bp.PARAM_NAMES:
            if key not in store and initial is None:
                initial = self._initial(x)
            values[key] = pyro.param(key, initial[key] if key not in store else None,
                                     constraint=_CONSTRAINTS.get(key[2:], constraints.real))
        return bp.from_params(self.config, values,
                              values["q_mu_mean"].new_zeros(0, self.config.dim))

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None):
        post = self.posterior(x)
        if x is not None and post.mu_mean.dtype != x.dtype:
            raise InputError(f"the guide's parameters are {post.mu_mean.dtype} but x is "
                             f"{x.dtype}; clear the param store or convert x")
        pyro.sample("alpha", dist.Gamma(post.alpha_concentration, post.alpha_rate).to_event(1))
        pyro.sample("w", dist.MultivariateNormal(post.w_mean, covariance_matrix=post.w_cov)
                    .to_event(1))
        pyro.sample("mu", dist.Normal(post.mu_mean, post.mu_var.sqrt().expand_as(post.mu_mean))
                    .to_event(1))
        pyro.sample("tau", dist.Gamma(post.tau_concentration, post.tau_rate))
        if x is None:
            return
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=x.device) as index:
            rows = bp.update_z(self.config, x[index], post)  # CAVI's q(z_n) given the rest
            pyro.sample("z", dist.MultivariateNormal(rows.z_mean, covariance_matrix=rows.z_cov))


register("bayesian-ppca", "mean-field", MeanFieldGuide, default=True)
# one Gaussian over the global latents jointly (low-rank or full covariance), q(z_n) mean-field;
# they start at the prior's mean (E[α] = E[τ] = 1 under Bishop's Gamma(1e-3, 1e-3), W = μ = 0):
# its median (the generic start) is α ≈ 0, an infinite column scale
def _joint_gaussian(covariance: str):
    def factory(model, config):
        return GlobalGaussianGuide(model, config, covariance=covariance,
                                   init_loc_fn=init_to_mean(fallback=init_to_feasible))
    factory.per_datapoint = True  # q(z_n) is free per row (auto-normal's)
    return factory


register("bayesian-ppca", "auto-lowrank", _joint_gaussian("lowrank"))
register("bayesian-ppca", "auto-mvn", _joint_gaussian("full"))
