"""The exact ELBO decomposition log p(x_n) = ELBO_n + KL(q || p(z_n | x_n)), checked against the
expected log joint written out by hand for the linear-Gaussian model and against Pyro's
Monte Carlo ELBO."""

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pyro.infer
import pytest
import torch

from inference.catalog import get_model
from inference.decomposition import decompose_fit, elbo_decomposition, guide_distribution
from inference.strategies import fit
from zoo.errors import InputError


def problem(name: str, num_data: int = 40):
    spec = get_model(name)
    x, _, truth = spec.synthetic(num_data, torch.Generator().manual_seed(0), torch.float64)
    return spec, spec.make_config(10, latent_dim=3), x, truth


def random_gaussians(num_data: int, latent: int, *, diagonal: bool):
    generator = torch.Generator().manual_seed(1)
    loc = torch.randn(num_data, latent, generator=generator, dtype=torch.float64)
    if diagonal:
        scale = 0.2 + torch.rand(num_data, latent, generator=generator, dtype=torch.float64)
        return dist.Normal(loc, scale).to_event(1)
    tril = torch.randn(num_data, latent, latent, generator=generator, dtype=torch.float64)
    tril = tril.tril(-1) * 0.3 + torch.diag_embed(0.2 + torch.rand(num_data, latent,
                                                                   generator=generator,
                                                                   dtype=torch.float64))
    return dist.MultivariateNormal(loc, scale_tril=tril)


def expected_log_joint_plus_entropy(params, x, q) -> torch.Tensor:
    """E_q[log N(x | W z + mu, Psi) + log N(z | 0, I)] + H[q], by hand: for q = N(m, V),
    E_q log N(x | W z + mu, Psi) = log N(x | W m + mu, Psi) - tr(Psi^-1 W V W^T) / 2 and
    E_q log N(z | 0, I) = log N(m | 0, I) - tr(V) / 2."""
    weight, dim = params["weight"], x.shape[1]
    psi = params["noise"].expand(dim)
    mean = q.mean
    covariance = (torch.diag_embed(q.variance) if isinstance(q, dist.Independent)
                  else q.covariance_matrix)
    likelihood = (dist.Normal(mean @ weight.T + params["loc"], psi.sqrt()).to_event(1).log_prob(x)
                  - 0.5 * torch.einsum("dq,nqr,dr->n", weight / psi[:, None], covariance, weight))
    prior = (dist.Normal(0.0, torch.ones_like(mean)).to_event(1).log_prob(mean)
             - 0.5 * covariance.diagonal(dim1=-2, dim2=-1).sum(-1))
    return likelihood + prior + q.entropy()


@pytest.mark.parametrize("name", ["ppca", "fa"])
@pytest.mark.parametrize("diagonal", [True, False])
def test_elbo_equals_the_expected_log_joint_written_out(name, diagonal):
    spec, config, x, truth = problem(name)
    q = random_gaussians(x.shape[0], 3, diagonal=diagonal)
    terms = elbo_decomposition(spec, config, truth, x, q)
    torch.testing.assert_close(terms.elbo, expected_log_joint_plus_entropy(truth, x, q),
                               rtol=0, atol=1e-9)
    torch.testing.assert_close(terms.log_likelihood, terms.elbo + terms.kl, rtol=0, atol=1e-12)
    assert (terms.kl > 0).all()
    assert terms.elbo.shape == terms.kl.shape == (x.shape[0],)


def test_exact_posterior_closes_the_gap():
    spec, config, x, truth = problem("fa")
    terms = elbo_decomposition(spec, config, truth, x, spec.posterior(config, truth, x))
    assert terms.kl.abs().max() < 1e-10
    torch.testing.assert_close(terms.elbo, terms.log_likelihood, rtol=0, atol=1e-10)


def test_elbo_agrees_with_pyros_monte_carlo_estimate():
    spec, config, x, truth = problem("ppca", num_data=20)
    model = spec.make_model(config, truth, fixed=True)
    q = random_gaussians(x.shape[0], 3, diagonal=True)

    def guide(x=None, *, num_data=None, subsample_size=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", q)

    exact = elbo_decomposition(spec, config, truth, x, guide).elbo.sum().item()
    particles = 4000
    estimate = -pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True,
                                      max_plate_nesting=1).loss(model, guide, x)
    draws = torch.stack([torch.tensor(-pyro.infer.Trace_ELBO().loss(model, guide, x))
                         for _ in range(50)])
    standard_error = draws.std().item() / math.sqrt(particles)
    assert abs(estimate - exact) < 5 * standard_error


@pytest.mark.parametrize("guide", ["mean-field", "amortized", "amortized-mlp", "exact"])
def test_decompose_fit_rebuilds_the_fitted_guide(guide):
    spec, config, x, _ = problem("ppca")
    result = fit(spec, config, x, inference="svi", guide=guide, steps=30, lr=0.05)
    terms = decompose_fit(spec, config, result, x)
    params, fitted = result.params, result.guide_params
    if guide == "mean-field":
        by_hand = dist.Normal(fitted["z_loc"], fitted["z_scale"]).to_event(1)
    elif guide == "amortized":
        mean = x @ fitted["encoder$$$weight"].T + fitted["encoder$$$bias"]
        by_hand = dist.MultivariateNormal(mean, scale_tril=fitted["z_scale_tril"].expand(
            x.shape[0], 3, 3))
    else:  # the guide's own distribution, rebuilt from its parameters by Pyro itself
        with pyro.get_param_store().scope():
            for name, value in {**params, **fitted}.items():
                pyro.get_param_store()[name] = value.clone()
            by_hand = guide_distribution(spec.guides[guide](spec.make_model(config, params),
                                                            config), x)
    reference = elbo_decomposition(spec, config, params, x, by_hand)
    torch.testing.assert_close(terms.kl, reference.kl.detach(), rtol=1e-10, atol=1e-10)
    if guide == "exact":
        assert terms.kl.abs().max() < 1e-10
    else:
        assert (terms.kl > 1e-6).all()  # 30 steps are far from tight


def test_em_and_closed_form_fits_have_no_gap():
    spec, config, x, _ = problem("ppca")
    for inference in ("closed-form", "em"):
        terms = decompose_fit(spec, config, fit(spec, config, x, inference=inference), x).means()
        assert terms["kl"] == pytest.approx(0.0, abs=1e-10)
        assert terms["elbo"] == pytest.approx(terms["log_likelihood"], abs=1e-10)


def test_bad_input_is_named():
    spec, config, x, truth = problem("ppca")
    without = dataclasses.replace(spec, posterior=None)
    with pytest.raises(InputError, match="no exact log p"):
        elbo_decomposition(without, config, truth, x, spec.posterior(config, truth, x))
    with pytest.raises(InputError, match="batch shape"):
        elbo_decomposition(spec, config, truth, x, spec.posterior(config, truth, x[:5]))
    with pytest.raises(InputError, match="no guide 'flow'"):
        result = fit(spec, config, x, inference="closed-form")
        decompose_fit(spec, config, result, x, guide="flow")
