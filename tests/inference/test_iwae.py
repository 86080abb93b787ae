"""Importance-sampled log p(x) (IWAE-K) with a guide as proposal, on the deep Gaussian model.

The reference is a linear decoder with isotropic noise, which is PPCA:
p(x) = N(x | b, W Wᵀ + σ² I) in closed form (computed here with torch's MultivariateNormal).
With W's columns orthogonal the posterior is diagonal, a linear encoder represents it exactly,
and every importance weight equals p(x).
"""

import math

import pytest
import torch
from torch.nn.functional import softplus

from inference.catalog import get_model
from inference.evaluate import fitted, iwae, pointwise_log_weights
from zoo.dglvm import DGLVMConfig

D, Q, SIGMA = 8, 2, 0.5


def linear_gaussian(generator, *, beta: float = 1.0, scale_factor: float = 1.0,
                    loc_shift: float = 0.0):
    """PPCA parameters in the decoder's representation, and an encoder at the exact posterior
    (its scale multiplied by ``scale_factor`` and its mean shifted by ``loc_shift``)."""
    basis, _ = torch.linalg.qr(torch.randn(D, Q, generator=generator, dtype=torch.float64))
    strengths = torch.tensor([2.0, 1.2], dtype=torch.float64)
    weight = basis * strengths  # W (D, Q), orthogonal columns
    bias = torch.randn(D, generator=generator, dtype=torch.float64)
    params = {"decoder$$$net.0.weight": weight, "decoder$$$net.0.bias": bias,
              "noise_scale": torch.tensor(SIGMA, dtype=torch.float64)}
    m_inverse = 1.0 / (strengths**2 + SIGMA**2)  # M = WᵀW + σ²I is diagonal
    loc_weight = m_inverse[:, None] * weight.T  # E[z | x] = M⁻¹ Wᵀ (x − b)
    posterior_scale = (SIGMA**2 * m_inverse).sqrt() * scale_factor
    raw_scale = torch.log(torch.expm1(posterior_scale - 1e-6))  # the encoder's softplus⁻¹
    guide_params = {
        "encoder$$$net.0.weight": torch.cat([loc_weight, torch.zeros(Q, D, dtype=torch.float64)]),
        "encoder$$$net.0.bias": torch.cat([-loc_weight @ bias + loc_shift, raw_scale]),
    }
    covariance = weight @ weight.T + SIGMA**2 * torch.eye(D, dtype=torch.float64)
    exact = torch.distributions.MultivariateNormal(bias, covariance)
    config = DGLVMConfig(dim=D, latent_dim=Q, hidden=(), variance="isotropic", beta=beta)
    return config, params, guide_params, exact


def log_weights(config, params, guide_params, x, num_samples, **options):
    with fitted(get_model("dglvm"), config, params, x, guide="amortized",
                guide_params=guide_params) as (model, guide):
        return pointwise_log_weights(model, guide, x, num_samples, **options)


def test_the_encoder_parameters_reproduce_the_exact_posterior():
    generator = torch.Generator().manual_seed(0)
    config, params, guide_params, _ = linear_gaussian(generator)
    raw = guide_params["encoder$$$net.0.bias"][Q:]
    assert softplus(raw) + 1e-6 == pytest.approx(
        (SIGMA**2 / (torch.tensor([2.0, 1.2], dtype=torch.float64)**2 + SIGMA**2)).sqrt())


@pytest.mark.parametrize("max_elements", [2**25, 200])
@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_exact_posterior_proposal_gives_log_p_x_with_zero_variance(max_elements, beta):
    """Every weight is p(x): the estimate is exact for any K, in chunks of rows and particles,
    and whatever β the model was trained with (β weights the training objective only)."""
    generator = torch.Generator().manual_seed(1)
    config, params, guide_params, exact = linear_gaussian(generator, beta=beta)
    x = exact.sample((30,))
    weights = log_weights(config, params, guide_params, x, 16, max_elements=max_elements)
    assert weights.shape == (16, 30)
    torch.testing.assert_close(weights, exact.log_prob(x).expand(16, 30), rtol=0, atol=1e-9)
    torch.testing.assert_close(iwae(weights), exact.log_prob(x), rtol=0, atol=1e-9)


def test_importance_sampled_log_p_x_matches_the_ppca_closed_form_within_its_error():
    """An imperfect proposal (scale × 1.5, mean shifted): IWAE-5000 agrees with the closed
    form within its Monte Carlo standard error (delta method: sd(w) / (√K · mean(w)))."""
    generator = torch.Generator().manual_seed(2)
    config, params, guide_params, exact = linear_gaussian(generator, scale_factor=1.5,
                                                          loc_shift=0.3)
    x = exact.sample((40,))
    num_samples = 5000
    weights = log_weights(config, params, guide_params, x, num_samples)
    estimate, truth = iwae(weights), exact.log_prob(x)
    normalized = (weights - weights.max(0).values).exp()
    standard_error = normalized.std(0) / (normalized.mean(0) * math.sqrt(num_samples))
    assert float(weights.std(0).min()) > 0.1  # a real Monte Carlo estimate, not the exact case
    assert ((estimate - truth).abs() < 5 * standard_error + 1e-6).all()
    mean_error = float(standard_error.square().sum().sqrt()) / x.shape[0]
    assert abs(float((estimate - truth).mean())) < 4 * mean_error
    assert float((estimate - weights.mean(0)).mean()) > 0  # IWAE above the ELBO


def test_iwae_is_above_the_elbo_and_rises_with_k():
    """With a poor proposal the bound is loose: the mean IWAE-K over 200 rows rises from K = 1
    (the ELBO) to 10, 100 and 1000 by more than three standard errors, and stays below
    the exact log p(x)."""
    generator = torch.Generator().manual_seed(3)
    config, params, guide_params, exact = linear_gaussian(generator, scale_factor=2.0,
                                                          loc_shift=1.0)
    x = exact.sample((200,))
    estimates = [iwae(log_weights(config, params, guide_params, x, k)) for k in (1, 10, 100, 1000)]
    for low, high in zip(estimates, estimates[1:], strict=False):
        rise = high - low  # paired by row: the spread of log p(x) across rows cancels
        assert float(rise.mean()) > 3 * float(rise.std()) / math.sqrt(x.shape[0])
    truth = exact.log_prob(x)
    gap = truth - estimates[-1]
    assert float(gap.mean()) > -3 * float(gap.std()) / math.sqrt(x.shape[0])


def test_iwae_of_nested_groups_never_falls_below_the_smaller_groups():
    """From one pool of log-weights: log-mean-exp over K₂ ≥ the mean of log-mean-exp over its
    K₁-subgroups (Jensen), so IWAE-K computed by :func:`iwae` is ≥ the ELBO and nondecreasing
    in K exactly, not only in expectation."""
    generator = torch.Generator().manual_seed(4)
    config, params, guide_params, exact = linear_gaussian(generator, scale_factor=2.0)
    x = exact.sample((20,))
    pool = log_weights(config, params, guide_params, x, 1000)
    previous = pool.mean(0)
    for k in (10, 100, 1000):
        groups = pool.reshape(1000 // k, k, -1).transpose(0, 1)  # (k, groups, N)
        current = iwae(groups).mean(0)
        assert (current >= previous - 1e-12).all()
        previous = current


def test_a_large_training_set_is_judged_on_a_seeded_subsample():
    """Beyond max_train_rows the importance-sampled training figures use that many rows,
    drawn by the seed, and say so; the subsample's figure estimates the whole set's."""
    from inference.catalog import get_model
    from inference.evaluate import evaluate_fit
    from inference.strategies import fit

    spec = get_model("dglvm")
    x, _, _ = spec.synthetic(600, torch.Generator().manual_seed(0), torch.float32)
    config = spec.make_config(dim=16, latent_dim=2, hidden=(16,))
    result = fit(spec, config, x, steps=150, batch_size=100)
    whole = evaluate_fit(spec, config, result, x, None, num_samples=64, seed=1)
    part = evaluate_fit(spec, config, result, x, None, num_samples=64, seed=1,
                        max_train_rows=300)
    again = evaluate_fit(spec, config, result, x, None, num_samples=64, seed=1,
                         max_train_rows=300)
    assert whole["train_rows_evaluated"] == 600 and part["train_rows_evaluated"] == 300
    assert part == again  # the same seed, the same rows
    assert part["train_log_likelihood"] == pytest.approx(whole["train_log_likelihood"],
                                                         abs=2.0)
    assert part["train_log_likelihood"] != whole["train_log_likelihood"]
