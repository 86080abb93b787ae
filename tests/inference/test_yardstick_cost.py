"""The yardstick's cost is stated and bounded, and its figures carry their standard error.

- ``*_log_likelihood_se`` is the standard error of the mean over the rows judged: checked
  against numpy on per-row log-likelihoods computed here independently (PPCA's closed form
  with scipy; the deep model with a linear decoder, which is PPCA, under its exact posterior,
  where every importance weight is p(x)), and shown to be a real error: an estimate on a
  subsample lies within a few of them of the whole set's.
- the importance-sampled rows per split follow a stated budget (:func:`importance_rows`),
  drawn by the seed, said in the record, with every row on request; ``evaluate`` judges a
  saved run on the fit's rows again.
- the record carries the yardstick's seconds; a progress bar counts the rows.
"""

import json
import math
import time

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from inference import evaluate as yardstick
from inference import fitting
from inference.catalog import get_model
from inference.cli import main
from inference.evaluate import (
    IMPORTANCE_WEIGHTS,
    MIN_IMPORTANCE_ROWS,
    evaluate_fit,
    importance_rows,
)
from inference.results import FitResult
from tests.inference.test_iwae import linear_gaussian
from zoo.errors import InputError


def deep_fit(generator, rows: int, **proposal):
    """A dglvm "fit" whose decoder is PPCA (exact log p(x) known), the encoder at its exact
    posterior unless ``proposal`` moves it; rows drawn from the model."""
    config, params, guide_params, exact = linear_gaussian(generator, **proposal)
    result = FitResult(model="dglvm", inference="svi", guide="amortized", params=params,
                       guide_params=guide_params)
    x = exact.sample((rows,))
    return config, result, x, exact


def test_the_budget_is_rows_times_k_with_a_floor_and_every_row_on_request():
    assert importance_rows(1000) == IMPORTANCE_WEIGHTS // 1000 == 250
    assert importance_rows(100) == 2500
    assert importance_rows(10**6) == MIN_IMPORTANCE_ROWS
    assert importance_rows(1000, 40) == importance_rows(1000, "40") == 40
    assert importance_rows(1000, "all") is None
    for bad in (1, 0, -3, "x", "1.5", True):
        with pytest.raises(InputError, match="--iwae-rows"):
            importance_rows(1000, bad)


def test_exact_log_likelihood_se_is_the_rows_standard_deviation_over_root_n():
    """PPCA by its closed form on the digits: the record's mean and standard error are the
    mean and sd(ddof=1)/√n of scipy's per-row log-density under the fitted parameters."""
    fitted = fitting.fit("ppca", data="digits", inference="closed-form", latent_dim=4)
    params = {k: v.double().numpy() for k, v in fitted.result.params.items()}
    covariance = params["weight"] @ params["weight"].T + params["noise"] * np.eye(
        params["weight"].shape[0])
    for split, x in (("train", fitted.data.train), ("test", fitted.data.test)):
        rows = multivariate_normal(params["loc"], covariance).logpdf(x.double().numpy())
        assert fitted.metrics[f"{split}_log_likelihood"] == pytest.approx(rows.mean(),
                                                                           rel=1e-6)
        assert fitted.metrics[f"{split}_log_likelihood_se"] == pytest.approx(
            rows.std(ddof=1) / math.sqrt(rows.size), rel=1e-5)
        assert fitted.metrics[f"{split}_rows_evaluated"] == rows.size  # exact: every row


def test_importance_sampled_se_equals_numpy_on_the_exact_per_row_values():
    """Under the exact posterior every log-weight is log p(x_n): IWAE-K per row is exact, so
    the record's mean and standard error over every row are numpy's on the closed form."""
    config, result, x, exact = deep_fit(torch.Generator().manual_seed(5), 300)
    metrics = evaluate_fit(get_model("dglvm"), config, result, x, x[:120], num_samples=8,
                           iwae_rows="all")
    for split, rows in (("train", x), ("test", x[:120])):
        truth = exact.log_prob(rows).numpy()
        assert metrics[f"{split}_rows_evaluated"] == truth.size
        assert metrics[f"{split}_log_likelihood"] == pytest.approx(truth.mean(), abs=1e-9)
        assert metrics[f"{split}_log_likelihood_se"] == pytest.approx(
            truth.std(ddof=1) / math.sqrt(truth.size), rel=1e-9)


def test_a_subsample_lies_within_its_standard_errors_of_the_whole_set():
    """An imperfect proposal (a real Monte Carlo estimate): judged on 100 of 600 rows by the
    budget, for five seeds, the train figure lies within 3.5 of its standard errors of the
    all-row figure, and the standard error is about sd/√100 of the rows' log p(x)."""
    config, result, x, exact = deep_fit(torch.Generator().manual_seed(6), 600,
                                        scale_factor=1.5, loc_shift=0.3)
    spec = get_model("dglvm")
    whole = evaluate_fit(spec, config, result, x, None, num_samples=64, iwae_rows="all")
    assert whole["train_rows_evaluated"] == 600 and whole["test_rows_evaluated"] is None
    spread = float(exact.log_prob(x).std())
    parts = []
    for seed in range(5):
        part = evaluate_fit(spec, config, result, x, None, num_samples=64, iwae_rows=100,
                            seed=seed)
        assert part["train_rows_evaluated"] == 100
        error = part["train_log_likelihood_se"]
        assert 0.7 * spread / 10 < error < 1.3 * spread / 10
        assert abs(part["train_log_likelihood"] - whole["train_log_likelihood"]) < 3.5 * error
        parts.append(part["train_log_likelihood"])
    assert len(set(parts)) == 5  # each seed its own rows
    again = evaluate_fit(spec, config, result, x, None, num_samples=64, iwae_rows=100, seed=4)
    assert again["train_log_likelihood"] == parts[-1]  # the same seed, the same rows


def test_the_default_budget_subsamples_both_splits_and_leaves_small_ones_whole():
    config, result, x, _ = deep_fit(torch.Generator().manual_seed(7), 400, scale_factor=1.2)
    spec = get_model("dglvm")
    k = IMPORTANCE_WEIGHTS // 150  # the budget allows 150 rows per split
    metrics = evaluate_fit(spec, config, result, x, x[:90], num_samples=k)
    assert importance_rows(k) == 150
    assert metrics["train_rows_evaluated"] == 150 and metrics["test_rows_evaluated"] == 90
    assert metrics["log_likelihood_method"] == f"iwae-{k}"


def test_the_progress_bar_counts_every_row_judged(monkeypatch):
    bars = []

    class Recorder:
        def __init__(self, *, total, disable, **_):
            self.total, self.disable, self.done = total, disable, 0
            bars.append(self)

        def update(self, count):
            self.done += count

        def close(self):
            pass

    monkeypatch.setattr(yardstick, "tqdm", Recorder)
    config, result, x, _ = deep_fit(torch.Generator().manual_seed(8), 200)
    spec = get_model("dglvm")
    evaluate_fit(spec, config, result, x, x[:50], num_samples=16, iwae_rows=120,
                 progress=True)
    assert [(b.total, b.done, b.disable) for b in bars] == [(170, 170, False)]
    evaluate_fit(spec, config, result, x, None, num_samples=16, progress=False)
    assert bars[-1].disable


def test_the_record_carries_the_yardstick_seconds(monkeypatch):
    """``yardstick_seconds`` is the judging's wall time: a yardstick made 0.3 s slower
    says at least 0.3 s."""
    slow = fitting.evaluate_fit

    def slower(*args, **kwargs):
        time.sleep(0.3)
        return slow(*args, **kwargs)

    monkeypatch.setattr(fitting, "evaluate_fit", slower)
    fitted = fitting.fit("gmm", data="old-faithful", inference="em", components=2)
    record = fitted.record
    assert 0.3 <= record["yardstick_seconds"] < 30


def test_fit_and_evaluate_state_the_rows_and_evaluate_judges_them_again(capsys, tmp_path):
    """``fit --iwae-rows`` is recorded in run.json; ``evaluate`` judges the same rows with
    the same draws (the same figures), ``evaluate --iwae-rows all`` every row."""
    out = tmp_path / "run"
    argv = ["fit", "dglvm", "--data", "synthetic-dglvm", "--steps", "20", "--batch-size",
            "64", "--validation", "0", "--iwae-samples", "8", "--iwae-rows", "30",
            "--no-figures", "--out", str(out), "--json"]
    assert main(argv) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["train_rows_evaluated"] == record["test_rows_evaluated"] == 30
    assert record["n_test"] > 30
    for split in ("train", "test"):
        assert record[f"{split}_log_likelihood_se"] > 0
    assert json.loads((out / "run.json").read_text())["iwae_rows"] == 30
    assert main(["evaluate", str(out), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    for key in ("train_log_likelihood", "test_log_likelihood", "train_log_likelihood_se",
                "test_rows_evaluated"):
        assert again[key] == record[key], key
    assert main(["evaluate", str(out)]) == 0  # the table states the rows and the errors
    table = capsys.readouterr().out
    assert f"on 30 of {record['n_train']} train / 30 of {record['n_test']} test rows" in table
    assert "train_log_likelihood_se" in table and "yardstick_seconds" in table
    assert main(["evaluate", str(out), "--iwae-rows", "all", "--json"]) == 0
    every = json.loads(capsys.readouterr().out)
    assert every["train_rows_evaluated"] == record["n_train"]
    assert every["test_rows_evaluated"] == record["n_test"]


def test_a_bad_iwae_rows_is_one_line_and_exit_2(capsys, tmp_path):
    code = main(["fit", "dglvm", "--data", "synthetic-dglvm", "--iwae-rows", "some",
                 "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "--iwae-rows some" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
