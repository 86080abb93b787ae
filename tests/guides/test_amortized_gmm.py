"""The GMM's amortized guide reaches the optimum EM reaches: its exact-guide warm-up, its
learning rate, and a fit at the defaults on standardized iris held against scikit-learn."""

import pytest
import torch
from sklearn.mixture import GaussianMixture

from guides.gmm import AmortizedGuide
from inference.catalog import get_model
from inference.strategies import fit
from inference.strategies.svi import StochasticVariationalInference, SVIOptions
from zoo import gmm
from zoo.datasets import load_dataset

SPEC = get_model("gmm")


@pytest.fixture(scope="module")
def iris() -> torch.Tensor:
    """Iris's training rows (120 of 150, the CLI's default split), standardized, float32."""
    return load_dataset("iris", standardize=True, seed=0).train


def sklearn_optimum(x: torch.Tensor) -> float:
    """scikit-learn's EM, ten starts: the mean log-likelihood of its best (nats per row)."""
    reference = GaussianMixture(3, covariance_type="full", n_init=10, tol=1e-8, max_iter=1000,
                                random_state=0).fit(x.double().numpy())
    return float(reference.score(x.double().numpy()))


def mean_log_likelihood(config, params, x) -> float:
    return float(gmm.log_marginal(config, {k: v.detach().double() for k, v in params.items()},
                                  x.double()).mean())


def test_the_warm_up_starts_the_mixture_at_an_em_fixed_point(iris):
    config = gmm.GMMConfig(dim=4, components=3)
    start = gmm.init_params(config, iris, torch.Generator().manual_seed(0))
    model = gmm.make_model(config, start)
    guide = AmortizedGuide(model, config, enumerate=True)  # TraceEnum_ELBO, its default
    guide.setup(iris)
    warmed = model.initial_params
    assert mean_log_likelihood(config, warmed, iris) > mean_log_likelihood(config, start,
                                                                             iris) + 0.1
    # a fixed point: one more EM iteration gains (almost) nothing
    again = gmm.m_step(config, iris, gmm.responsibilities(config, warmed, iris))
    gain = mean_log_likelihood(config, again, iris) - mean_log_likelihood(config, warmed, iris)
    assert -1e-6 < gain < 1e-5
    # and the encoder starts at its posterior: KL(p || q) under 0.005 nats per row
    log_q = guide.posterior(iris)["z"].logits.log_softmax(-1).double()
    log_p = gmm.log_responsibilities(config, warmed, iris).detach().double()
    assert float((log_p.exp() * (log_p - log_q)).sum(-1).mean()) < 5e-3
    # no warm-up (asked, or with z sampled): the model's start is left as it was
    for options in ({"enumerate": True, "warm_up_iterations": 0}, {"enumerate": False}):
        untouched = gmm.make_model(config, start)
        AmortizedGuide(untouched, config, warm_start_steps=0, **options).setup(iris)
        for name, value in start.items():
            assert torch.equal(untouched.initial_params[name], value), (options, name)


def test_the_guide_s_learning_rate_is_its_own_unless_given(iris):
    config = gmm.GMMConfig(dim=4, components=3)
    settings = StochasticVariationalInference.settings
    assert settings(SPEC, config, iris, SVIOptions(), "amortized")["lr"] == 0.01
    assert settings(SPEC, config, iris, SVIOptions(), "exact")["lr"] == SPEC.svi_defaults["lr"]
    assert settings(SPEC, config, iris, SVIOptions(lr=0.05), "amortized")["lr"] == 0.05


@pytest.mark.slow
def test_the_amortized_guide_at_the_defaults_reaches_em_on_standardized_iris(iris):
    """K=3, full covariances, SVI at the defaults: within 0.02 nats per row of the best of
    scikit-learn's ten EM starts (a k-means start left one component dead, 0.22 below)."""
    config = SPEC.make_config(dim=4, components=3)
    result = fit(SPEC, config, iris, inference="svi", guide="amortized", seed=0)
    reached = mean_log_likelihood(config, result.params, iris)
    optimum = sklearn_optimum(iris)
    assert optimum - reached < 0.02, (reached, optimum)
    assert float(result.params["weights"].min()) > 0.2  # all three iris species kept
