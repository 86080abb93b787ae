"""SVI under faults: a fit killed with SIGKILL and resumed ends bit for bit as an uninterrupted
one (one restart and three), ``--resume`` without a checkpoint is one line, a fit whose ELBO
collapses late returns its best window's parameters (and a resume keeps them), a non-finite
gradient stops before the bad update with the last good checkpoint on disk, a resume mid-epoch
redraws the same dynamic binarization, takes the learning rate it is given and refuses another
seed.

The fault tests run the real command line (``python -m inference fit``) in subprocesses, each
one bounded by :data:`TIMEOUT` seconds, so nothing here can hang.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import pytest
import torch

from inference.catalog import get_model
from inference.runs import load_checkpoint, load_run, read_json
from inference.strategies.svi import restart_checkpoint
from inference.svi import TrainingDiverged, fit_svi
from tests.toy import TOY
from zoo.errors import InputError

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 60  # seconds, for any one subprocess
STEPS, EVERY, KILL_AFTER = 600, 50, 150
# one thread per process: the tiny model is fastest so, and two fits side by side on a small
# machine do not fight over cores
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "inference", "fit", TOY, "--standardize",
            "--steps", str(STEPS), "--stop-tol", "0", "--checkpoint-every", str(EVERY),
            "--json", "--out", str(out), *extra]


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> tuple[str, str]:
    """Wait (at most TIMEOUT s) for ``process`` to end well; its stdout and stderr."""
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail(f"{' '.join(process.args)} ran past {TIMEOUT} s")
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def kill_when_past(process: subprocess.Popen, checkpoint: Path, step: int) -> dict:
    """SIGKILL ``process`` once ``checkpoint`` holds a step past ``step``; the state it left."""
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _, stderr = process.communicate()
            pytest.fail(f"the fit ended (status {process.returncode}) before it could be "
                        f"killed past step {step} of {checkpoint.name}: {stderr[-2000:]}")
        if checkpoint.is_file() and int(load_checkpoint(checkpoint)["step"]) > step:
            process.send_signal(signal.SIGKILL)
            process.communicate(timeout=TIMEOUT)
            assert process.returncode == -signal.SIGKILL
            state = load_checkpoint(checkpoint)
            assert step < int(state["step"]) < STEPS, "killed too late to test a resume"
            return state
        time.sleep(0.02)
    process.kill()
    process.communicate()
    pytest.fail(f"{checkpoint} held no step past {step} within {TIMEOUT} s")


def assert_same_run(a: Path, b: Path) -> None:
    _, params_a, guide_a, metrics_a = load_run(a)
    _, params_b, guide_b, metrics_b = load_run(b)
    assert params_a.keys() == params_b.keys() and guide_a.keys() == guide_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    for name in guide_a:
        assert torch.equal(guide_a[name], guide_b[name]), name
    assert read_json(a / "history.json") == read_json(b / "history.json")
    assert metrics_a["train_log_likelihood"] == metrics_b["train_log_likelihood"]
    assert metrics_a["steps"] == metrics_b["steps"] == STEPS


@pytest.mark.parametrize("restarts", [1, 3])
def test_a_killed_and_resumed_fit_ends_bit_for_bit_as_an_uninterrupted_one(tmp_path, restarts):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    extra = ("--restarts", str(restarts)) if restarts > 1 else ()
    victim = 1 if restarts > 1 else 0  # kill during the second restart of three
    processes = [start(command(straight, *extra)),  # side by side with the faulty one
                 start(command(killed, *extra))]
    try:
        state = kill_when_past(processes[1], restart_checkpoint(killed / "checkpoint.pt",
                                                                 victim), KILL_AFTER)
        assert not (killed / "metrics.json").exists()
        processes.append(start(command(killed, *extra, "--resume")))
        stdout, stderr = finish(processes[2])
        finish(processes[0])
    finally:  # nothing outlives a failed test
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.communicate()

    assert_same_run(straight, killed)
    record = json.loads(stdout)
    assert record["seconds"] >= float(state["seconds"])  # the time before the kill counts
    checkpoint = restart_checkpoint(killed / "checkpoint.pt", victim)
    who = f" restart {victim}" if restarts > 1 else ""
    assert (f"lvm-zoo: resuming{who} from step {int(state['step'])} of {STEPS} "
            f"(checkpoint {checkpoint})") in stderr
    info = read_json(killed / "run.json")["info"]
    if restarts == 1:
        assert info["resumed_from_step"] == int(state["step"])
    else:  # restart 0 had finished and is reused; restart 2 had not begun
        assert "lvm-zoo: restart 0 had ended at step" in stderr
        assert info["restart_resumed_from_step"] == [STEPS, int(state["step"]), None]
        assert read_json(straight / "run.json")["info"]["restart_resumed_from_step"] == [
            None, None, None]


def test_resume_without_a_checkpoint_is_one_line_and_status_2(tmp_path):
    process = start(command(tmp_path / "empty", "--resume"))
    try:
        stdout, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        process.kill()
    assert process.returncode == 2
    assert stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: error: --resume"), stderr
    assert "no checkpoint" in lines[0] and "Traceback" not in stderr


# --- a fit that collapses late, in process -----------------------------------------------

CLIFF = 5.025  # between two of the parameter's positions, lr = 0.05 apart


def cliff(theta: torch.Tensor) -> torch.Tensor:
    """The ELBO per datapoint: it rises with ``theta`` up to a cliff; beyond it lies a worse
    basin (optimum -20 at 7). Adam's steps of ``lr`` climb to the cliff and jump over it,
    as a too-large learning rate carries a fit out of a good optimum into a worse one."""
    return torch.where(theta < CLIFF, theta, -20.0 - (theta - 7.0) ** 2)


def cliff_model(x=None, *, num_data=None, subsample_size=None):
    theta = pyro.param("theta", lambda: torch.zeros((), dtype=torch.float64))
    num_data = x.shape[0] if x is not None else num_data
    pyro.factor("elbo", num_data * cliff(theta))


def no_guide(x=None, *, num_data=None, subsample_size=None):
    pass


def test_a_late_collapse_returns_the_best_windows_parameters(tmp_path):
    x = torch.zeros(10, 1, dtype=torch.float64)
    options = {"steps": 300, "lr": 0.05, "stop_tol": 0.0, "stop_window": 20}
    result = fit_svi(cliff_model, no_guide, x, **options)
    history = result.history["elbo"]
    final_window = sum(history[-20:]) / 20
    best = result.info["best_step"]
    assert result.info["kept"] == "best" and result.steps == 300
    assert best == 100  # theta ~ 5 after 100 steps of 0.05: the window 80..100 is the best
    assert result.info["collapsed_at"] == 120  # the window 100..120 jumped over the cliff
    assert result.info["best_window_elbo"] == pytest.approx(sum(history[80:100]) / 20)
    assert result.info["final_window_elbo"] == pytest.approx(final_window)
    # the parameters returned are those after step 100, their ELBO far above the final one's
    theta = result.params["theta"]
    assert abs(float(theta) - 5.0) < 0.05
    assert float(cliff(theta)) > result.info["best_window_elbo"] > final_window + 20
    assert not result.converged  # whatever the stopping rule says, the fit left this state

    # the same fit through its checkpoint: interrupted at step 150, resumed, it keeps the best
    path = tmp_path / "checkpoint.pt"
    fit_svi(cliff_model, no_guide, x, **{**options, "steps": 150}, checkpoint=path)
    assert int(load_checkpoint(path)["best_step"]) == 100
    resumed = fit_svi(cliff_model, no_guide, x, **options, checkpoint=path, resume=True)
    assert resumed.history["elbo"] == history
    assert torch.equal(resumed.params["theta"], theta)
    assert {k: resumed.info[k] for k in ("kept", "best_step", "collapsed_at")} == {
        "kept": "best", "best_step": 100, "collapsed_at": 120}
    assert resumed.info["resumed_from_step"] == 150


def test_a_fit_that_only_climbs_keeps_its_last_parameters():
    x = torch.zeros(10, 1, dtype=torch.float64)

    def climb(x=None, *, num_data=None, subsample_size=None):
        theta = pyro.param("theta", lambda: torch.zeros((), dtype=torch.float64))
        pyro.factor("elbo", x.shape[0] * -(theta - 3.0) ** 2)

    result = fit_svi(climb, no_guide, x, steps=300, lr=0.05, stop_tol=0.0, stop_window=20)
    assert result.info["kept"] == "last"
    assert float(result.params["theta"]) == pytest.approx(3.0, abs=0.05)


# --- a non-finite gradient, in process ----------------------------------------------------

def kink_model(x=None, *, num_data=None, subsample_size=None):
    """A finite loss whose gradient is NaN whenever the minibatch holds the zero row: the
    derivative of sqrt(u^2) at u = 0."""
    theta = pyro.param("theta", lambda: torch.ones((), dtype=x.dtype))
    with pyro.plate("data", x.shape[0], subsample_size=subsample_size) as idx:
        u = x[idx, 0] * theta
        pyro.factor("kink", -((u * u).sqrt()))
        pyro.sample("x", dist.Normal(theta, 1.0).expand([len(idx)]), obs=x[idx, 1])


def test_a_nan_gradient_stops_before_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
    x = torch.cat([torch.full((40, 1), 0.5), torch.randn(40, 1,
                   generator=torch.Generator().manual_seed(0))], 1)
    x[17, 0] = 0.0
    path = tmp_path / "checkpoint.pt"
    with pytest.raises(TrainingDiverged) as raised:
        fit_svi(kink_model, no_guide, x, steps=500, lr=0.05, batch_size=4, seed=1,
                checkpoint=path, checkpoint_every=1, stop_tol=0.0)
    message = str(raised.value)
    found = re.search(r"the gradient of theta became non-finite at step (\d+) of the fit;",
                      message)
    assert found, message
    bad_step = int(found.group(1))
    assert bad_step > 1  # the zero row was drawn after some good steps
    state = load_checkpoint(path)
    assert int(state["step"]) == bad_step - 1  # saved before the bad update, never after
    assert f"the last good checkpoint is {path} (step {bad_step - 1}," in message
    assert all(torch.isfinite(v).all() for v in state["params"].values())
    assert torch.isfinite(state["history"]).all() and len(state["history"]) == bad_step - 1


# --- what a resume takes from the checkpoint, and what from the call ----------------------

def test_a_resume_mid_epoch_redraws_the_same_dynamic_binarization(tmp_path):
    spec = get_model(TOY)
    config = spec.make_config(dim=2)
    x = torch.rand(40, 2, generator=torch.Generator().manual_seed(0))
    options = {"steps": 40, "lr": 0.05, "batch_size": 10, "seed": 3, "binarize": "dynamic"}

    def run(**extra):
        pyro.set_rng_seed(3)
        model = spec.make_model(config)
        return fit_svi(model, spec.guides["amortized"](model, config), x,
                       **{**options, **extra})

    straight = run()
    path = tmp_path / "checkpoint.pt"
    run(steps=18, checkpoint=path)  # stopped in the middle of the fifth epoch of 4 steps
    resumed = run(checkpoint=path, resume=True)
    assert resumed.history["elbo"] == straight.history["elbo"]
    for name, value in {**straight.params, **straight.guide_params}.items():
        assert torch.equal(value, {**resumed.params, **resumed.guide_params}[name]), name


def test_a_resume_takes_the_learning_rate_it_is_given_and_refuses_another_seed(tmp_path):
    x = torch.zeros(10, 1, dtype=torch.float64)
    options = {"stop_tol": 0.0, "stop_window": 20, "lr": 0.05}
    path = tmp_path / "checkpoint.pt"
    fit_svi(cliff_model, no_guide, x, steps=20, checkpoint=path, **options)
    # Adam's steps on the constant slope are the learning rate: 20 x 0.05, then 20 x 0.01
    slower = fit_svi(cliff_model, no_guide, x, steps=40, checkpoint=path, resume=True,
                     **{**options, "lr": 0.01})
    assert float(slower.params["theta"]) == pytest.approx(1.0 + 20 * 0.01, abs=1e-3)
    with pytest.raises(InputError, match="seed 0, not 1; resume with the same --seed"):
        fit_svi(cliff_model, no_guide, x, steps=40, checkpoint=path, resume=True, seed=1,
                **options)


def test_a_checkpoint_of_another_model_size_is_refused_by_name(tmp_path):
    """A checkpoint written for latent_dim 2, resumed with latent_dim 3 (no run.json to
    compare against): one InputError naming the parameter and both shapes."""
    from inference.catalog import get_model
    from inference.strategies import fit
    from zoo.errors import InputError

    spec = get_model("ppca")
    x = torch.randn(80, 5, generator=torch.Generator().manual_seed(0))
    path = tmp_path / "checkpoint.pt"
    fit(spec, spec.make_config(dim=5, latent_dim=2), x, inference="svi", steps=5,
        checkpoint=path)
    with pytest.raises(InputError, match="other shapes: .*weight"):
        fit(spec, spec.make_config(dim=5, latent_dim=3), x, inference="svi", steps=10,
            checkpoint=path, resume=True)


def climb(x=None, *, num_data=None, subsample_size=None):
    """ELBO per datapoint -(theta - 3)² with a noise term, so that Adam wanders at the top."""
    theta = pyro.param("theta", lambda: torch.zeros((), dtype=torch.float64))
    wobble = pyro.sample("wobble", dist.Normal(torch.zeros((), dtype=torch.float64), 1.0))
    pyro.factor("elbo", x.shape[0] * -(theta - 3.0 + 0.1 * wobble) ** 2)


def test_the_levels_resume_bit_for_bit_and_return_the_average(tmp_path):
    """The schedule's phases (inference.svi_schedule) cross a checkpoint: the resumed fit
    steps down, cuts Adam's stale memory and averages exactly as the uninterrupted one."""
    x = torch.zeros(10, 1, dtype=torch.float64)
    options = {"steps": 2000, "lr": 0.05, "stop_window": 20, "stop_tol": 1e-3}
    straight = fit_svi(climb, no_guide, x, **options)
    assert straight.info["kept"] == "average" and straight.info["lr_levels"] == 1
    assert straight.converged and straight.steps < 2000
    assert float(straight.params["theta"]) == pytest.approx(3.0, abs=0.02)
    path = tmp_path / "checkpoint.pt"
    fit_svi(climb, no_guide, x, **{**options, "steps": straight.steps // 2 + 7},
            checkpoint=path)
    resumed = fit_svi(climb, no_guide, x, **options, checkpoint=path, resume=True)
    assert resumed.history["elbo"] == straight.history["elbo"]
    assert torch.equal(resumed.params["theta"], straight.params["theta"])
    assert {k: resumed.info[k] for k in ("lr_levels", "averaged_steps", "kept")} == {
        k: straight.info[k] for k in ("lr_levels", "averaged_steps", "kept")}
