"""The generic guides of guides/generic.py on declared models: the right set for each model's
sites, they train (subsampled too) and evaluate, and they are right where the truth is known:
the conjugate posterior of a global mean, the exact posterior of a linear-Gaussian model, the
exact log-likelihood of a Student-t mixture as an upper bound of their ELBO."""

import math
import textwrap

import pytest
import torch
from pyro import poutine

import zoo.registry
from guides.generic import FlowGuide
from inference.catalog import get_model
from inference.em import fit_em
from inference.evaluate import fitted, iwae, pointwise_log_weights
from inference.svi import fit_svi

HEADER = '''
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from zoo import declare


@dataclass(frozen=True)
class Config:
    dim: int = field(default=2, metadata={"cli": False})
    latent_dim: int = 1
'''

# z_n ~ N(0, I_q), x_n ~ N(loc + W z_n, noise^2 I): marginal N(loc, W W^T + noise^2 I)
LINEAR = '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    d, q = config.dim, config.latent_dim
    loc = pyro.param("loc", lambda: like.new_zeros(d))
    weight = pyro.param("weight", lambda: torch.eye(d, q, dtype=like.dtype, device=like.device))
    noise = pyro.param("noise", lambda: like.new_ones(()), constraint=constraints.positive)
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as rows:
        z = pyro.sample("z", dist.Normal(like.new_zeros(q), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(loc + z @ weight.T, noise).to_event(1),
                    obs=None if x is None else x[rows])


def log_marginal(config, params, x):
    covariance = params["weight"] @ params["weight"].T + params["noise"] ** 2 * torch.eye(
        config.dim, dtype=x.dtype, device=x.device)
    return dist.MultivariateNormal(params["loc"], covariance).log_prob(x)


declare("linear", model, config=Config, local_sites=("z",), log_marginal=log_marginal)
'''

# mu ~ N(0, 10^2 I), z_n ~ N(mu, I), x_n ~ N(z_n, 0.5^2 I): a global and a local latent
BAYES = '''
def model(x=None, *, num_data=None, subsample_size=None, config):
    like = x if x is not None else torch.zeros(())
    mu = pyro.sample("mu", dist.Normal(like.new_zeros(config.dim), 10.0).to_event(1))
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as rows:
        z = pyro.sample("z", dist.Normal(mu, 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z, 0.5).to_event(1), obs=None if x is None else x[rows])


declare("bayes", model, config=Config, local_sites=("z",), global_sites=("mu",))
'''


@pytest.fixture(autouse=True)
def _clean_registry():
    """The test models leave the registry as they found it."""
    registry = zoo.registry.models()  # the built-ins loaded first, so they stay
    yield
    zoo.registry._REGISTRY.clear()
    zoo.registry._REGISTRY.update(registry)


def declared(tmp_path, body: str, name: str):
    path = tmp_path / f"{name}_model.py"
    path.write_text(HEADER + textwrap.dedent(body))
    return get_model(f"{path}:{name}")


def linear_data(num_data=200, seed=0):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(num_data, 1, generator=generator)
    return torch.cat([z, 0.8 * z], -1) + 0.3 * torch.randn(num_data, 2, generator=generator)


def test_each_model_gets_the_guides_its_sites_allow(tmp_path):
    linear = declared(tmp_path, LINEAR, "linear")
    assert list(linear.guides) == ["auto-normal", "amortized", "flow"]
    assert set(linear.default_elbo.values()) == {"Trace_ELBO"}
    bayes = declared(tmp_path, BAYES, "bayes")
    assert list(bayes.guides) == ["auto-normal", "auto-lowrank", "auto-mvn", "amortized", "flow"]
    mixture = get_model("student-t-mixture")  # a discrete and a continuous local site
    assert list(mixture.guides) == ["auto-normal", "amortized", "flow"]
    assert set(mixture.default_elbo.values()) == {"TraceEnum_ELBO"}
    for spec in (linear, bayes, mixture):
        assert spec.guides["auto-normal"].per_datapoint is True
        assert spec.guides["amortized"].per_datapoint is False
        assert spec.guides["flow"].per_datapoint is False


@pytest.mark.parametrize("model_name", ["linear", "bayes", "student-t-mixture"])
def test_every_generic_guide_trains_subsampled_and_evaluates(tmp_path, model_name):
    spec = (get_model(model_name) if model_name == "student-t-mixture"
            else declared(tmp_path, {"linear": LINEAR, "bayes": BAYES}[model_name], model_name))
    x = linear_data(48)
    config = spec.make_config(2)
    for name, factory in spec.guides.items():
        model = spec.make_model(config, None)
        result = fit_svi(model, factory(model, config), x, steps=6, batch_size=12,
                         elbo=spec.default_elbo[name], seed=0)
        assert all(math.isfinite(v) for v in result.history["elbo"]), name
        for key, value in result.guide_params.items():  # per-datapoint: every row, not a batch
            if "locs.z" in key or key.startswith("mean_field."):
                assert value.shape[0] == 48, (name, key, value.shape)
        with fitted(spec, config, result.params, x, guide=name,
                    guide_params=result.guide_params) as (fitted_model, guide), torch.no_grad():
            weights = pointwise_log_weights(fitted_model, guide, x, 8)
        assert weights.shape == (8, 48) and torch.isfinite(weights).all(), name


def _fixed(model, params):
    """The model with its parameters held at ``params`` (constants, never in the param store):
    SVI then fits the guide alone."""
    return poutine.block(poutine.substitute(model, data=params), hide_types=["param"])


def test_guides_recover_the_conjugate_posterior_mean_of_a_global(tmp_path):
    spec = declared(tmp_path, BAYES, "bayes")
    x = linear_data(40) + torch.tensor([0.5, -0.3])
    config = spec.make_config(2)
    # x_n | mu ~ N(mu, (1 + 0.25) I): the posterior mean of mu shrinks the data mean a little
    precision = 1 / 100 + x.shape[0] / 1.25
    exact = (x.sum(0) / 1.25) / precision
    for name in ("auto-normal", "auto-lowrank", "auto-mvn"):
        model = spec.make_model(config, None)
        # steps for the whole schedule (a climb, then the averaged final phase): a fit cut by
        # the cap during the climb returns its last iterate, which wanders at lr 0.05
        result = fit_svi(model, spec.guides[name](model, config), x, steps=2000, lr=0.05,
                         num_particles=8, seed=0)
        with fitted(spec, config, result.params, x, guide=name,
                    guide_params=result.guide_params) as (_, guide), torch.no_grad():
            draws = torch.stack([poutine.trace(guide).get_trace(x, num_data=40)
                                 .nodes["mu"]["value"] for _ in range(400)])
        # for a Gaussian posterior even mean-field gets the mean right; the posterior's
        # spread is 0.18, so 400 draws pin their mean to about 0.01
        assert torch.allclose(draws.mean(0), exact, atol=0.06), (name, draws.mean(0), exact)


def test_encoder_matches_the_exact_posterior_of_a_linear_gaussian_model(tmp_path):
    """p(z | x) is Gaussian with a mean linear in x and a fixed variance, so the amortized
    and the mean-field guides can both reach it: the gap log p(x) - ELBO goes to 0."""
    spec = declared(tmp_path, LINEAR, "linear")
    x = linear_data(150)
    config = spec.make_config(2)
    # maximum likelihood in closed form (PPCA, q = 1): the top eigenpair of the covariance
    centred = x - x.mean(0)
    values, vectors = torch.linalg.eigh(centred.T @ centred / x.shape[0])
    noise = values[0]
    truth = {"loc": x.mean(0), "weight": vectors[:, 1:] * (values[1] - noise).sqrt(),
             "noise": noise.sqrt()}
    exact = spec.log_marginal(config, truth, x).mean()
    for name in ("amortized", "auto-normal"):
        model = spec.make_model(config, truth)
        result = fit_svi(_fixed(model, truth), spec.guides[name](model, config), x, steps=500,
                         lr=0.03, seed=0)
        with fitted(spec, config, truth, x, guide=name,
                    guide_params=result.guide_params) as (fitted_model, guide), torch.no_grad():
            weights = pointwise_log_weights(fitted_model, guide, x, 200)
        gap = float(exact - weights.mean())
        assert -0.02 < gap < 0.05, (name, gap)


def test_mixture_guides_bound_the_exact_student_t_likelihood():
    """With the Student-t mixture held at its EM fit, every guide's ELBO lies below the exact
    log p(x), and the IWAE estimate with the amortized guide (q(c | x), q(u | x, c)) reaches
    it: a wrong enumeration or a wrongly weighted draw would break one or the other."""
    spec = get_model("student-t-mixture")
    generator = torch.Generator().manual_seed(1)
    x, _, _ = spec.synthetic(150, generator)
    config = spec.make_config(2, df=3.0)
    params = fit_em(spec, config, x, seed=0).params
    exact = float(spec.log_marginal(config, params, x).mean())
    for name in ("auto-normal", "amortized"):
        model = spec.make_model(config, params)
        result = fit_svi(_fixed(model, params), spec.guides[name](model, config), x, steps=300,
                         lr=0.03, elbo="TraceEnum_ELBO", seed=0)
        with fitted(spec, config, params, x, guide=name,
                    guide_params=result.guide_params) as (fitted_model, guide), torch.no_grad():
            weights = pointwise_log_weights(fitted_model, guide, x, 300)
        elbo, estimate = float(weights.mean()), float(iwae(weights).mean())
        assert elbo < exact + 0.01, (name, elbo, exact)
        assert exact - elbo < 0.5, (name, elbo, exact)
        if name == "amortized":
            assert abs(estimate - exact) < 0.03, (estimate, exact)


BIMODAL = '''
def model(x=None, *, num_data=None, subsample_size=None):
    like = x if x is not None else torch.zeros(())
    n = x.shape[0] if x is not None else num_data
    with pyro.plate("data", n, subsample_size=subsample_size, device=like.device) as rows:
        z = pyro.sample("z", dist.Normal(like.new_zeros(1), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z.square(), 0.1).to_event(1),
                    obs=None if x is None else x[rows])


declare("bimodal", model, local_sites=("z",))
'''


@pytest.mark.slow
def test_flow_covers_both_modes_of_a_two_mode_posterior(tmp_path):
    """x = z^2 + noise: p(z | x) has modes at +-sqrt(x). A Gaussian encoder covers one, so
    importance sampling with it as proposal misses half the mass (about log 2 per row); the
    spline flow puts mass on both, and its importance-sampled log p(x) is higher."""
    spec = declared(tmp_path, BIMODAL, "bimodal")
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(200, 1, generator=generator)
    x = z.square() + 0.1 * torch.randn(200, 1, generator=generator)
    config = spec.make_config(1)
    estimates = {}
    for name, build in (("amortized", spec.guides["amortized"]), ("flow", FlowGuide)):
        model = spec.make_model(config)
        result = fit_svi(model, build(model, config), x, steps=600, lr=0.01, seed=0)
        with fitted(spec, config, result.params, x, guide=name,
                    guide_params=result.guide_params) as (fitted_model, guide), torch.no_grad():
            weights = pointwise_log_weights(fitted_model, guide, x, 200)
        estimates[name] = float(iwae(weights).mean())
    assert estimates["flow"] > estimates["amortized"] + 0.1, estimates
