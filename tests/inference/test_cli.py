"""The command line: every subcommand answers --help, and bad input exits 2 with one clear line."""

import json
import subprocess
import sys

import numpy as np
import pytest

from inference import strategies
from inference.cli import main
from tests.toy import TOY


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_names_models_guides_inference_and_datasets(capsys):
    code, out, _ = run(capsys, "list", "--json")
    assert code == 0
    listing = json.loads(out)
    assert list(strategies.strategies()) == list(listing["inference"])
    assert listing["inference"]["em"]["options"] == ["n_init", "init", "tol", "max_iter",
                                                   "accelerate"]
    assert {"old-faithful", "iris", "digits", "mnist", "fashion-mnist", "frey-face"} <= set(
        listing["datasets"])
    assert "Trace_ELBO" in listing["elbo_estimators"]
    code, out, _ = run(capsys, "list")
    assert code == 0 and "Datasets:" in out


@pytest.mark.parametrize("argv", [[], ["fit"], ["compare"], ["evaluate"], ["list"],
                                  ["fit", TOY], ["compare", TOY]])
def test_every_help_works(capsys, argv):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--help"] if argv else ["--help"])
    assert stop.value.code == 0
    assert "usage: lvm-zoo" in capsys.readouterr().out


def test_model_options_come_from_its_config(capsys):
    with pytest.raises(SystemExit):
        main(["fit", TOY, "--help"])
    assert "--init-scale" in capsys.readouterr().out


def test_fit_json_prints_one_object_with_the_contract(capsys, tmp_path):
    code, out, err = run(capsys, "fit", TOY, "--standardize", "--steps", "30", "--out",
                         str(tmp_path / "run"), "--json")
    assert code == 0, err
    record = json.loads(out)  # exactly one JSON document on stdout
    for key in ("model", "guide", "inference", "data", "n_train", "n_test",
                "train_log_likelihood", "test_log_likelihood", "log_likelihood_method", "elbo",
                "seconds", "steps", "converged", "device", "seed", "run_dir"):
        assert key in record
    assert record["n_train"] + record["n_test"] == 272
    assert record["log_likelihood_method"] == "exact"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


BAD_INPUT = {
    "missing file": (lambda p: ["fit", TOY, "--data", str(p / "absent.csv")], "does not exist"),
    "unknown dataset": (lambda p: ["fit", TOY, "--data", "no-such-data"], "unknown dataset"),
    "unknown model": (lambda p: ["fit", "no-such-model"], "unknown model 'no-such-model'"),
    "misspelled model": (lambda p: ["fit", "gmn"], "unknown model 'gmn'; did you mean 'gmm'?"),
    "model file missing": (lambda p: ["fit", str(p / "none.py") + ":m"], "does not exist"),
    "non-numeric csv": (lambda p: ["fit", TOY, "--data", _write(p, "a.csv", "1,2\n3,x\n4,5\n")],
                        "not a number|non-numeric"),
    "nan": (lambda p: ["fit", TOY, "--data", _write(p, "n.csv", "1,2\nnan,3\n4,5\n")], "NaN"),
    "inf": (lambda p: ["fit", TOY, "--data", _write(p, "i.csv", "1,2\ninf,3\n4,5\n")], "inf"),
    "1-D data": (lambda p: ["fit", TOY, "--data", _npy(p, np.arange(5.0))], "2-D"),
    "empty data": (lambda p: ["fit", TOY, "--data", _npy(p, np.zeros((0, 3)))], "empty|no rows"),
    "zero steps": (lambda p: ["fit", TOY, "--steps", "0"], "--steps 0"),
    "negative batch": (lambda p: ["fit", TOY, "--batch-size", "-3"], "--batch-size -3"),
    "zero seeds": (lambda p: ["compare", TOY, "--seeds", "0"], "--seeds 0"),
    "test fraction 1": (lambda p: ["fit", TOY, "--test-fraction", "1"], "test-fraction"),
    "test fraction negative": (lambda p: ["fit", TOY, "--test-fraction", "-0.1"],
                               "test-fraction"),
    "not a run dir": (lambda p: ["evaluate", str(p)], "not a run directory"),
    "unknown guide": (lambda p: ["fit", TOY, "--guide", "nope"], "no guide 'nope'"),
    "inference that does not apply": (lambda p: ["fit", TOY, "--inference", "em"],
                                      "does not apply"),
}


def _npy(tmp_path, array):
    path = tmp_path / "data.npy"
    np.save(path, array)
    return str(path)


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_exits_2_with_a_message_naming_it(capsys, tmp_path, case):
    make_argv, pattern = BAD_INPUT[case]
    code, out, err = run(capsys, *make_argv(tmp_path))
    assert code == 2
    assert err.startswith("lvm-zoo: error: ") and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err
    import re
    assert re.search(pattern, err), err


def test_installed_entry_point_exits_2_without_traceback(tmp_path):
    done = subprocess.run([sys.executable, "-m", "inference", "fit", "no-such-model"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "unknown model" in done.stderr


def test_sample_and_predict_use_a_saved_run(capsys, tmp_path, monkeypatch):
    import csv

    run = tmp_path / "run"
    assert main(["fit", "gmm", "--components", "2", "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # sample and predict write new files here, not into the run
    assert main(["sample", str(run), "-n", "7", "--seed", "3"]) == 0
    with open(tmp_path / "samples.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 7 and set(rows[0]) == {"eruptions", "waiting", "component"}
    assert main(["predict", str(run), "--data", "old-faithful"]) == 0
    with open(tmp_path / "predictions.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 272  # every row of the file, train and test
    assert {p["split"] for p in predictions} == {"new"}
    assert not (run / "samples.csv").exists() and not (run / "predictions.csv").exists()
    probabilities = [float(p["p_component_0"]) + float(p["p_component_1"]) for p in predictions]
    assert all(abs(p - 1) < 1e-6 for p in probabilities)
    assert main(["sample", str(run), "-n", "0"]) == 2
    assert "-n 0 must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["fit", "gmm", "--n-components", "3"], "takes no --n-components 3; did you mean "
                                            "--components?"),
    (["fit", "gmm", "--stepz", "5"], "did you mean --steps?"),
    (["fit", "gmm", "--inference", "bogus"], "invalid choice: 'bogus'"),
    (["compare"], "the following arguments are required: model"),
])
def test_command_line_mistakes_get_one_line_and_exit_2(capsys, argv, words):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and words in err
    assert len(err.strip().splitlines()) == 1 and "usage:" not in err


def test_a_failed_fit_leaves_no_empty_run_folder(capsys, tmp_path, monkeypatch):
    """A typo in the data name fails before any work: no runs/<...> folder is left behind;
    a folder the user named and that already existed is kept as it was."""
    monkeypatch.chdir(tmp_path)
    assert main(["fit", "gmm", "--data", "no-such-data"]) == 2
    assert not (tmp_path / "runs").exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["fit", "gmm", "--data", "no-such-data", "--out", str(mine)]) == 2
    assert mine.is_dir() and not any(mine.iterdir())
    assert "no-such-data" in capsys.readouterr().err
