"""The yardstick for models with global latents, against closed forms: the evidence of a
Normal-Normal model (joint importance sampling over the global mean), its posterior
predictive on held-out rows, the whole-data ELBO below log p(x); and the nested estimate
for a model with a local latent as well."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal, norm

from inference import api
from inference.data import DataRequest

MODELS = Path(__file__).resolve().parents[1] / "data" / "bayes_models.py"
PRIOR_SCALE, NOISE = 2.0, 0.7  # as in tests/data/bayes_models.py


def _closed_forms(train: np.ndarray, test: np.ndarray, noise: float) -> tuple[float, float]:
    """log p(X) / N (X ~ N(0, s² I + s0² 1 1ᵀ)) and the mean log posterior predictive
    log N(x* | m, v + s²) of the held-out rows."""
    n = train.shape[0]
    evidence = multivariate_normal(np.zeros(n), noise**2 * np.eye(n)
                                   + PRIOR_SCALE**2 * np.ones((n, n))).logpdf(train[:, 0])
    precision = 1 / PRIOR_SCALE**2 + n / noise**2
    mean, variance = train.sum() / noise**2 / precision, 1 / precision
    predictive = norm(mean, math.sqrt(variance + noise**2)).logpdf(test[:, 0]).mean()
    return evidence / n, float(predictive)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    generator = np.random.default_rng(0)
    x = 1.3 + NOISE * generator.standard_normal((200, 1))
    path = tmp_path_factory.mktemp("bayes") / "draws.npy"
    np.save(path, x)
    return path


def _split(fitted):
    return fitted.data.train.double().numpy(), fitted.data.test.double().numpy()


def test_global_mean_evidence_and_predictive_match_their_closed_forms(data_file):
    fitted = api.fit(f"{MODELS}:normal-normal", guide="auto-normal", steps=1500, lr=0.05,
                     data=DataRequest(str(data_file), dtype="float64"))
    record = fitted.record
    evidence, predictive = _closed_forms(*_split(fitted), NOISE)
    assert record["log_likelihood_method"] == "iwae-joint-1000"
    # a Gaussian q of a Gaussian posterior: the joint estimate is within 0.01 nats/row
    assert record["train_log_likelihood"] == pytest.approx(evidence, abs=0.01)
    assert record["test_log_likelihood"] == pytest.approx(predictive, abs=0.01)
    assert record["elbo"] < record["train_log_likelihood"]
    # the per-row estimate counted the prior and entropy once per row: far below (here < -2)
    assert record["train_log_likelihood"] > evidence - 0.01 > -2.0


def test_global_and_local_latents_get_the_nested_estimate(data_file):
    fitted = api.fit(f"{MODELS}:normal-normal-local", guide="auto-mvn", steps=2000, lr=0.03,
                     data=DataRequest(str(data_file), dtype="float64"))
    record = fitted.record
    noise = math.sqrt(1.0 + NOISE**2)  # z integrates out: x_n | mu ~ N(mu, 1 + s²)
    evidence, _ = _closed_forms(*_split(fitted), noise)
    assert record["log_likelihood_method"].startswith("iwae-nested-")
    assert record["train_log_likelihood"] == pytest.approx(evidence, abs=0.05)
    assert record["elbo"] < record["train_log_likelihood"]
    assert record["test_log_likelihood"] is None  # auto-mvn's local part is per training row
    assert torch.isfinite(torch.tensor(record["gap"]))
