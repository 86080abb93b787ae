"""One fit planned once: the plan checks everything before any data or work, the run folder
(``api.fit(..., out=DIR)`` as ``lvm-zoo fit --out``) locks, refuses, resumes and overwrites
without losing the earlier run, an evaluation that fails keeps the training, and the command
line loads only what a command uses."""

import dataclasses
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from inference import api, fitting
from inference.data import DataRequest
from inference.run_folder import EvaluationFailed
from zoo.errors import InputError

EM = {"inference": "em", "components": 2}
SVI = {"inference": "svi", "data": DataRequest("iris"), "latent_dim": 2, "steps": 30}
BAYES = "tests/data/bayes_models.py:normal-normal"


def _contents(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def test_a_plan_is_frozen_and_checks_the_folder_before_any_data(tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr(fitting, "load", lambda *a, **k: loads.append(a))
    settled = fitting.plan("ppca", inference="svi", latent_dim=2, seed=3)
    assert settled.guide == settled.spec.default_guide  # the default guide, picked once
    with pytest.raises(dataclasses.FrozenInstanceError):
        settled.seed = 4
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="is an existing file"):
        fitting.plan("gmm", out=tmp_path / "file", **EM)
    with pytest.raises(InputError, match="--iwae-samples 0 must be a positive integer"):
        fitting.plan("gmm", iwae_samples=0, **EM)
    with pytest.raises(InputError, match="give out=FOLDER too"):
        fitting.plan("gmm", overwrite=True, **EM)
    fitting.plan("gmm", out=tmp_path / "a" / "b", **EM)
    assert not (tmp_path / "a").exists()  # checked writable, then left as it was
    assert loads == []  # no data were loaded for any of it


def test_api_fit_into_a_folder_refuses_an_earlier_run_and_overwrites_when_asked(tmp_path):
    out = tmp_path / "run"
    first = api.fit("gmm", out=out, **EM)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["run_dir"] == str(out)
    assert metrics["train_log_likelihood"] == first.metrics["train_log_likelihood"]
    before = _contents(out)
    with pytest.raises(InputError, match="already holds a finished run"):
        api.fit("gmm", out=out, **EM)
    with pytest.raises(InputError, match="already holds a finished run"):
        api.save(first, out)
    assert _contents(out) == before
    api.fit("gmm", out=out, overwrite=True, seed=1, **EM)
    assert json.loads((out / "run.json").read_text())["seed"] == 1
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging, lock


def test_a_failed_overwrite_keeps_the_earlier_run_whole(tmp_path, monkeypatch):
    out = tmp_path / "run"
    api.fit("gmm", out=out, **EM)
    before = _contents(out)

    def full_disk(fitted, path):
        (path / "curves.png").write_bytes(b"half a figure")
        raise OSError(28, "No space left on device", str(path / "curves.png"))

    monkeypatch.setattr(fitting, "_figures", full_disk)
    with pytest.raises(OSError) as caught:
        api.fit("gmm", out=out, overwrite=True, seed=1, **EM)
    assert caught.value.filename == str(out / "curves.png")  # where it was to go
    assert _contents(out) == before  # the earlier run as it was, nothing of the new one
    assert sorted(p.name for p in out.iterdir()) == sorted(before)


def test_api_fit_is_refused_while_another_process_holds_the_folder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys
        from inference.runs import locked
        with locked({str(out)!r}):
            print("held", flush=True)
            sys.stdin.readline()
        """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"being written by another lvm-zoo process "
                                             f"\\(pid {holder.pid}\\)"):
            api.fit("gmm", out=out, **EM)
    finally:
        holder.communicate("\n", timeout=60)
    api.fit("gmm", out=out, **EM)  # free again


def test_api_fit_resumes_and_refuses_another_optimization_unless_told(tmp_path):
    out = tmp_path / "run"
    whole = api.fit("ppca", out=out, **SVI)
    (out / "metrics.json").unlink()  # as if killed after its last checkpoint
    with pytest.raises(InputError, match=r"--resume: .* --lr default, not 0.5.*--resume-anyway"):
        api.fit("ppca", out=out, resume=True, lr=0.5, **SVI)
    with pytest.raises(InputError, match="--resume continues the run"):
        api.fit("ppca", out=out, resume=True, overwrite=True, **SVI)
    resumed = api.fit("ppca", out=out, resume=True, **SVI)
    for name, value in whole.result.params.items():
        assert torch.equal(resumed.result.params[name], value), name
    assert resumed.metrics["elbo"] == whole.metrics["elbo"]
    (out / "metrics.json").unlink()
    anyway = api.fit("ppca", out=out, resume=True, resume_anyway=True, lr=0.5, **SVI)
    assert anyway.result.steps == whole.result.steps  # it continued from the last step


def test_an_evaluation_that_fails_keeps_the_training(tmp_path, monkeypatch):
    out = tmp_path / "run"

    def broken(*args, **kwargs):
        raise RuntimeError("shape '[1000, 1, 5]' is invalid\nmore")

    with monkeypatch.context() as patched:
        patched.setattr(fitting, "evaluate_fit", broken)
        with pytest.raises(EvaluationFailed) as caught:
            api.fit("gmm", out=out, **EM)
    assert caught.value.run_dir == out
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["evaluation_error"] == "RuntimeError: shape '[1000, 1, 5]' is invalid"
    assert "train_log_likelihood" not in metrics and metrics["steps"] > 0
    again = api.evaluate(out)  # the saved training, judged now
    assert again["train_log_likelihood"] == api.fit("gmm", **EM).metrics["train_log_likelihood"]


def test_the_command_line_says_an_evaluation_failed_in_one_line(tmp_path):
    program = textwrap.dedent("""
        import sys
        import inference.fitting
        def broken(*args, **kwargs):
            raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")
        inference.fitting.evaluate_fit = broken
        from inference.cli import main
        sys.exit(main(sys.argv[1:]))
        """)
    done = subprocess.run([sys.executable, "-c", program, "fit", "gmm", "--inference", "em",
                           "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "RuntimeError: mat1 and mat2" in lines[0]
    assert f"the trained fit is saved in {tmp_path / 'run'}" in lines[0]
    assert (tmp_path / "run" / "params.pt").is_file()


def test_a_bayesian_model_gives_every_row_to_the_posterior_by_default(tmp_path):
    rows = np.random.default_rng(0).normal(1.0, 0.7, size=(40, 1))
    np.savetxt(tmp_path / "x.csv", rows, delimiter=",")
    record = api.fit(BAYES, data=str(tmp_path / "x.csv"), steps=20).record
    assert record["n_train"] == 40 and record["n_test"] == 0 and record["test_fraction"] == 0.0
    asked = fitting.plan(BAYES, data=DataRequest(str(tmp_path / "x.csv"), test_fraction=0.25))
    assert asked.data.test_fraction == 0.25  # unless asked
    assert fitting.plan("gmm", **EM).data.test_fraction == 0.2
    assert "test_fraction" not in api.fit("gmm", **EM).record


def test_the_command_line_imports_only_what_a_command_uses():
    heavy = ("arviz", "matplotlib", "pandas", "sklearn", "inference.compare",
             "inference.posterior_export", "inference.figures", "inference.estimators_sklearn")
    program = ("import sys, inference.cli, inference.commands.fit; "
               f"print([m for m in {heavy!r} if m in sys.modules])")
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
