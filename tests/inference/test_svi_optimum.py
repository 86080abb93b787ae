"""SVI ends at the optimum (inference.svi_schedule): the decay-average schedule against exact
posteriors, its parts (the stale-memory cut), its switch (--schedule) and every built-in model
converging at its defaults."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from inference.catalog import get_model
from inference.cli import main
from inference.strategies import fit
from inference.svi import fit_svi
from inference.svi_schedule import DECAY, FINAL_WINDOWS, STALE, cut_stale_memory
from tests.inference.test_svi import REGRESSION, exact_posterior, gaussian_moments, regression_rows
from tests.inference.test_svi_faults import climb, no_guide

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_auto_mvn_at_the_defaults_ends_at_the_exact_posterior_at_every_seed(seed):
    """A conjugate regression whose coefficients' posterior sds span 0.001 to 0.1: every mean
    within 0.2 sd and every sd within 5% of the closed form, whatever the fit's seed (seed 0 is
    tests/inference/test_svi.py's)."""
    rows = regression_rows()
    mean, sd = exact_posterior(rows)
    spec = get_model(REGRESSION)
    result = fit(spec, spec.make_config(dim=4), torch.tensor(rows), inference="svi",
                 guide="auto-mvn", seed=seed)
    fitted_mean, fitted_sd = gaussian_moments(result.guide_params)
    assert result.converged and result.info["kept"] == "average"
    assert result.info["schedule"] == "decay-average"
    assert np.abs((fitted_mean - mean) / sd).max() < 0.2, (fitted_mean - mean) / sd
    assert np.abs(fitted_sd / sd - 1).max() < 0.05, fitted_sd / sd


def test_the_final_phase_runs_at_the_lower_rate_and_returns_its_average():
    """On -(theta - 3)² with noise: the climb ends, the rate drops to lr * DECAY, the fit
    averages FINAL_WINDOWS windows after one of burn-in, and the average is nearer 3 than the
    last iterate's spread (a 0.1-sd wobble) would put it."""
    x = torch.zeros(10, 1, dtype=torch.float64)
    window = 20
    result = fit_svi(climb, no_guide, x, steps=3000, lr=0.05, stop_window=window, stop_tol=1e-3)
    info = result.info
    assert result.converged and info["kept"] == "average" and info["lr_levels"] == 1
    assert info["lr_final"] == pytest.approx(0.05 * DECAY)
    assert info["averaged_steps"] == FINAL_WINDOWS * window
    final = info["final_phase_from_step"]
    assert result.steps == final + (1 + FINAL_WINDOWS) * window * (1 + info["average_restarts"])
    assert float(result.params["theta"]) == pytest.approx(3.0, abs=0.01)


def test_the_constant_schedule_keeps_one_rate_and_the_last_iterate():
    x = torch.zeros(10, 1, dtype=torch.float64)
    result = fit_svi(climb, no_guide, x, steps=400, lr=0.05, stop_window=20, stop_tol=1e-3,
                     schedule="constant")
    assert result.info["schedule"] == "constant" and result.info["kept"] == "last"
    assert result.info["lr_final"] == 0.05 and result.info["averaged_steps"] == 0


def test_the_cut_lowers_only_the_elements_whose_memory_is_stale():
    """Adam's bias-corrected second moment above STALE times the window's mean square is set to
    it, never below the first moment's square (so no step exceeds the rate); elements within
    the bound, and parameters without optimizer state, are left alone."""
    param = torch.zeros(3, requires_grad=True)
    fresh = torch.zeros(2, requires_grad=True)
    beta2, step, window = 0.999, 50, 10
    correction = 1 - beta2 ** step
    memory = torch.tensor([100.0, 3.0, 5.0]) * correction  # bias-corrected: 100, 3, 5
    first = torch.tensor([0.0, 0.0, 2.0]) * (1 - 0.9 ** step)  # bias-corrected: 0, 0, 2
    optimizer = SimpleNamespace(param_groups=[{"betas": (0.9, beta2)}],
                                state={param: {"exp_avg_sq": memory.clone(), "exp_avg": first,
                                               "step": torch.tensor(float(step))}})
    svi = SimpleNamespace(optimizer=optimizer, unconstrained={"p": param, "q": fresh})
    squares = {"p": torch.tensor([1.0, 1.0, 1.0]) * window,  # mean squares 1, 1, 1
               "q": torch.ones(2)}
    assert cut_stale_memory(svi, squares, window) == 1  # 100 > STALE (4) x 1; 5 < 4 x 2²
    corrected = optimizer.state[param]["exp_avg_sq"] / correction
    assert 3 < STALE < 5
    assert torch.allclose(corrected, torch.tensor([1.0, 3.0, 5.0]))
    optimizer.state[param]["exp_avg_sq"] = torch.tensor([1.0, 3.0, 20.0]) * correction
    assert cut_stale_memory(svi, squares, window) == 1  # 20 > 4 x 2²: cut to 2², not to 1
    corrected = optimizer.state[param]["exp_avg_sq"] / correction
    assert torch.allclose(corrected, torch.tensor([1.0, 3.0, 4.0]))


def test_schedule_switch_is_recorded_in_the_run(tmp_path):
    """``--schedule constant`` reaches the fit and its record (settings.json's options and
    run.json's info); an unknown schedule is one line and exit 2."""
    run = tmp_path / "run"
    assert main(["fit", "gmm", "--inference", "svi", "--steps", "30", "--schedule", "constant",
                 "--out", str(run), "--no-figures", "--json"]) == 0
    settings = json.loads((run / "settings.json").read_text())
    record = json.loads((run / "run.json").read_text())
    assert settings["options"]["schedule"] == "constant"
    assert '"schedule": "constant"' in json.dumps(record)
    assert main(["fit", "gmm", "--inference", "svi", "--schedule", "cosine",
                 "--out", str(tmp_path / "bad")]) == 2


BUILT_IN = ["gmm", "ppca", "fa", "mppca", "student-t-mixture", "bayesian-gmm", "bayesian-ppca",
            "dglvm"]


def test_the_convergence_check_covers_every_built_in_model():
    from zoo.registry import BUILTINS

    assert {name for name, _ in BUILTINS} <= set(BUILT_IN)


@pytest.mark.slow
@pytest.mark.parametrize("model", BUILT_IN)
def test_every_built_in_model_converges_at_its_defaults(model, tmp_path):
    """``lvm-zoo fit MODEL --inference svi`` on the model's default data, nothing else set,
    reports converged: true (the steps and seconds are in benchmarks/RESULTS.md)."""
    out = subprocess.run(
        [sys.executable, "-m", "inference", "fit", model, "--inference", "svi",
         "--out", str(tmp_path / model), "--json", "--no-figures"],
        cwd=ROOT, capture_output=True, text=True, check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    summary = json.loads(out.stdout)
    assert summary["converged"] is True, (summary["steps"], summary["seconds"])
    assert math.isfinite(summary["elbo"])
