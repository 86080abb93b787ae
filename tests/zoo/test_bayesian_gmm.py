"""The Bayesian Gaussian mixture's closed forms against independent references.

- K = 1, full covariance: CAVI's fixed point is the exact Normal-Wishart posterior (computed
  here with numpy) and the whole ELBO equals log p(x), computed here as a chain of Student-t
  predictives with scipy (another route than the normalizer ratio); diag and spherical
  families exclude the posterior, so their ELBO is strictly below.
- K = 2 on 8 rows: log p(x) by enumerating all 2^8 assignments (scipy); the ELBO at CAVI's
  fixed point is below it, by log 2 for well-separated clusters (q takes one of the two
  label-swapped modes).
- The whole ELBO equals a Monte Carlo average of log p(x, z, θ) - log q(z, θ) whose log p is
  the Pyro model's own trace (every site, both weight priors, full and diag families).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy.special import gammaln, logsumexp
from scipy.stats import multivariate_t

from inference.strategies.cavi import run_cavi
from zoo import bayesian_gmm as bg
from zoo.errors import InputError

STEPS = bg.COORDINATE_ASCENT


def normal_wishart_evidence(x: np.ndarray, m0, beta0, nu0, c0) -> float:
    """log p(x_1..x_n) under x_i ~ N(μ, Λ⁻¹), μ | Λ ~ N(m0, (β0 Λ)⁻¹), Λ ~ Wishart(ν0, c0⁻¹),
    as Σ_i log p(x_i | x_<i): each a multivariate Student-t (scipy)."""
    d = x.shape[1] if x.ndim == 2 else 0
    m, beta, nu, c = np.array(m0, float), float(beta0), float(nu0), np.array(c0, float)
    total = 0.0
    for row in x:
        df = nu - d + 1
        shape = c * (beta + 1) / (beta * df)
        total += multivariate_t.logpdf(row, loc=m, shape=shape, df=df)
        c = c + beta / (beta + 1) * np.outer(row - m, row - m)
        m = (beta * m + row) / (beta + 1)
        beta, nu = beta + 1, nu + 1
    return total


def _fit(config, x, resp, iterations=200):
    priors = bg.resolve_priors(config, x)
    run = run_cavi(STEPS, config, priors, x, resp, max_iter=iterations, tol=1e-12)
    return run, priors


PRIOR = {"mean_prior": (0.5, -0.2), "covariance_prior": ((1.5, 0.3), (0.3, 0.8)),
         "degrees_of_freedom_prior": 3.5, "mean_precision_prior": 0.7}


def _correlated(n=25, seed=0):
    g = np.random.default_rng(seed)
    return torch.as_tensor(g.normal(size=(n, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]]) + 1.0)


def test_one_component_fixed_point_is_the_exact_posterior_and_the_elbo_is_log_evidence():
    x = _correlated()
    config = bg.BayesianGMMConfig(dim=2, components=1, reg_covar=0.0,
                                  weight_concentration_prior_type="dirichlet_distribution",
                                  **PRIOR)
    run, priors = _fit(config, x, torch.ones(len(x), 1, dtype=x.dtype))
    # the exact posterior, numpy
    data = x.numpy()
    n, mean = len(data), data.mean(0)
    m0, c0 = np.array(PRIOR["mean_prior"]), np.array(PRIOR["covariance_prior"])
    beta_n, nu_n = 0.7 + n, 3.5 + n
    scale = (c0 + (data - mean).T @ (data - mean)
             + 0.7 * n / (0.7 + n) * np.outer(mean - m0, mean - m0))
    post = run.posterior
    np.testing.assert_allclose(post.mean_precision.numpy(), [beta_n], rtol=1e-12)
    np.testing.assert_allclose(post.degrees_of_freedom.numpy(), [nu_n], rtol=1e-12)
    np.testing.assert_allclose(post.means.numpy()[0], (0.7 * m0 + n * mean) / beta_n,
                               rtol=1e-12)
    np.testing.assert_allclose(post.covariances.numpy()[0], scale / nu_n, rtol=1e-10)
    evidence = normal_wishart_evidence(data, m0, 0.7, 3.5, c0)
    assert run.elbo == pytest.approx(evidence, abs=1e-8)
    assert run.history[0] == pytest.approx(evidence, abs=1e-8)  # exact after one update


@pytest.mark.parametrize("kind", ["diag", "spherical"])
def test_a_family_without_the_posterior_stays_strictly_below_log_evidence(kind):
    x = _correlated()
    c0 = np.array([1.5, 0.8]) if kind == "diag" else 1.2
    config = bg.BayesianGMMConfig(
        dim=2, components=1, reg_covar=0.0, covariance_type=kind,
        weight_concentration_prior_type="dirichlet_distribution", mean_prior=(0.5, -0.2),
        covariance_prior=tuple(np.atleast_1d(c0)) if kind == "diag" else c0,
        degrees_of_freedom_prior=3.5, mean_precision_prior=0.7)
    run, _ = _fit(config, x, torch.ones(len(x), 1, dtype=x.dtype))
    matrix = np.diag(c0) if kind == "diag" else c0 * np.eye(2)
    evidence = normal_wishart_evidence(x.numpy(), (0.5, -0.2), 0.7, 3.5, matrix)
    assert run.elbo < evidence - 0.1  # the rows are strongly correlated


def mixture_evidence(x: np.ndarray, k: int, alpha0: float, m0, beta0, nu0, c0) -> float:
    """log p(x) of the finite Dirichlet mixture: log-sum over all k^N assignments of the
    Dirichlet-multinomial times each cluster's Normal-Wishart evidence."""
    n = len(x)
    terms = []
    for labels in itertools.product(range(k), repeat=n):
        labels = np.array(labels)
        counts = np.bincount(labels, minlength=k)
        log_weights = (gammaln(k * alpha0) - gammaln(n + k * alpha0)
                       + (gammaln(counts + alpha0) - gammaln(alpha0)).sum())
        log_x = sum(normal_wishart_evidence(x[labels == j], m0, beta0, nu0, c0)
                    for j in range(k) if counts[j])
        terms.append(log_weights + log_x)
    return float(logsumexp(terms))


def test_mixture_elbo_is_below_log_evidence_by_the_label_swap():
    g = np.random.default_rng(3)
    centres = np.array([[-4.0, 0.0], [4.0, 1.0]])
    labels = np.array([0, 1] * 4)
    data = centres[labels] + 0.5 * g.normal(size=(8, 2))
    x = torch.as_tensor(data)
    config = bg.BayesianGMMConfig(dim=2, components=2, reg_covar=0.0,
                                  weight_concentration_prior_type="dirichlet_distribution",
                                  weight_concentration_prior=1.0, mean_prior=(0.0, 0.0),
                                  covariance_prior=((1.0, 0.0), (0.0, 1.0)),
                                  degrees_of_freedom_prior=3.0, mean_precision_prior=0.1)
    start = torch.nn.functional.one_hot(torch.as_tensor(labels), 2).to(x.dtype)
    run, _ = _fit(config, x, start)
    evidence = mixture_evidence(data, 2, 1.0, (0.0, 0.0), 0.1, 3.0, np.eye(2))
    gap = evidence - run.elbo
    assert gap > 0
    assert gap == pytest.approx(math.log(2), abs=2e-3)


def _q_draw(config, post, resp, generator_seed):
    """One draw of (π, Λ, μ) from q (the truncated component, if any, from its prior) and
    its log q."""
    torch.manual_seed(generator_seed)
    if config.stick_breaking:
        a, b = post.weight_concentration
        q_weights = bg.stick_breaking_distribution(a, b)
    else:
        q_weights = dist.Dirichlet(post.weight_concentration)
    weights = q_weights.sample()
    precision_q = dist.Wishart(post.degrees_of_freedom,
                               covariance_matrix=bg.precisions(config, post)
                               / post.degrees_of_freedom[:, None, None]
                               if post.covariances.dim() == 3 else
                               torch.diag_embed(bg.precisions(config, post))
                               / post.degrees_of_freedom[:, None, None])
    precision = precision_q.sample()
    mean_q = dist.MultivariateNormal(post.means, precision_matrix=post.mean_precision[:, None,
                                                                                     None]
                                     * precision)
    means = mean_q.sample()
    log_q = (q_weights.log_prob(weights) + precision_q.log_prob(precision).sum()
             + mean_q.log_prob(means).sum())
    return weights, precision, means, log_q


@pytest.mark.filterwarnings("ignore:Singular sample detected")  # Wishart draws near ν = D
@pytest.mark.parametrize("kind", ["full", "diag"])
@pytest.mark.parametrize("prior", bg.WEIGHT_PRIORS)
def test_whole_elbo_is_the_monte_carlo_average_under_the_pyro_model(kind, prior):
    g = np.random.default_rng(1)
    data = np.concatenate([g.normal(size=(6, 2)) - 2.0, g.normal(size=(6, 2)) + 2.0])
    x = torch.as_tensor(data)
    k = 2
    config = bg.BayesianGMMConfig(dim=2, components=k, covariance_type=kind, reg_covar=0.0,
                                  weight_concentration_prior_type=prior)
    run, priors = _fit(config, x, torch.full((12, k), 0.5, dtype=x.dtype) + torch.as_tensor(
        np.r_[[[0.3, -0.3]] * 6, [[-0.3, 0.3]] * 6]), iterations=3)
    post, resp = run.posterior, run.resp
    model = bg.BayesianGaussianMixtureModel(config, priors)
    entropy = -float(torch.xlogy(resp, resp).sum())
    values = []
    for s in range(150):
        weights, precision, means, log_q = _q_draw(config, post, resp, s)
        if config.stick_breaking:  # component K + 1 is drawn from its prior under q too
            c0 = bg.prior_precision_matrix(config, priors)
            extra = dist.Wishart(priors.degrees_of_freedom, precision_matrix=c0).sample()
            extra_q = dist.MultivariateNormal(priors.mean,
                                              precision_matrix=priors.mean_precision * extra)
            extra_mean = extra_q.sample()
            log_q = (log_q + dist.Wishart(priors.degrees_of_freedom, precision_matrix=c0)
                     .log_prob(extra) + extra_q.log_prob(extra_mean))
            precision = torch.cat([precision, extra[None]])
            means = torch.cat([means, extra_mean[None]])
        # E over q(z) exactly: one trace of the model with z = j for every row, all j at once
        # (a (K, N) batch of assignments; validation off for the batch shape)
        z = torch.arange(k)[:, None].expand(k, 12)
        with pyro.validation_enabled(False):
            trace = poutine.trace(poutine.condition(model, data={
                "weights": weights, "precisions": precision, "means": means, "z": z})
            ).get_trace(x)
        trace.compute_log_prob()
        per_row = (trace.nodes["z"]["log_prob"] + trace.nodes["x"]["log_prob"]).T  # (N, K)
        globals_ = sum(trace.nodes[name]["log_prob"].sum()
                       for name in ("weights", "precisions", "means"))
        expected = (resp * per_row).sum()
        values.append(float(expected + globals_ - log_q) + entropy)
    values = np.array(values)
    error = values.std(ddof=1) / math.sqrt(len(values))
    assert abs(values.mean() - run.elbo) < 4 * error + 1e-9, (values.mean(), run.elbo, error)
    assert error < 0.5  # the check has the power to see a dropped constant of a nat


def test_stick_breaking_transform_inverts_and_its_log_jacobian_is_the_determinant():
    v = torch.tensor([[0.3, 0.6, 0.2], [0.9, 0.1, 0.5]], dtype=torch.float64)
    transform = bg.StickBreaking()
    weights = transform(v)
    assert torch.allclose(weights.sum(-1), torch.ones(2, dtype=torch.float64))
    assert torch.allclose(transform.inv(weights), v)
    jacobian = torch.func.jacrev(lambda s: transform(s)[:-1])(v[0])
    assert float(transform.log_abs_det_jacobian(v[0], weights[0])) == pytest.approx(
        float(torch.linalg.slogdet(jacobian)[1]), abs=1e-12)


def test_bad_inputs_are_input_errors_that_name_the_fix():
    with pytest.raises(InputError, match="covariance_type"):
        bg.BayesianGMMConfig(covariance_type="banana")
    with pytest.raises(InputError, match="exceed dim - 1"):
        bg.BayesianGMMConfig(dim=3, degrees_of_freedom_prior=1.5)
    config = bg.BayesianGMMConfig(dim=2, components=3, covariance_type="diag")
    with pytest.raises(InputError, match="needs \\(2,\\)"):
        bg.resolve_priors(bg.BayesianGMMConfig(dim=2, covariance_type="diag",
                                               covariance_prior=(1.0, 2.0, 3.0)),
                          torch.zeros(5, 2))
    with pytest.raises(InputError, match="exceeds the 2 datapoints"):
        bg.initial_responsibilities(config, torch.zeros(2, 2))
    with pytest.raises(InputError, match="dim=2"):
        bg.BayesianGaussianMixtureModel(config)(torch.zeros(5, 3))
    pyro.clear_param_store()


@pytest.mark.parametrize("kind", ["full", "tied"])
def test_the_default_prior_scale_from_too_few_rows_is_made_proper(kind):
    """From N <= D rows the data's covariance is singular, an improper Wishart scale that makes
    the ELBO -inf: the default adds reg_covar to its diagonal (as the M-step does), and CAVI's
    ELBO is finite; from enough rows the default is the data's covariance, untouched."""
    generator = torch.Generator().manual_seed(5)
    few = torch.randn(2, 3, generator=generator, dtype=torch.float64)
    config = bg.BayesianGMMConfig(dim=3, components=1, covariance_type=kind, reg_covar=1e-6)
    priors = bg.resolve_priors(config, few)
    centred = few - few.mean(0)
    singular = centred.T @ centred  # ddof = 1 with 2 rows
    assert torch.allclose(priors.covariance, singular + 1e-6 * torch.eye(3, dtype=torch.float64))
    assert float(torch.linalg.eigvalsh(priors.covariance).min()) > 0.5e-6
    run = run_cavi(bg.COORDINATE_ASCENT, config, priors, few,
                   torch.ones(2, 1, dtype=torch.float64), max_iter=20, tol=1e-8)
    assert all(math.isfinite(value) for value in run.history)
    many = torch.randn(50, 3, generator=generator, dtype=torch.float64)
    centred = many - many.mean(0)
    assert torch.allclose(bg.resolve_priors(config, many).covariance,
                          centred.T @ centred / 49, rtol=0, atol=0)
