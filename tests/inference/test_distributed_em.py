"""EM and K-means past one process and past memory (gloo on localhost, CPU only).

- Two processes, each holding its shard of the rows, fit every EM model of the zoo (GMM with
  each covariance type, PPCA, FA, MPPCA, the Student-t mixture) to the single-process fit from
  the same start within 1e-10 (float64), and from the default start too (the GMM's computed
  data-parallel, the others' once, on rank 0, and broadcast); K-means and the yardstick
  (sharded and reduced) likewise. The GMM's data-parallel start (k-means++ seeds, Lloyd's
  iterations through an empty cluster, the M-step from the labels) is the one-process start.
- A fit streamed from a memory-mapped file ten times larger than its chunk equals the
  in-memory fit from the same start, and its peak anonymous memory is bounded by the chunk,
  not by the file (measured in a subprocess).
- ``torchrun --nproc-per-node 2 -m inference fit`` writes the run of a one-process fit, and
  its record says the world size and backend.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.exceptions import ConvergenceWarning

from inference.catalog import get_model
from inference.em import fit_em
from inference.evaluate import evaluate_fit
from inference.kmeans import kmeans, kmeans_rows
from inference.shards import Rows
from inference.strategies import fit as strategy_fit
from tests.worker_end import end_worker
from zoo.gmm_init import (
    initialize,
    initialize_rows,
    kmeans_plus_plus,
    kmeans_plus_plus_rows,
    lloyd,
    lloyd_rows,
    nearest_centers,
)

WORLD = 2
ROOT = Path(__file__).resolve().parents[2]
# (model, config options): every model with EM steps, the mixture with each covariance type
CASES = [("gmm", {"components": 3, "covariance_type": "full"}),
         ("gmm", {"components": 3, "covariance_type": "diag"}),
         ("gmm", {"components": 3, "covariance_type": "spherical"}),
         ("ppca", {"latent_dim": 2}), ("fa", {"latent_dim": 2}),
         ("mppca", {}), ("student-t-mixture", {})]


def case_data(name: str) -> torch.Tensor:
    spec = get_model(name)
    x, _, _ = spec.synthetic(3000, torch.Generator().manual_seed(7), torch.float64)
    return x


def single_fits(name: str, options: dict, start: dict | None):
    spec = get_model(name)
    x = case_data(name)
    config = spec.make_config(x.shape[1], **options)
    alone = Rows(x)  # one process whatever the environment
    given = fit_em(spec, config, alone, init=start, **PLAIN)
    default = fit_em(spec, config, alone, **DEFAULT)
    return given, default


# A fixed number of updates (tol=0), so that both fits take the same steps: where EM has
# converged, whether one more update gains anything is a question of rounding. PLAIN is EM's
# ascent itself; DEFAULT each model's own defaults (SQUAREM for PPCA and FA), stopped before
# that happens.
PLAIN = {"tol": 0.0, "max_iter": 60, "accelerate": False, "seed": 0}
DEFAULT = {"tol": 0.0, "max_iter": 6, "seed": 0}


def start_of(name: str, options: dict) -> dict:
    """A start away from the optimum (a few EM iterations from the default one)."""
    spec = get_model(name)
    x = case_data(name)
    config = spec.make_config(x.shape[1], **options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # two iterations, on purpose
        return fit_em(spec, config, Rows(x[:500]), max_iter=2, seed=1,
                      accelerate=False).params


def _worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=WORLD, timeout=datetime.timedelta(seconds=120))
    results = {}
    for i, (name, options) in enumerate(CASES):
        spec = get_model(name)
        x = case_data(name)
        config = spec.make_config(x.shape[1], **options)
        start = start_of(name, options)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            given = fit_em(spec, config, x, init=start, **PLAIN)
            default = fit_em(spec, config, x, **DEFAULT)
        results[f"{i}/given"] = given.params
        results[f"{i}/default"] = default.params
        results[f"{i}/info"] = {"world_size": torch.tensor(given.info["world_size"]),
                                "steps": torch.tensor(given.steps)}
    x = case_data("gmm")
    clusters = kmeans_rows(Rows(x, group=_group()), 3, seed=0, tol=0.0)
    results["kmeans"] = {"centers": clusters.centers,
                         "inertia": torch.tensor(clusters.inertia, dtype=torch.float64)}
    spec = get_model("gmm")
    config = spec.make_config(2, components=3)
    fitted = strategy_fit(spec, config, x[:2400], inference="em", seed=0)
    metrics = evaluate_fit(spec, config, fitted, x[:2400], x[2400:])
    results["metrics"] = {k: torch.tensor(metrics[k], dtype=torch.float64)
                          for k in ("train_log_likelihood", "test_log_likelihood")}
    results["kmeans_strategy"] = strategy_fit(spec, config, x, inference="kmeans",
                                              seed=0).params
    results["start"] = data_parallel_start(Rows(x, group=_group()))
    if rank == 0:
        torch.save(results, out)
    dist.barrier()
    dist.destroy_process_group()
    end_worker()


FAR_START = 6  # components of the start's case; its Lloyd run begins with one far centre
SAMPLE_ROWS = 400  # the sampled start's limit, below the case's 3000 rows


def data_parallel_start(rows) -> dict:
    """The GMM start's three steps on ``rows``: one tensor, or a rank's shard (:class:`Rows`)."""
    alone = isinstance(rows, torch.Tensor)
    x = rows if alone else rows.x
    config = get_model("gmm").make_config(x.shape[1], components=FAR_START)
    seeds = (kmeans_plus_plus if alone else kmeans_plus_plus_rows)(
        rows, FAR_START, generator=torch.Generator().manual_seed(4))
    run = (lloyd if alone else lloyd_rows)(rows, far_start(x), tol=0.0)
    params = (initialize if alone else initialize_rows)(
        config, rows, torch.Generator().manual_seed(5), "kmeans")
    # past its limit the start's k-means runs on a sample (every rank the same), and every
    # rank labels its own rows
    sampled = (initialize if alone else initialize_rows)(
        config, rows, torch.Generator().manual_seed(6), "kmeans", sample_rows=SAMPLE_ROWS)
    return {"seeds": seeds[0], "seed_rows": seeds[1], "lloyd": run.centers,
            "n_iter": torch.tensor(run.n_iter), "inertia": torch.tensor(run.inertia),
            **{f"start/{k}": v for k, v in params.items()},
            **{f"sampled/{k}": v for k, v in sampled.items()}}


def far_start(x: torch.Tensor) -> torch.Tensor:
    """Centres that leave a cluster empty at once (one far off) and take Lloyd many
    iterations (the others crowded into a corner of the data)."""
    centers = x[x[:, 0].argsort()[:FAR_START]].clone()
    centers[-1] = 1e3
    return centers


def _group():
    from inference import distributed
    return distributed.current()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist") / "results.pt"
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=True)


def _largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


@pytest.mark.parametrize("case", range(len(CASES)),
                         ids=[f"{n}-{o.get('covariance_type', '')}".rstrip("-")
                              for n, o in CASES])
def test_distributed_em_equals_single_process_em(two_processes, case):
    name, options = CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        given, default = single_fits(name, options, start_of(name, options))
    assert int(two_processes[f"{case}/info"]["world_size"]) == WORLD
    assert int(two_processes[f"{case}/info"]["steps"]) == given.steps
    difference = _largest_difference(two_processes[f"{case}/given"], given.params)
    assert difference < 1e-10, f"{name}: from the same start, {difference:.2e} apart"
    # the default start, computed once on rank 0 and broadcast, is the one-process start
    difference = _largest_difference(two_processes[f"{case}/default"], default.params)
    assert difference < 1e-10, f"{name}: from the default start, {difference:.2e} apart"


def test_distributed_kmeans_and_yardstick_equal_one_process(two_processes):
    x = case_data("gmm")
    alone = kmeans(x, 3, seed=0, tol=0.0)
    shared = two_processes["kmeans"]
    order = torch.cdist(alone.centers, shared["centers"]).argmin(1)
    assert torch.allclose(shared["centers"][order], alone.centers, atol=1e-10, rtol=0)
    assert abs(float(shared["inertia"]) - alone.inertia) < 1e-8 * alone.inertia
    spec = get_model("gmm")
    config = spec.make_config(2, components=3)
    fitted = strategy_fit(spec, config, x[:2400], inference="em", seed=0)
    metrics = evaluate_fit(spec, config, fitted, x[:2400], x[2400:])
    for key, value in two_processes["metrics"].items():
        assert abs(float(value) - metrics[key]) < 1e-10, key
    # K-means' M-step on labels, from statistics combined over the ranks
    params = strategy_fit(spec, config, Rows(x).tensor, inference="kmeans", seed=0).params
    assert _largest_difference(two_processes["kmeans_strategy"], params) < 1e-10


def test_data_parallel_gmm_start_equals_one_process_start(two_processes):
    x = case_data("gmm")
    alone, shared = data_parallel_start(x), two_processes["start"]
    assert int(nearest_centers(x, far_start(x)).bincount(minlength=FAR_START).min()) == 0
    assert int(shared["n_iter"]) == int(alone["n_iter"]) > 10  # many Lloyd iterations
    assert torch.equal(shared["seed_rows"], alone["seed_rows"])  # the same rows drawn
    for key in alone:
        difference = float((shared[key].double() - alone[key].double()).abs().max())
        assert difference < 1e-10 * max(1.0, float(alone[key].double().abs().max())), key


@pytest.mark.parametrize("name,options", [("gmm", {"components": 4}), ("ppca", {}),
                                          ("mppca", {}), ("student-t-mixture", {})])
def test_a_streamed_fit_equals_the_in_memory_fit(tmp_path, name, options):
    spec = get_model(name)
    x = case_data(name)
    np.save(tmp_path / "rows.npy", x.numpy())
    mapped = torch.from_numpy(np.load(tmp_path / "rows.npy", mmap_mode="c"))
    config = spec.make_config(x.shape[1], **options)
    start = start_of(name, options)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        streamed = fit_em(spec, config, Rows(mapped, chunk_rows=x.shape[0] // 10),
                          init=start, **PLAIN)
        in_memory = fit_em(spec, config, Rows(x), init=start, **PLAIN)
    assert streamed.info["chunk_rows"] == x.shape[0] // 10
    assert _largest_difference(streamed.params, in_memory.params) < 1e-10
    assert streamed.history["log_likelihood"][-1] == pytest.approx(
        in_memory.history["log_likelihood"][-1], abs=1e-12)


MEMORY_PROBE = textwrap.dedent("""
    import json, sys, threading, time
    import numpy as np, torch
    from inference.catalog import get_model
    from inference.em import fit_em
    from inference.shards import Rows
    # two iterations end unconverged, with scikit-learn's warning where it is imported (tens of
    # MiB of code, not data): imported before the measurement, which is of the E-steps' memory
    import sklearn.exceptions

    def anonymous():  # resident anonymous memory (bytes): the process's own, not the file's
        for line in open("/proc/self/status"):
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024

    peak = [0]
    def watch():
        while True:
            peak[0] = max(peak[0], anonymous())
            time.sleep(0.002)

    path, chunk, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    spec = get_model("gmm")
    x = torch.from_numpy(np.load(path, mmap_mode="c"))
    config = spec.make_config(x.shape[1], components=4, covariance_type="diag")
    start = {"weights": torch.full((4,), 0.25), "means": torch.randn(4, x.shape[1]),
             "scale": torch.ones(4, x.shape[1])}
    threading.Thread(target=watch, daemon=True).start()
    time.sleep(0.05)
    before = peak[0]
    rows = Rows(x, chunk_rows=chunk) if mode == "streamed" else Rows(x.clone())
    fit = fit_em(spec, config, rows, init=start, max_iter=2, tol=0.0)
    time.sleep(0.05)
    print(json.dumps({"growth": peak[0] - before, "ll": fit.history["log_likelihood"][-1]}))
""")


def test_a_streamed_fit_holds_a_chunk_not_the_file(tmp_path):
    """Peak anonymous memory (RssAnon, sampled every 2 ms) of two E-steps: in memory it grows
    with the file; streamed it is a few chunks' worth (the chunk, its quadratic features, the
    responsibilities) and the same for a file twice as large."""
    dim, chunk = 16, 65_536  # 4 MiB chunks
    generator = np.random.default_rng(0)
    script = tmp_path / "probe.py"
    script.write_text(MEMORY_PROBE)
    runs, sizes = {}, {}
    for rows in (1_600_000, 3_200_000):  # 98 MiB and 195 MiB of float32
        path = tmp_path / f"rows{rows}.npy"
        np.save(path, generator.standard_normal((rows, dim), dtype=np.float32))
        sizes[rows] = path.stat().st_size
        for mode in ("streamed", "in-memory") if rows == 1_600_000 else ("streamed",):
            done = subprocess.run([sys.executable, str(script), str(path), str(chunk), mode],
                                  capture_output=True, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONPATH": str(ROOT),
                                       "OMP_NUM_THREADS": "1"}, timeout=300, check=True)
            runs[mode, rows] = json.loads(done.stdout.strip().splitlines()[-1])
        path.unlink()
    size = sizes[1_600_000]
    in_memory = runs["in-memory", 1_600_000]["growth"]
    small, large = runs["streamed", 1_600_000]["growth"], runs["streamed", 3_200_000]["growth"]
    mib = 2**20
    print(f"anonymous memory: in memory {in_memory / mib:.1f} MiB; streamed {small / mib:.1f} "
          f"MiB ({size / mib:.0f} MiB file), {large / mib:.1f} MiB (twice the rows)")
    assert in_memory > size, f"the in-memory copy grew {in_memory / mib:.0f} MiB"
    assert max(small, large) < min(12 * chunk * dim * 4, size / 2), (  # 12 chunks' worth
        f"streamed: {small / mib:.1f} and {large / mib:.1f} MiB of anonymous memory for files "
        f"of {size / mib:.0f} and {sizes[3_200_000] / mib:.0f} MiB")
    assert large < 1.5 * small + 8 * mib, (  # twice the rows would be twice the memory
        f"streamed memory grew with the file: {small / mib:.1f} -> {large / mib:.1f} MiB")
    # float32 rows: one 1.6M-row GEMM (in memory) and 24 chunks' sums round differently
    assert runs["streamed", 1_600_000]["ll"] == pytest.approx(
        runs["in-memory", 1_600_000]["ll"], rel=1e-3)


def _lvm_zoo(*args, launcher=(sys.executable, "-m", "inference"), cwd=None):
    return subprocess.run([*launcher, *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)


def test_torchrun_fit_writes_the_one_process_run(tmp_path):
    x = case_data("gmm")
    np.save(tmp_path / "rows.npy", x.numpy())
    common = ("fit", "gmm", "--data", str(tmp_path / "rows.npy"), "--dtype", "float64",
              "--json", "--tol", "1e-10")
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc-per-node", str(WORLD), "-m", "inference")
    shared = _lvm_zoo(*common, "--out", str(tmp_path / "two"), launcher=torchrun)
    assert shared.returncode == 0, shared.stderr[-2000:]
    alone = _lvm_zoo(*common, "--out", str(tmp_path / "one"))
    assert alone.returncode == 0, alone.stderr[-2000:]
    record = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert (record["world_size"], record["backend"]) == (WORLD, "gloo")
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert record["train_log_likelihood"] == pytest.approx(one["train_log_likelihood"],
                                                           abs=1e-10)
    two_params = torch.load(tmp_path / "two" / "params.pt", weights_only=True)["params"]
    one_params = torch.load(tmp_path / "one" / "params.pt", weights_only=True)["params"]
    assert _largest_difference(two_params, one_params) < 1e-10
    # a fit stopped short of its tolerance warns once, not once a rank
    short = _lvm_zoo("fit", "gmm", "--data", str(tmp_path / "rows.npy"), "--max-iter", "2",
                     "--tol", "1e-300", "--no-figures", "--out", str(tmp_path / "short"),
                     launcher=torchrun)
    assert short.returncode == 0, short.stderr[-2000:]
    assert short.stderr.count("ConvergenceWarning: EM on gmm did not converge") == 1, \
        short.stderr[-2000:]
    # a streamed fit through the command line says so
    streamed = _lvm_zoo(*common, "--chunk-rows", "500", "--test-fraction", "0",
                        "--out", str(tmp_path / "streamed"))
    assert streamed.returncode == 0, streamed.stderr[-2000:]
    assert json.loads(streamed.stdout)["chunk_rows"] == 500


def test_other_commands_refuse_torchrun_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, "-m", "inference", "compare", "gmm"],
                          capture_output=True, text=True, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "WORLD_SIZE": "2"},
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and "runs in one process" in done.stderr


def test_streaming_refuses_what_it_cannot_stream(tmp_path):
    np.save(tmp_path / "f64.npy", np.zeros((10, 2)))
    np.save(tmp_path / "fortran.npy", np.asfortranarray(np.ones((10, 2), dtype=np.float32)))
    bad = np.ones((10, 2), dtype=np.float32)
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    for name, message in (("f64.npy", "use --dtype float64"), ("fortran.npy", "Fortran"),
                          ("nan.npy", "row 3")):
        done = _lvm_zoo("fit", "gmm", "--data", str(tmp_path / name), "--chunk-rows", "4",
                        "--out", str(tmp_path / f"run-{name}"))
        assert done.returncode == 2 and message in done.stderr, done.stderr
        assert "Traceback" not in done.stderr
