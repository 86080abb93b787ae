"""Bayesian PPCA with ARD (zoo.bayesian_ppca): ARD finds the true dimension, CAVI's whole ELBO
never falls, and CAVI's fixed point is the mean-field optimum found independently by scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import optimize, special, stats

from inference import strategies
from inference.catalog import get_model
from inference.strategies.cavi import ElboDecreaseWarning, run_blocks
from zoo import bayesian_ppca as bp
from zoo.errors import InputError


def _synthetic(noise: float, n: int = 300, d: int = 20, q: int = 3, seed: int = 0,
               dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64)[:q]
    w = torch.randn(d, q, generator=g, dtype=torch.float64) * scales
    z = torch.randn(n, q, generator=g, dtype=torch.float64)
    x = z @ w.T + 2.0 + noise * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x.to(dtype)


@pytest.mark.parametrize("noise", [0.1, 0.5, 1.0])
def test_ard_recovers_three_dimensions_of_twenty(noise):
    spec = get_model("bayesian-ppca")
    x = _synthetic(noise)
    config = spec.make_config(dim=20)
    assert config.q == 19
    result = strategies.fit(spec, config, x, inference="cavi", seed=0, max_iter=2000)
    assert result.converged and result.info["effective_dimension"] == 3
    alphas = np.sort(result.info["ard_precisions"])
    assert alphas[3] / alphas[2] > 100  # the 16 pruned columns' precisions grew large
    assert result.info["noise_precision"] == pytest.approx(noise ** -2, rel=0.15)


@pytest.mark.parametrize("noise,dtype", [(0.1, torch.float64), (0.5, torch.float64),
                                         (1.0, torch.float64), (0.5, torch.float32)])
def test_the_whole_elbo_never_decreases_over_200_iterations(noise, dtype):
    x = _synthetic(noise, n=200, dtype=dtype)
    config = bp.BayesianPPCAConfig(dim=20)
    for method in bp.INIT_METHODS:
        start = bp.initial_posterior(config, x, torch.Generator().manual_seed(1), method)
        run = run_blocks(bp.BLOCK_COORDINATE_ASCENT, config, x, start, max_iter=200,
                         tol=-1.0, check_blocks=True)  # every block update checked
        assert run.n_iter == 200 and not run.decreases
        assert run.history[-1] > run.history[0]


def test_a_decrease_is_reported_as_a_bug():
    x = _synthetic(0.5, n=50, d=5)
    config = bp.BayesianPPCAConfig(dim=5)

    def broken(config, x, post):  # inflates W: not the block's optimum
        return post._replace(w_mean=post.w_mean * 3)

    steps = bp.BLOCK_COORDINATE_ASCENT
    steps = type(steps)(**{**steps.__dict__, "updates": (*steps.updates, ("broken", broken))})
    start = bp.initial_posterior(config, x, None, "pca")
    with pytest.warns(ElboDecreaseWarning, match="block broken"):
        run = run_blocks(steps, config, x, start, max_iter=3, tol=-1.0, check_blocks=True)
    assert {block for _, block, _ in run.decreases} == {"broken"}


def _scipy_elbo(theta, x, q, prior):
    """The mean-field ELBO written from the definitions, with a FREE covariance for every
    q(z_n) and every row of W (CAVI shares one of each): numpy, scipy.stats entropies."""
    n, d = x.shape
    a_al, b_al, a_tau, b_tau, beta = prior
    tri = q * (q + 1) // 2
    sizes = [n * q, n * tri, d * q, d * tri, q, q, 1, 1, d, 1]
    parts = np.split(theta, np.cumsum(sizes)[:-1])
    zm = parts[0].reshape(n, q)
    wm = parts[2].reshape(d, q)
    ak, bk = np.exp(parts[4]), np.exp(parts[5])
    at, bt = np.exp(parts[6][0]), np.exp(parts[7][0])
    mm, mv = parts[8], np.exp(parts[9][0])
    rows = np.tril_indices(q)

    def covs(flat, count):  # log-diagonal Cholesky factors -> covariances
        low = np.zeros((count, q, q))
        low[:, rows[0], rows[1]] = flat.reshape(count, tri)
        diagonal = np.arange(q)
        low[:, diagonal, diagonal] = np.exp(low[:, diagonal, diagonal])
        return low @ low.transpose(0, 2, 1)

    zs, ws = covs(parts[1], n), covs(parts[3], d)
    e_wtw = wm.T @ wm + ws.sum(0)
    e_tau, e_log_tau = at / bt, special.digamma(at) - np.log(bt)
    e_alpha, e_log_alpha = ak / bk, special.digamma(ak) - np.log(bk)
    e_zz = zm[:, :, None] * zm[:, None, :] + zs  # (n, q, q)
    sq = ((x ** 2).sum(1) - 2 * (x * (zm @ wm.T + mm)).sum(1)
          + np.einsum("ij,nji->n", e_wtw, e_zz) + 2 * (zm @ wm.T) @ mm + mm @ mm + d * mv)
    value = (n * d / 2 * (e_log_tau - np.log(2 * np.pi)) - e_tau / 2 * sq.sum())

    def gaussian_entropy(covs):  # H[N(m, S)] = log det(2πe S) / 2, summed
        return np.linalg.slogdet(2 * np.pi * np.e * covs)[1].sum() / 2

    value += (stats.norm.logpdf(zm).sum()
              - np.trace(zs, axis1=1, axis2=2).sum() / 2 + gaussian_entropy(zs))
    col_sq = (wm ** 2).sum(0) + np.diagonal(ws, axis1=1, axis2=2).sum(0)
    value += (d / 2 * (e_log_alpha - np.log(2 * np.pi)) - e_alpha / 2 * col_sq).sum()
    value += gaussian_entropy(ws)

    def gamma_terms(a0, b0, a, b):  # E_q log Gamma(λ | a0, b0) + H[Gamma(a, b)]
        e_log = special.digamma(a) - np.log(b)
        return (a0 * np.log(b0) - special.gammaln(a0) + (a0 - 1) * e_log - b0 * a / b
                + stats.gamma.entropy(a, scale=1 / b))

    value += gamma_terms(a_al, b_al, ak, bk).sum() + gamma_terms(a_tau, b_tau, at, bt)
    value += (stats.norm.logpdf(mm, 0, beta ** -0.5).sum() - beta * d * mv / 2
              + d * stats.norm.entropy(0, np.sqrt(mv)))
    return value


def _pack(post: bp.Posterior, n: int, d: int, q: int) -> np.ndarray:
    def chol(cov):
        low = np.linalg.cholesky(cov)
        low[np.diag_indices(q)] = np.log(np.diag(low))
        return low[np.tril_indices(q)]

    p = {k: v.numpy() for k, v in post._asdict().items()}
    return np.concatenate([
        p["z_mean"].ravel(), np.tile(chol(p["z_cov"]), n), p["w_mean"].ravel(),
        np.tile(chol(p["w_cov"]), d), np.log(p["alpha_concentration"]),
        np.log(p["alpha_rate"]), [np.log(p["tau_concentration"])], [np.log(p["tau_rate"])],
        p["mu_mean"], [np.log(p["mu_var"])]])


def test_cavi_fixed_point_is_the_mean_field_optimum_scipy_finds():
    n, d, q = 8, 3, 2
    x = _synthetic(0.4, n=n, d=d, q=2, seed=3)
    config = bp.BayesianPPCAConfig(dim=d, latent_dim=q, ard_concentration=2.0, ard_rate=1.5,
                                   noise_concentration=1.5, noise_rate=0.5, mean_precision=0.3)
    prior = (2.0, 1.5, 1.5, 0.5, 0.3)
    start = bp.initial_posterior(config, x, None, "pca")
    run = run_blocks(bp.BLOCK_COORDINATE_ASCENT, config, x, start, max_iter=20000, tol=1e-13)
    assert run.converged
    fixed = _pack(run.posterior, n, d, q)
    # the closed-form ELBO is this independent one at the same q
    assert _scipy_elbo(fixed, x.numpy(), q, prior) == pytest.approx(run.elbo, abs=1e-8)
    # scipy, from the start CAVI had (per-row covariances free), finds the same optimum
    found = optimize.minimize(lambda t: -_scipy_elbo(t, x.numpy(), q, prior),
                              _pack(start, n, d, q), method="L-BFGS-B",
                              options={"maxiter": 5000, "maxfun": 10 ** 5, "ftol": 1e-13,
                                       "gtol": 1e-7})
    assert -found.fun == pytest.approx(run.elbo, abs=1e-7)
    assert -found.fun < run.elbo + 1e-7  # nothing in the wider family beats the fixed point
    np.testing.assert_allclose(found.x[: n * q], fixed[: n * q], atol=1e-4)  # E[z_n]
    # ARD's distinct E[α_i] pin W's columns (no free rotation): its means agree directly
    skip = n * q + n * q * (q + 1) // 2
    np.testing.assert_allclose(found.x[skip: skip + d * q], fixed[skip: skip + d * q],
                               atol=1e-4)


def test_the_model_vectorizes_over_particles_and_inputs_are_checked():
    import pyro
    from pyro import poutine

    config = bp.BayesianPPCAConfig(dim=4, latent_dim=2)
    x = _synthetic(0.5, n=10, d=4, q=2)
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(bp.make_model(config)).get_trace(x)
    assert trace.nodes["x"]["fn"].batch_shape == (7, 10)
    assert trace.log_prob_sum().isfinite()
    with pytest.raises(InputError, match="mean_precision"):
        bp.BayesianPPCAConfig(dim=4, mean_precision=0.0)
    with pytest.raises(InputError, match=r"\(N, 4\)"):
        bp.initial_posterior(config, x[:, :3], None, "pca")
