"""ELBO estimators on the deep Gaussian model: the closed-form KL, the variance of the three
gradient estimators, and the amortization gap."""

import math

import pyro
import pytest
import torch
from pyro import poutine
from sklearn.datasets import load_digits

from guides.dglvm import AmortizedGuide
from inference.catalog import get_model
from inference.estimators import ESTIMATORS, amortization_gap, gradient_variance
from inference.strategies import fit
from inference.svi import make_elbo
from zoo.dglvm import DGLVMConfig, gaussian_kl, make_model


@pytest.fixture(scope="module")
def digits_fit():
    """A Bernoulli model with a briefly trained encoder on digits / 16 (a few seconds)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = get_model("dglvm")
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16
    config = spec.make_config(dim=64, latent_dim=5, hidden=(64,), likelihood="bernoulli")
    result = fit(spec, config, x, inference="svi", steps=300, lr=3e-3, batch_size=128)
    torch.set_num_threads(threads)
    return config, result, x


def test_closed_form_kl_matches_torch_and_a_monte_carlo_estimate():
    generator = torch.Generator().manual_seed(0)
    loc = torch.randn(4, 3, generator=generator, dtype=torch.float64)
    scale = torch.rand(4, 3, generator=generator, dtype=torch.float64) + 0.2
    closed = gaussian_kl(loc, scale)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    p = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
    torch.testing.assert_close(closed, torch.distributions.kl_divergence(q, p))
    z = q.sample((200_000,))
    samples = q.log_prob(z) - p.log_prob(z)
    standard_error = samples.std(0) / math.sqrt(z.shape[0])
    assert ((samples.mean(0) - closed).abs() < 4 * standard_error).all()


def test_trace_mean_field_elbo_is_trace_elbo_with_the_kl_in_closed_form():
    """Same model and guide: TraceMeanField_ELBO's estimate equals Trace_ELBO's on average, and
    their difference on the same ε is the Monte Carlo error of the KL term alone."""
    config = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,))
    x = torch.rand(20, 6, dtype=torch.float64)
    model, guide = make_model(config), AmortizedGuide(make_model(config), config)
    many = {"num_particles": 4000}
    pyro.set_rng_seed(0)
    trace_elbo = make_elbo("Trace_ELBO", **many).loss(model, guide, x)
    pyro.set_rng_seed(0)
    mean_field = make_elbo("TraceMeanField_ELBO", **many).loss(model, guide, x)
    # the difference is Σ_n [KL_n − (log q − log p)(z_n)] averaged over particles
    loc, scale = guide.encode(x)
    q = torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)
    z = q.sample((4000,))
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros_like(loc), torch.ones_like(scale)), 1)
    log_ratio = (q.log_prob(z) - prior.log_prob(z)).sum(-1).detach()
    error = float(log_ratio.std()) / math.sqrt(4000)
    assert abs(trace_elbo - mean_field) < 5 * error
    kl = float(gaussian_kl(loc, scale).sum().detach())
    assert kl > 0


def test_score_function_gradients_have_far_more_variance_than_reparameterized(digits_fit):
    config, result, x = digits_fit
    study = gradient_variance(config, x[:64], params=result.params,
                              guide_params=result.guide_params, num_estimates=40)
    assert set(study) == set(ESTIMATORS)
    reparameterized = study["reparameterized"].total_variance
    closed_form = study["closed-form KL"].total_variance
    score = study["score function"].total_variance
    assert 10 * reparameterized < score
    assert 10 * closed_form < score
    # all three estimate the same ELBO (nats per datapoint), within their spread
    elbos = [s.mean_elbo for s in study.values()]
    assert max(elbos) - min(elbos) < 1.0
    assert not study["score function"].reparameterized


def test_gradient_variance_leaves_the_param_store_alone():
    config = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,))
    pyro.param("unrelated", torch.ones(2))
    gradient_variance(config, torch.rand(8, 6), num_estimates=3)
    assert list(pyro.get_param_store().keys()) == ["unrelated"]


def test_amortization_gap_decomposes_the_elbo_gap(digits_fit):
    """Per-datapoint Gaussians started at the encoder's output and optimized with the decoder
    frozen reach an ELBO at least as high; log p(x) − ELBO splits into the two gaps."""
    config, result, x = digits_fit
    decoder_before = {k: v.clone() for k, v in result.params.items()}
    gap = amortization_gap(config, result.params, result.guide_params, x[:50], steps=150,
                           num_samples=200)
    assert gap.num_rows == 50
    assert gap.amortization_gap > -0.05
    assert gap.log_likelihood >= gap.mean_field_elbo - 0.05
    assert gap.log_likelihood - gap.encoder_elbo == pytest.approx(
        gap.amortization_gap + gap.approximation_gap)
    for name, value in decoder_before.items():  # the decoder stayed frozen
        assert torch.equal(value, result.params[name])


def test_frozen_model_hides_the_decoder_from_svi():
    config = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,))
    model = poutine.block(make_model(config), hide_types=["param"])
    trace = poutine.trace(model).get_trace(torch.rand(4, 6))
    assert not any(site["type"] == "param" for site in trace.nodes.values())
