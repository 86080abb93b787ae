"""Gaussian-process regressions on 11 points (posteriordb's gp_pois_regr data).

    f ~ GP(0, alpha^2 exp(-(x - x')^2 / (2 rho^2))),  rho ~ Gamma(25, 4),  alpha ~ half-N(0, 2)
    gp_pois_regr:  k_n ~ Poisson(exp f(x_n)),  f = L f_tilde,  f_tilde ~ N(0, I)  (L L^T = K)
    gp_regr:       y ~ N(0, K + sigma I),  sigma ~ half-N(0, 1)   (sigma, not sigma^2: as Stan)

The rows are the N inputs with their observations; the GP couples them all, so there is no
subsampling and every latent (f_tilde too) is global.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from zoo.posteriordb.base import (
    SuiteConfig,
    load_data,
    named,
    need_rows,
    posterior,
    scalar,
    vector,
)

JITTER = 1e-10  # Stan's diagonal term in gp_pois_regr


def squared_exponential(inputs: torch.Tensor, alpha: torch.Tensor,
                        rho: torch.Tensor) -> torch.Tensor:
    """Stan's ``gp_exp_quad_cov``: ``(..., N, N)`` for ``inputs : (N,)`` and batched scalars."""
    distance2 = (inputs[:, None] - inputs[None, :]) ** 2
    rho_, alpha_ = rho[..., None, None], alpha[..., None, None]
    return alpha_ ** 2 * torch.exp(-distance2 / (2 * rho_ ** 2))


def _hyperpriors(x):
    rho = pyro.sample("rho", dist.Gamma(x.new_tensor(25.0), x.new_tensor(4.0)))
    alpha = pyro.sample("alpha", dist.HalfNormal(x.new_tensor(2.0)))
    return rho, alpha


def _cholesky(inputs, alpha, rho):
    eye = torch.eye(inputs.shape[0], dtype=inputs.dtype, device=inputs.device)
    return torch.linalg.cholesky(squared_exponential(inputs, alpha, rho) + JITTER * eye)


def _latent_f(inputs, alpha, rho, f_tilde):
    return (_cholesky(inputs, alpha, rho) @ f_tilde.unsqueeze(-1)).squeeze(-1)


def gp_pois_regr_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (N, 2)``, columns (x, k)."""
    x = need_rows(x, "gp_pois_regr-gp_pois_regr", ("x", "k"), subsample_size,
                  exchangeable=False)
    rho, alpha = _hyperpriors(x)
    f_tilde = pyro.sample("f_tilde", dist.Normal(x.new_zeros(x.shape[0]), 1.0).to_event(1))
    f = _latent_f(x[:, 0], alpha, rho, f_tilde)
    pyro.sample("k", dist.Poisson(f.exp()).to_event(1), obs=x[:, 1])


def gp_regr_model(x=None, *, num_data=None, subsample_size=None, config):
    """``x : (N, 2)``, columns (x, y)."""
    x = need_rows(x, "gp_pois_regr-gp_regr", ("x", "y"), subsample_size, exchangeable=False)
    rho, alpha = _hyperpriors(x)
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_tensor(1.0)))
    eye = torch.eye(x.shape[0], dtype=x.dtype, device=x.device)
    covariance = squared_exponential(x[:, 0], alpha, rho) + sigma[..., None, None] * eye
    pyro.sample("y", dist.MultivariateNormal(x.new_zeros(x.shape[0]),
                                             scale_tril=torch.linalg.cholesky(covariance)),
                obs=x[:, 1])


def gp_pois_regr():
    data = load_data("gp_pois_regr")
    inputs = torch.from_numpy(data["x"])

    def reported(sites):
        rho, alpha = scalar(sites["rho"]), scalar(sites["alpha"])
        f_tilde = sites["f_tilde"].reshape(rho.shape[0], -1)
        f = _latent_f(inputs.to(f_tilde), alpha, rho, f_tilde)
        return {"rho": rho, "alpha": alpha, **named("f", f)}

    def latent_values(columns):
        rho, alpha, f = columns["rho"], columns["alpha"], vector(columns, "f")
        cholesky = _cholesky(inputs.to(f), alpha, rho)
        f_tilde = torch.linalg.solve_triangular(cholesky, f.unsqueeze(-1), upper=False)
        return {"rho": rho, "alpha": alpha, "f_tilde": f_tilde.squeeze(-1)}

    return posterior(
        "gp_pois_regr-gp_pois_regr", model=gp_pois_regr_model, config=SuiteConfig,
        data={"x": data["x"], "k": data["k"]}, reported=reported, latent_values=latent_values,
        notes="As the Stan program (every prior stated there); f = L f_tilde is reported, as "
              "in the reference.")


def gp_regr():
    data = load_data("gp_pois_regr")
    return posterior(
        "gp_pois_regr-gp_regr", model=gp_regr_model, config=SuiteConfig,
        data={"x": data["x"], "y": data["y"]},
        reported=lambda s: {k: scalar(s[k]) for k in ("rho", "alpha", "sigma")},
        latent_values=lambda c: {k: c[k] for k in ("rho", "alpha", "sigma")},
        notes="As the Stan program (every prior stated there), the noise sigma added to the "
              "covariance's diagonal as Stan adds it (a variance, not squared).")


POSTERIORS = {"gp_pois_regr-gp_pois_regr": gp_pois_regr, "gp_pois_regr-gp_regr": gp_regr}
