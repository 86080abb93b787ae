"""Every number in a comparison's table is the number `fit` gives for the same cell: one code
path (``fitting.run`` and ``fitting.judge``) for both, finite on every row."""

import math

import pytest

from inference import api
from inference.data import DataRequest

KEYS = ("train_log_likelihood", "test_log_likelihood", "elbo", "gap")


@pytest.fixture(scope="module")
def iris_comparison(tmp_path_factory):
    out = tmp_path_factory.mktemp("iris")
    records = api.compare("gmm", data=DataRequest(name="iris", standardize=True), components=3,
                          steps=60, out=out, gap_rows=8, draws=10, report=False)
    return records


def test_every_row_of_the_iris_comparison_is_finite(iris_comparison):
    labels = {r["strategy"] for r in iris_comparison}
    # the enumerated ELBO's guides are among the rows (they gave -inf before); the amortized
    # guide's default estimator is the enumerated one
    assert {"svi mean-field [TraceEnum_ELBO]", "svi amortized"} <= labels
    assert {r["elbo_estimator"] for r in iris_comparison
            if r["strategy"] == "svi amortized"} == {"TraceEnum_ELBO"}
    for record in iris_comparison:
        for key in KEYS:
            if record.get(key) is not None:
                assert math.isfinite(record[key]), (record["strategy"], key, record[key])
        if record.get("elbo") is not None:  # a bound below the exact log-likelihood
            assert record["elbo"] <= record["train_log_likelihood"] + 1e-6, record["strategy"]


def test_every_svi_row_equals_fit_of_the_same_cell(iris_comparison):
    for record in iris_comparison:
        if record["inference"] != "svi":
            continue
        options = {} if record["elbo_estimator"] in (None, "Trace_ELBO") else {
            "elbo": record["elbo_estimator"]}
        fitted = api.fit("gmm", data=DataRequest(name="iris", standardize=True), components=3,
                         inference="svi", guide=record["guide"], steps=60,
                         seed=record["seed"], **options)
        for key in KEYS:
            assert fitted.record[key] == pytest.approx(record[key], rel=1e-9, abs=1e-9), (
                record["strategy"], key)
        assert fitted.record["elbo_method"] == record["elbo_method"] == "exact"


def test_the_api_comparison_writes_nothing_unless_asked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    records = api.compare("gmm", data="old-faithful", components=2, strategies=["em"],
                          report=False, draws=5)
    assert list(tmp_path.iterdir()) == []  # no runs/compare-* folder
    assert records[0]["inference"] == "em" and "run_dir" not in records[0]
    assert math.isfinite(records[0]["train_log_likelihood"])
    assert records.summary[0]["strategy"] == "em"
