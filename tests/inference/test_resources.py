"""Sizes are checked before work (``zoo.resources``): a request that cannot fit is refused
with the estimate and the limit in one line, exit 2, before anything is allocated, trained or
written; and ``sample`` / ``predict`` write only a file of their own, never one of the run's
or any file that exists, unless told to (``--overwrite``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import zoo.resources as resources
from inference import fitting
from inference.cli import main
from inference.estimators_sklearn.commands import predict_run, sample_run
from zoo.errors import InputError
from zoo.resources import (
    MAX_FITS,
    check_count,
    check_disk,
    check_draws,
    check_importance_samples,
    human,
    memory_limit,
)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("runs")
    folders = {"gmm": root / "gmm", "dglvm": root / "dglvm"}
    fitting.fit("gmm", inference="em", out=folders["gmm"], figures=False)
    fitting.fit("dglvm", data="iris", hidden=(8,), latent_dim=2, steps=5, iwae_samples=4,
                batch_size=32,
                out=folders["dglvm"], figures=False)
    return folders


def contents(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def run_main(capsys, *argv) -> subprocess.CompletedProcess:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["lvm-zoo", *argv], code, out, err)


def refused(done: subprocess.CompletedProcess, *words: str) -> str:
    lines = [line for line in done.stderr.splitlines() if line.strip()
             and "Warning" not in line and not line.startswith("  warnings.warn")]
    assert done.returncode == 2, (done.args, done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 1 and lines[0].startswith("lvm-zoo: error: "), done.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


# --- the checks, at their boundary ------------------------------------------------------------


def test_importance_samples_are_refused_exactly_past_the_limit(monkeypatch):
    monkeypatch.setattr(resources, "memory_limit", lambda: 8 * 1000 * 50)
    check_importance_samples(1000, 50)  # (K, N) float64 log-weights: exactly the limit
    with pytest.raises(InputError, match=r"--iwae-samples 1,001 on 50 rows: about 391 KiB "
                                         r"of memory needed, more than the 391 KiB"):
        check_importance_samples(1001, 50)
    for bad in (0, -5, True, 2.5, "1000"):
        with pytest.raises(InputError, match="must be a positive integer"):
            check_importance_samples(bad, 1)


def test_draws_disk_and_counts_are_refused_past_their_limits(monkeypatch, tmp_path):
    monkeypatch.setattr(resources, "memory_limit", lambda: 2 * 100 * 3 * 8)
    check_draws(100, 3)
    with pytest.raises(InputError, match="-n 101 draws of 3 numbers"):
        check_draws(101, 3)
    with pytest.raises(InputError, match="positive number of draws"):
        check_draws(0, 3)
    check_count("fits", MAX_FITS, MAX_FITS, "fewer")
    with pytest.raises(InputError, match=f"fits: 10,001, more than the limit of {MAX_FITS:,}"):
        check_count("fits", MAX_FITS + 1, MAX_FITS, "fewer")
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(resources.shutil, "disk_usage",
                        lambda folder: usage._replace(free=3 * 1024**2))
    check_disk("a file", 3 * 1024**2, tmp_path / "not" / "yet", "write less")
    with pytest.raises(InputError, match=r"a file: about 3 MiB to write, more than the 3 MiB "
                                         f"free in {tmp_path}; write less"):
        check_disk("a file", 3 * 1024**2 + 1, tmp_path / "not" / "yet", "write less")


def test_human_sizes_against_their_definition():
    assert human(512) == "512 B"
    assert human(1536) == "1.5 KiB"
    assert human(8 * 10**12) == f"{8 * 10**12 / 1024**4:.3g} TiB"


# --- the commands refuse before work ----------------------------------------------------------


def test_sample_of_a_billion_rows_is_refused_with_the_estimate_and_the_limit(capsys, runs,
                                                                            tmp_path):
    before = contents(runs["gmm"])
    out = tmp_path / "s.csv"
    estimate = human(2 * 10**9 * (2 + 1) * 8)  # draw + float64 copy of (x1, x2, component)
    refused(run_main(capsys, "sample", runs["gmm"], "-n", "1000000000", "--out", out),
            "-n 1,000,000,000 draws", estimate, human(memory_limit()))
    assert not out.exists() and contents(runs["gmm"]) == before


@pytest.mark.parametrize("given, words", [
    ("-5", "--iwae-samples -5 must be a positive integer"),
    ("0", "--iwae-samples 0 must be a positive integer"),
    (str(10**12), f"about {human(8 * 10**12)} of memory needed"),
])
def test_evaluate_refuses_importance_samples_out_of_range(capsys, runs, given, words):
    refused(run_main(capsys, "evaluate", runs["dglvm"], "--iwae-samples", given), words)


def test_evaluate_with_a_trillion_samples_exits_at_once_in_a_new_process(runs):
    done = subprocess.run([sys.executable, "-m", "inference", "evaluate", runs["dglvm"],
                           "--iwae-samples", str(10**12)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1",
                                                       "PYTHONPATH": str(ROOT)})
    refused(done, "--iwae-samples 1,000,000,000,000", human(memory_limit()))


def test_fit_with_a_trillion_importance_samples_is_refused_before_any_work(capsys, tmp_path):
    out = tmp_path / "run"
    refused(run_main(capsys, "fit", "dglvm", "--data", "iris", "--iwae-samples",
                     str(10**12), "--out", out), "--iwae-samples 1,000,000,000,000")
    assert not out.exists()  # no folder, no training


def test_compare_with_a_million_seeds_is_refused_before_any_fit(capsys, tmp_path):
    out = tmp_path / "comparison"
    refused(run_main(capsys, "compare", "gmm", "--seeds", "1000000", "--out", out),
            "1,000,000", f"limit of {MAX_FITS:,}")
    cells = 2  # em and kmeans: seeds × cells passes the limit though the seeds alone do not
    refused(run_main(capsys, "compare", "gmm", "--strategies", "em,kmeans", "--seeds",
                     str(MAX_FITS // cells + 1), "--out", out),
            f"--seeds {MAX_FITS // cells + 1:,} × {cells} cells", f"{MAX_FITS + 2:,}")
    assert not out.exists()


@pytest.mark.parametrize("argv", [["evaluate"], ["sample", "-n", "2"],
                                  ["predict", "--data", "old-faithful"]])
def test_commands_on_a_run_say_in_one_line_they_do_not_run_under_torchrun(
        capsys, monkeypatch, runs, tmp_path, argv):
    monkeypatch.setenv("WORLD_SIZE", "2")  # what torchrun sets in every worker
    monkeypatch.chdir(tmp_path)
    refused(run_main(capsys, argv[0], runs["gmm"], *argv[1:]), "runs in one process",
            "without torchrun")
    assert not list(tmp_path.iterdir())


# --- sample and predict write only their own file -------------------------------------------


def test_sample_and_predict_never_replace_a_file_unless_asked(capsys, runs, tmp_path,
                                                              monkeypatch):
    folder = Path(shutil.copytree(runs["gmm"], tmp_path / "run"))
    (folder / "samples.png").write_bytes(b"the fit's own figure")
    (folder / "samples.csv").write_bytes(b"the user's file")
    before = contents(folder)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    first = run_main(capsys, "sample", folder, "-n", "5")
    second = run_main(capsys, "sample", folder, "-n", "7")
    assert first.returncode == second.returncode == 0
    assert first.stdout.strip() == "written: samples.csv"
    assert second.stdout.strip() == "written: samples-2.csv"  # a new name, never a replace
    assert len((work / "samples.csv").read_text().splitlines()) == 1 + 5
    assert len((work / "samples-2.csv").read_text().splitlines()) == 1 + 7
    assert contents(folder) == before  # nothing written into the run folder
    taken = work / "mine.csv"
    taken.write_text("keep me\n")
    for command in (["sample", folder, "-n", "3"], ["predict", folder, "--data",
                                                    "old-faithful"]):
        refused(run_main(capsys, *command, "--out", taken), f"--out {taken} already exists",
                "--overwrite")
        assert taken.read_text() == "keep me\n"
    assert run_main(capsys, "sample", folder, "-n", "3", "--out", taken,
                    "--overwrite").returncode == 0
    assert len(taken.read_text().splitlines()) == 1 + 3
    assert run_main(capsys, "predict", folder, "--data", "old-faithful").stdout.strip() == (
        "written: predictions.csv")
    assert contents(folder) == before


def test_predict_labels_given_rows_new_and_the_runs_own_rows_by_their_split(runs, tmp_path):
    rows = np.random.default_rng(0).normal(size=(9, 2))
    data = tmp_path / "new.csv"
    np.savetxt(data, rows, delimiter=",", header="a,b", comments="")
    table = predict_run(runs["gmm"], str(data), tmp_path / "new-predictions.csv")
    lines = [line.split(",") for line in table.read_text().splitlines()[1:]]
    assert [line[0] for line in lines] == ["new"] * 9
    assert [int(line[1]) for line in lines] == list(range(9))
    own = predict_run(runs["gmm"], None, tmp_path / "own.csv")
    splits = [line.split(",")[0] for line in own.read_text().splitlines()[1:]]
    metrics = json.loads((runs["gmm"] / "metrics.json").read_text())
    assert splits.count("train") == metrics["n_train"] and splits.count("test") == (
        metrics["n_test"]) and metrics["n_test"] > 0
    with pytest.raises(InputError, match="already exists"):
        sample_run(runs["gmm"], 2, own)
