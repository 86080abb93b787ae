"""The posteriordb suite: every posterior traces, reports posteriordb's parameters, has a finite
log density at the reference mean that moves between two reference draws exactly as a plain
loop-by-loop transcription of its Stan program says, and (the real check that a model was
written right) short NUTS runs agree with the reference means within Monte Carlo error."""

from __future__ import annotations

import functools
import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import MCMC, NUTS
from pyro.ops.stats import effective_sample_size
from scipy import stats
from scipy.special import logsumexp

from inference.bench import metrics
from zoo.errors import InputError
from zoo.posteriordb import get, model_draws, names, nuts_model, suite
from zoo.posteriordb.base import DATA, CumulativeExp, OrderedNormal
from zoo.posteriordb.regression import POSTERIORS as REGRESSIONS
from zoo.posteriordb.time_series import linear_recursion

NAMES = names()


@functools.cache
def _posterior(name):
    return get(name)


def _point(post, values: np.ndarray) -> dict[str, torch.Tensor]:
    """The latent site values at one point of the reported parameters."""
    columns = {n: torch.tensor([float(v)], dtype=torch.float64)
               for n, v in zip(post.reference.names, values, strict=True)}
    return {site: value[0] for site, value in post.latent_values(columns).items()}


def _log_joint(post, sites: dict[str, torch.Tensor]) -> float:
    model = poutine.condition(post.model, data=sites)
    trace = poutine.trace(model).get_trace(post.x, config=post.config())
    return float(trace.log_prob_sum())


def test_suite_has_at_least_twenty_posteriors_with_their_files():
    posteriors = suite()
    assert list(posteriors) == NAMES and len(NAMES) >= 20
    readme = (DATA / "README.md").read_text()
    for name, post in posteriors.items():
        assert post.name == name
        assert name in readme, f"{name} is not in data/README.md"
    size = sum(path.stat().st_size for path in DATA.iterdir())
    assert size < 5_000_000


@pytest.mark.parametrize("name", NAMES)
def test_model_traces_and_reports_the_reference_parameters(name):
    post = _posterior(name)
    config = post.config()
    config.validate(post.x.shape[0])
    assert post.x.dtype == torch.float64 and post.x.shape[1] == len(post.columns) == config.dim
    trace = poutine.trace(post.model).get_trace(post.x, config=config)
    latent = {site: node["value"] for site, node in trace.nodes.items()
              if node["type"] == "sample" and not node["is_observed"]
              and type(node["fn"]).__name__ != "_Subsample"}
    for site in post.local_sites:
        assert "data" in {frame.name for frame in trace.nodes[site]["cond_indep_stack"]}
    reported = post.reported({site: value.unsqueeze(0) for site, value in latent.items()})
    assert tuple(reported) == post.reference.names
    assert all(value.shape == (1,) for value in reported.values())


@pytest.mark.parametrize("name", NAMES)
def test_reference_files_agree_and_invert(name):
    """The shipped means are those of the thinned draws (up to their Monte Carlo error), and
    ``latent_values`` inverts ``reported`` on the reference draws."""
    post = _posterior(name)
    reference = post.reference
    assert reference.draws.shape == (1000, len(reference.names))
    assert np.all(reference.sd > 0)
    standard_error = reference.sd / math.sqrt(reference.draws.shape[0])
    # 1000 thinned draws of 10 000, nearly independent: 5 standard errors
    assert np.all(np.abs(reference.draws.mean(0) - reference.mean) < 5 * standard_error)
    columns = {n: torch.from_numpy(reference.draws[:, k].copy())
               for k, n in enumerate(reference.names)}
    back = post.reported(post.latent_values(columns))
    for n in reference.names:
        torch.testing.assert_close(back[n], columns[n], rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("name", NAMES)
def test_log_density_is_finite_at_the_reference_mean(name):
    post = _posterior(name)
    assert math.isfinite(_log_joint(post, _point(post, post.reference.mean)))


@pytest.mark.parametrize("name", NAMES)
def test_stated_wide_priors_are_wide(name):
    """Where Stan's flat prior was made proper, its scale is at least ten times the reference
    posterior's extent |mean| + sd, so it moves the posterior by well under 1% of an sd."""
    post = _posterior(name)
    reference = post.reference
    for site, scale in post.extra.get("wide_priors", {}).items():
        extent = [abs(m) + s for n, m, s in zip(reference.names, reference.mean, reference.sd,
                                                strict=True)
                  if n == site or n.startswith(site + "[")]
        assert extent, f"{name}: wide prior on {site}, which is not reported"
        assert scale >= 10 * max(extent), (name, site, scale, max(extent))


# --- the Stan programs transcribed loop by loop (numpy/scipy), the stated wide priors added --

norm = stats.norm


def _eight_schools_centered(p, d):
    return (norm.logpdf(p["mu"], 0, 5) + stats.cauchy.logpdf(p["tau"], 0, 5)
            + sum(norm.logpdf(p["theta"][j], p["mu"], p["tau"])
                  + norm.logpdf(d["y"][j], p["theta"][j], d["sigma"][j]) for j in range(8)))


def _eight_schools_noncentered(p, d):
    trans = (p["theta"] - p["mu"]) / p["tau"]
    return (norm.logpdf(p["mu"], 0, 5) + stats.cauchy.logpdf(p["tau"], 0, 5)
            + sum(norm.logpdf(trans[j], 0, 1) + norm.logpdf(d["y"][j], p["theta"][j],
                                                              d["sigma"][j]) for j in range(8)))


def _ark(p, d):
    total = norm.logpdf(p["alpha"], 0, 10) + norm.logpdf(p["beta"], 0, 10).sum()
    total += stats.cauchy.logpdf(p["sigma"], 0, 2.5)
    y, lags = d["y"], int(d["K"])
    for t in range(lags, len(y)):
        mu = p["alpha"] + sum(p["beta"][k] * y[t - k - 1] for k in range(lags))
        total += norm.logpdf(y[t], mu, p["sigma"])
    return total


def _arma(p, d):
    total = (norm.logpdf(p["mu"], 0, 10) + norm.logpdf(p["phi"], 0, 2)
             + norm.logpdf(p["theta"], 0, 2) + stats.cauchy.logpdf(p["sigma"], 0, 2.5))
    y = d["y"]
    err = y[0] - (p["mu"] + p["phi"] * p["mu"])
    total += norm.logpdf(err, 0, p["sigma"])
    for t in range(1, len(y)):
        err = y[t] - (p["mu"] + p["phi"] * y[t - 1] + p["theta"] * err)
        total += norm.logpdf(err, 0, p["sigma"])
    return total


def _garch(p, d):
    # + log(1 - alpha1): the Jacobian from (alpha1, beta1) to the model's (alpha1, beta1_share)
    total = norm.logpdf(p["mu"], 0, 100) + norm.logpdf(p["alpha0"], 0, 100)
    total += math.log(1 - p["alpha1"])
    y, sigma = d["y"], float(d["sigma1"])
    total += norm.logpdf(y[0], p["mu"], sigma)
    for t in range(1, len(y)):
        sigma = math.sqrt(p["alpha0"] + p["alpha1"] * (y[t - 1] - p["mu"]) ** 2
                          + p["beta1"] * sigma ** 2)
        total += norm.logpdf(y[t], p["mu"], sigma)
    return total


def _forward(log_transition, emission):
    """Stan's forward algorithm: ``emission[t, k]`` the log density of step t in state k."""
    gamma = emission[0].copy()
    for t in range(1, emission.shape[0]):
        gamma = np.array([logsumexp(gamma + log_transition[:, k]) + emission[t, k]
                          for k in range(len(gamma))])
    return logsumexp(gamma)


def _hmm_example(p, d):
    transition = np.log(np.stack([p["theta1"], p["theta2"]]))
    emission = norm.logpdf(d["y"][:, None], p["mu"][None, :], 1)
    return (norm.logpdf(p["mu"][0], 3, 1) + norm.logpdf(p["mu"][1], 10, 1)
            + _forward(transition, emission))


def _hmm_drive(p, d):
    alpha = d["alpha"]
    # Dirichlet log density up to its constant (the 6-digit draws are a simplex to 1e-6 only)
    total = sum(((alpha[k] - 1) * np.log(p[f"theta{k + 1}"])).sum() for k in range(2))
    total += norm.logpdf(p["phi"], [0, 3], 1).sum() + norm.logpdf(p["lambda"], [0, 3], 1).sum()
    emission = (stats.expon.logpdf(d["u"][:, None], scale=1 / p["phi"][None, :])
                + stats.expon.logpdf(d["v"][:, None], scale=1 / p["lambda"][None, :]))
    transition = np.log(np.stack([p["theta1"], p["theta2"]]))
    return total + _forward(transition, emission)


def _gauss_mix(p, d):
    total = norm.logpdf(p["sigma"], 0, 2).sum() + norm.logpdf(p["mu"], 0, 2).sum()
    total += stats.beta.logpdf(p["theta"], 5, 5)
    for y in d["y"]:
        total += np.logaddexp(math.log(p["theta"]) + norm.logpdf(y, p["mu"][0], p["sigma"][0]),
                              math.log(1 - p["theta"]) + norm.logpdf(y, p["mu"][1],
                                                                     p["sigma"][1]))
    return total


def _se_cov(x, alpha, rho):
    return np.array([[alpha ** 2 * math.exp(-((a - b) ** 2) / (2 * rho ** 2)) for b in x]
                     for a in x])


def _gp_pois(p, d):
    # the Stan program's parameter is f_tilde (as the model's latent); f is reported
    cov = _se_cov(d["x"], p["alpha"], p["rho"]) + 1e-10 * np.eye(len(d["x"]))
    f_tilde = np.linalg.solve(np.linalg.cholesky(cov), p["f"])
    return (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4) + norm.logpdf(p["alpha"], 0, 2)
            + norm.logpdf(f_tilde).sum() + stats.poisson.logpmf(d["k"], np.exp(p["f"])).sum())


def _gp_regr(p, d):
    cov = _se_cov(d["x"], p["alpha"], p["rho"]) + p["sigma"] * np.eye(len(d["x"]))
    return (stats.gamma.logpdf(p["rho"], 25, scale=1 / 4) + norm.logpdf(p["alpha"], 0, 2)
            + norm.logpdf(p["sigma"], 0, 1)
            + stats.multivariate_normal.logpdf(d["y"], np.zeros(len(d["x"])), cov))


def _blr(p, d):
    total = norm.logpdf(p["beta"], 0, 10).sum() + norm.logpdf(p["sigma"], 0, 10)
    for n in range(int(d["N"])):
        total += norm.logpdf(d["y"][n], sum(d["X"][n][j] * p["beta"][j] for j in range(5)),
                             p["sigma"])
    return total


def _kidscore_interaction(p, d):
    total = stats.cauchy.logpdf(p["sigma"], 0, 2.5) + norm.logpdf(p["beta"], 0, 1000).sum()
    b = p["beta"]
    for n in range(int(d["N"])):
        hs, iq = d["mom_hs"][n], d["mom_iq"][n]
        total += norm.logpdf(d["kid_score"][n], b[0] + b[1] * hs + b[2] * iq + b[3] * hs * iq,
                             p["sigma"])
    return total


def _logmesquite_logvas(p, d):
    total = norm.logpdf(p["beta"], 0, 100).sum() + norm.logpdf(p["sigma"], 0, 100)
    b = p["beta"]
    for n in range(int(d["N"])):
        d1, d2 = d["diam1"][n], d["diam2"][n]
        loc = (b[0] + b[1] * math.log(d1 * d2 * d["canopy_height"][n]) + b[2] * math.log(d1 * d2)
               + b[3] * math.log(d1 / d2) + b[4] * math.log(d["total_height"][n])
               + b[5] * math.log(d["density"][n]) + b[6] * d["group"][n])
        total += norm.logpdf(math.log(d["weight"][n]), loc, p["sigma"])
    return total


def _logearn_interaction_z(p, d):
    total = norm.logpdf(p["beta"], 0, 100).sum() + norm.logpdf(p["sigma"], 0, 100)
    height = np.asarray(d["height"])
    z = (height - height.mean()) / height.std(ddof=1)
    b = p["beta"]
    for n in range(int(d["N"])):
        male = d["male"][n]
        total += norm.logpdf(math.log(d["earn"][n]), b[0] + b[1] * z[n] + b[2] * male
                             + b[3] * z[n] * male, p["sigma"])
    return total


STAN = {  # posterior -> (its data set, the Stan program as loops)
    "eight_schools-eight_schools_centered": ("eight_schools", _eight_schools_centered),
    "eight_schools-eight_schools_noncentered": ("eight_schools", _eight_schools_noncentered),
    "arK-arK": ("arK", _ark),
    "arma-arma11": ("arma", _arma),
    "garch-garch11": ("garch", _garch),
    "hmm_example-hmm_example": ("hmm_example", _hmm_example),
    "bball_drive_event_0-hmm_drive_0": ("bball_drive_event_0", _hmm_drive),
    "low_dim_gauss_mix-low_dim_gauss_mix": ("low_dim_gauss_mix", _gauss_mix),
    "gp_pois_regr-gp_pois_regr": ("gp_pois_regr", _gp_pois),
    "gp_pois_regr-gp_regr": ("gp_pois_regr", _gp_regr),
    "sblrc-blr": ("sblrc", _blr),
    "kidiq-kidscore_interaction": ("kidiq", _kidscore_interaction),
    "mesquite-logmesquite_logvas": ("mesquite", _logmesquite_logvas),
    "earnings-logearn_interaction_z": ("earnings", _logearn_interaction_z),
}


def _stan_parameters(post, values):
    """Reported values by parameter (vectors gathered), as the Stan program names them."""
    out: dict[str, list] = {}
    for n, v in zip(post.reference.names, values, strict=True):
        out.setdefault(n.split("[")[0], []).append(float(v))
    return {k: (v[0] if len(v) == 1 and not post.reference.names.count(f"{k}[1]")
                else np.array(v)) for k, v in out.items()}


def _renormalized(post, values):
    """The HMMs' transition rows scaled to sum to 1 (the draws have 6 digits; DiscreteHMM
    renormalizes its logits, Stan's forward algorithm does not)."""
    values = np.array(values, dtype=np.float64)
    for row in ("theta1", "theta2"):
        index = [k for k, n in enumerate(post.reference.names) if n.startswith(row + "[")]
        values[index] /= values[index].sum()
    return values


@pytest.mark.parametrize("name", sorted(STAN))
def test_log_density_moves_as_the_stan_program_says(name):
    """log p at two reference draws and at the mean, minus log p at a third draw: the model
    and a loop-by-loop transcription of the Stan program agree (normalizing constants, which
    Stan drops and Pyro keeps, cancel in the difference)."""
    post = _posterior(name)
    data_name, stan = STAN[name]
    data = {k: np.asarray(v) for k, v in json.loads((DATA / f"{data_name}.json").read_text())
            .items()}
    draws = post.reference.draws
    base = _renormalized(post, draws[0])
    for point in (draws[1], draws[500], post.reference.mean):
        point = _renormalized(post, point)
        ours = _log_joint(post, _point(post, point)) - _log_joint(post, _point(post, base))
        theirs = (stan(_stan_parameters(post, point), data)
                  - stan(_stan_parameters(post, base), data))
        assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)


def _linear_design(post):
    """A posterior linear in its coefficients given sigma: (design, response, prior means,
    prior sds) of y ~ N(design @ coefficients, sigma), the coefficients in reported order."""
    config = post.config()
    x = post.x.numpy()
    if post.name == "arK-arK":  # alpha, then beta_k on y_{t-k}, t = K+1..T
        y, lags = x[:, 0], config.lags
        design = np.column_stack([np.ones(len(y) - lags)]
                                 + [y[lags - 1 - k: len(y) - 1 - k] for k in range(lags)])
        return design, y[lags:], np.zeros(lags + 1), np.full(lags + 1, 10.0)
    design = np.column_stack([np.ones(len(x)), x[:, 1:]]) if config.intercept else x[:, 1:]
    return design, x[:, 0], np.asarray(config.coef_loc), np.asarray(config.coef_scale)


@pytest.mark.parametrize("name", [*sorted(REGRESSIONS), "arK-arK"])
def test_linear_reference_is_the_exact_conditional_posterior(name):
    """Independent of any sampler: given sigma, the coefficients of a normal regression (an
    AR(K) is one, on lagged values) are exactly normal (precision X'X / sigma^2 + the prior's),
    so E[beta] = E_sigma[E[beta | sigma]] and Var[beta] = E_sigma[Var[beta | sigma]] +
    Var_sigma[E[beta | sigma]], averaged over the reference's own sigma draws. The reference
    means and sds are these (up to the reference's Monte Carlo error, ~0.01 sd) only if the
    model's rows (logs, centring, indicators, interactions, lags of the Stan program) and the
    coefficients' prior are the program's."""
    post = _posterior(name)
    design, response, prior_loc, prior_scale = _linear_design(post)
    sigma = post.reference.draws[:, post.reference.names.index("sigma")]
    precision = design.T @ design / sigma[:, None, None] ** 2 + np.diag(1 / prior_scale ** 2)
    shift = design.T @ response / sigma[:, None] ** 2 + prior_loc / prior_scale ** 2  # (S, P)
    cond_mean = np.linalg.solve(precision, shift[..., None])[..., 0]
    cond_var = np.diagonal(np.linalg.inv(precision), axis1=-2, axis2=-1)
    mean = cond_mean.mean(0)
    sd = np.sqrt(cond_var.mean(0) + cond_mean.var(0))
    coefficients = [k for k, n in enumerate(post.reference.names) if n != "sigma"]
    ref_mean, ref_sd = post.reference.mean[coefficients], post.reference.sd[coefficients]
    assert (np.abs(mean - ref_mean) / ref_sd).max() < 0.05, (mean - ref_mean) / ref_sd
    np.testing.assert_allclose(sd, ref_sd, rtol=0.05)


def test_ordered_normal_samples_exactly():
    """Sorted pairs of iid N(0, 2): E[max] = 2 / sqrt(pi) (a closed form); positive draws of
    N(3, 1), N(10, 1) keep their order and sign."""
    pyro.set_rng_seed(1)
    draws = OrderedNormal(torch.zeros(2, dtype=torch.float64), 2.0).sample((40_000,))
    assert bool((draws[:, 1] > draws[:, 0]).all())
    assert float(draws[:, 1].mean()) == pytest.approx(2 / math.sqrt(math.pi), abs=0.03)
    prior = OrderedNormal(torch.tensor([0.0, 3.0], dtype=torch.float64), 1.0, positive=True)
    draws = prior.sample((1000,))
    assert bool((draws[:, 0] > 0).all() and (draws[:, 1] > draws[:, 0]).all())
    assert prior.expand((3,)).sample().shape == (3, 2)


def test_stan_positive_ordered_transform():
    """cumsum(exp(u)): inverts, lands on increasing positive vectors, and its log-Jacobian is
    autograd's log-determinant."""
    transform = CumulativeExp()
    u = torch.tensor([0.3, -1.2, 0.8], dtype=torch.float64)
    mu = transform(u)
    assert bool((mu > 0).all() and (mu[1:] > mu[:-1]).all())
    torch.testing.assert_close(transform.inv(mu), u)
    jacobian = torch.autograd.functional.jacobian(transform, u)
    assert float(transform.log_abs_det_jacobian(u, mu)) == pytest.approx(
        float(torch.linalg.slogdet(jacobian).logabsdet))


def test_linear_recursion_matches_the_loop_under_a_batch():
    generator = torch.Generator().manual_seed(0)
    coefficient = torch.tensor([[-0.9], [0.3], [1.1]], dtype=torch.float64)  # batch (3, 1)
    inputs = torch.randn(3, 1, 37, generator=generator, dtype=torch.float64)
    expected = inputs.clone()
    for t in range(1, 37):
        expected[..., t] = inputs[..., t] + coefficient * expected[..., t - 1]
    torch.testing.assert_close(linear_recursion(coefficient, inputs), expected)


def test_inputs_are_checked():
    with pytest.raises(InputError, match="no posterior 'nope'"):
        get("nope")
    post = _posterior("arK-arK")
    with pytest.raises(InputError, match="pass its rows x"):
        post.model(None, config=post.config())
    with pytest.raises(InputError, match="jointly dependent"):
        post.model(post.x, subsample_size=10, config=post.config())
    regression = _posterior("kidiq-kidscore_momhs")
    with pytest.raises(InputError, match=r"give \(N, 2\) rows"):
        regression.model(regression.x[:, :1], config=regression.config())


def _nuts_errors(name, warmup, samples, seed=0):
    """NUTS's mean and sd of each reported parameter minus the reference's, each in units of
    the Monte Carlo standard error of the difference, NUTS run with the posterior's own
    settings (``extra``: dense mass, noncentred sites). The mean's: NUTS's ESS and the
    reference's 10 000 draws; the sd's: ArviZ's sd mcse of the NUTS chain (from the ESS of
    the squared deviations, so a heavy tail widens it) and of the reference's thinned draws,
    scaled to its 10 000 (:func:`inference.bench.metrics.reference_sd_error`)."""
    post = _posterior(name)
    pyro.set_rng_seed(seed)
    model = functools.partial(post.model, config=post.config())
    kernel = NUTS(nuts_model(post, model), full_mass=bool(post.extra.get("dense_mass")),
                  jit_compile=post.extra.get("nuts", {}).get("jit", True),
                  ignore_jit_warnings=True)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(post.x)
    reported = post.reported(model_draws(post, model, mcmc.get_samples(), post.x))
    draws = torch.stack([reported[n] for n in post.reference.names], -1).double()
    ess = effective_sample_size(draws.unsqueeze(0), chain_dim=0, sample_dim=1).numpy()
    error = np.abs(draws.mean(0).numpy() - post.reference.mean) / post.reference.sd
    z_mean = error / np.sqrt(1 / ess + 1 / 10_000)
    chain = draws.numpy()[None]
    sd_error = np.sqrt(metrics.mcse(chain, "sd") ** 2
                       + metrics.reference_sd_error(post.reference.sd, post.reference.draws) ** 2)
    z_sd = np.abs(chain[0].std(0, ddof=1) - post.reference.sd) / sd_error
    return z_mean, z_sd


def _assert_agrees(name, warmup, samples):
    """Every mean and every sd within 4.5 Monte Carlo standard errors of posteriordb's."""
    z_mean, z_sd = _nuts_errors(name, warmup, samples)
    names = _posterior(name).reference.names
    print(f"{name}: |z| mean max {z_mean.max():.2f} ({names[z_mean.argmax()]}), "
          f"sd max {z_sd.max():.2f} ({names[z_sd.argmax()]})")  # shown with pytest -s
    assert z_mean.max() < 4.5, ("mean", dict(zip(names, z_mean.round(2), strict=True)))
    assert z_sd.max() < 4.5, ("sd", dict(zip(names, z_sd.round(2), strict=True)))


def test_noncentered_nuts_sites_map_back_to_the_model():
    """The centred eight schools is sampled by NUTS with theta non-centred: its draws map back
    to theta = mu + tau theta_decentered, and the model's log density there is finite; a
    posterior without such sites passes its draws through unchanged."""
    post = _posterior("eight_schools-eight_schools_centered")
    model = functools.partial(post.model, config=post.config())
    pyro.set_rng_seed(3)
    trace = poutine.trace(nuts_model(post, model)).get_trace(post.x)
    latent = {site: node["value"].unsqueeze(0) for site, node in trace.nodes.items()
              if node["type"] == "sample" and not node["is_observed"]
              and type(node["fn"]).__name__ != "_Subsample"}
    assert set(latent) == {"mu", "tau", "theta_decentered"}
    back = model_draws(post, model, latent, post.x)
    assert set(back) == {"mu", "tau", "theta"}
    expected = latent["mu"][:, None] + latent["tau"][:, None] * latent["theta_decentered"]
    torch.testing.assert_close(back["theta"], expected)
    assert math.isfinite(_log_joint(post, {k: v[0] for k, v in back.items()}))
    other = _posterior("eight_schools-eight_schools_noncentered")
    assert nuts_model(other, other.model) is other.model
    assert model_draws(other, other.model, latent) == latent


def test_centred_intercept_is_the_same_posterior():
    """Kilpisjarvi's coefficients sampled as (alpha + mean(x) beta, beta): the map back is
    exact and the log density is the model's at the mapped point (unit Jacobian), at prior
    draws and at the reference mean."""
    post = _posterior("kilpisjarvi_mod-kilpisjarvi")
    model = functools.partial(post.model, config=post.config())
    shift = float(post.x[:, 1].mean())
    pyro.set_rng_seed(5)
    for values in (None, post.reference.mean):
        reparam_model = nuts_model(post, model)
        if values is None:
            trace = poutine.trace(reparam_model).get_trace(post.x)
        else:
            point = _point(post, values)
            centred = point["beta"].clone()
            centred[0] = centred[0] + shift * centred[1]
            trace = poutine.trace(poutine.condition(reparam_model, data={
                "beta_centred": centred, "sigma": point["sigma"]})).get_trace(post.x)
        latent = {site: trace.nodes[site]["value"].unsqueeze(0)
                  for site in ("beta_centred", "sigma")}
        back = model_draws(post, model, latent, post.x)
        assert set(back) == {"beta", "sigma"}
        centred = latent["beta_centred"][0]
        torch.testing.assert_close(back["beta"][0], torch.stack(
            [centred[0] - shift * centred[1], centred[1]]))
        if values is not None:
            torch.testing.assert_close(back["beta"][0], _point(post, values)["beta"])
        assert float(trace.log_prob_sum()) == pytest.approx(
            _log_joint(post, {k: v[0] for k, v in back.items()}), rel=1e-9, abs=1e-8)


FAST = ("eight_schools-eight_schools_noncentered", "eight_schools-eight_schools_centered",
        "kilpisjarvi_mod-kilpisjarvi")


@pytest.mark.parametrize("name", FAST)
def test_nuts_agrees_with_the_reference(name):
    """A short NUTS run's means and sds are within 4.5 Monte Carlo standard errors of
    posteriordb's on every parameter (a wrong prior, constraint or likelihood moves some mean
    or sd by far more)."""
    _assert_agrees(name, warmup=200, samples=300)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in NAMES if n not in FAST])
def test_nuts_agrees_with_the_reference_slow(name):
    _assert_agrees(name, warmup=400, samples=600)


def test_the_sd_check_rejects_a_wrong_spread():
    """The sd half of the check can fail: draws of the reference's own normal approximation
    pass it, the same draws 30% too wide do not (|z| about 8), and a heavy-tailed
    reference (Student-t, 3 degrees of freedom) gets a wider sd error than the normal-theory
    sd / sqrt(2R) would give."""
    rng = np.random.default_rng(0)
    mean, sd = np.array([0.0, 5.0]), np.array([1.0, 0.2])
    chain = (rng.normal(size=(1, 600, 2)) * sd + mean)
    reference = rng.normal(size=(1000, 2)) * sd + mean

    def z_sd(draws):
        error = np.sqrt(metrics.mcse(draws, "sd") ** 2
                        + metrics.reference_sd_error(sd, reference) ** 2)
        return np.abs(draws[0].std(0, ddof=1) - sd) / error

    assert z_sd(chain).max() < 4.5
    assert z_sd((chain - mean) * 1.3 + mean).min() > 4.5
    heavy = rng.standard_t(3, size=(1000, 1))
    spread = heavy.std(ddof=1, keepdims=True)[0]
    assert metrics.reference_sd_error(spread, heavy)[0] > 1.5 * metrics.reference_sd_error(
        spread)[0]
