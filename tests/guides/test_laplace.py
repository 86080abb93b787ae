"""The generic guides' Laplace start and SVI's whitened steps (guides.laplace,
inference.svi_step.Whitened), against closed forms: a regression written as people write it
(raw years: an intercept whose posterior sd is hundreds of times its slope's, correlated at
-0.9999) ends at its exact posterior from the defaults."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from guides.generic import INIT_LOC, MeanFieldGuide, discover_sites
from guides.laplace import laplace_start
from inference.catalog import get_model
from inference.strategies import fit
from inference.svi_step import Whitened
from tests.inference.test_svi import (
    conjugate_regression,
    exact_posterior,
    gaussian_moments,
    regression_rows,
)
from zoo import declare

PRIOR_SD, NOISE_SD = 1000.0, 0.5


def yearly_trend(x=None, *, num_data=None, subsample_size=None):
    """y_n = a + b * year_n + noise, a, b ~ N(0, 1000²): the years are not centred."""
    zero = x.new_zeros(())
    coefficients = pyro.sample("coefficients", dist.Normal(zero.expand(2), PRIOR_SD).to_event(1))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        mean = coefficients[..., :1] + coefficients[..., 1:] * x[idx, 0]
        pyro.sample("y", dist.Normal(mean, NOISE_SD), obs=x[idx, 1])


TREND = declare("test-yearly-trend", yearly_trend, global_sites=("coefficients",),
                replace=True)


def trend_rows(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    years = np.arange(1952, 1952 + n, dtype=float)
    return np.column_stack([years, -30.0 + 0.02 * years + NOISE_SD * rng.normal(size=n)])


def trend_posterior(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = np.column_stack([np.ones(len(rows)), rows[:, 0]])
    precision = design.T @ design / NOISE_SD**2 + np.eye(2) / PRIOR_SD**2
    covariance = np.linalg.inv(precision)
    return covariance @ design.T @ rows[:, 1] / NOISE_SD**2, precision


def test_the_start_is_the_exact_posterior_of_a_gaussian_model():
    """Known noise: the posterior is Gaussian, so the mode and H⁻¹ are its mean and covariance
    (numpy's closed form) to rounding."""
    rows = regression_rows()
    x = torch.tensor(rows)
    sites = discover_sites(conjugate_regression, x)
    start = laplace_start(conjugate_regression, x, sites, INIT_LOC)
    mean, sd = exact_posterior(rows)
    features = rows[:, :-1]
    covariance = np.linalg.inv(features.T @ features / 1.0 + np.eye(3) / 100.0)
    assert np.allclose(start.value("beta").numpy(), mean, rtol=0, atol=1e-6 * sd.min())
    assert np.allclose(start.covariance.numpy(), covariance, rtol=1e-6, atol=0)
    assert start.elbo > start.prior_start_elbo


def test_a_start_leaves_the_random_stream_as_it_was():
    x = torch.tensor(trend_rows())
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    guide = MeanFieldGuide(yearly_trend, None)
    guide.setup(x)
    assert guide.start_record["start"] == "laplace"
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("guide", ["auto-mvn", "auto-normal"])
def test_an_uncentred_trend_ends_at_its_exact_posterior_from_the_defaults(guide):
    """auto-mvn: every mean within 0.1 sd and every sd within 5% of the closed form;
    auto-normal: the means the same, the sds those of the best mean-field Gaussian,
    1/sqrt(H_ii) (a 0.014 of the marginal sds here)."""
    rows = trend_rows()
    mean, precision = trend_posterior(rows)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    spec = get_model(TREND)
    result = fit(spec, spec.make_config(dim=2), torch.tensor(rows), inference="svi",
                 guide=guide, seed=0)
    assert result.info["start"] == "laplace" and result.converged
    if guide == "auto-mvn":
        fitted_mean, fitted_sd = gaussian_moments(result.guide_params)
        expected_sd = sd
    else:
        params = result.guide_params
        fitted_mean = next(v for k, v in params.items() if k.endswith("locs.coefficients"))
        fitted_sd = next(v for k, v in params.items() if k.endswith("scales.coefficients"))
        fitted_mean, fitted_sd = fitted_mean.double().numpy(), fitted_sd.double().numpy()
        expected_sd = 1 / np.sqrt(np.diag(precision))
    assert np.abs((fitted_mean - mean) / sd).max() < 0.1, (fitted_mean - mean) / sd
    assert np.abs(fitted_sd / expected_sd - 1).max() < 0.05, fitted_sd / expected_sd


def test_pyros_own_start_misses_the_same_posterior(monkeypatch):
    """Why the start exists: from the prior median with scale 0.1, the same budget leaves the
    intercept many posterior sds away."""
    monkeypatch.setattr(MeanFieldGuide, "start", "prior")
    rows = trend_rows()
    mean, precision = trend_posterior(rows)
    sd = np.sqrt(np.diag(np.linalg.inv(precision)))
    spec = get_model(TREND)
    result = fit(spec, spec.make_config(dim=2), torch.tensor(rows), inference="svi",
                 guide="auto-mvn", seed=0)
    assert result.info["start"] == "prior"
    fitted_mean, _ = gaussian_moments(result.guide_params)
    assert np.abs((fitted_mean - mean) / sd).max() > 1


def test_whitened_steps_are_the_gradient_of_the_reparametrized_loss():
    """θ = anchor + F w: the gradient Adam sees for w is d loss(anchor + F w)/dw (autograd),
    θ follows w, and a θ set from outside is found again."""
    torch.manual_seed(0)
    anchor = torch.randn(3, dtype=torch.float64)
    factor = torch.linalg.cholesky(torch.tensor([[4.0, 1.0, 0.5], [1.0, 2.0, 0.3],
                                                 [0.5, 0.3, 1.0]], dtype=torch.float64))
    target = torch.randn(3, dtype=torch.float64)
    theta = anchor.clone().requires_grad_(True)
    whitened = Whitened(theta, anchor, factor)
    white = (torch.randn(3, dtype=torch.float64) * 0.3).requires_grad_(True)
    with torch.no_grad():
        whitened.white.copy_(white)
    whitened.push(theta)
    assert torch.allclose(theta, anchor + factor @ white)
    ((theta - target) ** 3).sum().backward()
    whitened.pull(theta)
    ((anchor + factor @ white - target) ** 3).sum().backward()
    assert torch.allclose(whitened.white.grad, white.grad) and theta.grad is None
    elsewhere = torch.randn(3, dtype=torch.float64)
    whitened.follow(elsewhere)
    whitened.push(theta)
    assert torch.allclose(theta, elsewhere)
    for vector in (torch.tensor([2.0, 0.5, 3.0], dtype=torch.float64),):
        diagonal = Whitened(theta, anchor, vector)
        diagonal.follow(elsewhere)
        assert torch.allclose(anchor + vector * diagonal.white, elsewhere)


def test_models_with_discrete_latents_keep_pyros_start():
    def mixture(x=None, *, num_data=None, subsample_size=None):
        loc = pyro.sample("loc", dist.Normal(x.new_zeros(2), 10.0).to_event(1))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size):
            which = pyro.sample("which", dist.Categorical(logits=x.new_zeros(2)))
            pyro.sample("y", dist.Normal(loc[..., which], 1.0), obs=x[:, 0])
    x = torch.randn(20, 1, dtype=torch.float64)
    assert laplace_start(mixture, x, discover_sites(mixture, x), INIT_LOC) is None



def test_a_whitened_fit_resumes_bit_for_bit(tmp_path):
    """A fit stopped at a checkpoint and resumed (the guide rebuilt, its start found again,
    Adam's whitened coordinates recovered from the saved parameters) ends as the fit run
    straight through: same ELBO history, same parameters."""
    from inference.strategies.svi import build_guide
    from inference.svi import fit_svi

    spec = get_model(TREND)
    config = spec.make_config(dim=2)
    x = torch.tensor(trend_rows())

    def run(steps, **options):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        model = spec.make_model(config, None)
        guide = build_guide(spec, "auto-mvn", model, config, x)
        result = fit_svi(model, guide, x, seed=0, steps=steps, stop_tol=0.0, **options)
        assert guide.preconditioners()  # its steps were whitened
        return result

    straight = run(500)
    path = tmp_path / "checkpoint.pt"
    run(237, checkpoint=path)
    resumed = run(500, checkpoint=path, resume=True)
    assert resumed.history["elbo"] == straight.history["elbo"]
    for name, value in straight.guide_params.items():
        assert torch.equal(resumed.guide_params[name], value), name
