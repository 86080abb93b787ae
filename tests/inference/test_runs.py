"""Run directories: atomic files, parameters that load without executing code, and
`evaluate` reproducing a fit's metrics from the files alone."""

import json
import os

import pytest
import torch

from inference import api
from inference.data import DataRequest
from inference.runs import atomic_write, load_checkpoint, save_checkpoint
from tests.toy import TOY
from zoo.errors import InputError


def test_atomic_write_leaves_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "file.txt"
    atomic_write(path, lambda f: f.write(b"old"))

    def broken(f):
        f.write(b"half")
        raise RuntimeError("crash while writing")

    with pytest.raises(RuntimeError):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["file.txt"]  # no temporary file left behind


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_loading_never_unpickles_code(tmp_path):
    path = tmp_path / "params.pt"
    torch.save({"x": Evil()}, path)
    with pytest.raises(InputError, match="cannot be read as a tensor file") as refused:
        load_checkpoint(path)  # refused without running Evil's code
    assert "weights_only" not in str(refused.value)  # torch's advice to unpickle is not passed on
    save_checkpoint(path, {"x": torch.ones(2), "n": 3})
    assert load_checkpoint(path)["n"] == 3


def test_fit_is_in_memory_and_save_writes_the_run_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fitted = api.fit(TOY, data=DataRequest(standardize=True), steps=40)
    assert not (tmp_path / "runs").exists()  # fitting wrote nothing
    assert fitted.record["run_dir"] is None and fitted.result.steps <= 40
    run_dir = api.save(fitted, tmp_path / "run")
    assert fitted.record["run_dir"] is None  # saving writes; it changes nothing in memory
    assert json.loads((run_dir / "metrics.json").read_text())["run_dir"] == str(run_dir)
    again = api.evaluate(run_dir)
    for key in ("train_log_likelihood", "test_log_likelihood", "elbo", "gap", "n_train",
                "n_test", "log_likelihood_method"):
        assert again[key] == fitted.record[key], key
    assert {"run.json", "metrics.json", "params.pt", "history.json", "curves.png"} <= set(
        os.listdir(run_dir))


def test_same_seed_same_numbers():
    first = api.fit(TOY, data=DataRequest(standardize=True), steps=30, seed=3).record
    second = api.fit(TOY, data=DataRequest(standardize=True), steps=30, seed=3).record
    assert first["elbo"] == second["elbo"]
    assert first["train_log_likelihood"] == second["train_log_likelihood"]


def test_misspelled_and_mistyped_options_are_refused_before_any_work():
    with pytest.raises(InputError, match="--n-components does not apply"):
        api.fit("gmm", n_components=3)
    with pytest.raises(InputError, match="--steps does not apply to --inference em; it "
                                         "applies to --inference svi"):
        api.fit("gmm", inference="em", steps=10)
    with pytest.raises(InputError, match="--max-iter='10' must be int"):
        api.fit("gmm", inference="em", max_iter="10")
    with pytest.raises(InputError, match="--lr -1.0 must be positive"):
        api.fit("gmm", inference="svi", lr=-1)


def test_a_run_folder_of_a_user_model_never_runs_its_code(tmp_path):
    """In a new process, evaluating a run of a model from a user file needs that file named:
    the folder's model reference alone imports nothing."""
    import subprocess
    import sys
    from pathlib import Path

    model_file = tmp_path / "planted.py"
    marker = tmp_path / "ran"
    model_file.write_text(Path("tests/data/toy_model.py").read_text()
                          + f"\nopen({str(marker)!r}, 'w').close()\n")
    command = [sys.executable, "-m", "inference", "fit", f"{model_file}:toy", "--steps", "20",
               "--standardize", "--out", str(tmp_path / "run"), "--json"]
    assert subprocess.run(command, capture_output=True, text=True).returncode == 0
    marker.unlink()
    evaluate = [sys.executable, "-m", "inference", "evaluate", str(tmp_path / "run")]
    refused = subprocess.run(evaluate, capture_output=True, text=True)
    assert refused.returncode == 2 and "never runs code" in refused.stderr
    assert "Traceback" not in refused.stderr and not marker.exists()
    allowed = subprocess.run(evaluate + ["--model", str(model_file)], capture_output=True,
                             text=True)
    assert allowed.returncode == 0, allowed.stderr
    assert marker.exists()  # the file the user named, and only that, ran
