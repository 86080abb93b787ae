"""The comparison harness: the grid, the yardstick's numbers against closed forms, isolation,
seeds aggregation, label switching, and the command line's outputs."""

import csv
import json
import math

import numpy as np
import pytest
import torch

from inference import api
from inference import strategies as registry
from inference.catalog import get_model, models
from inference.cli import main
from inference.compare import amortization_split, label_switching_measures, strategy_grid
from inference.compare.tables import format_mean_std, summarize
from inference.data import DataRequest
from inference.runs import load_run
from inference.strategies import Cell
from tests.toy import TOY
from zoo.errors import InputError

FAST = {"gap_rows": 16, "draws": 20, "report": False}


def _params(record: dict) -> dict:
    _, params, guide_params, _ = load_run(record["run_dir"])
    return {**params, **guide_params}


def _row(records: list[dict], strategy: str) -> dict:
    return next(r for r in records if r["strategy"] == strategy)


# --- the grid -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(models()))
def test_grid_has_every_baseline_and_every_guide(name):
    spec = get_model(name)
    grid = strategy_grid(spec)
    methods = [s.strategy for s in grid]
    assert methods[: len(methods) - len(spec.guides)] == [
        m for m in registry.applicable(spec) if m != "svi"]  # baselines first
    assert [s.guide for s in grid if s.strategy == "svi"] == list(spec.guides)
    assert len({s.slug for s in grid}) == len(grid) and len({s.label for s in grid}) == len(grid)


def test_grid_adds_enumeration_for_a_discrete_latent_only():
    gmm, ppca = get_model("gmm"), get_model("ppca")
    x = torch.randn(10, 2)
    grid = strategy_grid(gmm, config=gmm.make_config(dim=2), x=x)
    enumerated = {s.guide for s in grid if s.variant == "TraceEnum_ELBO"}
    assert enumerated == {g for g in gmm.guides if gmm.default_elbo.get(g) != "TraceEnum_ELBO"}
    assert api.strategy_grid(gmm) == strategy_grid(gmm)  # the public name delegates
    plain = strategy_grid(ppca, config=ppca.make_config(dim=4), x=torch.randn(10, 4))
    assert all(s.variant is None for s in plain)
    crossed = strategy_grid(ppca, elbos=("Trace_ELBO", "TraceMeanField_ELBO"))
    assert Cell("svi", "mean-field", (("elbo", "Trace_ELBO"),), "Trace_ELBO") in crossed
    assert not any(c.guide == "mean-field" and c.variant == "TraceMeanField_ELBO"
                   for c in crossed)  # its default estimator is not repeated


# --- PPCA: the yardstick against closed forms ------------------------------------------------


@pytest.fixture(scope="module")
def ppca_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("ppca")
    # EM to a tight tolerance: it creeps towards the closed form along a flat ridge
    return api.compare("ppca", data="iris", latent_dim=2, steps=150, tol=1e-10, max_iter=20000,
                       out=out, **FAST)


def test_ppca_exact_guide_gap_is_zero(ppca_rows):
    exact = _row(ppca_rows, "svi exact")
    assert exact["elbo_method"] == "exact"
    assert abs(exact["gap"]) < 1e-6
    assert exact["amortization_gap"] is None  # not amortized: nothing to split off


def test_ppca_em_and_closed_form_agree(ppca_rows):
    em, closed = _row(ppca_rows, "em"), _row(ppca_rows, "closed-form")
    assert em["converged"]
    for key in ("train_log_likelihood", "test_log_likelihood"):
        assert em[key] == pytest.approx(closed[key], abs=1e-4)


def _mean_field_kl(params, guide_params, x):
    """KL(N(m_n, diag s_n²) ‖ p(z_n | x_n)) per row, written out in float64 numpy."""
    w = params["weight"].double().numpy()
    loc = params["loc"].double().numpy()
    noise = float(params["noise"])
    m = guide_params["z_loc"].double().numpy()
    s2 = guide_params["z_scale"].double().numpy() ** 2
    q = w.shape[1]
    precision = np.eye(q) + w.T @ w / noise  # posterior precision Λ
    covariance = np.linalg.inv(precision)
    mean = (x.double().numpy() - loc) @ w / noise @ covariance
    diff = m - mean
    return 0.5 * (s2 @ np.diag(precision) + np.einsum("ni,ij,nj->n", diff, precision, diff) - q
                  - np.linalg.slogdet(precision)[1] - np.log(s2).sum(1))


def test_ppca_mean_field_gap_equals_its_closed_form(ppca_rows):
    row = _row(ppca_rows, "svi mean-field")
    _, params, guide_params, metrics = load_run(row["run_dir"])
    spec = get_model("ppca")
    x_train = api.load_data(DataRequest("iris", device="cpu"), spec).train
    kl = _mean_field_kl(params, guide_params, x_train)
    assert row["gap"] == pytest.approx(kl.mean(), abs=1e-4)
    assert row["gap"] > 1e-3  # a real gap, not a trivially tight bound
    assert row["approximation_gap"] == row["gap"]
    # the Monte Carlo ELBO of `lvm-zoo fit` agrees within its sampling error
    assert metrics["gap"] == pytest.approx(kl.mean(), abs=0.05)


def test_ppca_amortized_gap_split_adds_up(ppca_rows):
    for label in ("svi amortized", "svi amortized-mlp"):
        row = _row(ppca_rows, label)
        assert row["gap_rows"] == row["n_train"]  # q* in closed form: every training row
        assert row["approximation_gap"] >= -1e-5 and row["amortization_gap"] >= -1e-5
        assert row["approximation_gap"] + row["amortization_gap"] == pytest.approx(
            row["gap"], abs=1e-5)
    # the linear encoder with a full covariance can hold the exact posterior: no
    # approximation gap; the diagonal MLP encoder's best is the mean-field projection
    # N(m, diag(1/Λ_ii)), whose KL ½(Σ log Λ_ii − log|Λ|) is the same for every row
    assert abs(_row(ppca_rows, "svi amortized")["approximation_gap"]) < 1e-5
    row = _row(ppca_rows, "svi amortized-mlp")
    _, params, _, _ = load_run(row["run_dir"])
    w, noise = params["weight"].double().numpy(), float(params["noise"])
    precision = np.eye(w.shape[1]) + w.T @ w / noise
    projection_kl = 0.5 * (np.log(np.diag(precision)).sum() - np.linalg.slogdet(precision)[1])
    assert row["approximation_gap"] == pytest.approx(projection_kl, abs=1e-5)


# --- the GMM: EM against SVI, label switching ----------------------------------------------


def _enumerated_exact(spec):
    """The grid's cell of the exact guide under TraceEnum_ELBO (its default or an extra)."""
    x = torch.randn(4, 2)
    grid = strategy_grid(spec, config=spec.make_config(dim=2), x=x)
    return next(s for s in grid if s.guide == "exact" and "TraceEnum_ELBO" in (
        s.variant, None if s.variant else spec.default_elbo.get("exact")))


@pytest.fixture(scope="module")
def gmm_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("gmm")
    exact = _enumerated_exact(get_model("gmm"))
    return api.compare("gmm", steps=150, out=out, strategies=["em", exact.slug, "svi-enumerate"],
                       **FAST)


def test_gmm_em_and_svi_exact_agree(gmm_rows):
    """The exact guide with the expectation over z summed (zero-variance gradients) reaches
    EM's maximum; so does summing z out of the model (the 'enumerate' guide)."""
    em = _row(gmm_rows, "em")
    for label in (_enumerated_exact(get_model("gmm")).label, "svi enumerate"):
        svi = _row(gmm_rows, label)
        assert svi["train_log_likelihood"] == pytest.approx(em["train_log_likelihood"], abs=1e-3)
        assert abs(svi["gap"]) < 1e-5 and svi["elbo_method"] == "exact"
        assert svi["ari"] == pytest.approx(1.0)  # the same partition, up to labels
        assert svi["matched_param_error"] < 0.05


def _em_params(spec, config, x):
    from inference.strategies import fit

    return fit(spec, config, x, inference="em", seed=0).params


def test_swapped_labels_compare_as_equal():
    spec = get_model("gmm")
    x = api.load_data(DataRequest(device="cpu"), spec).train
    config = spec.make_config(dim=2, components=3)
    params = _em_params(spec, config, x)
    swapped = {name: value[torch.tensor([2, 0, 1])] for name, value in params.items()}
    same = label_switching_measures(spec, config, swapped, params, x)
    assert same["ari"] == pytest.approx(1.0)
    assert same["matched_param_error"] == pytest.approx(0.0, abs=1e-6)
    assert same["permutation"].tolist() == [2, 0, 1]  # swapped label k is params' label perm[k]
    moved = {**params, "means": params["means"] + 1.0}
    assert label_switching_measures(spec, config, moved, params, x)["matched_param_error"] \
        == pytest.approx(1.0, abs=1e-5)


def test_no_label_measures_without_a_categorical_posterior():
    spec = get_model("ppca")
    x = torch.randn(20, 4)
    config = spec.make_config(dim=4, latent_dim=1)
    params = spec.closed_form(config, x)
    assert label_switching_measures(spec, config, params, params, x) is None


# --- isolation, seeds ---------------------------------------------------------------------


def test_fitting_a_then_b_gives_the_same_b_as_b_alone(tmp_path):
    options = {"data": "iris", "latent_dim": 2, "steps": 40, **FAST}
    both = api.compare("ppca", strategies=["svi-amortized", "svi-mean-field", "em"],
                       out=tmp_path / "both", **options)
    alone = api.compare("ppca", strategies=["em", "svi-mean-field"], out=tmp_path / "alone",
                        **options)
    for label in ("svi mean-field", "em"):
        after, single = _params(_row(both, label)), _params(_row(alone, label))
        assert after.keys() == single.keys()
        for name in after:
            assert torch.equal(after[name], single[name]), name
        for key in ("train_log_likelihood", "test_log_likelihood", "elbo", "gap"):
            assert _row(both, label)[key] == _row(alone, label)[key]


def test_seeds_give_mean_and_standard_deviation(tmp_path):
    records = api.compare(TOY, data=DataRequest(standardize=True), steps=30, seeds=3,
                          out=tmp_path, **FAST)
    assert [r["seed"] for r in records] == [0, 1, 2]
    assert len({r["train_log_likelihood"] for r in records}) == 3  # seeds differ
    (summary,) = summarize(records)
    values = [r["train_log_likelihood"] for r in records]
    # 30 steps end before the stopping rule's first verdict (4 windows of 100): none converged
    assert summary["seeds"] == 3 and summary["converged"] == 0
    assert not any(r["converged"] for r in records)
    assert summary["train_log_likelihood_mean"] == pytest.approx(np.mean(values))
    assert summary["train_log_likelihood_std"] == pytest.approx(np.std(values, ddof=1))
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved[0]["train_log_likelihood_mean"] == pytest.approx(np.mean(values))


def test_summary_formats_mean_plus_minus_std():
    records = [{"strategy": "em", "inference": "em", "guide": None, "converged": True,
                "log_likelihood_method": "exact", "train_log_likelihood": v, "elbo": None}
               for v in (-1.0, -2.0)]
    (row,) = summarize(records)
    assert format_mean_std(row, "train_log_likelihood") == "-1.5000 ± 0.7071"
    assert format_mean_std(row, "elbo") == "-"
    (single,) = summarize(records[:1])
    assert single["train_log_likelihood_std"] is None
    assert format_mean_std(single, "train_log_likelihood") == "-1.0000"


# --- the gap split where q* is fitted, not known ---------------------------------------------


def test_fitted_per_datapoint_optimum_closes_the_approximation_gap():
    """The toy's posterior is a 1-D Gaussian, inside the encoder's family: the fitted q*
    reaches log p(x) (no approximation gap) and beats the encoder (amortization gap ≥ 0)."""
    from inference.strategies import fit

    spec = get_model(TOY)
    x = api.load_data(DataRequest(standardize=True, device="cpu"), spec).train
    config = spec.make_config(dim=2)
    result = fit(spec, config, x, inference="svi", guide="amortized", steps=60)
    split = amortization_split(spec, config, result, x[:16], steps=300)
    assert abs(split["approximation_gap"]) < 0.02
    assert split["amortization_gap"] > -0.01
    assert split["approximation_gap"] + split["amortization_gap"] == pytest.approx(
        split["log_likelihood"] - split["encoder_elbo"])


# --- the command line ------------------------------------------------------------------------


def test_cli_prints_the_table_and_writes_every_output(capsys, tmp_path):
    code = main(["compare", TOY, "--standardize", "--steps", "30", "--seeds", "2",
                 "--gap-rows", "8", "--draws", "20", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "svi amortized" in out and "±" in out and "approx. gap" in out
    for name in ("comparison.json", "comparison.csv", "summary.json", "summary.csv",
                 "curves.png", "yardstick.png", "posterior.png", "forest.png", "report.html"):
        assert (tmp_path / name).is_file(), name
    with open(tmp_path / "comparison.csv") as f:
        assert len(list(csv.DictReader(f))) == 2
    records = json.loads((tmp_path / "comparison.json").read_text())
    for record in records:
        assert (tmp_path / f"svi-amortized-seed{record['seed']}" / "posterior.nc").is_file()
        assert math.isfinite(record["amortization_gap"])
    code = main(["compare", TOY, "--standardize", "--steps", "5", "--gap-rows", "0",
                 "--draws", "5", "--out", str(tmp_path / "json"), "--json"])
    listing = json.loads(capsys.readouterr()[0])
    assert code == 0 and isinstance(listing, list) and listing[0]["strategy"] == "svi amortized"


@pytest.mark.parametrize("argv, pattern", [
    (["--reference", "nuts", "--strategies", "em"], "--reference nuts: model 'gmm' has no "
                                                   "continuous latent"),
    (["--strategies", "svi-nope"], "--strategies svi-nope: not in this model's grid"),
    (["--gap-rows", "-1"], "--gap-rows -1"),
    (["--elbos", "Nope_ELBO"], "--elbos 'Nope_ELBO' is not one of"),
])
def test_bad_compare_input_exits_2(capsys, tmp_path, argv, pattern):
    code = main(["compare", "gmm", "--steps", "5", "--out", str(tmp_path), *argv])
    err = capsys.readouterr()[1]
    assert code == 2 and pattern in err, err


def test_inputs_are_checked_before_any_fit(tmp_path):
    with pytest.raises(InputError, match="--draws 1"):
        api.compare(TOY, draws=1, out=tmp_path)
    assert not any(tmp_path.iterdir())


# --- the main jobs, as a user types them (slow: minutes each) --------------------------------

OUTPUTS = ("comparison.json", "comparison.csv", "summary.json", "summary.csv", "curves.png",
           "yardstick.png", "posterior.png", "report.html")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["gmm", "ppca", "dglvm"])
def test_compare_with_no_other_argument(capsys, tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)  # the default folder is runs/compare-<model>-<data>
    assert main(["compare", name]) == 0
    out = capsys.readouterr()[0]
    (folder,) = (tmp_path / "runs").iterdir()
    for output in OUTPUTS:
        assert (folder / output).is_file(), output
    records = json.loads((folder / "comparison.json").read_text())
    assert all((tmp_path / r["run_dir"] / "posterior.nc").is_file() for r in records
               if r["inference"] == "svi")
    assert all(r["posterior_file"] for r in records if r["inference"] == "svi")
    assert all(r["strategy"] in out for r in records)  # the table on the terminal
    if name == "ppca":
        assert abs(_row(records, "svi exact")["gap"]) < 1e-6
        assert _row(records, "em")["train_log_likelihood"] == pytest.approx(
            _row(records, "closed-form")["train_log_likelihood"], abs=1e-3)
    if name == "gmm":
        exact = _row(records, _enumerated_exact(get_model("gmm")).label)
        assert exact["train_log_likelihood"] == pytest.approx(
            _row(records, "em")["train_log_likelihood"], abs=1e-3)
    if name == "dglvm":
        assert records[0]["log_likelihood_method"].startswith("iwae-")
        assert _row(records, "svi amortized")["amortization_gap"] is not None
