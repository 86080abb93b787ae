"""Time series from posteriordb: an AR(K), an ARMA(1, 1) and a GARCH(1, 1) model.

    arK:     y_t ~ N(alpha + sum_k beta_k y_{t-k}, sigma),                t = K+1..T
    arma11:  err_t = y_t - mu - phi y_{t-1} - theta err_{t-1},  err_t ~ N(0, sigma)
             (err_0 = 0 and y_0 = mu: the first prediction is mu + phi mu)
    garch11: y_t ~ N(mu, sigma_t),  sigma_t^2 = alpha0 + alpha1 (y_{t-1} - mu)^2
                                              + beta1 sigma_{t-1}^2,  sigma_1 given

The rows are the T time points (one column, y); they are not exchangeable, so these models
take all of them (no subsampling) and have only global latents. The recursions are linear in
err_t and sigma_t^2 (v_t = u_t + c v_{t-1}), so each runs as a doubling scan: log2(T)
vectorized steps instead of T scalar ones.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch

from zoo.posteriordb.base import (
    SuiteConfig,
    config_class,
    load_data,
    named,
    need_rows,
    posterior,
    scalar,
    vector,
)

COLUMNS = ("y",)


def linear_recursion(coefficient: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``v_t = inputs_t + coefficient v_{t-1}`` (``v_0 = inputs_0``) for ``inputs : (..., T)``
    and ``coefficient`` of the batch shape: ``v_t = sum_{s<=t} coefficient^(t-s) inputs_s``,
    by doubling (Hillis-Steele), log2(T) vector steps instead of T scalar ones."""
    value, power, shift = inputs, coefficient.unsqueeze(-1), 1
    while shift < inputs.shape[-1]:
        # after this step each v_t sums the last 2 * shift inputs
        shifted = torch.nn.functional.pad(value[..., :-shift], (shift, 0))
        value = value + power * shifted
        power, shift = power * power, 2 * shift
    return value


def ark_model(x=None, *, num_data=None, subsample_size=None, config):
    """AR(K) with an intercept; ``x : (T, 1)``."""
    x = need_rows(x, "arK-arK", COLUMNS, subsample_size, exchangeable=False)
    y, lags = x[:, 0], config.lags
    alpha = pyro.sample("alpha", dist.Normal(x.new_tensor(0.0), 10.0))
    beta = pyro.sample("beta", dist.Normal(x.new_zeros(lags), 10.0).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(x.new_tensor(2.5)))
    # past[t, k] = y[t + lags - 1 - k]: the k+1-th value before y[t + lags]
    past = torch.stack([y[lags - 1 - k: y.shape[0] - 1 - k] for k in range(lags)], -1)
    loc = alpha.unsqueeze(-1) + (beta.unsqueeze(-2) * past).sum(-1)
    pyro.sample("y", dist.Normal(loc, sigma.unsqueeze(-1)).to_event(1), obs=y[lags:])


def arma_model(x=None, *, num_data=None, subsample_size=None, config):
    """ARMA(1, 1); ``x : (T, 1)``."""
    x = need_rows(x, "arma-arma11", COLUMNS, subsample_size, exchangeable=False)
    y = x[:, 0]
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), 10.0))
    phi = pyro.sample("phi", dist.Normal(x.new_tensor(0.0), 2.0))
    theta = pyro.sample("theta", dist.Normal(x.new_tensor(0.0), 2.0))
    sigma = pyro.sample("sigma", dist.HalfCauchy(x.new_tensor(2.5)))
    mu_, phi_ = mu.unsqueeze(-1), phi.unsqueeze(-1)
    previous = torch.cat([mu_, y[:-1].expand(*mu.shape, -1)], -1)  # y_0 = mu
    innovation = y - mu_ - phi_ * previous
    err = linear_recursion(-theta, innovation)  # err_t = innovation_t - theta err_{t-1}
    # err ~ N(0, sigma) is y ~ N(y - err, sigma): y -> err has unit Jacobian
    pyro.sample("y", dist.Normal(y - err, sigma.unsqueeze(-1)).to_event(1), obs=y)


def garch_model(x=None, *, num_data=None, subsample_size=None, config):
    """GARCH(1, 1); ``x : (T, 1)``. beta1 = (1 - alpha1) beta1_share."""
    x = need_rows(x, "garch-garch11", COLUMNS, subsample_size, exchangeable=False)
    y = x[:, 0]
    mu = pyro.sample("mu", dist.Normal(x.new_tensor(0.0), config.wide))
    alpha0 = pyro.sample("alpha0", dist.HalfNormal(x.new_tensor(config.wide)))
    # flat on the triangle alpha1 + beta1 < 1: alpha1 ~ Beta(1, 2), beta1 / (1 - alpha1) ~ U(0, 1)
    alpha1 = pyro.sample("alpha1", dist.Beta(x.new_tensor(1.0), x.new_tensor(2.0)))
    share = pyro.sample("beta1_share", dist.Uniform(x.new_tensor(0.0), x.new_tensor(1.0)))
    beta1 = (1 - alpha1) * share
    shock = alpha0.unsqueeze(-1) + alpha1.unsqueeze(-1) * (y[:-1] - mu.unsqueeze(-1)) ** 2
    first = x.new_tensor(config.sigma1 ** 2).expand(*shock.shape[:-1], 1)
    # sigma_1^2 given, sigma_t^2 = shock_t + beta1 sigma_{t-1}^2
    variance = linear_recursion(beta1, torch.cat([first, shock], -1))
    pyro.sample("y", dist.Normal(mu.unsqueeze(-1), variance.sqrt()).to_event(1), obs=y)


def _series(data_name):
    return {"y": load_data(data_name)["y"]}


def ark():
    data = load_data("arK")
    config = config_class("ArKConfig", lags=int(data["K"]))
    return posterior(
        "arK-arK", model=ark_model, config=config, data=_series("arK"),
        reported=lambda s: {"alpha": scalar(s["alpha"]), **named("beta", s["beta"]),
                            "sigma": scalar(s["sigma"])},
        latent_values=lambda c: {"alpha": c["alpha"], "beta": vector(c, "beta"),
                                 "sigma": c["sigma"]},
        notes="As the Stan program (every prior stated there).")


def arma():
    return posterior(
        "arma-arma11", model=arma_model, config=SuiteConfig, data=_series("arma"),
        reported=lambda s: {k: scalar(s[k]) for k in ("mu", "phi", "theta", "sigma")},
        latent_values=lambda c: {k: c[k] for k in ("mu", "phi", "theta", "sigma")},
        notes="As the Stan program (every prior stated there).")


def _garch_reported(sites):
    alpha1 = scalar(sites["alpha1"])
    return {"mu": scalar(sites["mu"]), "alpha0": scalar(sites["alpha0"]), "alpha1": alpha1,
            "beta1": (1 - alpha1) * scalar(sites["beta1_share"])}


def _garch_latent(columns):
    return {"mu": columns["mu"], "alpha0": columns["alpha0"], "alpha1": columns["alpha1"],
            "beta1_share": columns["beta1"] / (1 - columns["alpha1"])}


def garch():
    data = load_data("garch")
    wide = 100.0
    config = config_class("GarchConfig", sigma1=float(data["sigma1"]), wide=wide)
    return posterior(
        "garch-garch11", model=garch_model, config=config, data=_series("garch"),
        reported=_garch_reported, latent_values=_garch_latent,
        wide_priors={"mu": wide, "alpha0": wide},
        notes=f"Stan's flat priors made proper: mu ~ N(0, {wide:g}), alpha0 ~ half-N(0, "
              f"{wide:g}). Stan's flat prior on the triangle alpha1 + beta1 < 1 (beta1's upper "
              f"bound depends on alpha1) is written alpha1 ~ Beta(1, 2), beta1 = (1 - alpha1) "
              f"beta1_share with beta1_share ~ U(0, 1): the same uniform density, on sites with "
              f"fixed supports.")


POSTERIORS = {"arK-arK": ark, "arma-arma11": arma, "garch-garch11": garch}
