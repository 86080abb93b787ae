"""K-means (Lloyd) against scikit-learn's KMeans from the same initial centres."""

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_iris
from sklearn.exceptions import ConvergenceWarning

from inference.kmeans import kmeans
from zoo import gmm
from zoo.errors import InputError


def datasets():
    iris = torch.tensor(load_iris().data, dtype=torch.float64)
    blobs, _, _ = gmm.synthetic(600, torch.Generator().manual_seed(3), torch.float64)
    return {"iris": (iris, 3), "synthetic": (blobs, 3), "iris-k6": (iris, 6)}


DATA = datasets()


@pytest.mark.parametrize("name", DATA)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inertia_matches_sklearn_from_the_same_centres(name, seed):
    x, k = DATA[name]
    start, _ = gmm.kmeans_plus_plus(x, k, generator=torch.Generator().manual_seed(seed))
    ours = kmeans(x, k, init=start, tol=0.0)
    theirs = KMeans(k, init=start.numpy(), n_init=1, tol=0.0, algorithm="lloyd").fit(x.numpy())
    np.testing.assert_allclose(ours.inertia, theirs.inertia_, rtol=1e-10)
    np.testing.assert_allclose(ours.centers.numpy(), theirs.cluster_centers_, rtol=1e-10)
    assert ours.n_iter == theirs.n_iter_
    assert np.array_equal(ours.labels.numpy(), theirs.labels_)
    assert ours.converged


@pytest.mark.parametrize("seed,tie", [(4, False), (5, False), (4, True)])
def test_threaded_blocked_lloyd_matches_sklearn(seed, tie):
    """With 2 intra-op threads and 64-row blocks, Lloyd's fused pass runs in shares of blocks
    in threads (TorchScript's share, without the GIL) and ends where scikit-learn does from
    the same centres: the same labels, iterations, centres and inertia. With two equal
    centres every row is at a tie, which goes to the first (as argmin) and leaves the second
    empty, to be refilled with the farthest row."""
    from zoo import gmm_init

    x, k = DATA["synthetic"]
    start, _ = gmm.kmeans_plus_plus(x, k, generator=torch.Generator().manual_seed(seed))
    if tie:
        start[1] = start[0]
    theirs = KMeans(k, init=start.numpy(), n_init=1, tol=0.0, algorithm="lloyd").fit(x.numpy())
    saved_threads, saved_block = torch.get_num_threads(), dict(gmm_init.LLOYD_BLOCK_VALUES)
    try:
        gmm_init.LLOYD_BLOCK_VALUES["cpu"] = 64 * k  # 64-row blocks: 10 of 600 rows, 2 shares
        torch.set_num_threads(2)
        ours = kmeans(x, k, init=start, tol=0.0)
        assert torch.get_num_threads() == 2  # restored after the shares
    finally:
        torch.set_num_threads(saved_threads)
        gmm_init.LLOYD_BLOCK_VALUES.update(saved_block)
    assert np.array_equal(ours.labels.numpy(), theirs.labels_)
    assert ours.n_iter == theirs.n_iter_
    np.testing.assert_allclose(ours.centers.numpy(), theirs.cluster_centers_, rtol=1e-10)
    np.testing.assert_allclose(ours.inertia, theirs.inertia_, rtol=1e-10)
    assert isinstance(gmm_init._script(gmm_init._lloyd_share), torch.jit.ScriptFunction)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_nearest_centres_by_blocks_are_sklearns_argmin(threads, dtype):
    """:func:`zoo.gmm_init.nearest_centers` in 64-row blocks (shares of them in threads on 2;
    float32 rows by the compiled pass where it is built): scikit-learn's
    ``pairwise_distances_argmin`` labels, also where two centres are equal (every row at a
    tie takes the first, as argmin) and in a last, shorter block; no operation returns a
    tensor of N x K values."""
    from sklearn.metrics import pairwise_distances_argmin

    from tests.zoo.test_gmm_em_streaming import _LargestOutput
    from zoo import gmm_init

    x, _ = DATA["synthetic"]
    x = x[:590].to(dtype)  # nine 64-row blocks and a last one of 14 rows
    generator = torch.Generator().manual_seed(8)
    centers = x[torch.randperm(590, generator=generator)[:5]].clone()
    tied = torch.cat([centers[:2], centers[:2], centers[2:3]])
    saved_threads, saved_block = torch.get_num_threads(), dict(gmm_init.NEAREST_BLOCK_VALUES)
    try:
        gmm_init.NEAREST_BLOCK_VALUES["cpu"] = 64 * 5
        torch.set_num_threads(threads)
        with _LargestOutput() as mode:
            labels = gmm_init.nearest_centers(x, centers)
        ties = gmm_init.nearest_centers(x, tied)
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(saved_threads)
        gmm_init.NEAREST_BLOCK_VALUES.update(saved_block)
    assert labels.dtype == torch.int64
    assert np.array_equal(labels.numpy(), pairwise_distances_argmin(x.numpy(), centers.numpy()))
    assert np.array_equal(ties.numpy(), pairwise_distances_argmin(x.numpy(), tied.numpy()))
    assert set(ties.tolist()) <= {0, 1, 4}  # equal centres: the first of each pair
    assert mode.largest < x.shape[0] * 5


def test_labels_are_nearest_centres_and_inertia_is_their_squared_distance():
    x, k = DATA["synthetic"]
    result = kmeans(x, k, n_init=2)
    distances = torch.cdist(x, result.centers) ** 2
    assert torch.equal(result.labels, distances.argmin(1))
    np.testing.assert_allclose(result.inertia, float(distances.min(1).values.sum()), rtol=1e-10)


def test_restarts_keep_the_lowest_inertia():
    x, _ = DATA["iris"]
    best = kmeans(x, 6, n_init=8, seed=0)
    assert len(best.restart_inertias) == 8 and len(set(best.restart_inertias)) > 1
    assert best.inertia == min(best.restart_inertias)  # the best of all, not of the first
    centers = best.centers.double()
    inertia = float(((x.double() - centers[best.labels]) ** 2).sum())
    assert inertia == pytest.approx(best.inertia, rel=1e-5)  # the kept labels are that restart
    assert kmeans(x, 6, init="random", seed=1).inertia > 0


def test_an_empty_cluster_takes_the_farthest_point():
    x, _ = DATA["iris"]
    start = torch.cat([x[:2], torch.full((1, 4), 1e3, dtype=torch.float64)])  # far from all
    result = kmeans(x, 3, init=start, tol=0.0)
    assert torch.bincount(result.labels, minlength=3).min() > 0
    assert np.isfinite(result.inertia)


def test_bad_input_is_named():
    x, _ = DATA["iris"]
    with pytest.raises(InputError, match="components=151 exceeds the 150 datapoints"):
        kmeans(x, 151)
    with pytest.raises(InputError, match=r"expected \(3, 4\)"):
        kmeans(x, 3, init=torch.zeros(2, 4, dtype=torch.float64))
    with pytest.raises(InputError, match="k-means\\+\\+, random"):
        kmeans(x, 3, init="forgy")
    with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        kmeans(x, 6, init="random", max_iter=1, tol=0.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kmeans_on_cuda_equals_cpu():
    x, k = DATA["synthetic"]
    start, _ = gmm.kmeans_plus_plus(x, k, generator=torch.Generator().manual_seed(0))
    cpu = kmeans(x, k, init=start, tol=0.0)
    cuda = kmeans(x.cuda(), k, init=start.cuda(), tol=0.0)
    np.testing.assert_allclose(cuda.inertia, cpu.inertia, rtol=1e-10)
