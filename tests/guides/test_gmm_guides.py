"""The Gaussian mixture's guides: exact, mean-field, amortized and enumeration, under SVI."""

import warnings

import numpy as np
import pyro
import pyro.infer
import pyro.optim
import pytest
import torch
from pyro import poutine
from sklearn.exceptions import ConvergenceWarning

from guides.gmm import GUIDES, AmortizedGuide, ExactGuide, MeanFieldGuide
from inference.catalog import get_model
from inference.decomposition import decompose_fit
from inference.em import fit_em
from inference.strategies import fit
from inference.svi import fit_svi, split_params
from zoo import gmm
from zoo.datasets import load_dataset
from zoo.errors import InputError

SPEC = get_model("gmm")  # the zoo's spec joined to its guides
CONFIG = gmm.GMMConfig(dim=2, components=2)


@pytest.fixture(scope="module")
def faithful() -> torch.Tensor:
    """Old Faithful (272 eruptions x 2), standardized, float64."""
    return load_dataset("old-faithful", test_fraction=0, standardize=True,
                        dtype=torch.float64).train


@pytest.fixture(scope="module")
def em_optimum(faithful) -> float:
    """The EM fixed point's mean log-likelihood (nats per datapoint)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        result = fit_em(SPEC, CONFIG, faithful, n_init=3, tol=1e-12)
    return result.history["log_likelihood"][-1]


def mean_log_likelihood(params, x) -> float:
    return float(gmm.log_marginal(CONFIG, params, x).mean())


@pytest.mark.parametrize("elbo, steps, particles, tolerance", [
    ("Trace_ELBO", 400, 8, 1e-3),  # z sampled from the exact posterior: stochastic EM
    ("TraceEnum_ELBO", 150, 1, 1e-6),  # z enumerated: the exact gradient of log p(x)
])
def test_svi_with_the_exact_guide_reaches_the_em_optimum(faithful, em_optimum, elbo, steps,
                                                          particles, tolerance):
    result = fit(SPEC, CONFIG, faithful, inference="svi", guide="exact", elbo=elbo,
                 steps=steps, lr=0.02, num_particles=particles)
    assert set(result.params) == {"weights", "means", "scale_tril"}
    assert result.guide_params == {}  # q is the model's own posterior: nothing of its own
    assert em_optimum - mean_log_likelihood(result.params, faithful) < tolerance


@pytest.mark.parametrize("guide", ["exact", "enumerate"])
def test_elbo_is_exactly_log_marginal_at_every_step(faithful, guide):
    """With q = p(z | x) (sampled or summed out) every ELBO estimate is log p(x), no noise."""
    start = gmm.init_params(CONFIG, faithful, torch.Generator().manual_seed(0))
    model = gmm.make_model(CONFIG, start)
    result = fit_svi(model, SPEC.guides[guide](model, CONFIG), faithful,
                     elbo=SPEC.default_elbo[guide], steps=3, lr=0.02)
    np.testing.assert_allclose(result.history["elbo"][0], mean_log_likelihood(start, faithful),
                               rtol=1e-12)


@pytest.mark.parametrize("guide, elbo, steps, max_gap, max_shortfall", [
    ("mean-field", "TraceEnum_ELBO", 300, 1e-3, 1e-4),  # exact expectations over q
    ("mean-field", "Trace_ELBO", 200, 0.2, 0.1),  # score-function gradients: slow and noisy
    ("amortized", "Trace_ELBO", 300, 0.01, 2e-3),
])
def test_approximate_guides_report_their_gap_to_log_marginal(faithful, em_optimum, guide,
                                                              elbo, steps, max_gap,
                                                              max_shortfall):
    result = fit(SPEC, CONFIG, faithful, inference="svi", guide=guide, elbo=elbo, steps=steps,
                 lr=0.02)
    report = decompose_fit(SPEC, CONFIG, result, faithful).means()
    log_likelihood = mean_log_likelihood(result.params, faithful)
    np.testing.assert_allclose(report["log_likelihood"], log_likelihood, rtol=1e-12)
    # the gap is KL(q || p(z | x)) >= 0; check it against the closed-form ELBO of q's logits
    with pyro.get_param_store().scope():
        store = pyro.get_param_store()
        for name, value in {**result.params, **result.guide_params}.items():
            store[name] = value.detach()  # a view: the store must not mark ours for grad
        guide_fn = SPEC.guides[guide](gmm.make_model(CONFIG, result.params), CONFIG)
        logits = guide_fn.posterior(faithful)["z"].logits
    elbo_exact = float(gmm.elbo(CONFIG, result.params, faithful, logits).mean())
    np.testing.assert_allclose(report["elbo"], elbo_exact, rtol=1e-9)
    assert 0.0 <= report["kl"] < max_gap
    assert -1e-9 < em_optimum - log_likelihood < max_shortfall


def test_mean_field_guide_indexes_its_logits_by_the_subsample():
    num_data, k = 40, 2
    x = torch.randn(num_data, 2, dtype=torch.float64)
    model = gmm.make_model(CONFIG)
    guide = MeanFieldGuide(model, CONFIG)
    preferred = torch.arange(num_data) % k
    pyro.param("assignment_logits", 50.0 * torch.nn.functional.one_hot(preferred, k).double())
    for _ in range(3):
        trace = poutine.trace(guide).get_trace(x, num_data=num_data, subsample_size=8)
        index = trace.nodes["data"]["value"]
        assert trace.nodes["z"]["value"].shape == (8,)
        assert torch.equal(trace.nodes["z"]["value"], preferred[index])


def test_mean_field_svi_with_minibatches_scales_the_elbo_to_the_whole_data(faithful):
    result = fit(SPEC, CONFIG, faithful, inference="svi", guide="mean-field",
                 elbo="TraceEnum_ELBO", steps=200, lr=0.05, batch_size=68)
    assert result.guide_params["assignment_logits"].shape == (272, 2)
    tail = np.mean(result.history["elbo"][-50:])  # nats per datapoint, not per minibatch row
    assert abs(tail - mean_log_likelihood(result.params, faithful)) < 0.1


def test_exact_guide_leaves_the_model_parameters_to_the_model(faithful):
    model = gmm.make_model(CONFIG)
    model_names, guide_names = split_params(model, ExactGuide(model, CONFIG), faithful)
    assert set(model_names) == {"weights", "means", "scale_tril"} and guide_names == []
    model = gmm.make_model(CONFIG)
    model_names, guide_names = split_params(model, AmortizedGuide(model, CONFIG), faithful)
    assert set(model_names) == {"weights", "means", "scale_tril"}
    assert guide_names and all(name.startswith("encoder$$$") for name in guide_names)


def test_guides_validate_their_arguments(faithful):
    model = gmm.make_model(CONFIG)
    with pytest.raises(InputError, match="build it with zoo.gmm.make_model"):
        ExactGuide(lambda x=None: None, CONFIG)
    with pytest.raises(InputError, match="pass the model's own config"):
        ExactGuide(model, gmm.GMMConfig(dim=2, components=3))
    with pytest.raises(InputError, match="hidden_size=0"):
        AmortizedGuide(model, CONFIG, hidden_size=0)
    with pytest.raises(InputError, match="needs the data x"):
        ExactGuide(model, CONFIG)(num_data=5)
    with pytest.raises(InputError, match="subsample_size=500 must be between 1 and the 272"):
        ExactGuide(model, CONFIG)(faithful, subsample_size=500)
    assert set(GUIDES) == set(SPEC.guides)
    for name, guide_class in GUIDES.items():  # the registry's factories say the same
        assert SPEC.guides[name].per_datapoint == guide_class.per_datapoint


def test_svi_restarts_keep_the_best_final_elbo(faithful):
    result = fit(SPEC, CONFIG, faithful, inference="svi", guide="enumerate", steps=30,
                 lr=0.02, restarts=2)
    assert result.info["restarts"] == 2 and result.info["best_restart"] in (0, 1)
    assert np.isfinite(result.history["elbo"]).all()


def test_map_with_priors_stays_near_the_maximum_likelihood(faithful, em_optimum):
    config = gmm.GMMConfig(dim=2, components=2, prior=True)
    result = fit(SPEC, config, faithful, inference="svi", guide="enumerate", steps=150,
                 lr=0.02)
    log_likelihood = float(gmm.log_marginal(config, result.params, faithful).mean())
    assert log_likelihood <= em_optimum + 1e-9
    assert em_optimum - log_likelihood < 5e-3  # 272 points outweigh weak priors
