"""The compiled E-step kernel (zoo/em_kernel.c through zoo/em_native.py).

Each build the CPU runs (AVX-512, AVX2, baseline) is checked against the float64 E-step
computed from its definition; the E-step and a whole EM fit with the kernel against the torch
form; and the fallbacks (no compiler, a failed build, ``LVM_ZOO_NATIVE=0``) against the
torch form too.
"""

import math
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from inference.em import fit_em
from zoo import em_native, gmm, gmm_em
from zoo.errors import InputError

FLOOR = 2 * math.log(torch.finfo(torch.float32).eps)


def _problem(dim, components, num_data, full, seed):
    """float32 rows offset from the origin, weights of a mixture at random parameters (through
    the E-step's own weights, so the constant shift and pairs are the E-step's), and the
    features' pairs."""
    config = gmm.GMMConfig(dim=dim, components=components,
                           covariance_type="full" if full else "diag")
    generator = torch.Generator().manual_seed(seed)
    means = 1.5 * torch.randn(components, dim, generator=generator, dtype=torch.float64) + 2.0
    if full:
        factor = torch.randn(components, dim, dim, generator=generator, dtype=torch.float64)
        scale = {"scale_tril": torch.linalg.cholesky(
            factor @ factor.mT / dim + 0.5 * torch.eye(dim, dtype=torch.float64))}
    else:
        scale = {"scale": 0.5 + torch.rand(components, dim, generator=generator,
                                           dtype=torch.float64)}
    weights = torch.rand(components, generator=generator, dtype=torch.float64) + 0.2
    params = {"weights": weights / weights.sum(), "means": means, **scale}
    x, _ = gmm.sample(config, params, num_data, generator)
    x = x.float()
    params32 = {name: value.float() for name, value in params.items()}
    features = gmm_em._quadratic_features(config, x)
    table, _ = gmm_em._quadratic_weights(config, params32, features)
    table = table.float()
    if full:
        first, second = torch.triu_indices(dim, dim)
    else:
        first = second = torch.arange(dim)
    return x, table, features.center, first, second


def _float64_reference(x, table, center, first, second):
    """The E-step's sums ``Σ r_k φ`` and total log p(x) in float64, from the definition."""
    c = x.double() - center.double()
    phi = torch.cat([c[:, first] * c[:, second], c, torch.ones(c.shape[0], 1,
                                                                dtype=torch.float64)], 1)
    joint = phi @ table.double().t()
    return torch.softmax(joint, 1).t() @ phi, float(torch.logsumexp(joint, 1).sum())


def test_the_kernel_is_built_where_a_compiler_is():
    """Where a C compiler is on PATH and the CPU has AVX2 or AVX-512 (this project's CI), the
    E-step uses the kernel; :func:`status` names the build."""
    if os.environ.get("LVM_ZOO_NATIVE") == "0":
        pytest.skip("LVM_ZOO_NATIVE=0 turns the kernel off for this run")
    if em_native._compiler() is None:
        assert em_native.kernel() is None and "no C compiler" in em_native.status()["reason"]
        return
    assert 0 in em_native.variants()  # the baseline build runs on every CPU
    flags = set(open("/proc/cpuinfo").read().split()) if sys.platform.startswith("linux") \
        else set()
    if flags & {"avx2", "avx512f"}:  # the CPU's own word on which build must run
        wide = {"avx512f", "avx512dq", "avx512vl", "avx512bw"} <= flags
        assert em_native.status() == {"used": True, "variant": "AVX-512" if wide else "AVX2",
                                      "reason": "used"}


def _float64_rows(x, table, center, first, second):
    """Each row's log p(x) in float64, from the definition."""
    c = x.double() - center.double()
    phi = torch.cat([c[:, first] * c[:, second], c, torch.ones(c.shape[0], 1,
                                                                dtype=torch.float64)], 1)
    return torch.logsumexp(phi @ table.double().t(), 1).numpy()


@pytest.mark.parametrize("dim,components,num_data,full", [
    (16, 8, 5000, True),    # the benchmark's shape, a last partial tile
    (5, 12, 777, True),     # K past one register group of 8, padded to 16
    (3, 3, 256, True),      # K below 8, one exact block
    (1, 2, 100, True),      # one column, fewer rows than a tile
    (7, 5, 2049, False),    # diagonal features: squares only
    (21, 8, 9000, True),    # rows transposed a tile of lanes at a time, then 21 mod lanes
                            # columns one by one; more rows than one flush of the lanes' sums
    (16, 64, 3000, True),   # sums too many to keep per lane with 16 lanes: added per block
])
def test_each_build_gives_the_float64_e_step(dim, components, num_data, full):
    """Every build this CPU runs gives the sums ``Σ_n r_nk φ_n`` within float32 rounding of
    the float64 E-step and the total log p(x) within 1e-5 nats a row; without statistics,
    the same total and no sums."""
    builds = em_native.variants()
    if not builds:
        assert em_native._compiler() is None or os.environ.get("LVM_ZOO_NATIVE") == "0"
        pytest.skip("the kernel is not built here: " + em_native.status()["reason"])
    x, table, center, first, second = _problem(dim, components, num_data, full, seed=dim)
    expected, expected_total = _float64_reference(x, table, center, first, second)
    for build in builds:
        sums, total = em_native.share(x, table, center, first, second, 0, num_data, FLOOR,
                                      True, variant=build)
        assert sums.shape == (components, table.shape[1]) and sums.dtype == torch.float64
        np.testing.assert_allclose(sums.numpy(), expected.numpy(), rtol=2e-4,
                                   atol=2e-4 * float(expected.abs().max()) / num_data + 1e-6)
        assert abs(float(total) - expected_total) / num_data < 1e-5
        alone, alone_total = em_native.share(x, table, center, first, second, 0, num_data,
                                             FLOOR, False, variant=build)
        assert float(alone.abs().max()) == 0.0 and float(alone_total) == float(total)
        # a share of the rows: rows 37.. only
        part, part_total = em_native.share(x, table, center, first, second, 37, num_data,
                                           FLOOR, True, variant=build)
        tail, tail_total = _float64_reference(x[37:], table, center, first, second)
        np.testing.assert_allclose(part.numpy(), tail.numpy(), rtol=2e-4,
                                   atol=2e-4 * float(tail.abs().max()) / num_data + 1e-6)
        assert abs(float(part_total) - tail_total) / num_data < 1e-5
        # each row's log p(x), written at its own row of the output (rows 37.. only here)
        rows = torch.full((num_data,), math.nan, dtype=torch.float64)
        _, rows_total = em_native.share(x, table, center, first, second, 37, num_data, FLOOR,
                                        False, variant=build, rows=rows)
        assert rows[:37].isnan().all() and float(rows_total) == float(part_total)
        # a row's float32 log joint sums F rounded terms: 1e-4 nats up to the 153 features of
        # D = 16, in proportion beyond (the start commit's kernel was 1.3e-4 off at D = 21)
        np.testing.assert_allclose(rows[37:].numpy(), _float64_rows(x[37:], table, center,
                                                                     first, second),
                                   atol=1e-4 * max(1.0, table.shape[1] / 153))
        assert abs(float(rows[37:].sum()) - float(rows_total)) < 1e-9 * num_data


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
@pytest.mark.filterwarnings("ignore:EM on gmm did not converge")  # twenty iterations, tol 0
def test_em_with_the_kernel_is_em_in_torch(threads, covariance_type, monkeypatch):
    """The E-step and a whole EM fit with the kernel and in torch's form: the same statistics
    to float32 rounding, the same log-likelihood history within 1e-5 nats a row, on one
    thread and in two shares."""
    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    config = gmm.GMMConfig(dim=6, components=5, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(21)
    truth = {"weights": torch.full((5,), 0.2, dtype=torch.float64),
             "means": 3 * torch.randn(5, 6, generator=generator, dtype=torch.float64),
             "scale_tril": torch.eye(6, dtype=torch.float64).expand(5, 6, 6).clone()}
    x, _ = gmm.sample(gmm.GMMConfig(dim=6, components=5), truth, 30_000, generator)
    x = x.float()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        start = gmm.initialize(config, x, torch.Generator().manual_seed(0))
        native_stats, native_ll = gmm.e_step(config, start, x)
        native_fit = fit_em(gmm.SPEC, config, x, init=start, max_iter=20, tol=0.0)
        monkeypatch.setattr(gmm_em, "_native", lambda x: False)
        torch_stats, torch_ll = gmm.e_step(config, start, x)
        torch_fit = fit_em(gmm.SPEC, config, x, init=start, max_iter=20, tol=0.0)
    finally:
        torch.set_num_threads(saved)
    assert abs(float(native_ll) - float(torch_ll)) < 1e-5
    for a, b in zip(native_stats, torch_stats, strict=True):
        if isinstance(a, torch.Tensor):
            assert a.dtype == b.dtype == torch.float32
            np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4,
                                       atol=1e-4 * float(b.abs().max()))
    np.testing.assert_allclose(native_fit.history["log_likelihood"],
                               torch_fit.history["log_likelihood"], atol=1e-5)


def _rebuilt(monkeypatch, tmp_path, **environment):
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("LVM_ZOO_CACHE", str(tmp_path))
    em_native.forget()
    return em_native.status()


@pytest.mark.parametrize("environment,reason", [
    ({"LVM_ZOO_NATIVE": "0"}, "LVM_ZOO_NATIVE=0"),
    ({"CC": "no-such-compiler-here"}, "no C compiler"),
    ({"CC": "false"}, "the C compiler failed"),
])
def test_without_the_kernel_the_e_step_runs_in_torch(environment, reason, monkeypatch,
                                                     tmp_path):
    """Turned off, without a compiler, or where the build fails, the kernel is not used, the
    status says why, nothing is left in the cache, and the E-step (in torch's form) gives the
    float64 log-likelihood."""
    if "false" in environment.values() and shutil.which("false") is None:
        pytest.skip("no `false` program to stand in for a failing compiler")
    config = gmm.GMMConfig(dim=4, components=3)
    x, _, _, _, _ = _problem(4, 3, 2000, True, seed=5)
    try:
        status = _rebuilt(monkeypatch, tmp_path, **environment)
        assert status["used"] is False and status["reason"].startswith(reason)
        assert em_native.kernel() is None and not gmm_em._native(torch.zeros(4, 2))
        start = gmm.initialize(config, x, torch.Generator().manual_seed(5))
        _, log_likelihood = gmm.e_step(config, start, x)
        assert not list(tmp_path.iterdir())  # nothing built, nothing half-built
    finally:
        monkeypatch.undo()
        em_native.forget()
    params64 = {name: value.double() for name, value in start.items()}
    expected = float(gmm.log_marginal(config, params64, x.double()).mean())
    assert abs(float(log_likelihood) - expected) < 1e-5


def test_the_build_is_cached_whole(monkeypatch, tmp_path):
    """A build lands in the cache under its hash, whole (by one rename: no scratch left), and
    the next process (here, the next load) finds it there without compiling again."""
    if em_native._compiler() is None or os.environ.get("LVM_ZOO_NATIVE") == "0":
        pytest.skip("the kernel is not built here: " + em_native.status()["reason"])
    try:
        assert _rebuilt(monkeypatch, tmp_path)["used"] == (em_native.kernel() is not None)
        libraries = list(tmp_path.iterdir())
        assert len(libraries) == 1 and libraries[0].name.startswith("em_kernel-")
        stamp = libraries[0].stat().st_mtime_ns
        em_native.forget()
        assert em_native.variants()  # loaded again
        assert list(tmp_path.iterdir()) == libraries
        assert libraries[0].stat().st_mtime_ns == stamp
    finally:
        monkeypatch.undo()
        em_native.forget()


@pytest.mark.parametrize("dim,components,num_data", [(16, 8, 5000), (3, 11, 777), (1, 2, 90)])
def test_each_build_gives_lloyds_pass(dim, components, num_data):
    """Every build's Lloyd pass: each row's nearest centre by float64 distances (rows whose
    two nearest centres are within float32 rounding of each other may go either way), the
    clusters' sums and counts of those labels, and the labels that changed from the last
    pass; over a share of the rows, too."""
    builds = em_native.variants()
    if not builds:
        pytest.skip("the kernel is not built here: " + em_native.status()["reason"])
    generator = torch.Generator().manual_seed(dim + components)
    x = (3 * torch.randn(num_data, dim, generator=generator)).float()
    centers = x[torch.randperm(num_data, generator=generator)[:components]].clone()
    distances = torch.cdist(x.double(), centers.double()).square()
    nearest = distances.argmin(1)
    two = distances.topk(min(2, components), 1, largest=False).values
    clear = (two[:, -1] - two[:, 0]) > 1e-4 * (1 + two[:, 0]) if components > 1 else \
        torch.ones(num_data, dtype=torch.bool)
    previous = torch.randint(components, (num_data,), generator=generator)
    for build in builds:
        labels = torch.full((num_data,), -1, dtype=torch.int64)
        sums, counts, changed = em_native.lloyd_share(x, centers, labels, previous, 0,
                                                      num_data, variant=build)
        assert torch.equal(labels[clear], nearest[clear])
        assert int(changed) == int((labels != previous).sum())
        assert torch.equal(counts, torch.bincount(labels, minlength=components))
        expected = torch.zeros(components, dim, dtype=torch.float64).index_add_(
            0, labels, x.double())
        np.testing.assert_allclose(sums.numpy(), expected.numpy(), rtol=1e-12, atol=1e-9)
        part = torch.full((num_data,), -1, dtype=torch.int64)
        _, part_counts, _ = em_native.lloyd_share(x, centers, part, None, 7, num_data,
                                                  variant=build)
        assert bool((part[:7] == -1).all()) and torch.equal(part[7:], labels[7:])
        assert int(part_counts.sum()) == num_data - 7


def test_kmeans_with_the_kernel_is_sklearns_on_float32():
    """Lloyd's iterations on float32 rows with the kernel end where scikit-learn's KMeans
    ends from the same centres (well-separated blobs: no near ties): the same labels and
    iterations, centres within float32 rounding."""
    from sklearn.cluster import KMeans

    from zoo import gmm_init

    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    blobs, _, _ = gmm.synthetic(6000, torch.Generator().manual_seed(3), torch.float64)
    x = blobs.float()
    start, _ = gmm.kmeans_plus_plus(x, 3, generator=torch.Generator().manual_seed(1))
    ours = gmm_init.lloyd(x, start, tol=0.0)
    theirs = KMeans(3, init=start.numpy(), n_init=1, tol=0.0, algorithm="lloyd").fit(x.numpy())
    assert np.array_equal(ours.labels.numpy(), theirs.labels_)
    assert ours.n_iter == theirs.n_iter_
    np.testing.assert_allclose(ours.centers.numpy(), theirs.cluster_centers_, rtol=1e-5,
                               atol=1e-5)


def _overlapping(num_data, dim, components, seed):
    generator = torch.Generator().manual_seed(seed)
    means = 0.6 * torch.randn(components, dim, generator=generator)
    which = torch.randint(components, (num_data,), generator=generator)
    return (torch.randn(num_data, dim, generator=generator) + means[which]).contiguous()


@pytest.mark.parametrize("transposed", [True, False], ids=["transposed-once", "every-pass"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("num_data,dim,components,tol", [
    (19_037, 16, 8, "sklearn"),  # the start's sample: two shares on two threads
    (5_000, 3, 11, 0.0),  # K past one register group, run until no label changes
    (300, 2, 4, "sklearn"),  # one share: fewer blocks than threads
])
def test_lloyds_loop_in_the_kernel_is_the_python_loop(threads, num_data, dim, components, tol,
                                                      transposed, monkeypatch):
    """Lloyd's algorithm whole in the kernel (the passes' sums updated by the rows that
    changed label) against the loop in Python over the kernel's passes (sums afresh each
    pass) and against float64 means of its own labels: the same iterations, labels and stop,
    centres within double rounding of the data's sums."""
    from zoo import gmm_init

    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    x = _overlapping(num_data, dim, components, seed=components)
    start, _ = gmm.kmeans_plus_plus(x, components, generator=torch.Generator().manual_seed(2))
    tolerance = gmm_init.lloyd_tolerance(x) if tol == "sklearn" else tol
    if not transposed:  # the rows of larger data: each pass transposes each block again
        monkeypatch.setattr(em_native, "LLOYD_TRANSPOSED_BYTES", 0)
    calls, results = [], []
    loop = em_native.lloyd_loop

    def counted(*args, **kwargs):
        calls.append(args[2])
        results.append(loop(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(em_native, "lloyd_loop", counted)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        ours = gmm_init.lloyd(x, start, tol=tolerance)
        monkeypatch.setattr(gmm_init, "_lloyd_in_kernel", lambda *a, **k: None)
        python = gmm_init.lloyd(x, start, tol=tolerance)
    finally:
        torch.set_num_threads(saved)
    assert len(calls) == 1 and len(calls[0]) - 1 == (threads if num_data > 8192 else 1)
    assert results[0] is not None  # the kernel's loop ran to the end, not the Python loop
    assert ours.n_iter == python.n_iter > 2 and ours.converged == python.converged
    assert torch.equal(ours.labels, python.labels)
    np.testing.assert_allclose(ours.centers.numpy(), python.centers.numpy(), rtol=1e-6,
                               atol=1e-6)
    assert ours.inertia == pytest.approx(python.inertia, rel=1e-6)
    if tol == 0.0:  # stopped because no label changed: the centres are their rows' means
        means = torch.zeros(components, dim, dtype=torch.float64).index_add_(
            0, ours.labels, x.double()) / torch.bincount(ours.labels)[:, None]
        np.testing.assert_allclose(ours.centers.double().numpy(), means.numpy(), rtol=1e-6,
                                   atol=1e-6)


def test_lloyds_loop_goes_on_over_several_calls(monkeypatch):
    """A run cut into calls of three passes each (between them Python sees its signals)
    ends where one call and the Python loop end: the same iterations, stop and labels; the
    first pass of each later call counts its changes against the labels handed over."""
    from zoo import gmm_init

    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    x = _overlapping(6000, 5, 6, seed=8)
    start, _ = gmm.kmeans_plus_plus(x, 6, generator=torch.Generator().manual_seed(4))
    whole = gmm_init.lloyd(x, start, tol=0.0)
    calls = []
    loop = em_native.lloyd_loop
    monkeypatch.setattr(em_native, "lloyd_loop", lambda *a, **k: calls.append(a[3]) or loop(
        *a, **k))
    monkeypatch.setattr(gmm_init, "LLOYD_CALL_ROWS", 3 * x.shape[0])
    cut = gmm_init.lloyd(x, start, tol=0.0)
    monkeypatch.setattr(gmm_init, "_lloyd_in_kernel", lambda *a, **k: None)
    python = gmm_init.lloyd(x, start, tol=0.0)
    assert whole.n_iter > 6 and len(calls) == -(-whole.n_iter // 3) and set(calls) == {3}
    for run in (cut, python):
        assert run.n_iter == whole.n_iter and run.converged and torch.equal(run.labels,
                                                                            whole.labels)
        np.testing.assert_allclose(run.centers.numpy(), whole.centers.numpy(), rtol=1e-6,
                                   atol=1e-6)


def test_lloyds_loop_leaves_an_emptied_cluster_to_the_python_loop():
    """A centre that no row is nearest to empties its cluster on the first pass: the kernel's
    loop gives it back (``None``), and Lloyd refills it with the farthest row as
    scikit-learn does; the result is the Python loop's."""
    from zoo import gmm_init

    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    x = _overlapping(4000, 4, 3, seed=5)
    start = torch.cat([x[:2], torch.full((1, 4), 1e3)])  # the third centre: far from all
    assert em_native.lloyd_loop(x, start, [0, x.shape[0]], 50, 0.0) is None
    ours = gmm_init.lloyd(x, start, tol=0.0)
    assert int(torch.bincount(ours.labels, minlength=3).min()) > 0
    assert float(ours.centers.abs().max()) < 1e2  # the far centre moved onto the data


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical"])
def test_the_yardsticks_rows_through_the_kernel_are_scipys(threads, covariance_type):
    """``gmm.log_marginal`` on float32 rows goes through the kernel (each row's log p(x)) and
    gives scipy's densities row by row, within float32 rounding; the mean is the E-step's;
    float64 rows take the whitened route and give the same values."""
    from scipy.stats import multivariate_normal

    if not em_native.variants():
        pytest.skip("the kernel is not built here: " + em_native.status()["reason"])
    config = gmm.GMMConfig(dim=6, components=5, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(29)
    means = 3 * torch.randn(5, 6, generator=generator, dtype=torch.float64) + 4.0
    if covariance_type == "full":
        factor = torch.randn(5, 6, 6, generator=generator, dtype=torch.float64)
        scale = {"scale_tril": torch.linalg.cholesky(
            factor @ factor.mT / 6 + 0.5 * torch.eye(6, dtype=torch.float64))}
        covariances = scale["scale_tril"] @ scale["scale_tril"].mT
    elif covariance_type == "diag":
        scale = {"scale": 0.5 + torch.rand(5, 6, generator=generator, dtype=torch.float64)}
        covariances = torch.diag_embed(scale["scale"] ** 2)
    else:
        scale = {"scale": 0.5 + torch.rand(5, generator=generator, dtype=torch.float64)}
        covariances = scale["scale"][:, None, None] ** 2 * torch.eye(6, dtype=torch.float64)
    weights = torch.rand(5, generator=generator, dtype=torch.float64) + 0.2
    params = {"weights": weights / weights.sum(), "means": means, **scale}
    x, _ = gmm.sample(config, params, 30_011, generator)  # a last partial tile
    x = x.float()
    params32 = {name: value.float() for name, value in params.items()}
    rows = x.double().numpy()
    joint = np.stack([np.log(float(params["weights"][k])) + multivariate_normal(
        means[k].numpy(), covariances[k].numpy()).logpdf(rows) for k in range(5)], 1)
    expected = np.logaddexp.reduce(joint, axis=1)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        assert gmm_em.row_log_likelihoods(config, params32, x) is not None  # the kernel's
        values = gmm.log_marginal(config, params32, x)
        _, mean = gmm.e_step(config, params32, x)
        whitened = gmm.log_marginal(config, params, x.double())
    finally:
        torch.set_num_threads(saved)
    assert values.shape == (30_011,) and values.dtype == torch.float32
    # float32 log joints: 3e-5 nats at most here (the route's worst-case bound is 1e-3)
    np.testing.assert_allclose(values.double().numpy(), expected, rtol=0, atol=1e-4)
    np.testing.assert_allclose(whitened.numpy(), expected, rtol=1e-9, atol=1e-9)
    assert abs(float(values.double().mean()) - float(mean)) < 1e-5


@pytest.mark.parametrize("covariance_type", ["full", "tied"])
@pytest.mark.parametrize("dim,components", [(16, 8), (3, 5), (1, 2)])
def test_the_weights_in_the_kernel_are_torchs(covariance_type, dim, components, monkeypatch):
    """The E-step's weights of full (and tied) covariances from the kernel's library equal
    the torch form's (``Λ = P Pᵀ`` from a triangular solve) to float64 rounding, the rounding
    bound too; they give log λ_k N(x | μ_k, S_k) by scipy; a singular factor is the same
    error in both."""
    from scipy.stats import multivariate_normal

    if em_native.kernel() is None:
        pytest.skip("the kernel is not used here: " + em_native.status()["reason"])
    config = gmm.GMMConfig(dim=dim, components=components, covariance_type=covariance_type)
    generator = torch.Generator().manual_seed(dim + components)
    factor = torch.randn(components, dim, dim, generator=generator, dtype=torch.float64)
    covariance = factor @ factor.mT / dim + 0.3 * torch.eye(dim, dtype=torch.float64)
    if covariance_type == "tied":
        covariance = covariance[:1].expand(components, dim, dim)
    params = {"weights": torch.softmax(torch.randn(components, generator=generator,
                                                   dtype=torch.float64), 0),
              "means": 3 * torch.randn(components, dim, generator=generator,
                                       dtype=torch.float64) + 2,
              "scale_tril": torch.linalg.cholesky(covariance)}
    params32 = {name: value.float() for name, value in params.items()}
    x = (torch.randn(500, dim, generator=generator) + 2).contiguous()
    features = gmm_em._quadratic_features(config, x)
    calls = []
    made = em_native.full_weights
    monkeypatch.setattr(em_native, "full_weights", lambda *a: calls.append(1) or made(*a))
    ours, our_bound = gmm_em._quadratic_weights(config, params32, features)
    monkeypatch.setattr(em_native, "kernel", lambda: None)  # the torch form
    theirs, their_bound = gmm_em._quadratic_weights(config, params32, features)
    assert calls == [1] and ours.dtype == torch.float64 and ours.shape == theirs.shape
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-12,
                               atol=1e-12 * float(theirs.abs().max()))
    assert our_bound == pytest.approx(their_bound, rel=1e-12)
    c = x.double() - features.center.double()
    first, second = torch.triu_indices(dim, dim)
    phi = torch.cat([c[:, first] * c[:, second], c, torch.ones(500, 1, dtype=torch.float64)], 1)
    scipy = np.stack([np.log(float(params32["weights"][k])) + multivariate_normal(
        params32["means"][k].double().numpy(),
        (params32["scale_tril"][k].double() @ params32["scale_tril"][k].double().T).numpy()
    ).logpdf(x.double().numpy()) for k in range(components)], 1)
    np.testing.assert_allclose((phi @ ours.t()).numpy(), scipy.reshape(500, components),
                               rtol=1e-9, atol=1e-9)
    singular = dict(params32, scale_tril=params32["scale_tril"].clone())
    singular["scale_tril"][-1, -1, -1] = 0.0
    monkeypatch.undo()
    with pytest.raises(InputError, match="singular covariance") as kernel_error:
        gmm_em._quadratic_weights(config, singular, features)
    monkeypatch.setattr(em_native, "kernel", lambda: None)
    with pytest.raises(InputError, match="singular covariance") as torch_error:
        gmm_em._quadratic_weights(config, singular, features)
    assert str(kernel_error.value) == str(torch_error.value)
