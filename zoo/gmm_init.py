"""Starting points for the Gaussian mixture: k-means++ seeding and Lloyd's algorithm.

K-means is EM's hard-assignment limit, so its clusters make good starts. :func:`initialize`
takes one M-step from the hard labels of Lloyd's K-means run from k-means++ seeds
(``"kmeans"``, the default: scikit-learn's ``init_params="kmeans"``, which runs
``KMeans(n_init=1)`` with its tolerance), from the labels of the k-means++ seeds alone
(``"kmeans++"``), or from uniform random responsibilities (``"random"``). The M-step from hard
labels sorts the rows by cluster once (:func:`zoo.gmm_em.label_statistics`). Distances are one
GEMM per assignment, vectorized, the same code on CPU and CUDA.

Past :func:`start_rows` rows (20,000, or 2,500 a component where that is more) the seeds and
Lloyd's iterations run on a seeded sample of that many rows, and the M-step takes every row's
nearest centre. At N = 200,000, D = 16, K = 8 that start costs about 1.5 EM iterations on
separated clusters and 10 on overlapping ones, where Lloyd on every row cost 2 and 30. Over
92 datasets EM reached scikit-learn's best optimum from it 85 times, against 88 from
scikit-learn's own start (``benchmarks/RESULTS.md``, ``benchmarks/gmm_start.py``). A sample
of 2,500 rows a component puts each centre within about 2% of its cluster's spread a
coordinate. Up to that size the start is scikit-learn's, row for row.

The seeding, Lloyd's iterations and the M-step are written once, over the rows of a process
group's shards (:class:`inference.shards.Rows`, of which they use ``chunks``, ``total`` and
``gather``): :func:`initialize_rows` passes over a rank's own rows and equals the one-process
start, which is the same code on one tensor. Everything public here is re-exported by
:mod:`zoo.gmm`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from zoo import em_native
from zoo.errors import InputError
from zoo.gmm_config import GMMConfig, _check_data, check_components
from zoo.gmm_em import (
    _in_threads,
    _native,
    _one_intra_op_thread,
    _script,
    combine,
    from_labels,
    label_statistics,
    m_step,
    maximize,
    mean_variance,
    weighted_moments,
)
from zoo.registry import Params

INIT_METHODS = ("kmeans", "kmeans++", "random")  # the first is EM's default
LLOYD_TOL = 1e-4  # scikit-learn's KMeans tol: relative to the mean per-feature variance
START_ROWS = 20_000  # the k-means start's sample: at least this many rows,
START_ROWS_PER_COMPONENT = 2_500  # and this many a component


def start_rows(num_data: int, components: int, limit: int | None = None) -> int:
    """How many rows the k-means start's seeds and Lloyd's iterations run on: all ``num_data``
    up to ``limit`` (default ``max(START_ROWS, START_ROWS_PER_COMPONENT * components)``), a
    seeded sample of about ``limit`` rows beyond."""
    if limit is None:
        limit = max(START_ROWS, START_ROWS_PER_COMPONENT * components)
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < components:
        raise InputError(f"the start's sample of {limit!r} rows must be an integer of at least "
                         f"the {components} components")
    return min(num_data, limit)


def start_sample(num_data: int, components: int, generator: torch.Generator | None,
                 device: torch.device, limit: int | None = None) -> torch.Tensor | None:
    """The rows (sorted indices into all ``num_data``) the k-means start runs on, drawn from
    ``generator``: ``None`` (every row, nothing drawn) up to :func:`start_rows`; beyond, the
    distinct rows of that many uniform draws (no permutation of all ``N``)."""
    size = start_rows(num_data, components, limit)
    if size >= num_data:
        return None
    where = generator.device if generator is not None else device
    drawn = torch.randint(num_data, (size,), generator=generator, device=where)
    return torch.unique(drawn).to(device)


def squared_distances(x: torch.Tensor, centers: torch.Tensor,
                      x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """``|x_n - c_j|²`` for ``x : (N, D)``, ``centers : (J, D)``, shape ``(N, J)``, one GEMM."""
    if x_squared is None:
        x_squared = x.square().sum(1)
    cross = torch.addmm(centers.square().sum(1), x, centers.T, alpha=-2.0)
    return cross.add_(x_squared[:, None]).clamp_min_(0.0)


class _Alone:
    """One tensor as the rows of one process, in one chunk: the face of
    :class:`inference.shards.Rows` that the data-parallel steps below use (``num_data``,
    ``streamed``, ``group``, ``chunks``, ``total``, ``gather``), so that the one-tensor steps
    are the same code."""

    streamed = False
    group = None

    def __init__(self, x: torch.Tensor):
        self.x, self.num_data = x, x.shape[0]

    def chunks(self):
        yield self.x

    def total(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor

    def gather(self, tree) -> list:
        return [tree]


def _local_rows(rows) -> torch.Tensor:
    """This rank's rows as one tensor (rows in memory are one chunk a rank)."""
    parts = list(rows.chunks())
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def kmeans_plus_plus(x: torch.Tensor, k: int, *, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007; scikit-learn's variant).

    Each new centre is the best, by total squared distance, of ``local_trials`` (default
    ``2 + log k``) candidates drawn with probability proportional to the squared distance to
    the nearest centre so far. Returns ``(centers : (k, D), indices : (k,))``.
    """
    return kmeans_plus_plus_rows(_Alone(x), k, generator=generator, local_trials=local_trials)


def kmeans_plus_plus_rows(rows, k: int, *, generator: torch.Generator | None = None,
                          local_trials: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`kmeans_plus_plus` data-parallel over the shards of a process group (``rows``:
    :class:`inference.shards.Rows` in memory), equal to the one-process seeds.

    Every rank draws the same uniforms; a candidate is drawn by inverse CDF, ``u`` times the
    total weight located among the ranks' totals (in rank order) and then in its owner's
    cumulative weights (float64: in float32 a row's weight is below the rounding of the sum
    before it), and the owner supplies the row (a sum over the ranks, the others adding
    zeros); each candidate's potential is summed over the ranks. So each rank passes over its
    own rows only, and with one rank this is the plain inverse-CDF draw. The ranks' partial
    sums round differently from one sum: in float32, candidates whose potentials tie to 1e-7
    may be chosen differently.
    """
    num_data = rows.num_data
    check_components(k, num_data)
    trials = local_trials or 2 + int(math.log(k))
    local = _local_rows(rows)
    rank = 0 if rows.group is None else rows.group.rank
    sizes = [int(n) for n in rows.gather(torch.tensor(local.shape[0]))]
    first_row, count = sum(sizes[:rank]), local.shape[0]

    def rows_at(indices):  # the rows of global indices, from their owners
        mine = (indices >= first_row) & (indices < first_row + count)
        picked = local.new_zeros(indices.shape[0], local.shape[1])
        picked[mine] = local[indices[mine] - first_row]
        return rows.total(picked)

    x_squared = local.square().sum(1)
    first = torch.randint(num_data, (1,), generator=generator, device=local.device)
    centers, indices = [rows_at(first)], [first]
    closest = _distances(local, x_squared, centers[0])[0]
    for _ in range(1, k):
        cumulative = closest.cumsum(0, dtype=torch.float64)
        totals = torch.stack(rows.gather(cumulative[-1]))
        if not bool(totals.sum() > 0):  # every row is a centre: draw uniformly
            cumulative = torch.arange(1, count + 1, dtype=torch.float64, device=local.device)
            totals = torch.stack(rows.gather(cumulative[-1]))
        ends = totals.cumsum(0)
        draws = torch.rand(trials, generator=generator, dtype=torch.float64,
                           device=local.device) * ends[-1]
        owner = torch.searchsorted(ends, draws, right=True).clamp_max(len(sizes) - 1)
        offset = ends[rank - 1] if rank > 0 else ends.new_zeros(())
        position = torch.searchsorted(cumulative, draws - offset, right=True)
        candidates = rows.total(torch.where(
            owner == rank, position.clamp_max(count - 1) + first_row, 0))
        rows_drawn = rows_at(candidates)
        trial = torch.minimum(closest[None, :], _distances(local, x_squared, rows_drawn))
        best = torch.argmin(rows.total(trial.sum(1)))
        closest = trial[best]
        centers.append(rows_drawn[best][None])
        indices.append(candidates[best].reshape(1))
    return torch.cat(centers), torch.cat(indices)


def _distances(x: torch.Tensor, x_squared: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """``|x_n - c_j|²``, centre-major ``(J, N)``: one GEMM of that shape is about three times
    faster than ``(N, J)`` for a few centres, and a centre's row is contiguous."""
    cross = torch.addmm(x_squared[None, :], centers, x.T, alpha=-2.0)
    return cross.add_(centers.square().sum(1)[:, None]).clamp_min_(0.0)


def nearest_centers(x: torch.Tensor, centers: torch.Tensor,
                    x_squared: torch.Tensor | None = None) -> torch.Tensor:
    """The index of the nearest centre of every row, shape ``(N,)``: the argmin over ``j`` of
    ``|c_j|² - 2 x·c_j`` (``|x|²`` is the same for every centre; ``x_squared`` is accepted for
    symmetry with :func:`squared_distances` and not needed); the first centre of equals, as
    ``argmin``.

    Row block by row block (:data:`NEAREST_BLOCK_VALUES` distances a block; nothing of size
    N x K is made), in shares over the CPU's intra-op threads (:func:`zoo.gmm_em._in_threads`;
    :func:`_nearest_share` says how), or by the compiled Lloyd pass
    (:func:`zoo.em_native.lloyd_share`) for float32 rows. At K = 64, N = 100,000 the blocks
    took 6.2 ms on two threads and 9.3 ms on one, against 8.6-10.1 and 17.7-18.3 ms for one
    ``min(0).indices`` over all rows; at K = 8 about the same."""
    k = centers.shape[0]
    labels = torch.empty(x.shape[0], dtype=torch.int64, device=x.device)
    budget = NEAREST_BLOCK_VALUES.get(x.device.type, NEAREST_BLOCK_VALUES["cuda"])
    block = min(max(x.shape[0], 1), max(64, budget // k // 64 * 64))
    native = _native(x)
    if native:
        block = min(max(x.shape[0], 1), NATIVE_SHARE_ROWS)

    def reduce(begin: int, end: int, scripted: bool = False):
        if native:  # its sums and counts are thrown away: the labels are the point
            return em_native.lloyd_share(x, centers, labels, None, begin, end)[1:2]
        # eager even in threads: a block's few operations are long enough to run while the
        # other thread dispatches, and compiling the share would cost a fresh process ~50 ms
        return _nearest_share(x, centers, labels, begin, end, block)

    with _one_intra_op_thread(x.device) as threads:
        _in_threads(reduce, x, block, threads)
    return labels


NEAREST_BLOCK_VALUES = {"cpu": 2**18, "cuda": 2**27}  # a block's K x rows distances


def _nearest_share(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor, begin: int,
                   end: int, block: int) -> tuple[torch.Tensor]:
    """:func:`nearest_centers` of rows ``begin..end``, written into ``labels``, block by block:
    one centre-major GEMM of distances, and the minima's one-hot by comparison with the column
    minima, written straight into a float buffer (a boolean result and its conversion took
    9x as long: 180 against 21 µs over (8, 19,037)); its product with ``[0..K-1; 1..1]`` gives
    each row's label and its number of minima, and a block with a tie takes
    ``min(0).indices`` (the first of equals, as argmin), which alone is not vectorized."""
    k = centers.shape[0]
    c_squared = centers.square().sum(1).unsqueeze(1)
    index_and_one = torch.stack([torch.arange(k, dtype=x.dtype, device=x.device),
                                 torch.ones(k, dtype=x.dtype, device=x.device)])
    for start in range(begin, end, block):
        stop = min(start + block, end)
        cross = torch.addmm(c_squared, centers, x[start:stop].t(), beta=1.0, alpha=-2.0)
        one_hot = torch.eq(cross, cross.amin(0, keepdim=True), out=torch.empty_like(cross))
        which = torch.mm(index_and_one, one_hot)
        if bool((which[1] != 1.0).any()):
            labels[start:stop] = cross.min(0).indices
        else:
            labels[start:stop] = which[0]
    return (torch.zeros((), dtype=x.dtype, device=x.device),)


def _lloyd_share(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor,
                 previous: torch.Tensor, begin: int, end: int, block: int,
                 compare: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd pass over rows ``begin..end`` of ``x``, block by block, fused: each block's
    distances (one GEMM, centre-major as in :func:`nearest_centers`), the one-hot of its
    nearest centres, its labels (written into ``labels``) and the clusters' sums of its rows
    (one GEMM with the one-hot, added in float64); then the share's counts and how many of its
    labels changed from ``previous`` (where ``compare``). Nothing of size N is made.

    The one-hot is the comparison of the distances with their column minima: ``amin(0)`` is
    vectorized where ``min(0).indices`` is not (2.4 against 48 ms over (8, 2 million)), and
    one small GEMM with ``[0..K-1; 1..1]`` gives each row's label and its number of minima. A
    block with a tie (two minima) takes ``min(0).indices``, the first of equals, as argmin.
    N = 200,000, D = 16, K = 8: 7.9 ms an iteration on one thread, 3.7-5.6 on two, against
    11.6 and 7.7 for the distances, labels and sums of the whole chunk one after another.
    Written for TorchScript too (:func:`zoo.gmm_em._script`): a scripted share runs without
    the GIL."""
    k = centers.shape[0]
    c_squared = centers.square().sum(1).unsqueeze(1)
    sums = torch.zeros(k, centers.shape[1], dtype=torch.float64, device=x.device)
    index_and_one = torch.stack([torch.arange(k, dtype=x.dtype, device=x.device),
                                 torch.ones(k, dtype=x.dtype, device=x.device)])
    width = min(block, end - begin)
    cross = torch.empty(k, width, dtype=x.dtype, device=x.device)
    one_hot = torch.empty(k, width, dtype=x.dtype, device=x.device)
    for start in range(begin, end, block):
        stop = min(start + block, end)
        if stop - start != width:  # the last, shorter block
            width = stop - start
            cross = torch.empty(k, width, dtype=x.dtype, device=x.device)
            one_hot = torch.empty(k, width, dtype=x.dtype, device=x.device)
        rows = x[start:stop]
        torch.addmm(c_squared, centers, rows.t(), beta=1.0, alpha=-2.0, out=cross)
        # the minima's one-hot by comparison (amin is vectorized; min(0).indices is not),
        # written straight into a float buffer: a boolean result and its conversion took 9x
        # as long (180 against 21 µs over (8, 19,037))
        torch.eq(cross, cross.amin(0, keepdim=True), out=one_hot)
        which = torch.mm(index_and_one, one_hot)  # each row's label, and its number of minima
        if bool((which[1] != 1.0).any()):  # a tie: the first of equals, as argmin
            assigned = cross.min(0).indices
            one_hot.zero_().scatter_(0, assigned.unsqueeze(0), 1.0)
            labels[start:stop] = assigned
        else:
            labels[start:stop] = which[0]
        sums += torch.mm(one_hot, rows).to(torch.float64)
    mine = labels[begin:end]
    counts = torch.bincount(mine, minlength=k)
    if compare:
        changed = (mine != previous[begin:end]).sum()
    else:
        changed = torch.zeros((), dtype=torch.int64, device=x.device)
    return sums, counts, changed


LLOYD_BLOCK_VALUES = {"cpu": 2**16, "cuda": 2**27}  # a block's K x rows distances
# the compiled pass splits a chunk into threads' shares of whole multiples of this many rows:
# the start's sample of 20,000 rows then runs on two threads (0.28 ms a pass on one)
NATIVE_SHARE_ROWS = 2048
# rows' passes a call of Lloyd's loop in the kernel runs before it returns: about 0.1 s of
# passes (7 ns a row on one thread here), e.g. 16 passes over 10^6 rows, all 300 over 20,000
LLOYD_CALL_ROWS = 2**24


def _assign_and_sum(rows, centers: torch.Tensor, labels: list | None, previous: list | None,
                    threads: int | None = None):
    """One fused Lloyd pass (:func:`_lloyd_share`) over every chunk of every rank: the
    clusters' sums and counts and the number of changed labels summed over the ranks (one
    all-reduce), each chunk's labels written into ``labels`` (scratch where ``None``). On a CPU
    with several intra-op threads each thread passes over its own share of the blocks
    (:func:`zoo.gmm_em._in_threads`)."""
    k, d = centers.shape
    budget = LLOYD_BLOCK_VALUES.get(centers.device.type, LLOYD_BLOCK_VALUES["cuda"])
    sums = torch.zeros(k, d, dtype=torch.float64, device=centers.device)
    counts = torch.zeros(k, dtype=torch.int64, device=centers.device)
    changed = torch.zeros((), dtype=torch.int64, device=centers.device)
    for i, chunk in enumerate(rows.chunks()):
        out = (labels[i] if labels is not None
               else torch.empty(chunk.shape[0], dtype=torch.int64, device=chunk.device))
        before = previous[i] if previous is not None else out
        block = min(chunk.shape[0], max(64, budget // k // 64 * 64))

        native = _native(chunk) and out.is_contiguous() and before.is_contiguous()
        if native:  # the kernel's pass has no blocks to size; shares of 2,048 rows or more
            block = min(chunk.shape[0], NATIVE_SHARE_ROWS)

        def reduce(begin: int, end: int, scripted: bool = False, chunk=chunk, out=out,
                   before=before, block=block, native=native):
            if native:
                return em_native.lloyd_share(chunk, centers, out,
                                             before if previous is not None else None,
                                             begin, end)
            share = _script(_lloyd_share) if scripted else _lloyd_share
            return share(chunk, centers, out, before, begin, end, block,
                         previous is not None)

        part = _in_threads(reduce, chunk, block, threads)
        sums, counts, changed = sums + part[0], counts + part[1], changed + part[2]
    packed = rows.total(torch.cat([sums.reshape(-1), counts.double(), changed.double()[None]]))
    return (packed[:k * d].reshape(k, d).to(centers.dtype), packed[k * d:-1].round().long(),
            int(packed[-1]))


class LloydResult(NamedTuple):
    centers: torch.Tensor  # (K, D)
    labels: torch.Tensor  # (N,) index of each row's centre (a rank's own rows; empty if streamed)
    inertia: float  # Σ_n |x_n - c_{label_n}|²
    n_iter: int  # Lloyd iterations run
    converged: bool  # labels stopped changing, or the centres moved less than tol


def lloyd(x: torch.Tensor, centers: torch.Tensor, *, max_iter: int = 300,
          tol: float = 0.0) -> LloydResult:
    """Lloyd's algorithm from ``centers : (K, D)``: assign every row to its nearest centre,
    move each centre to its rows' mean; stop when no label changes or the total squared centre
    shift is at most ``tol`` (absolute, as scikit-learn's scaled tolerance). An empty cluster
    takes the row farthest from its centre (scikit-learn's remedy)."""
    return lloyd_rows(_Alone(x), centers, max_iter=max_iter, tol=tol)


def lloyd_rows(rows, centers: torch.Tensor, *, max_iter: int = 300,
               tol: float = 0.0) -> LloydResult:
    """:func:`lloyd` data-parallel over shards and chunks (``rows``:
    :class:`inference.shards.Rows`), equal to the one-process run: every rank assigns its rows,
    the per-cluster sums and counts and the number of changed labels are summed over the ranks
    (one all-reduce an iteration), and every rank moves the centres identically. The labels
    are kept (a rank's own) unless the rows are streamed; then Lloyd stops on the shift alone,
    which unchanged labels make exactly 0."""
    keep = not rows.streamed
    labels = previous = None
    converged = strict = False
    n_iter = 0
    # the centre updates on one intra-op thread, the passes in the threads they had (why:
    # zoo.gmm_em._one_intra_op_thread)
    with _one_intra_op_thread(centers.device) as threads:
        if keep and rows.group is None and max_iter >= 1:
            whole = _lloyd_in_kernel(rows, centers, max_iter, tol, threads)
            if whole is not None:
                return whole
        # two sets of label buffers, made once: this pass's, and the last one's to compare with
        buffers = ([[torch.empty(chunk.shape[0], dtype=torch.int64, device=chunk.device)
                     for chunk in rows.chunks()] for _ in range(2)] if keep else None)
        for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
            labels = buffers[n_iter % 2] if keep else None
            sums, counts, changed = _assign_and_sum(rows, centers, labels, previous, threads)
            if bool((counts == 0).any()):
                sums, counts = _refill_empty(rows, centers, labels, counts == 0)
            moved = sums / counts[:, None].to(sums.dtype)
            shift = float((moved - centers).square().sum())
            centers = moved
            if previous is not None and changed == 0:
                converged = strict = True
                break
            if shift <= tol:
                converged = True
                break
            previous = labels
    if keep and not strict:
        labels = [nearest_centers(chunk, centers) for chunk in rows.chunks()]
    inertia = centers.new_zeros((), dtype=torch.float64)
    for i, chunk in enumerate(rows.chunks()):
        assigned = labels[i] if keep else nearest_centers(chunk, centers)
        inertia += torch.index_select(centers, 0, assigned).sub_(chunk).square_().sum().double()
    if not keep:
        labels = torch.zeros(0, dtype=torch.int64, device=centers.device)
    elif len(labels) == 1:
        labels = labels[0]
    else:
        labels = torch.cat(labels)
    return LloydResult(centers, labels, float(rows.total(inertia)), n_iter, converged)


def _lloyd_in_kernel(rows, centers: torch.Tensor, max_iter: int, tol: float,
                     threads: int) -> LloydResult | None:
    """:func:`lloyd_rows` on one process's rows in one chunk of float32 rows on a CPU, whole
    in the compiled kernel (:func:`zoo.em_native.lloyd_loop`): the same passes over the same
    threads' shares as :func:`_assign_and_sum` makes them, so the same sums, labels and
    centres, without Python between the passes. ``None`` where the kernel does not run on the
    rows, or where a cluster emptied (the caller's loop, which refills it, then runs).

    Why: on the start's sample (19,037 rows, D = 16, K = 8, two threads) a pass in the kernel
    took 0.13 ms and the Python and small torch operations around it 0.2-0.3 ms more; 168
    passes were most of the start."""
    chunks = list(rows.chunks())
    if len(chunks) != 1 or not _native(chunks[0]):
        return None
    x = chunks[0]
    num_data = x.shape[0]
    block = min(num_data, NATIVE_SHARE_ROWS)
    blocks = -(-num_data // block)
    if threads < 2 or blocks < 2 * threads:  # as zoo.gmm_em._in_threads shares the rows
        bounds = [0, num_data]
    else:
        per_share = -(-blocks // threads) * block
        bounds = [*range(0, num_data, per_share), num_data]
    # a call runs at most LLOYD_CALL_ROWS rows' passes, then returns (to Python's signals:
    # Ctrl-C stops a long K-means within a fraction of a second) and the next goes on
    passes = max(1, LLOYD_CALL_ROWS // max(1, num_data))
    moved, prior, done = centers, None, 0
    while True:
        run = em_native.lloyd_loop(x, moved, bounds, min(passes, max_iter - done), tol, prior)
        if run is None:
            return None
        done += run.n_iter
        moved, prior = run.centers.to(centers.dtype), run.labels
        if run.converged or done >= max_iter:
            break
    saved = torch.get_num_threads()
    try:  # the last labels and the inertia on the caller's threads, as after the Python loop
        torch.set_num_threads(threads)
        labels = run.labels if run.strict else nearest_centers(x, moved)
        inertia = torch.index_select(moved, 0, labels).sub_(x).square_().sum().double()
    finally:
        torch.set_num_threads(saved)
    return LloydResult(moved, labels, float(inertia), done, run.converged)


def _cluster_sums(rows, centers, labels, previous, moves=None):
    """Each cluster's sum of rows and count over every rank (one GEMM with the one-hot labels a
    chunk; ``labels`` per chunk, or ``None``: the nearest centres), the labels that differ from
    ``previous`` (0 without them), and ``moves``: ``{chunk: (rows, clusters)}`` relabelled."""
    k, d = centers.shape
    sums = centers.new_zeros(k, d)
    counts = torch.zeros(k, dtype=torch.int64, device=centers.device)
    changed = torch.zeros(1, dtype=torch.int64, device=centers.device)
    for i, chunk in enumerate(rows.chunks()):
        assigned = labels[i] if labels is not None else nearest_centers(chunk, centers)
        if previous is not None:
            changed += (assigned != previous[i]).sum()
        if moves and i in moves:
            assigned = assigned.clone()
            assigned[moves[i][0]] = moves[i][1]
        one_hot = chunk.new_zeros(chunk.shape[0], k).scatter_(1, assigned[:, None], 1.0)
        sums += one_hot.T @ chunk
        counts += torch.bincount(assigned, minlength=k)
    packed = rows.total(torch.cat([sums.double().reshape(-1), counts.double(), changed.double()]))
    return (packed[:k * d].reshape(k, d).to(sums.dtype), packed[k * d:-1].round().long(),
            int(packed[-1]))


def _refill_empty(rows, centers, labels, empty):
    """The sums and counts after each empty cluster takes one of the rows farthest from their
    centres over every rank, the farthest the first (scikit-learn's remedy, and
    :func:`lloyd`'s alone): every rank offers its farthest rows, and their owners relabel the
    chosen ones."""
    clusters = empty.nonzero()[:, 0]
    wanted = clusters.numel()
    best = centers.new_full((wanted,), -1.0)
    where = torch.full((wanted, 2), -1, dtype=torch.int64, device=centers.device)
    for i, chunk in enumerate(rows.chunks()):
        assigned = labels[i] if labels is not None else nearest_centers(chunk, centers)
        top = (chunk - centers[assigned]).square().sum(1).topk(min(wanted, chunk.shape[0]))
        spots = torch.stack([torch.full_like(top.indices, i), top.indices], 1)
        pool, spots = torch.cat([best, top.values]), torch.cat([where, spots])
        keep = pool.topk(wanted).indices
        best, where = pool[keep], spots[keep]
    gathered = rows.gather(best)
    chosen = torch.cat(gathered).topk(wanted).indices
    rank = 0 if rows.group is None else rows.group.rank
    moves = {}
    for slot, cluster in zip(chosen.tolist(), clusters.tolist(), strict=True):
        if slot // wanted == rank:
            chunk, row = where[slot % wanted].tolist()
            moves.setdefault(chunk, ([], []))
            moves[chunk][0].append(row)
            moves[chunk][1].append(cluster)
    moves = {i: (torch.tensor(r, device=centers.device), torch.tensor(c, device=centers.device))
             for i, (r, c) in moves.items()}
    sums, counts, _ = _cluster_sums(rows, centers, labels, None, moves)
    return sums, counts


def lloyd_tolerance(x: torch.Tensor, tol: float = LLOYD_TOL) -> float:
    """scikit-learn's absolute K-means tolerance: ``tol`` times the mean per-feature variance
    (one pass over the centred rows, squared in place: on a CPU every large temporary costs its
    page faults, and a column-wise ``var`` is slower still)."""
    return tol * float((x - x.mean(0)).square_().mean())


def lloyd_tolerance_rows(rows, tol: float = LLOYD_TOL) -> float:
    """:func:`lloyd_tolerance` of rows in shards and chunks: the chunks' moments combined, in
    rank order (:func:`zoo.gmm_em.combine`), one pass over every rank's rows."""
    spread = combine(rows.gather(combine(
        [weighted_moments(c, c.new_ones(c.shape[0], 1), full=False) for c in rows.chunks()])))
    return tol * float(mean_variance(spread)) * (rows.num_data - 1) / rows.num_data


def initialize(config: GMMConfig, x: torch.Tensor, generator: torch.Generator | None = None,
               method: str = INIT_METHODS[0], *, sample_rows: int | None = None) -> Params:
    """Starting parameters from the data: one M-step from the hard labels of Lloyd's K-means
    from k-means++ seeds (``"kmeans"``, scikit-learn's default start: 300 Lloyd iterations at
    most, its relative tolerance 1e-4), from the nearest-seed labels of the k-means++ seeds
    (``"kmeans++"``), or from uniform random responsibilities (``"random"``, as
    scikit-learn). Past :func:`start_rows` rows (``sample_rows`` sets the limit) the seeds and
    Lloyd's iterations run on a seeded sample (:func:`start_sample`) and every row takes its
    nearest centre."""
    config.validate(x.shape[0])
    _check_data(config, x)
    k = config.components
    if method in ("kmeans++", "kmeans"):
        chosen = start_sample(x.shape[0], k, generator, x.device, sample_rows)
        sample = x if chosen is None else torch.index_select(x, 0, chosen)  # whole rows
        centers, labels = _kmeans(sample, k, generator, method)
        if labels is None or chosen is not None:  # the seeds', or a sample's: every row's
            labels = nearest_centers(x, centers)
        return from_labels(config, x, labels)
    if method == "random":
        resp = torch.rand(x.shape[0], k, generator=generator, dtype=x.dtype, device=x.device)
        resp /= resp.sum(1, keepdim=True)
        return m_step(config, x, resp)
    raise InputError(f"unknown init {method!r}; choose one of: " + ", ".join(INIT_METHODS))


def _kmeans(sample: torch.Tensor, k: int, generator,
            method: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The start's centres on ``sample``: its k-means++ seeds (``"kmeans++"``, no labels), or
    Lloyd's run from them to scikit-learn's tolerance (``"kmeans"``) with its rows' labels."""
    centers, _ = kmeans_plus_plus(sample, k, generator=generator)
    if method != "kmeans":
        return centers, None
    run = lloyd(sample, centers, tol=lloyd_tolerance(sample))
    return run.centers, run.labels


def initialize_rows(config: GMMConfig, rows, generator: torch.Generator | None = None,
                    method: str = INIT_METHODS[0], *,
                    sample_rows: int | None = None) -> Params | None:
    """:func:`initialize` data-parallel over the shards of a process group (``rows``:
    :class:`inference.shards.Rows` in memory), equal to the one-process start. Up to
    :func:`start_rows` rows the k-means++ seeds (:func:`kmeans_plus_plus_rows`), Lloyd's
    iterations (:func:`lloyd_rows`, the tolerance from every rank's moments) and the M-step
    from the labels (each rank's :func:`zoo.gmm_em.label_statistics`, combined in rank order)
    each pass over a rank's own rows. Beyond, every rank draws the same sample and runs the same
    k-means on it (rank 0's centres are broadcast, so that every rank holds the same bits),
    then labels its own rows. ``None`` for the ``"random"`` start and for streamed rows, which
    have no such form here (a start computed once serves them)."""
    if rows.streamed or method not in ("kmeans++", "kmeans"):
        return None
    config.validate(rows.num_data)
    local = _local_rows(rows)
    _check_data(config, local)
    k = config.components
    chosen = start_sample(rows.num_data, k, generator, local.device, sample_rows)
    if chosen is None:
        centers, _ = kmeans_plus_plus_rows(rows, k, generator=generator)
        if method == "kmeans":
            labels = lloyd_rows(rows, centers, tol=lloyd_tolerance_rows(rows)).labels
        else:
            labels = nearest_centers(local, centers)
    else:  # every rank holds every row (rows.x): the same sample, the same k-means
        sample = torch.index_select(rows.x, 0, chosen.to(rows.x.device)).to(local.device)
        centers, _ = _kmeans(sample, k, generator, method)
        if rows.group is not None:
            centers = rows.group.broadcast({"centers": centers} if rows.group.is_main else None,
                                           like=centers)["centers"]
        labels = nearest_centers(local, centers)
    return maximize(config, None, combine(rows.gather(label_statistics(config, local, labels))))


def init_params(config: GMMConfig, x: torch.Tensor,
                generator: torch.Generator | None = None) -> Params:
    """SVI's starting point: the k-means++ start, one of EM's (restarts vary the generator)."""
    return initialize(config, x, generator, "kmeans++")


def _em_initialize(config: GMMConfig, x: torch.Tensor, generator, method) -> Params:
    _refuse_prior(config)
    return initialize(config, x, generator, method)


def _em_initialize_rows(config: GMMConfig, rows, generator, method) -> Params | None:
    _refuse_prior(config)
    return initialize_rows(config, rows, generator, method)


def _refuse_prior(config: GMMConfig) -> None:
    if config.prior:
        raise InputError("EM here maximizes the likelihood and ignores priors; for the MAP "
                         "estimate under --prior use --inference svi, or drop --prior")
