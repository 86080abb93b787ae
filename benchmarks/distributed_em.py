"""EM past one process and past memory: strong scaling on torch.distributed, streamed EM.

Strong scaling: the same EM fit (N rows, D=16, K=8, full covariances, float32, a fixed number
of EM iterations with tol=0 from the same start) on 1 process with 1 thread, on W processes
with 1 thread each (gloo on localhost; each process maps the same .npy and holds its shard),
and, for reference, on 1 process with W threads. The time is the EM loop alone, measured on
rank 0 between barriers; every run must end at the same log-likelihood.

Streamed: EM on a memory-mapped .npy of several GB, chunk by chunk (``--chunk-rows``): rows per
second per E-step pass, and the peak anonymous memory of the process. The file is written
first and sits in the page cache afterwards unless the machine is short of memory, so this is
the compute-bound throughput (a cold disk reads at its own speed).

    python benchmarks/distributed_em.py scaling --num-data 2000000 --processes 2
    python benchmarks/distributed_em.py streamed --gigabytes 4
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402

from inference.catalog import get_model  # noqa: E402
from inference.em import fit_em  # noqa: E402
from inference.shards import Rows  # noqa: E402


def make_file(path: Path, rows: int, dim: int, components: int, seed: int = 0) -> None:
    """A mixture of ``components`` Gaussians, written block by block (never all in memory)."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(scale=4.0, size=(components, dim)).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    block = 1 << 20
    for start in range(0, rows, block):
        n = min(block, rows - start)
        labels = generator.integers(components, size=n)
        out[start:start + n] = centres[labels] + generator.standard_normal(
            (n, dim), dtype=np.float32)
    out.flush()
    del out


def start_params(path: Path, components: int) -> dict:
    """The default start (k-means) on the first 100,000 rows: the same for every run."""
    spec = get_model("gmm")
    x = torch.from_numpy(np.load(path, mmap_mode="c")[:100_000].copy())
    config = spec.make_config(x.shape[1], components=components)
    return spec.em.init(config, x, torch.Generator().manual_seed(0), "kmeans")


def timed_fit(path: Path, components: int, iterations: int, start: dict, group=None,
              chunk_rows=None) -> tuple[float, float]:
    spec = get_model("gmm")
    x = torch.from_numpy(np.load(path, mmap_mode="c"))
    config = spec.make_config(x.shape[1], components=components)
    rows = Rows(x, group=group, chunk_rows=chunk_rows)  # a rank reads only its shard's pages
    if group is not None:
        dist.barrier()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a fixed number of iterations
        fit = fit_em(spec, config, rows, init=start, tol=0.0, max_iter=iterations,
                     accelerate=False)
    if group is not None:
        dist.barrier()
    return time.perf_counter() - began, fit.history["log_likelihood"][-1]


def _worker(rank, world, port, path, components, iterations, start, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(minutes=30))
    from inference import distributed
    seconds, ll = timed_fit(Path(path), components, iterations, start, distributed.current())
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds": seconds, "ll": ll}))
    dist.destroy_process_group()


def scaling(args) -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "rows.npy"
        make_file(path, args.num_data, args.dim, args.components)
        start = start_params(path, args.components)
        results = {}
        for _ in range(args.repeats):
            for label, threads in (("1 process x 1 thread", 1),
                                   (f"1 process x {args.processes} threads", args.processes)):
                torch.set_num_threads(threads)
                seconds, ll = timed_fit(path, args.components, args.iterations, start)
                results.setdefault(label, []).append((seconds, ll))
            out = Path(folder) / "out.json"
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            mp.spawn(_worker, args=(args.processes, port, str(path), args.components,
                                    args.iterations, start, str(out)), nprocs=args.processes)
            record = json.loads(out.read_text())
            results.setdefault(f"{args.processes} processes x 1 thread (gloo)", []).append(
                (record["seconds"], record["ll"]))
    base = min(s for s, _ in results["1 process x 1 thread"])
    print(f"N={args.num_data}, D={args.dim}, K={args.components}, full, float32, "
          f"{args.iterations} EM iterations, best of {args.repeats}")
    for label, runs in results.items():
        seconds = min(s for s, _ in runs)
        print(f"  {label:<34} {seconds:7.2f} s  {seconds / args.iterations * 1e3:7.1f} ms/iter"
              f"  speed-up {base / seconds:4.2f}x  log-lik {runs[0][1]:.6f}")


def _anonymous() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def streamed(args) -> None:
    rows = int(args.gigabytes * 2**30 / (args.dim * 4))
    folder = Path(args.folder or tempfile.mkdtemp())
    path = folder / "big.npy"
    began = time.perf_counter()
    make_file(path, rows, args.dim, args.components)
    written = time.perf_counter() - began
    start = start_params(path, args.components)
    peak = [0]

    def watch():
        while True:
            peak[0] = max(peak[0], _anonymous())
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.05)
    before = peak[0]
    torch.set_num_threads(args.threads)
    seconds, ll = timed_fit(path, args.components, args.iterations, start,
                            chunk_rows=args.chunk_rows)
    size = path.stat().st_size
    path.unlink()
    passes = args.iterations + 1  # each iteration's E-step and the final one
    print(f"{size / 2**30:.2f} GiB file ({rows} rows x {args.dim}, float32; written in "
          f"{written:.0f} s), K={args.components} full, chunks of {args.chunk_rows} rows, "
          f"{args.threads} thread(s)")
    rate = rows * passes / seconds / 1e6
    print(f"  {args.iterations} EM iterations in {seconds:.1f} s: {rate:.2f} M rows/s, "
          f"{size * passes / seconds / 2**20:.0f} MiB/s; peak anonymous memory "
          f"+{(peak[0] - before) / 2**20:.0f} MiB; log-lik {ll:.5f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    scale = sub.add_parser("scaling")
    scale.add_argument("--num-data", type=int, default=2_000_000)
    scale.add_argument("--processes", type=int, default=2)
    scale.add_argument("--iterations", type=int, default=10)
    scale.add_argument("--repeats", type=int, default=2)
    stream = sub.add_parser("streamed")
    stream.add_argument("--gigabytes", type=float, default=4.0)
    stream.add_argument("--chunk-rows", type=int, default=1 << 20)
    stream.add_argument("--iterations", type=int, default=3)
    stream.add_argument("--threads", type=int, default=2)
    stream.add_argument("--folder", help="where the file is written (default: a temp folder)")
    for p in (scale, stream):
        p.add_argument("--dim", type=int, default=16)
        p.add_argument("--components", type=int, default=8)
    args = parser.parse_args()
    scaling(args) if args.what == "scaling" else streamed(args)


if __name__ == "__main__":
    main()
