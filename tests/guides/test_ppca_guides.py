"""The PPCA guides: exact (zero-variance ELBO), mean-field (its analytic gap at a rotated W,
tight when W may rotate) and amortized (the linear encoder finds the exact posterior mean)."""

import math

import pyro
import pyro.infer
import pyro.optim
import pytest
import torch
from pyro import poutine

from guides.ppca import AmortizedGuide, AmortizedMLPGuide, ExactGuide, MeanFieldGuide
from inference.catalog import get_model
from inference.decomposition import elbo_decomposition
from inference.strategies import fit

SPEC = get_model("ppca")
DIM, LATENT, NUM_DATA = 6, 2, 100


@pytest.fixture(scope="module")
def problem():
    """100 points from a PPCA with D=6, q=2 (principal scales 3 and 1, sigma^2 = 0.25), its
    maximum-likelihood parameters, and the same W rotated by 45 degrees, where the exact
    posterior is correlated (correlation 0.75) while the likelihood is unchanged."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(DIM, LATENT, generator=generator, dtype=torch.float64))
    truth = {"loc": torch.randn(DIM, generator=generator, dtype=torch.float64),
             "weight": basis * torch.tensor([3.0, 1.0], dtype=torch.float64),
             "noise": torch.tensor(0.25, dtype=torch.float64)}
    config = SPEC.make_config(DIM, latent_dim=LATENT)
    x, _ = SPEC.sample(config, truth, NUM_DATA, generator)
    ml = SPEC.closed_form(config, x)
    angle = math.pi / 4
    rotation = torch.tensor([[math.cos(angle), -math.sin(angle)],
                             [math.sin(angle), math.cos(angle)]], dtype=torch.float64)
    rotated = dict(ml, weight=ml["weight"] @ rotation)
    return config, x, ml, rotated


def best_mean_field_kl(config, params, x) -> float:
    """min over diagonal Gaussians q of KL(q || N(m, Sigma)) = 1/2 (sum_i log Lambda_ii +
    log |Sigma|), Lambda = Sigma^-1, attained at variances 1 / Lambda_ii (same for every row)."""
    covariance = SPEC.posterior(config, params, x[:1]).covariance_matrix[0]
    precision = torch.linalg.inv(covariance)
    return 0.5 * (precision.diagonal().log().sum() + torch.logdet(covariance)).item()


def train(model, guide, x, *, steps, elbo=pyro.infer.Trace_ELBO, particles=1, lr=0.05,
          final_lr=1e-3):
    """Plain Pyro SVI with a decaying learning rate, so the guide settles at its optimum."""
    optimizer = pyro.optim.ClippedAdam({"lr": lr, "lrd": (final_lr / lr) ** (1 / steps)})
    loss = elbo(num_particles=particles, vectorize_particles=particles > 1, max_plate_nesting=1)
    svi = pyro.infer.SVI(model, guide, optimizer, loss)
    for _ in range(steps):
        svi.step(x)


# --- exact --------------------------------------------------------------------------------


def test_exact_guide_makes_the_single_sample_elbo_equal_log_p_x(problem):
    config, x, _, rotated = problem
    model = SPEC.make_model(config, rotated)
    guide = ExactGuide(model, config)
    log_likelihood = SPEC.log_marginal(config, rotated, x)
    estimates = [-pyro.infer.Trace_ELBO().loss(model, guide, x) for _ in range(10)]
    for estimate in estimates:  # every draw: zero variance
        assert estimate == pytest.approx(log_likelihood.sum().item(), abs=1e-9)
    # per datapoint: log p(x_n, z_n) - log q(z_n | x_n) = log p(x_n) at every sampled z_n
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    per_row = (model_trace.nodes["x"]["fn"].log_prob(x)
               + model_trace.nodes["z"]["fn"].log_prob(model_trace.nodes["z"]["value"])
               - guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"]))
    torch.testing.assert_close(per_row, log_likelihood, rtol=0, atol=1e-10)
    # a mean-field guide, by contrast, gives a random estimate
    mean_field = MeanFieldGuide(model, config)
    spread = torch.tensor([pyro.infer.Trace_ELBO().loss(model, mean_field, x) for _ in range(5)])
    assert spread.std() > 1.0


def test_svi_with_the_exact_guide_reaches_the_closed_form(problem):
    config, x, ml, _ = problem
    result = fit(SPEC, config, x, inference="svi", guide="exact", steps=300, lr=0.05)
    assert set(result.params) == {"loc", "weight", "noise"}  # the model's, not the guide's
    fitted = SPEC.log_marginal(config, result.params, x).mean().item()
    optimum = SPEC.log_marginal(config, ml, x).mean().item()
    assert optimum - 1e-3 < fitted <= optimum + 1e-9
    assert result.history["elbo"][-1] == pytest.approx(fitted, abs=1e-3)  # the ELBO is tight


# --- mean-field ---------------------------------------------------------------------------


def test_mean_field_gap_at_a_rotated_weight_is_the_analytic_kl(problem):
    config, x, _, rotated = problem
    optimum = best_mean_field_kl(config, rotated, x)
    assert optimum > 0.3  # the rotation makes the posterior correlated
    model = SPEC.make_model(config, rotated, fixed=True)  # only the guide learns
    guide = MeanFieldGuide(model, config)
    train(model, guide, x, steps=800, elbo=pyro.infer.TraceMeanField_ELBO, particles=4,
          final_lr=2e-3)
    gap = elbo_decomposition(SPEC, config, rotated, x, guide).kl
    assert gap.min().item() >= optimum - 1e-9  # no diagonal Gaussian beats the optimum
    assert gap.mean().item() == pytest.approx(optimum, rel=0.03)
    # its variances are the under-dispersed 1 / Lambda_ii, below the marginal Sigma_ii
    covariance = SPEC.posterior(config, rotated, x[:1]).covariance_matrix[0]
    expected_scale = torch.linalg.inv(covariance).diagonal().rsqrt()
    scale = pyro.param("z_scale").detach()
    torch.testing.assert_close(scale.median(0).values, expected_scale, rtol=0.05, atol=0)
    assert (expected_scale < covariance.diagonal().sqrt()).all()
    # and the exact optimum of the (deterministic) ELBO over diagonal Gaussians is that KL
    loc = SPEC.posterior(config, rotated, x).mean.clone().requires_grad_()
    log_scale = torch.zeros(NUM_DATA, LATENT, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([loc, log_scale], max_iter=500, tolerance_grad=1e-12,
                                  line_search_fn="strong_wolfe")

    def negative_elbo():
        optimizer.zero_grad()
        q = pyro.distributions.Normal(loc, log_scale.exp()).to_event(1)
        value = -elbo_decomposition(SPEC, config, rotated, x, q).elbo.sum()
        value.backward()
        return value

    optimizer.step(negative_elbo)
    best = elbo_decomposition(SPEC, config, rotated, x,
                              pyro.distributions.Normal(loc, log_scale.exp()).to_event(1)).kl
    torch.testing.assert_close(best.detach(), torch.full_like(best, optimum), rtol=0, atol=1e-7)


def test_jointly_trained_mean_field_becomes_tight_by_rotating_w(problem):
    config, x, ml, rotated = problem
    start = SPEC.init_params(config, x, torch.Generator().manual_seed(0))  # a random W
    model = SPEC.make_model(config, start)
    guide = MeanFieldGuide(model, config)
    train(model, guide, x, steps=1000, elbo=pyro.infer.TraceMeanField_ELBO)
    params = {k: v.detach() for k, v in model.params(x).items()}
    # W ends where the posterior is nearly diagonal: the best mean-field gap is almost nothing
    # (0.39 nats at the rotated W of the same likelihood), and the trained guide nearly tight
    assert best_mean_field_kl(config, params, x) < 2e-3
    decomposition = elbo_decomposition(SPEC, config, params, x, guide).means()
    assert decomposition["kl"] < 0.02
    optimum = SPEC.log_marginal(config, ml, x).mean().item()
    assert decomposition["log_likelihood"] == pytest.approx(optimum, abs=1e-2)


# --- amortized ----------------------------------------------------------------------------


def test_amortized_linear_guide_reaches_the_exact_posterior(problem):
    config, x, _, rotated = problem
    model = SPEC.make_model(config, rotated, fixed=True)
    guide = AmortizedGuide(model, config)
    train(model, guide, x, steps=800, particles=8, lr=0.1, final_lr=1e-4)
    exact = SPEC.posterior(config, rotated, x)
    with torch.no_grad():
        mean = guide.encoder(x)
    smallest_std = exact.covariance_matrix[0].diagonal().sqrt().min()
    assert (mean - exact.mean).abs().max() < 0.1 * smallest_std
    scale_tril = pyro.param("z_scale_tril").detach()
    torch.testing.assert_close(scale_tril @ scale_tril.T, exact.covariance_matrix[0],
                               rtol=0, atol=0.05 * smallest_std ** 2)
    assert elbo_decomposition(SPEC, config, rotated, x, guide).kl.mean() < 1e-3


# --- every guide: subsampling, dtype, the model's signature -------------------------------


@pytest.mark.parametrize("guide_name", list(SPEC.guides))
def test_guides_subsample_follow_the_data_dtype_and_fit(guide_name, problem):
    config, x, _, _ = problem
    result = fit(SPEC, config, x, inference="svi", guide=guide_name, steps=20, lr=0.01,
                 batch_size=25)
    assert all(math.isfinite(v) for v in result.history["elbo"])
    assert all(v.dtype == torch.float64 for v in {**result.params,
                                                  **result.guide_params}.values())
    if guide_name == "mean-field":
        # only rows that were in some minibatch moved from the prior's N(0, 1)
        assert result.guide_params["z_loc"].shape == (NUM_DATA, LATENT)


def test_mean_field_guide_touches_only_its_minibatch(problem):
    config, x, ml, _ = problem
    model = SPEC.make_model(config, ml)
    guide = MeanFieldGuide(model, config)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), pyro.infer.Trace_ELBO())
    svi.step(x, subsample_size=10)
    moved = (pyro.param("z_loc").detach() != 0).any(-1)
    assert moved.sum() == 10


def test_guides_refuse_missing_or_foreign_data(problem):
    config, x, _, _ = problem
    model = SPEC.make_model(config)
    for guide_class in (ExactGuide, MeanFieldGuide, AmortizedGuide, AmortizedMLPGuide):
        with pytest.raises(ValueError, match="needs data x"):
            guide_class(model, config)(None, num_data=3)
    MeanFieldGuide(model, config)(x)
    with pytest.raises(ValueError, match="fitted on 100 rows"):
        MeanFieldGuide(model, config)(x[:10])
