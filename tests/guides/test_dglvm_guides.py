"""Guides of the deep Gaussian latent-variable model: the encoder (amortized) and free
per-datapoint Gaussians (mean-field)."""

import inspect

import pyro
import pytest
import torch
from pyro import poutine

from guides.dglvm import AmortizedGuide, MeanFieldGuide
from inference.catalog import get_model
from inference.evaluate import evaluate_fit
from inference.strategies import fit
from zoo.dglvm import DGLVM, DGLVMConfig, make_model
from zoo.errors import InputError

CONFIG = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,))


def test_registry_offers_both_guides_and_says_which_are_per_datapoint():
    spec = get_model("dglvm")
    assert set(spec.guides) == {"amortized", "mean-field"}
    assert spec.default_guide == "amortized"
    assert spec.guides["amortized"].per_datapoint is False
    assert spec.guides["mean-field"].per_datapoint is True
    assert spec.posterior is None and spec.log_marginal is None
    assert "no exact posterior" in spec.notes and "IWAE" in spec.notes
    model = spec.make_model(CONFIG)
    assert isinstance(spec.guides["amortized"](model, CONFIG), AmortizedGuide)
    assert isinstance(spec.guides["mean-field"](model, CONFIG), MeanFieldGuide)


@pytest.mark.parametrize("guide_class", [AmortizedGuide, MeanFieldGuide])
def test_guides_have_the_model_signature(guide_class):
    model_parameters = inspect.signature(DGLVM.forward).parameters
    guide_parameters = inspect.signature(guide_class.forward).parameters
    assert list(guide_parameters) == list(model_parameters)
    assert all(guide_parameters[n].kind == model_parameters[n].kind for n in model_parameters)


def test_encoder_is_registered_as_a_module_and_z_is_a_vector_in_the_data_plate():
    x = torch.rand(10, 6)
    guide = AmortizedGuide(make_model(CONFIG), CONFIG)
    trace = poutine.trace(guide).get_trace(x, num_data=10, subsample_size=4)
    site = trace.nodes["z"]
    assert site["value"].shape == (4, 2) and site["fn"].event_shape == (2,)
    assert [f.name for f in site["cond_indep_stack"]] == ["data"]
    assert site["fn"].has_rsample
    assert {n for n, s in trace.nodes.items() if s["type"] == "param"} == {
        "encoder$$$net.0.weight", "encoder$$$net.0.bias", "encoder$$$net.2.weight",
        "encoder$$$net.2.bias"}
    # the rows scored are the rows the plate chose
    rows = trace.nodes["data"]["value"]
    loc, _ = guide.encode(x[rows])
    torch.testing.assert_close(site["fn"].base_dist.loc, loc)


def test_mean_field_guide_indexes_its_parameters_by_the_subsample():
    x = torch.rand(10, 6)
    guide = MeanFieldGuide(make_model(CONFIG), CONFIG, init_loc=torch.arange(20.0).reshape(10, 2))
    rows = torch.tensor([7, 2, 5])
    trace = poutine.trace(poutine.condition(guide, {"data": rows})).get_trace(
        x, num_data=10, subsample_size=3)
    torch.testing.assert_close(trace.nodes["z"]["fn"].base_dist.loc,
                               torch.arange(20.0).reshape(10, 2)[rows])
    assert pyro.get_param_store()["z_loc"].shape == (10, 2)
    assert pyro.get_param_store()["z_scale"].shape == (10, 2)


def test_mean_field_guide_has_no_parameters_for_new_rows():
    guide = MeanFieldGuide(make_model(CONFIG), CONFIG)
    guide(torch.rand(10, 6))
    with pytest.raises(InputError, match="10 rows but got 4.*amortized guide"):
        guide(torch.rand(4, 6))


@pytest.mark.parametrize("guide_class", [AmortizedGuide, MeanFieldGuide])
def test_score_function_option_draws_z_without_rsample_and_still_trains_the_guide(guide_class):
    config = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,), score_function=True)
    model = make_model(config)
    guide = guide_class(model, config)
    x = torch.rand(10, 6)
    site = poutine.trace(guide).get_trace(x).nodes["z"]
    assert not site["fn"].has_rsample
    assert not site["value"].requires_grad
    loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, x)
    params = [p for n, p in pyro.get_param_store().named_parameters()
              if n.startswith(("encoder", "z_"))]
    grads = torch.autograd.grad(loss, params)
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_guides_scale_z_by_the_models_beta():
    config = DGLVMConfig(dim=6, latent_dim=2, hidden=(8,), beta=0.25)
    x = torch.rand(5, 6)
    for guide in (AmortizedGuide(make_model(config), config),
                  MeanFieldGuide(make_model(config), config)):
        assert poutine.trace(guide).get_trace(x).nodes["z"]["scale"] == 0.25
    assert poutine.trace(make_model(config)).get_trace(x).nodes["z"]["scale"] == 0.25


@pytest.mark.parametrize("guide", ["amortized", "mean-field"])
def test_both_guides_fit_and_evaluate_through_the_registry(guide):
    spec = get_model("dglvm")
    x = torch.rand(60, 6)
    config = spec.make_config(dim=6, latent_dim=2, hidden=(8,), likelihood="bernoulli")
    result = fit(spec, config, x[:40], inference="svi", guide=guide, steps=150, lr=2e-2,
                 batch_size=20)
    elbo = result.history["elbo"]
    assert sum(elbo[-15:]) / 15 > sum(elbo[:15]) / 15  # it learns
    # the model asks for the JIT-compiled twin of the guide's estimator where there is one
    twin = {"Trace_ELBO": "JitTrace_ELBO"}.get(spec.default_elbo[guide], spec.default_elbo[guide])
    assert result.info["elbo_estimator"] == twin and result.info["jit_fallback"] is None
    metrics = evaluate_fit(spec, config, result, x[:40], x[40:], num_samples=50)
    assert metrics["train_log_likelihood"] >= metrics["elbo"]
    assert (metrics["test_log_likelihood"] is None) == (guide == "mean-field")
