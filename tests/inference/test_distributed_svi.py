"""Data-parallel SVI on ``torch.distributed`` (gloo on localhost, CPU only).

Two processes with ``B`` rows each take the steps one process takes with ``2B`` rows and the
same draws (and the same full-batch steps on half of the rows each); the ranks stay in sync
under a noisy (reparameterized) guide; a minibatch fit of two processes, or of one, killed with
SIGKILL and resumed ends bit for bit as an uninterrupted one; a checkpoint of another world
size is refused; a JIT-compiled ELBO takes each step's rows as an input. The workers are
spawned (``torch.multiprocessing``), each one joins a gloo group on a free port, and hands its
result back through a file of tensors.
"""

from __future__ import annotations

import dataclasses
import datetime
import faulthandler
import os
import signal
import socket
import time
import warnings
from pathlib import Path

import pyro
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from inference.catalog import get_model
from inference.runs import load_checkpoint
from inference.strategies.svi import build_guide
from inference.svi import fit_svi
from tests.worker_end import end_worker
from zoo.errors import InputError
from zoo.gmm import synthetic

WORLD = 2
TIMEOUT = 240  # seconds: any one group of workers, and gloo's own collectives
GMM_STEPS, GMM_BATCH = 50, 10  # rows per rank; one process alone takes 2 x GMM_BATCH


# --- the fits, the same in a worker and in the test process -----------------------------

def gmm_data() -> torch.Tensor:
    x, _, _ = synthetic(200, torch.Generator().manual_seed(0), dtype=torch.float64)
    return x


def ppca_data() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    z = torch.randn(120, 2, generator=g, dtype=torch.float64)
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    return z @ w + 0.3 * torch.randn(120, 4, generator=g, dtype=torch.float64)


def fit_gmm(batch_size: int | None, steps: int = GMM_STEPS, **options):
    """The mixture with its exact guide under ``TraceEnum_ELBO``: a deterministic ELBO, so the
    same rows give the same steps. Built as ``inference.strategies.svi`` builds a fit."""
    spec = get_model("gmm")
    x = gmm_data()
    config = spec.make_config(dim=2, components=3)
    seed = 3
    pyro.set_rng_seed(seed)
    init = spec.init_params(config, x, torch.Generator().manual_seed(seed))
    model = spec.make_model(config, init)
    guide = build_guide(spec, "exact", model, config, x, elbo="TraceEnum_ELBO")
    return fit_svi(model, guide, x, elbo="TraceEnum_ELBO",
                   steps=steps, lr=0.05, batch_size=batch_size, seed=seed, stop_tol=0.0,
                   **options)


def fit_ppca(steps: int, batch_size: int = 8, **options):
    """PPCA with the amortized Gaussian encoder under ``Trace_ELBO``: one reparameterized
    draw per row and step, from each rank's own stream."""
    spec = get_model("ppca")
    x = ppca_data()
    config = spec.make_config(dim=4, latent_dim=2)
    seed = 5
    pyro.set_rng_seed(seed)
    init = spec.init_params(config, x, torch.Generator().manual_seed(seed)) \
        if spec.init_params else None
    model = spec.make_model(config, init)
    guide = build_guide(spec, "amortized", model, config, x, elbo="Trace_ELBO")
    return fit_svi(model, guide, x, elbo="Trace_ELBO",
                   steps=steps, lr=0.02, batch_size=batch_size, seed=seed, stop_tol=0.0,
                   **options)


def outcome(result) -> dict:
    return {"params": {**result.params, **result.guide_params},
            "history": torch.tensor(result.history["elbo"], dtype=torch.float64),
            "world_size": result.info["world_size"], "backend": result.info["backend"],
            "jit_fallback": result.info["jit_fallback"]}


def job_gmm(out: Path, rank: int) -> dict:
    return {"batch": outcome(fit_gmm(GMM_BATCH)), "full": outcome(fit_gmm(None)),
            "ppca": outcome(fit_ppca(30)), "jit": outcome(fit_ppca(10, jit=True))}


def job_resume(out: Path, rank: int, *, steps: int, resume: bool) -> dict:
    result = fit_ppca(steps, checkpoint=out / "checkpoint.pt", checkpoint_every=10,
                      resume=resume)
    return {**outcome(result), "resumed_from_step": result.info["resumed_from_step"] or -1}


def job_refuse(out: Path, rank: int) -> dict:
    """Resume a checkpoint of one process (refused), then write one of two processes."""
    try:
        fit_gmm(GMM_BATCH, steps=10, checkpoint=out / "alone.pt", resume=True)
        message = ""
    except InputError as error:
        message = str(error)
    fit_gmm(GMM_BATCH, steps=5, checkpoint=out / "pair.pt")
    # the strategy's face: restarts under the group, a default batch cut to each rank's share
    from inference.strategies import fit
    from inference.strategies.svi import StochasticVariationalInference, SVIOptions

    spec = get_model("gmm")
    x = gmm_data()
    config = spec.make_config(dim=2, components=3)
    result = fit(spec, config, x, inference="svi", steps=8, batch_size=GMM_BATCH, restarts=2,
                 checkpoint=out / "strategy.pt", seed=1)
    settings = StochasticVariationalInference.settings(
        dataclasses.replace(spec, svi_defaults={"batch_size": 150}), config, x, SVIOptions(),
        "exact")
    return {"message": message, "history": torch.tensor(result.history["elbo"]),
            "world_size": result.info["world_size"], "best_restart": result.info["best_restart"],
            "default_batch": settings["batch_size"]}


JOBS = {"gmm": job_gmm, "resume": job_resume, "refuse": job_refuse}


def worker(rank: int, world: int, port: int, out: str, job: str, options: dict) -> None:
    """One rank: join the gloo group, run ``JOBS[job]``, save what it returns (whole, by a
    rename), leave the group and end. A fatal signal prints every thread's Python stack."""
    faulthandler.enable()
    torch.set_num_threads(1)
    pyro.enable_validation(True)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=TIMEOUT))
    try:
        result = JOBS[job](Path(out), rank, **options)
        partial = Path(out) / f".rank{rank}.pt.partial"
        torch.save(result, partial)
        os.replace(partial, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
    end_worker()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(out: Path, job: str, world: int = WORLD, **options) -> mp.ProcessContext:
    out.mkdir(parents=True, exist_ok=True)
    return mp.start_processes(worker, args=(world, free_port(), str(out), job, options),
                              nprocs=world, join=False, start_method="spawn")


def finish(context: mp.ProcessContext, out: Path) -> list[dict]:
    """Wait (at most TIMEOUT s) for the workers; every rank's result, in rank order.

    A worker that fails before its result is saved fails the test at once, with its traceback
    (``ProcessContext.join``). One killed by a signal after its result was saved whole died in
    the gloo group's teardown (a C++ abort in PyTorch's shutdown of the group's threads, seen
    once in CI, after the fit had ended): its result still counts, and a warning says so. The
    others are not stopped meanwhile, so that they save theirs."""
    results = [out / f"rank{r}.pt" for r in range(len(context.processes))]
    deadline = time.monotonic() + TIMEOUT
    try:
        while any(p.is_alive() for p in context.processes):
            if any(p.exitcode not in (None, 0) and not results[r].is_file()
                   for r, p in enumerate(context.processes)):
                context.join(timeout=0.1)  # raises, naming the worker and why it ended
            if time.monotonic() > deadline:
                pytest.fail(f"the workers ran past {TIMEOUT} s")
            time.sleep(0.05)
        for r, process in enumerate(context.processes):
            if process.exitcode == 0:
                continue
            if process.exitcode > 0 or not results[r].is_file():
                context.join(timeout=0.1)  # raises, with the worker's traceback if it had one
                pytest.fail(f"rank {r} ended with exit code {process.exitcode}")
            warnings.warn(f"rank {r} saved its result, then died of signal "
                          f"{-process.exitcode} while leaving the gloo group", stacklevel=2)
    finally:
        kill(context)
    return [torch.load(path, weights_only=True) for path in results]


def kill(context: mp.ProcessContext) -> None:
    for process in context.processes:
        if process.is_alive():
            os.kill(process.pid, signal.SIGKILL)
        process.join()


def run(out: Path, job: str, world: int = WORLD, **options) -> list[dict]:
    return finish(start(out, job, world, **options), out)


def assert_same(a: dict, b: dict, atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for name in a:
        if atol:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=atol, msg=name)
        else:
            assert torch.equal(a[name], b[name]), name


# --- the tests ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> list[dict]:
    """One spawn of two ranks for the GMM fits (minibatch and full batch) and PPCA."""
    return run(tmp_path_factory.mktemp("pair"), "gmm")


def test_two_processes_with_b_rows_take_the_steps_of_one_with_2b(pair):
    torch.set_default_dtype(torch.float32)
    alone = outcome(fit_gmm(WORLD * GMM_BATCH))
    assert (alone["world_size"], alone["backend"]) == (1, None)
    for rank in pair:
        got = rank["batch"]
        assert (got["world_size"], got["backend"]) == (WORLD, "gloo")
        assert len(got["history"]) == GMM_STEPS
        torch.testing.assert_close(got["history"], alone["history"], rtol=0, atol=1e-6)
        assert_same(got["params"], alone["params"], atol=1e-6)
        assert_same(got["params"], pair[0]["batch"]["params"])  # the ranks alike, bit for bit
        assert torch.equal(got["history"], pair[0]["batch"]["history"])
    # new rows every step, and parameters that moved far beyond the tolerance
    assert len(set(alone["history"].tolist())) == GMM_STEPS
    start = fit_gmm(WORLD * GMM_BATCH, steps=1).params["means"]
    assert float((alone["params"]["means"] - start).abs().max()) > 0.1


def test_two_processes_on_half_of_the_rows_each_take_the_full_batch_steps(pair):
    alone = outcome(fit_gmm(None))
    for rank in pair:
        torch.testing.assert_close(rank["full"]["history"], alone["history"], rtol=0,
                                   atol=1e-6)
        assert_same(rank["full"]["params"], alone["params"], atol=1e-6)


def test_a_reparameterized_guide_keeps_the_ranks_in_sync(pair):
    first, second = (rank["ppca"] for rank in pair)
    assert_same(first["params"], second["params"])
    assert torch.equal(first["history"], second["history"])
    # and the JIT-compiled estimator takes each step's rows as an input of its graph
    assert pair[0]["jit"]["jit_fallback"] is None
    assert_same(pair[0]["jit"]["params"], pair[1]["jit"]["params"])


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning",
                            "ignore:`torch.jit.trace` is deprecated:FutureWarning")
def test_jit_compiled_elbo_takes_new_rows_every_step():
    """Rows conditioned onto the plate are an input of the compiled graph, not constants: the
    JIT-compiled and the plain estimator agree step by step on a deterministic model."""
    x = gmm_data()[:60]

    def model(x=None, *, num_data=None, subsample_size=None):
        loc = pyro.param("loc", lambda: torch.zeros(2, dtype=x.dtype))
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
            pyro.sample("x", pyro.distributions.Normal(loc, 1.0).to_event(1), obs=x[idx])

    def guide(x=None, *, num_data=None, subsample_size=None):
        pass

    options = {"steps": 30, "lr": 0.1, "batch_size": 5, "stop_tol": 0.0}
    plain = fit_svi(model, guide, x, **options)
    compiled = fit_svi(model, guide, x, jit=True, **options)
    assert compiled.info["elbo_estimator"] == "JitTrace_ELBO"
    assert compiled.info["jit_fallback"] is None
    # Pyro's trace keeps the plate's N / B scale as a float32 constant: 1e-8 relative
    torch.testing.assert_close(torch.tensor(compiled.history["elbo"]),
                               torch.tensor(plain.history["elbo"]), rtol=1e-6, atol=0)
    assert len(set(plain.history["elbo"])) == 30  # new rows, a new ELBO, every step
    torch.testing.assert_close(compiled.params["loc"], plain.params["loc"], rtol=1e-6,
                               atol=1e-6)


@pytest.mark.parametrize("world", [WORLD, 1])
def test_a_killed_and_resumed_fit_with_minibatches_ends_bit_for_bit(tmp_path, world):
    """Two processes, and one (the process group of one is no group: the single-process
    path, with its own row draws): SIGKILL past step 20, resume, compare."""
    steps, kill_after = 300, 20
    straight = run(tmp_path / "straight", "resume", world, steps=steps, resume=False)

    killed = tmp_path / "killed"
    context = start(killed, "resume", world, steps=steps, resume=False)
    checkpoint = killed / "checkpoint.pt"
    deadline = time.monotonic() + TIMEOUT
    try:
        while True:
            assert time.monotonic() < deadline, f"no checkpoint past step {kill_after}"
            assert all(p.is_alive() for p in context.processes), "a worker ended early"
            if checkpoint.is_file() and int(load_checkpoint(checkpoint)["step"]) >= kill_after:
                break
            time.sleep(0.01)
    finally:
        kill(context)
    state = load_checkpoint(checkpoint)
    assert kill_after <= int(state["step"]) < steps, "killed too late to test a resume"
    assert int(state["world_size"]) == world and "row_rng" in state
    if world > 1:
        assert len(state["rank_streams"]) == world
        assert not torch.equal(state["rank_streams"][0]["rng"], state["rank_streams"][1]["rng"])
    assert not (killed / "rank0.pt").exists()

    resumed = run(killed, "resume", world, steps=steps, resume=True)
    for rank in range(world):
        assert resumed[rank]["world_size"] == world
        assert resumed[rank]["resumed_from_step"] == int(state["step"])
        assert torch.equal(resumed[rank]["history"], straight[rank]["history"])
        assert_same(resumed[rank]["params"], straight[rank]["params"])
    assert_same(straight[0]["params"], straight[-1]["params"])


def test_a_checkpoint_of_another_world_size_is_refused_and_restarts_run_alike(tmp_path):
    fit_gmm(GMM_BATCH, steps=5, checkpoint=tmp_path / "alone.pt")  # world size 1
    ranks = run(tmp_path, "refuse")
    for rank in ranks:  # two processes refuse the checkpoint of one
        assert "world size 1 (1 process)" in rank["message"], rank["message"]
        assert "this fit has world size 2" in rank["message"]
    with pytest.raises(InputError, match=r"world size 2 \(2 processes\).*world size 1"):
        fit_gmm(GMM_BATCH, steps=10, checkpoint=tmp_path / "pair.pt", resume=True)
    # through the strategy: two restarts, each with its checkpoint, alike on both ranks
    assert (tmp_path / "strategy.pt").is_file() and (tmp_path / "strategy-restart1.pt").is_file()
    assert ranks[0]["world_size"] == WORLD and len(ranks[0]["history"]) == 8
    assert torch.equal(ranks[0]["history"], ranks[1]["history"])
    assert ranks[0]["best_restart"] == ranks[1]["best_restart"]
    assert ranks[0]["default_batch"] == 100  # a default of 150 rows, cut to 200 // 2
