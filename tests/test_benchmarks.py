"""The benchmarks that time what a user waits for run at smoke size, so that they cannot rot:
``benchmarks/gpu.sh --cpu`` (every GPU figure's step, on the CPU) and
``benchmarks/command_wall.py`` (the whole ``lvm-zoo fit`` command from the shell)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}


def test_gpu_script_runs_every_step_at_smoke_size_on_the_cpu(tmp_path, shared_data):
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu.sh"), "--cpu", str(tmp_path)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = [json.loads(line) for line in (tmp_path / "figures.jsonl").read_text().splitlines()]
    assert [f["figure"] for f in figures] == ["gmm-em", "gmm-em", "vae-epoch", "iwae-evaluate"]
    for figure in figures[:2]:  # the same EM from the same start: the same log-likelihood
        assert figure["lvm_zoo_ms_per_iteration"] > 0
        assert figure["lvm_zoo_log_likelihood"] == pytest.approx(
            figure["sklearn_log_likelihood"], abs=1e-3)
    assert {(f["covariance"], f["dim"], f["components"]) for f in figures[:2]} == {
        ("full", 8, 4), ("spherical", 16, 32)}
    epoch, judged = figures[2:]
    assert epoch["lvm_zoo_fit_training_seconds"] > 0 and epoch["hand_written_training_seconds"] > 0
    assert judged["method"] == "iwae-20" and judged["test_rows"] == 128
    # a barely trained Bernoulli VAE: below 0, above twice a fair coin per pixel (784 log 2)
    assert -2 * 784 * 0.6932 < judged["test_log_likelihood"] < 0
    assert (tmp_path / "log.txt").read_text().count("gpu.sh: done") == 1


def test_command_wall_times_the_command_and_reads_the_fit_seconds(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "command_wall.py"),
                           "--skip-faithful", "--num-data", "3000", "--dim", "3",
                           "--components", "2", "--max-iter", "5", "--threads", "1", "--json"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    (case,) = report["cases"]
    assert case["command"].startswith("lvm-zoo fit gmm --inference em --data ")
    assert case["fit_seconds"] == pytest.approx(case["printed_seconds"])  # one number, twice
    assert 0 < case["fit_seconds"] < case["wall_seconds"]
    assert case["target_seconds"] == pytest.approx(2.0 + 1.2 * case["fit_seconds"])
    assert case["ratio"] == pytest.approx(case["wall_seconds"] / case["target_seconds"])
    assert {"gmm_contours.png", "gmm_curves.png"} <= set(case["figures"])
    assert case["steps"] <= 5


def test_gmm_start_counts_how_often_each_start_reaches_the_optimum(tmp_path):
    """On clusters far apart every start finds the one optimum, the sampled start too."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gmm_start.py"),
                           "--num-data", "1500", "--sample-rows", "400", "--spread", "5",
                           "--seeds", "2", "--best-of", "2", "--json"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["reached"] == {"sampled start": 2, "every row": 2, "scikit-learn": 2}
    assert all(seconds > 0 for seconds in report["start_seconds"].values())
    for name, most in report["most_em_iterations"].items():
        assert 1 <= report["em_iterations"][name] <= most


def test_gmm_start_on_one_dataset_varies_only_the_starts(tmp_path):
    """--one-dataset: the same data for every seed, so that well-separated clusters give every
    start the same optimum, reached each time."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gmm_start.py"),
                           "--num-data", "1500", "--sample-rows", "400", "--spread", "5",
                           "--seeds", "3", "--best-of", "2", "--one-dataset", "--json"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["one_dataset"] is True
    assert report["reached"] == {"sampled start": 3, "every row": 3, "scikit-learn": 3}


def test_gmm_em_over_seeds_prints_each_ones_medians(tmp_path):
    """--over-seeds: the converged fits at defaults from several seeds of each one's start,
    scikit-learn at its defaults and at lvm-zoo's rule, medians within their ranges."""
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gmm_em.py"),
                           "--num-data", "3000", "--dim", "3", "--components", "3",
                           "--iterations", "2", "--dtype", "float64", "--threads", "1",
                           "--no-defaults", "--over-seeds", "3"],
                          capture_output=True, text=True, env=_env(), cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split() for line in done.stdout.splitlines()
            if line.endswith(("sklearn, its defaults", "sklearn, lvm-zoo's rule"))]
    assert len(rows) == 2
    for row in rows:
        # float64  median (low-high)  iters (low-high)  median (low-high)  iters (...)  ratio x
        for median, spread in ((row[1], row[2]), (row[3], row[4]), (row[5], row[6]),
                               (row[7], row[8])):
            low, high = (float(v) for v in spread.strip("()").split("-"))
            assert 0 < low <= float(median) <= high
        assert float(row[9].rstrip("x")) > 0
