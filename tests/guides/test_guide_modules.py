"""Guides as Pyro modules: their state is their own, they start where every prior is finite,
and a start that is not finite is named by site and prior."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.nn import PyroModule

from guides.diagnostics import nonfinite_start
from inference import strategies
from inference.catalog import get_model
from inference.strategies.svi import build_guide
from inference.svi import fit_svi
from zoo import declare, registry
from zoo.datasets import load_dataset

# hierarchical scales as people write them (posteriordb's eight schools and its kin)
PRIORS = {
    "half-cauchy": lambda zero: dist.HalfCauchy(zero + 2.0),
    "half-student-t": lambda zero: dist.FoldedDistribution(dist.StudentT(zero + 3.0, zero,
                                                                         zero + 2.0)),
    "exponential": lambda zero: dist.Exponential(zero + 1.0),
    "lognormal": lambda zero: dist.LogNormal(zero, 1.0),
}
SCHOOLS = torch.tensor([[28.0], [8.0], [-3.0], [7.0], [-1.0], [1.0], [18.0], [12.0]])


def hierarchical(prior):
    """mu ~ N(0, 5²), tau ~ prior; theta_n ~ N(mu, tau²); x_n ~ N(theta_n, 10²)."""
    def model(x=None, *, num_data=None, subsample_size=None):
        zero = torch.zeros(()) if x is None else x.new_zeros(())
        mu = pyro.sample("mu", dist.Normal(zero, 5.0))
        tau = pyro.sample("tau", prior(zero))
        rows = num_data if x is None else x.shape[0]
        with pyro.plate("data", rows, subsample_size=subsample_size, device=zero.device) as idx:
            theta = pyro.sample("theta", dist.Normal(mu.expand(1), tau.unsqueeze(-1))
                                .to_event(1))
            pyro.sample("x", dist.Normal(theta, 10.0).to_event(1),
                        obs=None if x is None else x[idx])
    return model


@pytest.fixture
def declared():
    """Declares models for one test; the registry is left as it was found."""
    before = registry.models()  # the built-ins loaded first, so they stay

    def add(name, model, **options):
        return get_model(declare(name, model, replace=True, **options))
    yield add
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


@pytest.mark.parametrize("prior", list(PRIORS))
def test_hierarchical_scales_fit_from_the_defaults_without_nan(declared, prior):
    spec = declared(f"schools-{prior}", hierarchical(PRIORS[prior]),
                    global_sites=("mu", "tau"), local_sites=("theta",))
    config = spec.make_config(dim=1)
    for guide in ("auto-normal", "auto-lowrank", "auto-mvn"):
        # the start: tau at its prior's median (finite), never at a HalfCauchy's infinite mean
        model = spec.make_model(config)
        q = build_guide(spec, guide, model, config, SCHOOLS)
        with pyro.get_param_store().scope(), torch.no_grad():
            tau = poutine.trace(q).get_trace(SCHOOLS).nodes["tau"]["value"]
        assert math.isfinite(float(tau)) and float(tau) > 0, (guide, tau)
        # the defaults (learning rate, start, estimator), fewer steps to keep the test short
        result = strategies.fit(spec, config, SCHOOLS, inference="svi", guide=guide, seed=0,
                                steps=300)
        history = result.history["elbo"]
        assert all(math.isfinite(v) for v in history), (prior, guide)
        # the fit climbs: the last tenth of the steps beats the first step by nats per row
        tail = history[-max(1, len(history) // 10):]
        assert sum(tail) / len(tail) > history[0] + 0.1, (prior, guide, history[0], tail[-1])


def test_a_nonfinite_start_names_the_site_and_its_prior(declared):
    """A user's guide that starts the HalfCauchy scale at its (infinite) mean: the first step's
    error names the site and the prior, not the learning rate."""

    def at_the_mean(x=None, *, num_data=None, subsample_size=None):
        pyro.sample("mu", dist.Delta(pyro.param("mu_loc", x.new_zeros(()))))
        pyro.sample("tau", dist.Delta(x.new_tensor(math.inf)))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size):
            pyro.sample("theta", dist.Delta(x.new_zeros(x.shape[0], 1)).to_event(1))

    spec = declared("schools-at-the-mean", hierarchical(PRIORS["half-cauchy"]),
                    global_sites=("mu", "tau"), local_sites=("theta",),
                    guides={"mean": lambda model, config: at_the_mean})
    config = spec.make_config(dim=1)
    with pytest.raises(RuntimeError, match=r"step 1 .*site 'tau' \(its prior HalfCauchy\)") \
            as raised:
        strategies.fit(spec, config, SCHOOLS, inference="svi", guide="mean", steps=5)
    assert "learning rate" not in str(raised.value)
    # the same diagnosis on its own, and nothing to say about a finite start
    model = spec.make_model(config)
    with pyro.get_param_store().scope():
        assert "site 'tau'" in nonfinite_start(model, at_the_mean, SCHOOLS)
        generic = declared("schools-finite", hierarchical(PRIORS["half-cauchy"]),
                           global_sites=("mu", "tau"), local_sites=("theta",))
        finite = build_guide(generic, "auto-mvn", model, config, SCHOOLS)
        assert nonfinite_start(model, finite, SCHOOLS) == ""


@pytest.fixture(scope="module")
def faithful() -> torch.Tensor:
    return load_dataset("old-faithful", test_fraction=0, standardize=True,
                        dtype=torch.float64).train


def _fitted_guide(spec, guide, config, x, seed, name=""):
    pyro.set_rng_seed(seed)
    model = spec.make_model(config, spec.init_params(config, x, torch.Generator().manual_seed(
        seed)) if spec.init_params else None)
    q = build_guide(spec, guide, model, config, x)
    if name:
        q._pyro_name = name
    return model, q, fit_svi(model, q, x, steps=20, lr=0.05, seed=seed, stop_tol=0.0)


LOCAL = "tests/data/bayes_models.py:normal-normal-local"  # a declared model: generic guides


@pytest.mark.parametrize("model_name, guide", [
    ("gmm", "mean-field"), ("gmm", "amortized"), ("ppca", "mean-field"), ("ppca", "amortized"),
    (LOCAL, "auto-normal"), (LOCAL, "auto-mvn"), (LOCAL, "amortized")])
def test_two_guides_of_one_kind_hold_their_own_parameters(faithful, model_name, guide):
    spec = get_model(model_name)
    columns = 1 if model_name == LOCAL else 2
    config = spec.make_config(dim=columns, **({"latent_dim": 1} if model_name == "ppca" else {}))
    first_x, second_x = faithful[:150, :columns], faithful[150:, :columns] * 2.0  # two data sets
    _, first, first_fit = _fitted_guide(spec, guide, config, first_x, seed=0)
    _, second, second_fit = _fitted_guide(spec, guide, config, second_x, seed=1)
    assert isinstance(first, PyroModule)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert first_state.keys() == second_state.keys() and first_state
    assert any(first_state[k].shape != second_state[k].shape
               or not torch.equal(first_state[k], second_state[k]) for k in first_state)
    # the fit's guide_params are the module's own values, under stable param-store names
    assert first_fit.guide_params.keys() == second_fit.guide_params.keys()
    with pyro.get_param_store().scope(), torch.no_grad():
        # the module's values, into a fresh store
        poutine.trace(first).get_trace(first_x, num_data=first_x.shape[0])
        for key, value in first_fit.guide_params.items():
            assert torch.allclose(pyro.param(key), value), key
    # changing one leaves the other as it was
    before = {k: v.clone() for k, v in second.state_dict().items()}
    with torch.no_grad():
        for parameter in first.parameters():
            parameter.add_(1.0)
    assert all(torch.equal(before[k], v) for k, v in second.state_dict().items())


def test_named_guides_share_one_param_store_without_colliding(faithful):
    """Two mean-field guides named apart, called in one param store: two sets of parameters."""
    spec = get_model("gmm")
    config = spec.make_config(dim=2)
    with pyro.get_param_store().scope():
        guides = []
        for name, rows in (("first", faithful[:100]), ("second", faithful[100:220])):
            model = spec.make_model(config, spec.init_params(config, rows, torch.Generator()))
            guide = spec.guides["mean-field"].factory(model, config, name=name)
            guide(rows)
            guides.append(guide)
        store = pyro.get_param_store()
        assert store["first.assignment_logits"].shape == (100, 2)
        assert store["second.assignment_logits"].shape == (120, 2)
        assert "assignment_logits" not in store


def test_enumeration_is_said_at_construction(faithful):
    """The exact guide marks z for enumeration only when built for an enumerating ELBO, and the
    enumerate guide then leaves z to the model; its ELBO is log p(x) either way."""
    spec = get_model("gmm")
    config = spec.make_config(dim=2)
    model = spec.make_model(config, spec.init_params(config, faithful, torch.Generator()))
    with pyro.get_param_store().scope():
        sampled = build_guide(spec, "exact", model, config, faithful, "Trace_ELBO")
        enumerated = build_guide(spec, "exact", model, config, faithful, "TraceEnum_ELBO")
        summed_out = build_guide(spec, "enumerate", model, config, faithful, "TraceEnum_ELBO")
        assert "enumerate" not in poutine.trace(sampled).get_trace(faithful).nodes["z"]["infer"]
        assert poutine.trace(enumerated).get_trace(faithful).nodes["z"]["infer"] == {
            "enumerate": "parallel"}
        assert "z" not in poutine.trace(summed_out).get_trace(faithful).nodes
        elbo = pyro.infer.TraceEnum_ELBO(max_plate_nesting=1)
        params = {k: v.detach() for k, v in model.current_params(faithful).items()}
        exact = float(spec.log_marginal(config, params, faithful).sum())
        for guide in (enumerated, summed_out):
            assert -elbo.loss(model, guide, faithful) == pytest.approx(exact, rel=1e-10)
