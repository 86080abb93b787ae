"""Run directories: atomic files, parameters that load without executing code, and
`evaluate` reproducing a fit's metrics from the files alone."""

import os
import pickle

import pytest
import torch

from inference import api
from inference.runs import atomic_write, load_checkpoint, save_checkpoint
from tests.toy import TOY


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
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(path)
    save_checkpoint(path, {"x": torch.ones(2), "n": 3})
    assert load_checkpoint(path)["n"] == 3


def test_evaluate_reproduces_the_metrics_from_the_files(tmp_path):
    record = api.fit(TOY, standardize=True, steps=40, out=tmp_path / "run")
    again = api.evaluate(tmp_path / "run")
    for key in ("train_log_likelihood", "test_log_likelihood", "elbo", "gap", "n_train",
                "n_test", "log_likelihood_method"):
        assert again[key] == record[key], key
    assert {"run.json", "metrics.json", "params.pt", "history.json", "curves.png"} <= set(
        os.listdir(tmp_path / "run"))


def test_same_seed_same_numbers(tmp_path):
    first = api.fit(TOY, standardize=True, steps=30, seed=3, out=tmp_path / "a")
    second = api.fit(TOY, standardize=True, steps=30, seed=3, out=tmp_path / "b")
    assert first["elbo"] == second["elbo"]
    assert first["train_log_likelihood"] == second["train_log_likelihood"]
