"""Signals are faults like any other: SIGINT and SIGTERM during a fit (SVI, EM, online EM; under
`fit` and under `compare`) save the fit at the next step boundary, say in one line where it is
and the command that resumes it, and exit 130 / 143 with no traceback; the command it names
then ends as the uninterrupted fit does (same parameters, history and record), and a second
signal while the checkpoint is written leaves it whole.

Every case is the real command line in a new process. To hit a chosen step without racing a
clock, the process signals itself when a chosen function is called the n-th time (a real
signal, delivered and handled as one from outside is); one case sends the signals from
outside, as a user or a scheduler does.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from inference import interrupt
from inference.runs import load_checkpoint, load_run, read_json, save_checkpoint
from tests.toy import TOY

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg",
       "PYTHONPATH": str(ROOT)}
TIMEOUT = 300
AT_ONCE = 4

# the process sends itself each signal of SIGNALS=[[target, call, name], ...] when TARGET
# (module:qualname) is called the call-th time, then runs the command line
SELF_SIGNAL = """
import importlib, json, os, signal, sys
def arm(target, call, name):
    module, _, qualname = target.partition(":")
    owner, _, attribute = qualname.rpartition(".")
    holder = importlib.import_module(module)
    holder = getattr(holder, owner) if owner else holder
    original, calls = getattr(holder, attribute), [0]
    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), getattr(signal, name))
        return original(*args, **kwargs)
    setattr(holder, attribute, wrapped)
for target, call, name in json.loads(sys.argv[1]):
    arm(target, call, name)
from inference.cli import main
sys.exit(main(sys.argv[2:]))
"""
# one process runs several command lines in a row (one start-up), and says how each ended
IN_A_ROW = """
import contextlib, io, json, sys
from inference.cli import main
ended = []
for argv in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    ended.append([status, out.getvalue(), err.getvalue()])
print(json.dumps(ended))
"""

SVI = ["fit", TOY, "--standardize", "--steps", "400", "--stop-tol", "0", "--json"]
EM = ["fit", "gmm", "--inference", "em", "--tol", "1e-12", "--json"]
ONLINE_EM = ["fit", "gmm", "--inference", "online-em", "--passes", "4", "--json"]
# name: (the command, where to signal it, on which call); SVI's checkpoints are timed (60 s),
# so every signal here comes before the first timed checkpoint
CASES = {
    "svi": (SVI, "inference.svi_step:SVIStep.step", 150),
    "em": (EM, "inference.em:_EMData.m_step", 4),
    "online-em": (ONLINE_EM, "inference.online_em:stepwise_update", 12),
}
SIGNALLED = [("svi", "SIGINT"), ("svi", "SIGTERM"), ("em", "SIGTERM"), ("online-em", "SIGINT")]


def command(argv: list, signals: list | None = None) -> list[str]:
    if signals is None:
        return [sys.executable, "-m", "inference", *map(str, argv)]
    return [sys.executable, "-c", SELF_SIGNAL, json.dumps(signals), *map(str, argv)]


def in_a_row(commands: dict[str, list]) -> dict[str, subprocess.CompletedProcess]:
    """Each ``name: argv`` (lvm-zoo's), one after another in one new process."""
    argvs = [list(map(str, argv)) for argv in commands.values()]
    done = run_all({"all": [sys.executable, "-c", IN_A_ROW, json.dumps(argvs)]})["all"]
    assert done.returncode == 0, done.stderr[-3000:]
    return {name: subprocess.CompletedProcess(argv, status, out, err) for name, argv,
            (status, out, err) in zip(commands, argvs, json.loads(done.stdout), strict=True)}


def run_all(commands: dict[str, list[str]]) -> dict[str, subprocess.CompletedProcess]:
    """Each ``name: command``, AT_ONCE at a time; their results by name."""
    pending, running, done = list(commands.items()), {}, {}
    while pending or running:
        while pending and len(running) < AT_ONCE:
            name, args = pending.pop(0)
            running[name] = subprocess.Popen(args, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True)
        name = next(iter(running))
        process = running.pop(name)
        out, err = process.communicate(timeout=TIMEOUT)
        done[name] = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    return done


def interrupted(done: subprocess.CompletedProcess, name: str) -> str:
    """Exit status 128 + the signal, one line on stderr saying so (beside a resumed fit's
    line saying where it resumed), no traceback; the line."""
    signum = getattr(signal, name)
    lines = [line for line in done.stderr.splitlines()
             if line.strip() and not line.startswith("lvm-zoo: resuming from step")]
    assert done.returncode == 128 + signum, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"lvm-zoo: interrupted ({name})"), lines[0]
    return lines[0]


def resume_argv(line: str) -> list[str]:
    """The command the line says resumes the fit, without its leading ``lvm-zoo``."""
    words = shlex.split(line.split("; resume with: ", 1)[1])
    assert words[0] == "lvm-zoo" and words[-1] == "--resume", words
    return words[1:]


def same_run(a: Path, b: Path) -> None:
    """Same parameters, history and record (but the times taken and the folder's name)."""
    _, params_a, guide_a, metrics_a = load_run(a)
    _, params_b, guide_b, metrics_b = load_run(b)
    for mine, theirs in ((params_a, params_b), (guide_a, guide_b)):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert torch.equal(mine[key], theirs[key]), key
    assert read_json(a / "history.json") == read_json(b / "history.json")
    assert metrics_a["train_log_likelihood"] is not None
    differ = {k for k in metrics_a.keys() & metrics_b.keys() if metrics_a[k] != metrics_b[k]}
    assert differ <= {"seconds", "yardstick_seconds", "run_dir"}, differ


@pytest.fixture(scope="module")
def signalled(tmp_path_factory) -> dict:
    """Each case of SIGNALLED interrupted, then resumed by the command its line names; each
    strategy's uninterrupted fit beside them."""
    root = tmp_path_factory.mktemp("signalled")
    first = {f"{name} {signame}": command([*CASES[name][0], "--out", root / f"{name}-{signame}"],
                                          [CASES[name][1:] + (signame,)])
             for name, signame in SIGNALLED}
    first["straight"] = [sys.executable, "-c", IN_A_ROW, json.dumps(
        [[*map(str, argv), "--out", str(root / f"straight-{name}")]
         for name, (argv, _, _) in CASES.items()])]
    done = run_all(first)
    assert done["straight"].returncode == 0, done["straight"].stderr[-3000:]
    straight = json.loads(done.pop("straight").stdout)
    assert [status for status, _, _ in straight] == [0] * len(CASES), straight
    lines = {key: interrupted(done[key], key.split()[1]) for key in done}
    states = {key: load_checkpoint(root / f"{key.replace(' ', '-')}" / "checkpoint.pt")
              for key in lines}
    resumed = in_a_row({key: resume_argv(line) for key, line in lines.items()})
    return {"root": root, "lines": lines, "states": states, "resumed": resumed}


@pytest.mark.parametrize("case", [f"{name} {signame}" for name, signame in SIGNALLED])
def test_a_signalled_fit_saves_says_how_to_resume_and_resumes_as_if_uninterrupted(
        signalled, case):
    name, signame = case.split()
    root, folder = signalled["root"], signalled["root"] / f"{name}-{signame}"
    line = signalled["lines"][case]
    assert f"checkpoint saved to {folder / 'checkpoint.pt'}" in line, line
    assert resume_argv(line)[-3:] == ["--out", str(folder), "--resume"]
    state = signalled["states"][case]
    if name == "svi":  # the step the signal came in was finished and saved, not the next
        assert int(state["step"]) == CASES[name][2]
        assert "at step 150 of 400" in line
    else:
        assert state["kind"] == name
    resumed = signalled["resumed"][case]
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr
    same_run(root / f"straight-{name}", folder)


def test_a_second_signal_while_the_checkpoint_is_written_leaves_it_whole(tmp_path):
    """The second SIGINT comes while the first one's checkpoint is being written: it waits
    for the file; the fit stops once, with one line, and resumes to the uninterrupted end."""
    out = tmp_path / "twice"
    done = run_all({"twice": command([*SVI, "--out", out], [
        ["inference.svi_step:SVIStep.step", 150, "SIGINT"],
        ["inference.svi_checkpoint:save_checkpoint", 1, "SIGINT"]])})
    line = interrupted(done["twice"], "SIGINT")
    assert int(load_checkpoint(out / "checkpoint.pt")["step"]) == 150
    ended = in_a_row({"resumed": resume_argv(line),
                      "straight": [*SVI, "--out", tmp_path / "straight"]})
    assert [e.returncode for e in ended.values()] == [0, 0], ended
    same_run(tmp_path / "straight", out)


def test_signals_from_outside_stop_a_fit_at_the_step_they_come_in(tmp_path):
    """SIGTERM sent by another process once the fit is stepping (its checkpoint of step 50 is
    there), then SIGINT twice at once to the resumed fit: each stops with a checkpoint of the
    step it was in, one line, no traceback; no temporary file is left."""
    out = tmp_path / "run"
    argv = ["fit", TOY, "--standardize", "--steps", "100000", "--stop-tol", "0",
            "--checkpoint-every", "50", "--out", out]

    def stopped_by(signals: list, args: list) -> tuple[str, int]:
        saved = out / "checkpoint.pt"  # written anew when the fit has taken 50 steps
        earlier = saved.stat().st_mtime_ns if saved.is_file() else None
        process = subprocess.Popen(command(args), cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline and (
                    not saved.is_file() or saved.stat().st_mtime_ns == earlier):
                assert process.poll() is None, process.communicate()[1]
                time.sleep(0.02)
            for signum in signals:
                process.send_signal(signum)
            _, stderr = process.communicate(timeout=TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
        done = subprocess.CompletedProcess(process.args, process.returncode, "", stderr)
        line = interrupted(done, signal.Signals(signals[0]).name)
        return line, int(load_checkpoint(out / "checkpoint.pt")["step"])

    line, step = stopped_by([signal.SIGTERM], argv)
    assert 0 < step < 100000 and f"at step {step} of 100000" in line
    assert resume_argv(line) == [*map(str, argv[:-2]), "--out", str(out), "--resume"]
    _, later = stopped_by([signal.SIGINT, signal.SIGINT], resume_argv(line))
    assert later >= step
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]


def test_an_interrupted_comparison_leaves_the_earlier_one_as_it_was(tmp_path):
    """`compare --overwrite` stopped by SIGTERM in its EM fit: one line, 143, and the earlier
    comparison's files byte for byte as they were."""
    out = tmp_path / "compare"
    argv = ["compare", "gmm", "--strategies", "em,kmeans", "--gap-rows", "0", "--draws", "2",
            "--out", out]
    first = in_a_row({"first": argv})["first"]
    assert first.returncode == 0, first.stderr[-3000:]
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    done = run_all({"again": command([*argv, "--overwrite", "--seeds", "2"],
                                     [["inference.em:_EMData.m_step", 3, "SIGTERM"]])})
    line = interrupted(done["again"], "SIGTERM")
    assert "nothing was saved to resume from" in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before


def test_a_write_defers_signals_until_the_file_is_whole(tmp_path):
    """In one process: a SIGTERM during a deferred write waits, the file is whole, then it
    acts; outside any loop a signal acts at once; a listening loop sees it as pending."""
    path = tmp_path / "state.pt"
    big = {"values": torch.arange(1_000_000, dtype=torch.float64)}
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.handled():
        with pytest.raises(interrupt.Interrupted) as stopped:
            with interrupt.deferred():
                os.kill(os.getpid(), signal.SIGTERM)
                save_checkpoint(path, big)
        assert stopped.value.status == 143
        assert torch.equal(load_checkpoint(path)["values"], big["values"])
        with interrupt.listening():
            os.kill(os.getpid(), signal.SIGINT)
            assert interrupt.pending() == signal.SIGINT
            assert interrupt.take() == signal.SIGINT
        with pytest.raises(interrupt.Interrupted) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert stopped.value.status == 130
    assert signal.getsignal(signal.SIGTERM) is before


def test_the_resume_command_keeps_the_options_and_drops_overwrite():
    argv = ["fit", "gmm", "--lr", "0.1", "--overwrite", "--out=old", "--json"]
    assert interrupt.resume_command(argv, Path("runs/new folder")) == (
        "lvm-zoo fit gmm --lr 0.1 --json --out 'runs/new folder' --resume")
    assert interrupt.resume_command(["compare", "gmm"], Path("x")) is None


# --- torchrun: a worker that dies or errs stops the others ------------------------------------

WORKER = """
import os, runpy, sys
from pathlib import Path
here = Path(sys.argv[1])
(here / f"pid-{os.environ['RANK']}").write_text(str(os.getpid()))
if os.environ["RANK"] == "1" and sys.argv[2] == "err":  # rank 1 fails on its 30th step
    import inference.svi_step
    from zoo.errors import InputError
    step, calls = inference.svi_step.SVIStep.step, [0]
    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == 30:
            raise InputError("a failure planted in rank 1")
        return step(*args, **kwargs)
    inference.svi_step.SVIStep.step = failing
sys.argv = ["lvm-zoo", "fit", "gmm", "--inference", "svi", "--data", str(here / "rows.npy"),
            "--dtype", "float64", "--out", str(here / "run"), "--steps", "100000",
            "--stop-tol", "0"]
runpy.run_module("inference", run_name="__main__")
"""


def torchrun(tmp_path: Path, fault: str) -> tuple[subprocess.Popen, Path]:
    import numpy as np

    np.save(tmp_path / "rows.npy", np.random.default_rng(0).normal(size=(400, 2)))
    (tmp_path / "worker.py").write_text(WORKER)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
         "2", str(tmp_path / "worker.py"), str(tmp_path), fault], cwd=tmp_path,
        env={**ENV, "LVM_ZOO_COLLECTIVE_TIMEOUT": "20"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    return process, tmp_path / "run"


def ours(stderr: str) -> list[str]:
    """The workers' own lines (torchrun's launcher reports failed workers its own way), after
    checking that no traceback of ours is among them."""
    assert not [line for line in stderr.splitlines() if line.strip().startswith("File") and any(
        str(ROOT / package) in line for package in ("inference", "zoo", "guides"))], stderr
    return [line for line in stderr.splitlines() if line.startswith("lvm-zoo:")]


def test_a_torchrun_worker_killed_with_sigkill_makes_the_other_exit_within_a_minute(tmp_path):
    process, run = torchrun(tmp_path, "kill")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (run / "settings.json").is_file() and time.monotonic() < deadline:
            assert process.poll() is None, process.communicate()[1][-3000:]
            time.sleep(0.1)
        time.sleep(2.0)  # stepping, the two ranks in their all-reduces
        os.kill(int((tmp_path / "pid-1").read_text()), signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = process.communicate(timeout=TIMEOUT)
        took = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert took < 60, took
    assert process.returncode != 0
    lines = ours(stderr)
    assert len(lines) == 1 and "rank 0 of 2" in lines[0], stderr[-3000:]
    assert not (run / "metrics.json").exists()


def test_a_torchrun_worker_that_errs_stops_the_other_with_its_error_shown_once(tmp_path):
    process, run = torchrun(tmp_path, "err")
    started = time.monotonic()
    try:
        _, stderr = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode != 0
    lines = ours(stderr)
    assert stderr.count("a failure planted in rank 1") == 1, stderr[-3000:]
    assert len([line for line in lines if "a failure planted in rank 1" in line]) == 1
    others = [line for line in lines if "planted" not in line]
    assert len(others) == 1 and "rank 0 of 2" in others[0], stderr[-3000:]
    assert time.monotonic() - started < TIMEOUT


def test_a_resume_under_another_optimization_is_refused_unless_told(tmp_path):
    """Each option that changes the optimization (learning rate, batch size, ELBO,
    particles) is refused on --resume with one line naming it and --resume-anyway, before any
    work; --resume-anyway continues."""
    import contextlib
    import io

    from inference import cli

    def lvm_zoo(*argv) -> tuple[int, str]:
        err = io.StringIO()
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            return cli.main([str(a) for a in argv]), err.getvalue()

    out = tmp_path / "run"
    argv = ["fit", TOY, "--standardize", "--stop-tol", "0", "--steps", "20", "--out", out]
    assert lvm_zoo(*argv)[0] == 0
    (out / "metrics.json").unlink()  # as if stopped after its last checkpoint
    for flag, value in (("--lr", "0.5"), ("--batch-size", "5"),
                        ("--elbo", "TraceMeanField_ELBO"), ("--num-particles", "2")):
        status, err = lvm_zoo(*argv, "--resume", flag, value)
        lines = err.strip().splitlines()
        assert status == 2 and len(lines) == 1, err
        assert f"{flag} default, not {value}" in lines[0] and "--resume-anyway" in lines[0]
    status, err = lvm_zoo(*argv, "--resume", "--resume-anyway", "--num-particles", "2")
    assert status == 0, err
    assert "resuming from step 20 of 20" in err or "had ended at step 20" in err
