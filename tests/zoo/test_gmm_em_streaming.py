"""The streaming E-step (zoo.gmm_em): statistics reduced block by block, never N x K.

Each test checks a number against an independent reference (scipy's densities in float64, the
dense responsibilities' M-step) or a property that the old, all-rows E-step failed (no
temporary grows with N).
"""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from torch.utils._python_dispatch import TorchDispatchMode

from zoo import gmm, gmm_em


def _params(config, generator, dtype=torch.float64):
    k, d = config.components, config.dim
    weights = torch.rand(k, generator=generator, dtype=torch.float64) + 0.2
    means = 2 * torch.randn(k, d, generator=generator, dtype=torch.float64)
    if config.covariance_type == "full":
        factor = torch.randn(k, d, d, generator=generator, dtype=torch.float64)
        covariance = factor @ factor.mT / d + 0.5 * torch.eye(d, dtype=torch.float64)
        scale = {"scale_tril": torch.linalg.cholesky(covariance)}
    elif config.covariance_type == "diag":
        scale = {"scale": 0.5 + torch.rand(k, d, generator=generator, dtype=torch.float64)}
    else:
        scale = {"scale": 0.5 + torch.rand(k, generator=generator, dtype=torch.float64)}
    params = {"weights": weights / weights.sum(), "means": means, **scale}
    return {name: value.to(dtype) for name, value in params.items()}


def _scipy_log_likelihood(config, params, x) -> float:
    """Mean log p(x) from scipy's multivariate normal densities, in float64."""
    params = {name: value.double().numpy() for name, value in params.items()}
    rows = x.double().numpy()
    d = config.dim
    joint = []
    for j in range(config.components):
        if config.covariance_type == "full":
            covariance = params["scale_tril"][j] @ params["scale_tril"][j].T
        elif config.covariance_type == "diag":
            covariance = np.diag(params["scale"][j] ** 2)
        else:
            covariance = params["scale"][j] ** 2 * np.eye(d)
        joint.append(np.log(params["weights"][j])
                     + multivariate_normal(params["means"][j], covariance).logpdf(rows))
    return float(logsumexp(np.stack(joint, 1), axis=1).mean())


class _LargestOutput(TorchDispatchMode):
    """Records the most elements of any tensor that an operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_e_step_memory_does_not_grow_with_the_rows(covariance_type):
    """No operation of the E-step returns a tensor that grows with N: the largest is the same
    at N = 100,000 and N = 400,000 and below N x K (and N x F, the features of all rows)."""
    config = gmm.GMMConfig(dim=6, components=5, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(3)
    params = _params(config, generator, torch.float32)
    largest = {}
    for n in (100_000, 400_000):
        x, _ = gmm.sample(config, _params(config, generator), n, generator)
        x = x.float()
        gmm.e_step(config, params, x)  # the per-data constants, computed once per tensor
        with _LargestOutput() as mode:
            gmm.e_step(config, params, x)
        largest[n] = mode.largest
    assert largest[100_000] == largest[400_000]
    assert largest[400_000] <= gmm_em.BLOCK_VALUES["cpu"] + 6 * 5 + 64
    assert largest[400_000] < 100_000 * config.components


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_float32_streaming_e_step_matches_scipy_in_float64(covariance_type):
    """float32 rows offset from the origin, D = 24: the mean log p(x) of the streaming E-step
    equals scipy's float64 densities within 1e-5 nats per datapoint (about the float32 spacing
    of the value itself), and its M-step the dense float64 M-step's within float32 rounding."""
    config = gmm.GMMConfig(dim=24, components=6, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(5)
    params = _params(config, generator)
    x, _ = gmm.sample(config, params, 30_000, generator)
    x = (x + 3.0).float()
    params = {name: (value + 3.0 if name == "means" else value) for name, value in params.items()}
    params32 = {name: value.float() for name, value in params.items()}
    statistics, mean_log_likelihood = gmm.e_step(config, params32, x)
    reference = _scipy_log_likelihood(config, params32, x)
    assert abs(float(mean_log_likelihood) - reference) < 1e-5
    fitted = gmm.maximize(config, x, statistics)
    x64 = x.double()
    params64 = {name: value.double() for name, value in params32.items()}
    dense = gmm.m_step(config, x64, gmm.responsibilities(config, params64, x64))
    for name, value in dense.items():
        np.testing.assert_allclose(fitted[name].double().numpy(), value.numpy(), rtol=2e-4,
                                   atol=2e-5)


def test_block_size_changes_only_rounding():
    """The same statistics from 256-row blocks and from one block of all rows (float64)."""
    config = gmm.GMMConfig(dim=4, components=3, covariance_type="full")
    generator = torch.Generator().manual_seed(8)
    params = _params(config, generator)
    x, _ = gmm.sample(config, params, 5000, generator)
    saved = dict(gmm_em.BLOCK_VALUES)
    try:
        gmm_em.BLOCK_VALUES["cpu"] = 1  # 256-row blocks
        small, small_ll = gmm.e_step(config, params, x)
        gmm_em.BLOCK_VALUES["cpu"] = 2**30  # one block
        whole, whole_ll = gmm.e_step(config, params, x)
    finally:
        gmm_em.BLOCK_VALUES.update(saved)
    _assert_same_statistics(small, small_ll, whole, whole_ll)


def _assert_same_statistics(stats, log_likelihood, expected, expected_log_likelihood):
    """Two E-steps' statistics and log-likelihoods equal to float64 rounding."""
    np.testing.assert_allclose(float(log_likelihood), float(expected_log_likelihood), rtol=1e-13)
    for a, b in zip(stats, expected, strict=True):
        if isinstance(a, torch.Tensor):
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_threaded_shares_give_the_single_thread_statistics(covariance_type):
    """With 2 intra-op threads the rows are reduced in 2 shares in threads, by TorchScript's
    share of the block loop; the sums equal the one-thread (eager) pass to float64 rounding."""
    config = gmm.GMMConfig(dim=5, components=4, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(9)
    params = _params(config, generator)
    x, _ = gmm.sample(config, params, 20_000, generator)
    saved_threads, saved_block = torch.get_num_threads(), dict(gmm_em.BLOCK_VALUES)
    saved_script = gmm_em.SCRIPT_BLOCKS
    try:
        gmm_em.BLOCK_VALUES["cpu"] = 1  # 256-row blocks: 79 of them, 2 shares
        gmm_em.SCRIPT_BLOCKS = 10**9  # the one-thread pass eager: the reference
        torch.set_num_threads(1)
        single, single_ll = gmm.e_step(config, params, x)
        torch.set_num_threads(2)
        shared, shared_ll = gmm.e_step(config, params, x)
        assert torch.get_num_threads() == 2  # restored after the shares
    finally:
        torch.set_num_threads(saved_threads)
        gmm_em.BLOCK_VALUES.update(saved_block)
        gmm_em.SCRIPT_BLOCKS = saved_script
    _assert_same_statistics(shared, shared_ll, single, single_ll)


@pytest.mark.parametrize("covariance_type", ["full", "spherical"])
def test_one_thread_runs_the_scripted_loop_on_long_passes(covariance_type, monkeypatch):
    """On one thread a pass of ``SCRIPT_BLOCKS`` blocks or more runs TorchScript's share (it is
    called, and compiled), and its statistics equal the eager pass to float64 rounding."""
    config = gmm.GMMConfig(dim=5, components=4, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(11)
    params = _params(config, generator)
    x, _ = gmm.sample(config, params, 20_000, generator)
    scripted = gmm_em._script(gmm_em._quadratic_share)
    calls = []

    def counted(function):
        calls.append(function)
        return scripted if function is gmm_em._quadratic_share else gmm_em._script(function)

    monkeypatch.setitem(gmm_em.BLOCK_VALUES, "cpu", 1)  # 256-row blocks: 79 of them
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.setattr(gmm_em, "SCRIPT_BLOCKS", 10**9)
        eager, eager_ll = gmm.e_step(config, params, x)
        monkeypatch.setattr(gmm_em, "_script", counted)
        monkeypatch.setattr(gmm_em, "SCRIPT_BLOCKS", 64)
        one, one_ll = gmm.e_step(config, params, x)
    finally:
        torch.set_num_threads(saved_threads)
    assert calls == [gmm_em._quadratic_share]  # the scripted share ran, on one thread
    _assert_same_statistics(one, one_ll, eager, eager_ll)


def test_em_small_work_runs_on_one_thread_and_the_shares_on_all(monkeypatch):
    """With 2 intra-op threads, the E-step's weights and the M-step run on one (their OpenMP
    regions would leave spinning workers on the cores the shares need), the E-step still
    splits its rows into 2 shares, and 2 threads are restored after each, even when the
    M-step raises."""
    config = gmm.GMMConfig(dim=5, components=4, covariance_type="full")
    generator = torch.Generator().manual_seed(13)
    params = _params(config, generator)
    x, _ = gmm.sample(config, params, 20_000, generator)
    seen = {"weights": [], "maximize": [], "shares": []}

    def spy(name, function):
        def wrapped(*args, **kwargs):
            seen[name].append(torch.get_num_threads())
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(gmm_em, "_quadratic_weights",
                        spy("weights", gmm_em._quadratic_weights))
    monkeypatch.setattr(gmm_em, "_maximize", spy("maximize", gmm_em._maximize))
    share = gmm_em._script(gmm_em._quadratic_share)
    monkeypatch.setattr(gmm_em, "_script", lambda function: spy("shares", share))
    monkeypatch.setitem(gmm_em.BLOCK_VALUES, "cpu", 1)  # 256-row blocks: 79 of them
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        statistics, _ = gmm.e_step(config, params, x)
        assert torch.get_num_threads() == 2
        gmm_em.maximize(config, x, statistics)
        assert torch.get_num_threads() == 2
        singular = gmm_em.MixtureStatistics(
            torch.ones(4, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64),
            torch.zeros(4, 5, 5, dtype=torch.float64), torch.zeros(4, 5, dtype=torch.float64), 4)
        with pytest.raises(gmm_em.SingularCovarianceError):
            gmm_em.maximize(gmm.GMMConfig(dim=5, components=4, reg_covar=0.0), None, singular)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved_threads)
    assert seen == {"weights": [1], "maximize": [1, 1], "shares": [1, 1]}


def test_the_threaded_share_is_scripted():
    """The threads' share of the E-step is TorchScript's, which runs without the GIL (eager
    shares in Python threads wait for each other); were TorchScript to fail on this torch, the
    E-step would fall back to the eager share, right but no faster on 2 threads than on 1."""
    share = gmm_em._script(gmm_em._quadratic_share)
    assert isinstance(share, torch.jit.ScriptFunction)


def test_memory_benchmark_runs_at_a_smoke_size():
    """benchmarks/gmm_memory.py (the issue-26 memory figure) at a smoke size: its own checks
    (peak resident set beyond the data under 1 GiB, float64 reference within 1e-5) pass."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "gmm_memory.py"), "--num-data", "4000",
         "--dim", "32", "--components", "16"],
        capture_output=True, text=True, timeout=300, cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "quadratic features" in done.stdout and done.stdout.rstrip().endswith("OK")


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("route", ["quadratic", "whitened"])
@pytest.mark.filterwarnings("ignore:EM on gmm did not converge")  # three iterations, tol 0
def test_the_log_likelihood_alone_is_the_e_steps(covariance_type, threads, route, monkeypatch):
    """EM's last evaluation (:func:`gmm_em.mean_log_likelihood`, no statistics) gives the
    E-step's mean log p(x) to the bit, on one thread and in two scripted shares, by either
    route; it is scipy's within float32 rounding; and a fit's last history entry is it."""
    from inference.em import fit_em

    config = gmm.GMMConfig(dim=5, components=4, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(17)
    params = _params(config, generator, torch.float32)
    x, _ = gmm.sample(config, _params(config, generator), 20_000, generator)
    x = x.float()
    monkeypatch.setitem(gmm_em.BLOCK_VALUES, "cpu", 1)  # 256-row blocks: 79 of them
    if route == "whitened":
        monkeypatch.setattr(gmm_em, "QUADRATIC_ERROR", -1.0)  # no bound is below it
    saved_threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        _, expected = gmm.e_step(config, params, x)
        alone = gmm.mean_log_likelihood(config, params, x)
        fitted = fit_em(gmm.SPEC, config, x, max_iter=3, tol=0.0)
        _, last = gmm.e_step(config, fitted.params, x)
    finally:
        torch.set_num_threads(saved_threads)
    assert alone.dtype == torch.float32 and alone.shape == ()
    assert float(alone) == float(expected)
    assert abs(float(alone) - _scipy_log_likelihood(config, params, x)) < 1e-5
    assert fitted.history["log_likelihood"][-1] == float(last)
