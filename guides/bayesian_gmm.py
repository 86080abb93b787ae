"""The mean-field guide of the Bayesian Gaussian mixture: the family CAVI optimizes over.

q(π) q(μ, Λ) q(z) in the prior's conjugate families, in scikit-learn's parametrization
(:class:`zoo.bayesian_gmm.Posterior`): a Dirichlet or K Beta sticks for the weights, for each
component a Wishart for Λ_k (its family by ``covariance_type``) and N(m_k, (β_k Λ_k)⁻¹) for μ_k;
under the truncated Dirichlet process, component K + 1 is drawn from its prior (q puts no row
on it). q(z_n) is not free per row: it is CAVI's update, softmax_k E_q[log π_k + log N(x_n |
μ_k, Λ_k⁻¹)], so it applies to held-out rows too. The ``pyro.param`` names are the
``q_``-prefixed fields of the posterior, which the ``cavi`` strategy returns as the fit's
``guide_params``; SVI can fit the same guide by gradients.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides.registry import register
from zoo import bayesian_gmm as bg
from zoo.registry import DATA_PLATE


class MeanFieldConjugateGuide:
    """``(model, config) -> guide`` with the model's signature (see the module docstring)."""

    per_datapoint = False  # q(z) of a row follows from q(θ): no free parameters per row

    def __init__(self, model, config: bg.BayesianGMMConfig):
        self.model = model
        self.config = config

    def _initial(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        k, d = self.config.components, self.config.dim
        ones = like.new_ones(k)
        kind = self.config.covariance_type
        eye = torch.eye(d, dtype=like.dtype, device=like.device)
        covariances = {"full": eye.expand(k, d, d).clone(), "tied": eye.clone(),
                       "diag": like.new_ones(k, d), "spherical": ones.clone()}[kind]
        return {"weight_concentration": (like.new_ones(2, k) if self.config.stick_breaking
                                         else ones.clone()),
                "mean_precision": ones.clone(), "means": like.new_zeros(k, d),
                "degrees_of_freedom": ones * (d + 1.0), "covariances": covariances}

    def posterior(self, like: torch.Tensor) -> bg.Posterior:
        """q's parameters from the param store as a :class:`zoo.bayesian_gmm.Posterior`."""
        initial = self._initial(like)
        d = self.config.dim
        kind = self.config.covariance_type
        positive_definite = kind in ("full", "tied")
        values = {
            "weight_concentration": pyro.param("q_weight_concentration",
                                               initial["weight_concentration"],
                                               constraint=constraints.positive),
            "mean_precision": pyro.param("q_mean_precision", initial["mean_precision"],
                                         constraint=constraints.positive),
            "means": pyro.param("q_means", initial["means"]),
            "degrees_of_freedom": pyro.param("q_degrees_of_freedom",
                                             initial["degrees_of_freedom"],
                                             constraint=constraints.greater_than(d - 1.0)),
            "covariances": pyro.param("q_covariances", initial["covariances"],
                                      constraint=constraints.positive_definite
                                      if positive_definite else constraints.positive)}
        if kind == "tied":
            values["degrees_of_freedom"] = values["degrees_of_freedom"].mean().expand(
                self.config.components)
        values["precisions_cholesky"] = bg._precision_cholesky(values["covariances"], kind)
        return bg.Posterior(**values)

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None):
        config = self.config
        like = x if x is not None else torch.zeros(1, config.dim)
        post = self.posterior(like)
        priors = self.model.priors or bg.resolve_priors(config, x)
        if config.stick_breaking:
            a, b = post.weight_concentration
            pyro.sample("weights", bg.stick_breaking_distribution(a, b))
        else:
            pyro.sample("weights", dist.Dirichlet(post.weight_concentration))
        k, d = config.components, config.dim
        # the Wishart of each q(Λ_k): scale W_k = (ν_k covariance_k)⁻¹
        scale_inverse = {"full": lambda: post.covariances,
                         "tied": lambda: post.covariances.expand(k, d, d),
                         "diag": lambda: torch.diag_embed(post.covariances),
                         "spherical": lambda: post.covariances[:, None, None]
                         * torch.eye(d, dtype=like.dtype, device=like.device),
                         }[config.covariance_type]() * post.degrees_of_freedom[:, None, None]
        nu, beta, means = post.degrees_of_freedom, post.mean_precision, post.means
        if config.stick_breaking:  # component K + 1: q is its prior
            c0 = bg.prior_precision_matrix(config, priors)
            scale_inverse = torch.cat([scale_inverse, c0[None]])
            nu = torch.cat([nu, priors.degrees_of_freedom[None]])
            beta = torch.cat([beta, priors.mean_precision[None]])
            means = torch.cat([means, priors.mean[None]])
        precision = pyro.sample("precisions", bg.Wishart(
            nu, precision_matrix=scale_inverse).to_event(1))
        pyro.sample("means", dist.MultivariateNormal(
            means, precision_matrix=beta[..., None, None] * bg.positive_definite(precision)
        ).to_event(1))
        if x is None:
            return
        with pyro.plate(DATA_PLATE, x.shape[0], subsample_size=subsample_size,
                        device=like.device) as index:
            log_rho = bg.expected_log_joint(config, priors, post, x[index])
            pyro.sample("z", dist.Categorical(logits=log_rho))


register("bayesian-gmm", "mean-field", MeanFieldConjugateGuide, default=True)
