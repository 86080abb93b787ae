"""The SVI loop: isolated fits, reproducible seeds, resumable checkpoints, divergence stops."""

import pyro
import pytest
import torch

from inference.catalog import get_model
from inference.evaluate import evaluate_fit, fitted, iwae, pointwise_log_weights
from inference.strategies import fit
from inference.svi import TrainingDiverged, fit_svi
from tests.toy import TOY


@pytest.fixture(scope="module")
def toy():
    return get_model(TOY)


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 1, generator=g)
    return torch.tensor([1.0, -2.0]) + z * torch.tensor([2.0, 1.0]) + 0.3 * torch.randn(
        n, 2, generator=g)


def svi(spec, x, seed, **options):
    config = spec.make_config(dim=2)
    return fit(spec, config, x, inference="svi", guide="amortized", seed=seed,
               **{"steps": 60, "lr": 0.05, **options})


def test_fits_are_isolated_from_what_ran_before(toy):
    x_a, x_b = data(seed=1), data(seed=2)
    alone = svi(toy, x_b, seed=5)
    pyro.clear_param_store()
    svi(toy, x_a, seed=4)
    after = svi(toy, x_b, seed=5)
    for name in alone.params:
        assert torch.equal(alone.params[name], after.params[name]), name
    assert alone.history["elbo"] == after.history["elbo"]
    assert len(pyro.get_param_store()) == 0  # nothing leaks into the global store


def test_resume_after_interruption_equals_an_uninterrupted_run(toy, tmp_path):
    x = data()
    config = toy.make_config(dim=2)
    whole = svi(toy, x, seed=7, steps=40, batch_size=30)
    path = tmp_path / "checkpoint.pt"
    pyro.set_rng_seed(7)
    model = toy.make_model(config)
    fit_svi(model, toy.guides["amortized"](model, config), x, steps=20, lr=0.05,
            batch_size=30, seed=7, checkpoint=path, checkpoint_every=10)
    pyro.set_rng_seed(123)  # a new process: the networks start elsewhere, the checkpoint wins
    model = toy.make_model(config)
    resumed = fit_svi(model, toy.guides["amortized"](model, config), x, steps=40, lr=0.05,
                      batch_size=30, seed=7, checkpoint=path, resume=True)
    assert resumed.history["elbo"] == whole.history["elbo"]
    for name in whole.params:
        assert torch.allclose(whole.params[name], resumed.params[name], atol=0, rtol=0), name


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(toy, tmp_path):
    x = data()
    config = toy.make_config(dim=2)
    path = tmp_path / "checkpoint.pt"
    model = toy.make_model(config)
    fit_svi(model, toy.guides["amortized"](model, config), x, steps=10, lr=0.05, seed=0,
            checkpoint=path, checkpoint_every=5)
    good = path.read_bytes()
    bad = x.clone()
    bad[3, 0] = float("nan")
    model = toy.make_model(config)
    with pyro.validation_enabled(False), pytest.raises(TrainingDiverged,
                                                        match="lower the learning rate"):
        fit_svi(model, toy.guides["amortized"](model, config), bad, steps=10, seed=0,
                checkpoint=path, checkpoint_every=1)
    assert path.read_bytes() == good


def test_iwae_bounds_the_exact_log_likelihood_and_tightens_with_k(toy):
    x = data(n=60)
    result = svi(toy, x, seed=0, steps=150)
    config = toy.make_config(dim=2)
    exact = toy.log_marginal(config, result.params, x)
    with fitted(toy, config, result.params, x, guide="amortized",
                guide_params=result.guide_params) as (model, guide):
        torch.manual_seed(0)
        weights = pointwise_log_weights(model, guide, x, 2000)
    elbo = weights.mean(0)
    bound_1, bound_k = iwae(weights[:1]), iwae(weights)
    # Monte Carlo error of the mean ELBO is small; ELBO ≤ IWAE-K ≤ log p(x) (in expectation)
    assert elbo.mean() <= iwae(weights[:10].reshape(10, -1)).mean() <= bound_k.mean() + 1e-6
    assert bound_k.mean() <= exact.mean() + 0.01
    assert abs(bound_k.mean() - exact.mean()) < abs(bound_1.mean() - exact.mean())
    # pointwise, the bound is close for typical rows (a poor proposal leaves a few outliers)
    assert (bound_k - exact).abs().median() < 0.02
    assert abs(float((bound_k - exact).mean())) < 0.02


def test_evaluate_fit_uses_the_exact_marginal_when_the_model_has_one(toy):
    x = data(n=60)
    result = svi(toy, x, seed=0)
    config = toy.make_config(dim=2)
    metrics = evaluate_fit(toy, config, result, x, x[:10])
    assert metrics["log_likelihood_method"] == "exact"
    assert metrics["train_log_likelihood"] == pytest.approx(
        float(toy.log_marginal(config, result.params, x).mean().detach()), rel=1e-6)
    assert metrics["gap"] >= 0  # the ELBO is a lower bound (checked with 100 particles)


def test_the_stopping_rule_stops_flat_fits_and_not_noisy_climbing_ones():
    from inference.svi import StoppingRule
    rule = StoppingRule(tol=1e-4, window=100, patience=3)
    generator = torch.Generator().manual_seed(0)
    steps = torch.arange(400, dtype=torch.float64)
    # exact ELBO, flat: converged
    assert rule.converged((-1.0 + 0.0 * steps).tolist())
    # exact ELBO, still climbing 1e-3 per window: not converged
    assert not rule.converged((-1.0 + 1e-5 * steps).tolist())
    # noisy (per-step sd 0.3 nats, window means +-0.03) and climbing 0.01 per window: the
    # window means often differ by less than tol by chance; the rule must not stop it
    stops = 0
    for _ in range(200):
        noise = 0.3 * torch.randn(400, generator=generator, dtype=torch.float64)
        stops += rule.converged((-100.0 + 1e-4 * steps + noise).tolist())
    assert stops == 0, f"stopped {stops} of 200 noisy fits that still climb"
    # flat with noise small enough to certify 1e-4 per window: converged
    noise = 1e-4 * torch.randn(400, generator=generator, dtype=torch.float64)
    assert rule.converged((-1.0 + noise).tolist())
