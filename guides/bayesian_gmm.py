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
        self.fitting = False  # set by setup(x): SVI is about to fit this guide

    def setup(self, x: torch.Tensor) -> None:
        """SVI is about to fit: q starts at CAVI's start (K-means labels on the rows of the
        guide's first call, then the update of q(π) q(μ, Λ) they give), so SVI and CAVI start
        alike and at the data's scale. The K-means runs at that first call, inside SVI's
        first step, drawing from the process's stream as it always has. A guide built without
        this step (the yardstick or the run loader rebuilding a fit only to load its
        parameters) starts at a unit-scale q instead: no K-means on rows whose q is about to
        be overwritten."""
        self.fitting = True

    def _initial(self, x: torch.Tensor | None, like: torch.Tensor,
                 priors: bg.Priors) -> dict[str, torch.Tensor]:
        """Where q starts: CAVI's own start on rows ``x`` when SVI fits (:meth:`setup`);
        otherwise, or without rows, a unit-scale q at the origin."""
        if x is not None and self.fitting:
            resp = bg.initial_responsibilities(self.config, x, None, bg.INIT_METHODS[0])
            return bg.update_globals(self.config, priors, x, resp)._asdict()
        k, d = self.config.components, self.config.dim
        ones = like.new_ones(k)
        eye = torch.eye(d, dtype=like.dtype, device=like.device)
        covariances = {"full": eye.expand(k, d, d).clone(), "tied": eye.clone(),
                       "diag": like.new_ones(k, d), "spherical": ones.clone()
                       }[self.config.covariance_type]
        return {"weight_concentration": (like.new_ones(2, k) if self.config.stick_breaking
                                         else ones.clone()),
                "mean_precision": ones.clone(), "means": like.new_zeros(k, d),
                "degrees_of_freedom": ones * (d + 1.0), "covariances": covariances}

    def _lower_bounds(self, priors: bg.Priors) -> dict[str, torch.Tensor]:
        """Each count-like parameter of q is its prior's value plus expected counts (CAVI's
        update: α₀ + N_k, β₀ + N_k, ν₀ + N_k; the sticks 1 + N_k and γ + Σ_{j>k} N_j), so the
        mean-field optimum never lies below the prior's value. Bounding them there keeps SVI
        off the Wishart's singular region ν < D, which a noisy gradient otherwise reaches."""
        k = self.config.components
        g = priors.weight_concentration
        weight = (torch.stack([torch.ones_like(g).expand(k), g.expand(k)])
                  if self.config.stick_breaking else g.expand(k))
        return {"weight_concentration": weight, "mean_precision": priors.mean_precision,
                "degrees_of_freedom": priors.degrees_of_freedom}

    def posterior(self, like: torch.Tensor, priors: bg.Priors | None = None,
                  x: torch.Tensor | None = None) -> bg.Posterior:
        """q's parameters from the param store (started by :meth:`_initial` the first time)
        as a :class:`zoo.bayesian_gmm.Posterior`."""
        priors = priors or self.model.priors or bg.resolve_priors(self.config, x)
        kind = self.config.covariance_type
        bounds = self._lower_bounds(priors)
        store, initial, values = pyro.get_param_store(), None, {}
        for name in ("weight_concentration", "mean_precision", "means", "degrees_of_freedom",
                     "covariances"):
            key = f"q_{name}"
            if key not in store and initial is None:
                initial = self._initial(x, like, priors)
            start = None if key in store else initial[name]
            if name in bounds:
                constraint = constraints.greater_than(bounds[name])
                if start is not None:  # strictly inside: an empty component sits on the bound
                    start = torch.maximum(start, bounds[name] + 1e-3)
            elif name == "covariances":
                constraint = (constraints.positive_definite if kind in ("full", "tied")
                              else constraints.positive)
            else:
                constraint = constraints.real
            values[name] = pyro.param(key, start, constraint=constraint)
        if kind == "tied":
            values["degrees_of_freedom"] = values["degrees_of_freedom"].mean().expand(
                self.config.components)
        values["precisions_cholesky"] = bg._precision_cholesky(values["covariances"], kind)
        return bg.Posterior(**values)

    def __call__(self, x: torch.Tensor | None = None, *, num_data: int | None = None,
                 subsample_size: int | None = None):
        config = self.config
        like = x if x is not None else torch.zeros(1, config.dim)
        priors = self.model.priors or bg.resolve_priors(config, x)
        post = self.posterior(like, priors, x)
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
