"""The yardstick and NUTS on models written as users write them (tests/data/yardstick_models.py):
a regression written ``x @ beta`` is judged one importance sample at a time and meets its
closed-form evidence; a mixture's discrete latent is summed out exactly (scipy's mixture
log-likelihood); NUTS on a hierarchical model with a local latent per group agrees, row by row,
with quadrature over the hyperparameters, its chains kept apart in posterior-nuts.nc."""

from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import halfnorm, multivariate_normal, norm

from inference import api
from inference import posterior_export as export
from inference.data import DataRequest
from inference.sampling import LOOP_NOTE, broadcasts_over_particles

MODELS = Path(__file__).resolve().parents[1] / "data" / "yardstick_models.py"
NOISE = 0.5  # as in tests/data/yardstick_models.py
MEANS, SD = np.array([-2.0, 0.0, 3.0]), 0.6
MU_SCALE, TAU_SCALE = 5.0, 5.0


def _save(tmp_path, name, array):
    path = tmp_path / f"{name}.npy"
    np.save(path, array)
    return DataRequest(str(path), dtype="float64", test_fraction=0.0)


def _regression(beta, x, subsample_size, *, written_as_matmul):
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        features = x[idx, :-1]
        mean = features @ beta if written_as_matmul else (features * beta).sum(-1)
        pyro.sample("y", dist.Normal(mean, NOISE), obs=x[idx, -1])


@pytest.mark.parametrize("body, broadcasts", [
    ("matmul", False),  # beta : (K, 1, D) -> (n, D) @ (K, 1, D) raises
    ("sum", True),  # (features * beta).sum(-1) broadcasts over the particles
    ("mixes", False),  # beta.mean() averages over the particles too: runs, but wrongly
])
def test_the_broadcasting_probe_finds_models_that_cannot_be_vectorized(body, broadcasts):
    def model(x=None, *, num_data=None, subsample_size=None):
        beta = pyro.sample("beta", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        if body == "mixes":
            beta = beta - beta.mean() + beta.mean(-1, keepdim=True)
        _regression(beta, x, subsample_size, written_as_matmul=body == "matmul")

    def guide(x=None, *, num_data=None, subsample_size=None):
        pyro.sample("beta", dist.Normal(x.new_zeros(2), 0.5).to_event(1))

    x = torch.randn(6, 3, dtype=torch.float64)
    assert broadcasts_over_particles(model, guide, x) is broadcasts


def test_a_model_written_with_matmul_fits_and_is_judged_at_defaults(tmp_path):
    generator = np.random.default_rng(0)
    features = generator.standard_normal((60, 3))
    y = features @ np.array([1.0, -0.5, 0.3]) + NOISE * generator.standard_normal(60)
    fitted = api.fit(f"{MODELS}:matmul-regression",
                     data=_save(tmp_path, "regression", np.c_[features, y]))
    record = fitted.record
    assert record["yardstick_note"] == LOOP_NOTE
    assert record["log_likelihood_method"] == "iwae-joint-1000"
    # exact evidence: y ~ N(0, s² I + X Xᵀ) (beta ~ N(0, I)), per row
    x = fitted.data.train.numpy()
    n = x.shape[0]
    evidence = multivariate_normal(np.zeros(n), NOISE**2 * np.eye(n)
                                   + x[:, :3] @ x[:, :3].T).logpdf(x[:, 3]) / n
    assert record["train_log_likelihood"] == pytest.approx(evidence, abs=0.01)
    assert record["elbo"] < record["train_log_likelihood"] + 1e-3


@pytest.mark.parametrize("guide", ["auto-normal", "amortized"])
def test_a_declared_mixture_gets_its_exact_log_likelihood_by_enumeration(tmp_path, guide):
    generator = np.random.default_rng(0)
    component = generator.choice(3, size=200, p=[0.3, 0.5, 0.2])
    x = MEANS[component] + SD * generator.standard_normal(200)
    request = DataRequest(_save(tmp_path, "mixture", x[:, None]).name, dtype="float64",
                          test_fraction=0.2)
    fitted = api.fit(f"{MODELS}:known-gmm", guide=guide, steps=150, data=request)
    record = fitted.record
    weights = fitted.result.params["weights"].double().numpy()

    def mixture(rows: np.ndarray) -> float:  # scipy's log Σ_k w_k N(x | m_k, s²), mean
        return float(np.mean(logsumexp(np.log(weights) + norm(MEANS, SD).logpdf(rows[:, None]),
                                       axis=1)))
    assert record["log_likelihood_method"] == "exact-enumerated"
    assert record["train_log_likelihood"] == pytest.approx(
        mixture(fitted.data.train.numpy()[:, 0]), abs=1e-9)
    assert record["test_log_likelihood"] == pytest.approx(
        mixture(fitted.data.test.numpy()[:, 0]), abs=1e-9)
    assert record["elbo"] <= record["train_log_likelihood"] + 1e-6  # the guide's own bound


def _quadrature(y: np.ndarray, sigma: np.ndarray):
    """Posterior mean and sd of every theta_j (and of mu, tau) by quadrature over (mu, tau):
    given them, y_j ~ N(mu, tau² + sigma_j²) and theta_j | y_j is Gaussian."""
    mu = np.linspace(-25, 30, 551)[:, None]
    tau = np.linspace(1e-3, 30, 900)[None, :]
    log_w = (norm(0, MU_SCALE).logpdf(mu) + halfnorm(scale=TAU_SCALE).logpdf(tau)
             + sum(norm(mu, np.sqrt(tau**2 + s**2)).logpdf(v)
                   for v, s in zip(y, sigma, strict=True)))
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    means, sds = [], []
    for v, s in zip(y, sigma, strict=True):
        precision = 1 / tau**2 + 1 / s**2
        m = (mu / tau**2 + v / s**2) / precision
        mean = (w * m).sum()
        means.append(mean)
        sds.append(np.sqrt((w * (1 / precision + m**2)).sum() - mean**2))
    return np.array(means), np.array(sds), float((w * mu).sum()), float((w * tau).sum())


def test_nuts_on_a_hierarchical_model_agrees_with_quadrature_for_every_row(tmp_path):
    generator = np.random.default_rng(3)
    sigma = np.array([1.0, 1.2, 0.8, 1.5, 1.0, 0.9, 1.3, 1.1])
    y = 3.0 + 2.0 * generator.standard_normal(8) + sigma * generator.standard_normal(8)
    fitted = api.fit(f"{MODELS}:schools", steps=50,
                     data=_save(tmp_path, "schools", np.c_[y, sigma]))
    reference = export.nuts_reference(fitted.spec, fitted.config, fitted.result,
                                      fitted.data.train, num_samples=300, warmup_steps=300,
                                      num_chains=2)
    checks = reference.diagnostics
    assert checks["rows"] == 8 and checks["divergences"] == 0 and checks["r_hat_max"] < 1.02
    theta = reference.local["theta"].double().numpy()  # (chains · draws, every row)
    assert theta.shape == (600, 8)
    means, sds, mu, tau = _quadrature(y, sigma)
    np.testing.assert_allclose(theta.mean(0), means, atol=0.15 * sds.min())
    np.testing.assert_allclose(theta.std(0), sds, rtol=0.15)
    assert float(reference.globals["mu"].mean()) == pytest.approx(mu, abs=0.3)
    assert float(reference.globals["tau"].mean()) == pytest.approx(tau, abs=0.4)
    # the fit's own posterior.nc keeps every row's local latent too
    from inference.fitting import global_posterior

    assert global_posterior(fitted).posterior["theta"].shape == (1, 200, 8)
    # the chains stay apart on disk: ArviZ recomputes R-hat from the file
    path = export.save_inference_data(export.to_inference_data(reference),
                                      tmp_path / export.NUTS_FILE)
    back = export.load_inference_data(path)
    assert back.posterior["theta"].shape == (2, 300, 8)
    import arviz as az

    recomputed = az.rhat(back.posterior.astype("float64"))  # as the record took the draws
    assert max(float(recomputed[name].max()) for name in recomputed.data_vars) == \
        pytest.approx(checks["r_hat_max"], rel=1e-9)


def test_check_says_before_training_that_the_yardstick_will_loop(tmp_path):
    from inference.check import check

    generator = np.random.default_rng(1)
    request = _save(tmp_path, "regression", generator.standard_normal((30, 4)))
    report = check(f"{MODELS}:matmul-regression", data=request)
    assert report.ok and report.notes
    assert all(note.endswith(LOOP_NOTE) for note in report.notes)
    assert "note: guide auto-normal: the model does not broadcast" in report.summary()
    assert not check(f"{MODELS}:schools", data=_save(
        tmp_path, "schools", np.c_[generator.standard_normal(8), np.ones(8)])).notes


def test_compare_runs_one_nuts_reference_for_a_bayesian_model(tmp_path, monkeypatch):
    from inference.compare import harness

    runs = []
    original = export.nuts_reference

    def counted(*args, **kwargs):
        runs.append(kwargs)
        return original(*args, **kwargs)
    monkeypatch.setattr(harness.export, "nuts_reference", counted)
    generator = np.random.default_rng(3)
    sigma = np.full(8, 1.0)
    request = _save(tmp_path, "schools", np.c_[3 + 2 * generator.standard_normal(8), sigma])
    records = api.compare(f"{MODELS}:schools", data=request, out=tmp_path / "compare",
                          strategies=["svi-auto-normal", "svi-auto-mvn"], steps=300,
                          reference="nuts", nuts_samples=150, nuts_warmup=150, nuts_chains=2,
                          gap_rows=0, report=False)
    assert len(runs) == 1 and runs[0]["num_chains"] == 2  # one run for both fits
    assert all(r["reference_distance"] is not None for r in records)
    for record in records:
        nuts = export.load_inference_data(Path(record["run_dir"]) / export.NUTS_FILE)
        assert nuts.posterior["mu"].shape == (2, 150)
