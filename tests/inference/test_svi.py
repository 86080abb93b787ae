"""The SVI loop: isolated fits, reproducible seeds, resumable checkpoints, divergence stops."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

from guides.generic import MeanFieldGuide
from inference.catalog import get_model
from inference.evaluate import evaluate_fit, fitted, iwae, pointwise_log_weights
from inference.strategies import fit
from inference.strategies.svi import build_guide
from inference.svi import TrainingDiverged, fit_svi, svi_loop
from tests.toy import TOY
from zoo import declare
from zoo.gmm import synthetic


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


def gmm_loop(components: int, guide: str, elbo: str, batch_size: int | None, seed: int):
    """An SVI loop of a GMM on its own synthetic rows, built as the SVI strategy builds one."""
    spec = get_model("gmm")
    x, _, _ = synthetic(120, torch.Generator().manual_seed(seed), dtype=torch.float64)
    config = spec.make_config(dim=2, components=components)
    pyro.set_rng_seed(seed)
    model = spec.make_model(config, spec.init_params(config, x,
                                                     torch.Generator().manual_seed(seed)))
    return svi_loop(model, build_guide(spec, guide, model, config, x, elbo=elbo), x,
                    elbo=elbo, steps=30, lr=0.05, batch_size=batch_size, seed=seed,
                    stop_tol=0.0)


def test_two_gmm_fits_interleaved_step_by_step_give_the_numbers_of_each_alone():
    """Same parameter names, other shapes (K=3 and K=2), both guides drawing z from the torch
    stream: each step must run in its own param store and its own random streams."""
    fits = [(3, "exact", "Trace_ELBO", 20, 1), (2, "mean-field", "Trace_ELBO", None, 2)]
    alone = [gmm_loop(*options).run() for options in fits]
    loops = [gmm_loop(*options) for options in fits]
    while any([loop.advance() for loop in loops]):  # a list: every loop steps each round
        pass
    together = [loop.result() for loop in loops]
    assert set(alone[0].params) == set(alone[1].params)  # one store would mix them
    assert alone[0].params["means"].shape != alone[1].params["means"].shape
    for one, other in zip(alone, together, strict=True):
        assert one.steps == other.steps == 30
        assert one.history["elbo"] == other.history["elbo"]
        for name, value in {**one.params, **one.guide_params}.items():
            assert torch.equal(value, {**other.params, **other.guide_params}[name]), name
    assert len(pyro.get_param_store()) == 0


# --- SVI ends at the optimum: a conjugate regression with a 0.001-sd coefficient ----------

PRIOR_SD, NOISE_SD, FEATURE_SCALES = 10.0, 1.0, (1.0, 1.0, 100.0)


def conjugate_regression(x=None, *, num_data=None, subsample_size=None):
    """beta ~ N(0, 10² I); y_n | beta ~ N(X_n beta, 1); rows of x are (X_n, y_n)."""
    zero = torch.zeros((), dtype=torch.float64) if x is None else x.new_zeros(())
    beta = pyro.sample("beta", dist.Normal(zero.expand(len(FEATURE_SCALES)),
                                           PRIOR_SD).to_event(1))
    rows = num_data if x is None else x.shape[0]
    with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
        features = x[idx, :-1]
        pyro.sample("y", dist.Normal((features * beta.unsqueeze(-2)).sum(-1), NOISE_SD),
                    obs=x[idx, -1])


REGRESSION = declare("test-conjugate-regression", conjugate_regression, global_sites=("beta",),
                     replace=True)


def regression_rows(n: int = 100, seed: int = 0) -> np.ndarray:
    """(X, y): the third feature's scale is 100, so its coefficient's posterior sd is ~0.001."""
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 3)) * np.array(FEATURE_SCALES) + np.array([0.0, 1.0, 0.0])
    y = features @ np.array([1.0, -2.0, 0.03]) + NOISE_SD * rng.normal(size=n)
    return np.column_stack([features, y])


def exact_posterior(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The closed form: precision X'X / s² + I / s0², mean cov X'y / s²."""
    features, y = rows[:, :-1], rows[:, -1]
    precision = features.T @ features / NOISE_SD**2 + np.eye(features.shape[1]) / PRIOR_SD**2
    covariance = np.linalg.inv(precision)
    return covariance @ features.T @ y / NOISE_SD**2, np.sqrt(np.diag(covariance))


def gaussian_moments(guide_params: dict) -> tuple[np.ndarray, np.ndarray]:
    """Mean and sd of an AutoMultivariateNormal's Gaussian (loc, scale * scale_tril)."""
    def get(suffix):
        return next(v for k, v in guide_params.items() if k.endswith(suffix)).double()
    tril = get(".scale").unsqueeze(-1) * get(".scale_tril")
    return get(".loc").numpy(), (tril @ tril.T).diagonal().sqrt().numpy()


def test_auto_mvn_at_the_defaults_ends_at_the_exact_posterior_of_a_conjugate_regression():
    rows = regression_rows()
    mean, sd = exact_posterior(rows)
    assert sd.min() < 0.002 < 0.05 < sd.max()  # one coefficient 50x tighter than the others
    spec = get_model(REGRESSION)
    result = fit(spec, spec.make_config(dim=4), torch.tensor(rows), inference="svi",
                 guide="auto-mvn", seed=0)
    fitted_mean, fitted_sd = gaussian_moments(result.guide_params)
    assert result.converged and result.info["kept"] == "average"
    assert np.abs((fitted_mean - mean) / sd).max() < 0.2, (fitted_mean - mean) / sd
    assert np.abs(fitted_sd / sd - 1).max() < 0.05, fitted_sd / sd


def test_a_constant_rate_ends_near_the_optimum_not_at_it(monkeypatch):
    """The reason for the schedule: the last Adam iterate at lr 0.01, the same budget, leaves
    the tight coefficient's sd many times too wide (from Pyro's start: the Laplace start and
    its whitened steps, tests/guides/test_laplace.py, would hide it)."""
    monkeypatch.setattr(MeanFieldGuide, "start", "prior")
    rows = regression_rows()
    _, sd = exact_posterior(rows)
    spec = get_model(REGRESSION)
    result = fit(spec, spec.make_config(dim=4), torch.tensor(rows), inference="svi",
                 guide="auto-mvn", seed=0, steps=600, stop_tol=0.0)
    assert result.info["kept"] == "last" and result.info["schedule"] == "constant"
    assert gaussian_moments(result.guide_params)[1][2] / sd[2] > 2
