"""``lvm-zoo bench``: its metrics against closed forms, one cell end to end on a conjugate
posterior whose reference is exact, resume, ``--list``.

The posterior of this file is Bayesian linear regression with a known noise sd,
y_n ~ N(β₁ + β₂ t_n, 1), β ~ N(0, 10² I): its posterior is Gaussian with closed-form mean and
covariance, and its evidence is N(y; 0, I + 10² T Tᵀ), computed here in numpy / scipy."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

import zoo.registry
from inference.bench import metrics, runner
from inference.bench.fits import Budget
from inference.cli import main
from zoo.posteriordb import Posterior, Reference

PRIOR_SCALE = 10.0
ROWS = 30
HERE = Path(__file__).resolve()


@dataclass(frozen=True)
class RegressionConfig:
    dim: int = field(default=2, metadata={"cli": False})
    prior_scale: float = PRIOR_SCALE


def regression(x=None, *, num_data=None, subsample_size=None, config):
    n = x.shape[0] if x is not None else num_data
    rows_of = x if x is not None else torch.zeros(n, 2, dtype=torch.float64)
    beta = pyro.sample("beta", dist.Normal(rows_of.new_zeros(2), config.prior_scale)
                       .to_event(1))
    with pyro.plate("data", n, subsample_size=subsample_size) as rows:
        t = rows_of[rows, 0]
        pyro.sample("y", dist.Normal(beta[..., 0] + beta[..., 1] * t, 1.0),
                    obs=None if x is None else x[rows, 1])


def exact_posterior(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    design = np.stack([np.ones_like(t), t], 1)
    covariance = np.linalg.inv(design.T @ design + np.eye(2) / PRIOR_SCALE ** 2)
    return covariance @ design.T @ y, covariance


def log_evidence(t: np.ndarray, y: np.ndarray) -> float:
    design = np.stack([np.ones_like(t), t], 1)
    return float(stats.multivariate_normal(np.zeros(len(y)), np.eye(len(y)) + PRIOR_SCALE ** 2
                                           * design @ design.T).logpdf(y))


def regression_posterior(shift: float = 0.0) -> Posterior:
    """The posterior with its exact reference (means moved by ``shift`` sds when asked)."""
    rng = np.random.default_rng(0)
    t = rng.normal(size=ROWS)
    y = 1.0 + 2.0 * t + rng.normal(size=ROWS)
    mean, covariance = exact_posterior(t, y)
    sd = np.sqrt(np.diag(covariance))
    draws = rng.multivariate_normal(mean, covariance, size=4000)
    reference = Reference(names=("beta[1]", "beta[2]"), mean=mean + shift * sd, sd=sd,
                          draws=draws)
    return Posterior(name="linreg", model=regression, config=RegressionConfig,
                     x=torch.tensor(np.stack([t, y], 1)), columns=("t", "y"), local_sites=(),
                     reported=lambda v: {"beta[1]": v["beta"][:, 0],
                                         "beta[2]": v["beta"][:, 1]},
                     reference=reference, extra={"log_evidence": log_evidence(t, y)})


def suite() -> dict[str, Posterior]:
    """The suite ``--suite tests/inference/test_bench.py:suite`` names."""
    return {"linreg": regression_posterior()}


@pytest.fixture(autouse=True)
def _clean_registry():
    models = zoo.registry.models()
    yield
    zoo.registry._REGISTRY.clear()
    zoo.registry._REGISTRY.update(models)


# --- the metrics ------------------------------------------------------------------------------


def test_identical_draws_are_at_distance_zero_and_a_shift_is_measured_exactly():
    rng = np.random.default_rng(1)
    sd = np.array([2.0, 0.5])
    draws = rng.normal(size=(400, 2)) * sd + np.array([3.0, -1.0])  # under JOINT_POINTS: all
    assert metrics.w1_marginal(draws, draws, sd) == pytest.approx(0.0, abs=1e-12)
    assert metrics.w1_joint(draws, draws) == pytest.approx(0.0, abs=1e-12)
    # the reference moved by 0.5 sd in every coordinate: mean error 0.5, sd ratio 1, and the
    # 1-D W1 of a translated sample is the translation
    reference_mean = draws.mean(0) + 0.5 * sd
    reference_sd = draws.std(0, ddof=1)
    errors = metrics.moment_errors(draws, reference_mean, reference_sd)
    assert errors["mean_error"] == pytest.approx([0.5 * 2.0 / reference_sd[0],
                                                  0.5 * 0.5 / reference_sd[1]])
    assert errors["sd_ratio"] == pytest.approx([1.0, 1.0])
    shifted = draws + 0.5 * sd
    assert metrics.w1_marginal(draws, shifted, sd) == pytest.approx(0.5)
    # joint W1 of a translation by v is |v| (a translation is an optimal plan for convex cost)
    assert metrics.w1_joint(draws, shifted) == pytest.approx(np.linalg.norm(0.5 * sd), rel=1e-9)


def test_pareto_k_of_an_exact_proposal_is_small_and_of_a_narrow_one_large():
    rng = np.random.default_rng(2)
    theta = rng.normal(size=4000)
    exact = stats.norm.logpdf(theta) - stats.norm.logpdf(theta)  # q = p: equal weights
    noisy = stats.norm.logpdf(theta, scale=1.0) - stats.norm.logpdf(theta, scale=1.05)
    assert metrics.pareto_k(noisy) < 0.5
    assert not np.isfinite(metrics.pareto_k(exact)) or metrics.pareto_k(exact) < 0.5
    narrow = rng.normal(scale=0.3, size=4000)  # N(0, 0.3²) proposing a Student-t(2) target
    weights = stats.t.logpdf(narrow, df=2) - stats.norm.logpdf(narrow, scale=0.3)
    assert metrics.pareto_k(weights) > 0.7


def test_nuts_agreement_accepts_draws_of_the_reference_and_rejects_shifted_ones():
    rng = np.random.default_rng(3)
    mean, sd = np.array([1.0, -2.0, 0.0]), np.array([1.0, 0.1, 5.0])
    chains = rng.normal(size=(4, 500, 3)) * sd + mean
    names = ("a", "b", "c")
    assert metrics.nuts_agreement(chains, mean, sd, names)["agrees"]
    moved = metrics.nuts_agreement(chains + np.array([0.0, 0.03, 0.0]), mean, sd, names)
    assert not moved["agrees"] and moved["worst_parameter"] == "b"
    wide = metrics.nuts_agreement((chains - mean) * 1.2 + mean, mean, sd, names)
    assert not wide["agrees"]


# --- one cell through the SVI strategy ---------------------------------------------------------


def test_a_full_covariance_guide_on_a_gaussian_posterior_matches_the_closed_forms():
    posterior = regression_posterior()
    record = runner.run_cell(posterior, "auto-mvn", Budget(steps=800, lr=0.05, draws=2000))
    assert record["status"] == "ok", record["error"]
    assert record["mean_error_max"] < 0.15
    assert 0.8 < record["sd_ratio_min"] and record["sd_ratio_max"] < 1.25
    assert record["pareto_k"] < 0.5  # the guide's family holds the posterior
    # the log-weights' log-mean-exp is the evidence: closed form within Monte Carlo error
    assert record["info"]["log_evidence"] == pytest.approx(posterior.extra["log_evidence"],
                                                           abs=0.05)
    assert record["info"]["elbo"] <= record["info"]["log_evidence"] + 1e-9
    assert record["gradient_evaluations"] == record["info"]["steps"] >= 1
    assert record["w1_joint_sd"] < 3 * record["w1_joint_floor_sd"]


# --- the command -------------------------------------------------------------------------------


def _bench(capsys, out: Path, *extra: str) -> str:
    code = main(["bench", "--suite", f"{HERE}:suite", "--out", str(out), *extra])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_one_cell_end_to_end_then_a_rerun_skips_it(tmp_path, capsys, monkeypatch):
    out = tmp_path / "bench"
    printed = _bench(capsys, out, "--strategies", "auto-normal", "--steps", "300",
                     "--draws", "500")
    cell = json.loads((out / "cells" / "linreg" / "auto-normal.json").read_text())
    assert cell["status"] == "ok" and cell["settings"]["steps"] == 300
    assert cell["draws"] == 500 and cell["gradient_evaluations"] <= 300
    lines = (out / "results.csv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("linreg,auto-normal,ok,")
    assert (out / "summary.png").stat().st_size > 10_000
    assert "auto-normal" in (out / "report.html").read_text()
    assert printed.splitlines()[1].split()[:3] == ["auto-normal", "1", "0"]

    def refuse(*args, **kwargs):
        raise AssertionError("a finished cell was run again")
    monkeypatch.setattr(runner, "run_cell", refuse)
    _bench(capsys, out, "--strategies", "auto-normal", "--steps", "300", "--draws", "500")
    assert json.loads((out / "cells" / "linreg" / "auto-normal.json").read_text()) == cell
    (out / "results.csv").unlink()  # the report of the written cells, nothing run
    _bench(capsys, out, "--strategies", "auto-normal", "--steps", "300", "--draws", "500",
           "--report-only")
    assert (out / "results.csv").read_text().splitlines() == lines
    with pytest.raises(AssertionError, match="run again"):  # other settings: run again
        _bench(capsys, out, "--strategies", "auto-normal", "--steps", "301", "--draws", "500")


def test_list_prints_one_posterior_a_line(capsys):
    assert main(["bench", "--suite", f"{HERE}:suite", "--list"]) == 0
    assert capsys.readouterr().out == "linreg\n"
    from zoo import posteriordb

    assert main(["bench", "--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert listed == list(posteriordb.names()) and len(listed) >= 20


def test_unknown_posterior_or_strategy_is_one_line_and_exit_2(tmp_path, capsys):
    for flag, value in (("--posteriors", "nope"), ("--strategies", "svgd")):
        code = main(["bench", "--suite", f"{HERE}:suite", "--out", str(tmp_path), flag, value])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1 and value in err


def test_the_flow_guide_starts_as_the_generic_gaussians_start():
    """Before training, the bench's flow is the identity on N(start, 0.1²), the start being
    the generic guides' (the prior's median): its draws and its log-density are those of that
    normal (a flow that starts elsewhere fitted eight schools 5 sds off)."""
    from inference.bench.fits import declared, per_particle_log_density
    from inference.sampling import vectorized

    posterior = regression_posterior()
    spec = declared(posterior)
    config = spec.make_config(dim=2)
    with pyro.get_param_store().scope(), torch.no_grad():
        pyro.set_rng_seed(0)
        guide = spec.guides["flow"](spec.make_model(config), config)
        trace = pyro.poutine.trace(vectorized(guide, 4000)).get_trace(posterior.x)
    beta = trace.nodes["beta"]["value"].reshape(4000, 2).numpy()
    start = guide.joint.shift_scale.loc.detach().numpy()  # Pyro's init_to_median: 15 draws
    assert np.abs(beta.mean(0) - start).max() < 0.01
    assert beta.std(0) == pytest.approx([0.1, 0.1], rel=0.05)
    scale = guide.joint.shift_scale._scale().detach().numpy()  # 0.1 + 1e-6
    expected = stats.norm.logpdf(beta, loc=start, scale=scale).sum(-1)
    density = per_particle_log_density(trace, 4000).detach().numpy()
    assert density == pytest.approx(expected, abs=1e-6)


# --- the schedule: longest expected cell first -------------------------------------------------


def test_the_default_suite_is_scheduled_longest_first_from_the_measured_seconds():
    from inference.bench import costs
    from inference.bench.fits import STRATEGIES
    from zoo import posteriordb

    cells = [(name, strategy) for name in posteriordb.names() for strategy in STRATEGIES]
    order = runner.schedule(cells, Budget())
    seconds = [row[2] for row in order]
    assert sorted(order) == sorted((*cell, costs.SECONDS[cell[0]][STRATEGIES.index(cell[1])],
                                    "measured") for cell in cells)
    assert seconds == sorted(seconds, reverse=True)
    assert order[0][:2] == ("gp_pois_regr-gp_pois_regr", "nuts")
    # on the measured seconds, two workers taking cells in this order end within 1% of the
    # lower bound max(total / 2, longest cell); the suite order (NUTS first per posterior)
    # started the 471-s cell last and ended ~9% later
    bound = max(sum(seconds) / 2, max(seconds))
    suite_order = [costs.SECONDS[n][STRATEGIES.index(s)] for n in posteriordb.names()
                   for s in ("nuts", "flow", "auto-mvn", "auto-lowrank", "auto-normal")]
    assert runner.makespan(seconds, 2) <= 1.01 * bound
    assert runner.makespan(suite_order, 2) > 1.05 * bound


def test_longest_first_is_within_graham_bound_of_the_best_split():
    """List scheduling in the schedule's order against every assignment of 8 random cells to
    2 workers (brute force): at most (4/3 - 1/6) times the optimum (Graham 1969)."""
    import itertools

    rng = np.random.default_rng(4)
    for _ in range(20):
        seconds = rng.lognormal(2.5, 1.0, size=8)
        cells = [(f"p{k}", "nuts") for k in range(8)]
        table = dict(zip([c[0] for c in cells], seconds, strict=True))
        ordered = [table[name] for name, _ in
                   sorted(cells, key=lambda cell: -table[cell[0]])]
        best = min(max(sum(s for s, side in zip(seconds, split, strict=True) if side),
                       sum(s for s, side in zip(seconds, split, strict=True) if not side))
                   for split in itertools.product((0, 1), repeat=8))
        assert runner.makespan(ordered, 2) <= (4 / 3 - 1 / 6) * best + 1e-9
        assert runner.makespan(ordered, 2) >= best - 1e-9


def test_a_recorded_cell_gives_its_own_seconds_scaled_to_the_budget(tmp_path):
    from inference.bench import costs

    budget = Budget(steps=2000)
    path = runner.cell_path(tmp_path, "linreg", "auto-normal")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "failed", "wall_seconds": 500.0,
                                "settings": runner.settings_of(Budget(steps=1000),
                                                               "auto-normal")}))
    assert costs.estimate("linreg", "auto-normal", budget, path) == (1000.0, "recorded")
    # a posterior of the table: its measured seconds, SVI scaled by steps, NUTS by iterations
    svi, *_, nuts_seconds = costs.SECONDS["arK-arK"]
    assert costs.estimate("arK-arK", "auto-normal", budget) == (svi * 2000 / 3000, "measured")
    nuts = Budget(nuts_warmup=100, nuts_samples=350, nuts_chains=4)
    assert costs.estimate("arK-arK", "nuts", nuts) == (nuts_seconds, "measured")  # 4x450 = 2x900
    assert costs.estimate("linreg", "flow", Budget()) == (costs.TYPICAL["flow"], "typical")
    assert costs.estimate("linreg", "nuts", Budget(), tmp_path / "none.json")[1] == "typical"


def test_finished_cells_are_skipped_and_the_rest_run_longest_first(tmp_path, monkeypatch):
    from inference.bench.fits import STRATEGIES

    budget = Budget(steps=300, draws=200)
    posteriors = suite()
    for strategy, status, seconds in (("auto-lowrank", "ok", 5.0),
                                      ("auto-normal", "failed", 900.0)):
        path = runner.cell_path(tmp_path, "linreg", strategy)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"posterior": "linreg", "strategy": strategy,
                                    "status": status, "wall_seconds": seconds,
                                    "settings": runner.settings_of(budget, strategy)}))
    ran = []

    def fake(posterior, strategy, chosen):
        ran.append(strategy)
        return {"posterior": posterior.name, "strategy": strategy, "status": "ok",
                "wall_seconds": 1.0, "settings": runner.settings_of(chosen, strategy)}
    monkeypatch.setattr(runner, "run_cell", fake)
    records = runner.run_grid(posteriors, STRATEGIES, budget, tmp_path)
    # the failed cell's own 900 s first, then the typical seconds: NUTS (not scaled by the
    # SVI steps), the flow, auto-mvn; the finished auto-lowrank not run again
    assert ran == ["auto-normal", "nuts", "flow", "auto-mvn"]
    assert [r["strategy"] for r in records] == list(STRATEGIES)  # the grid's order
    assert records[1]["wall_seconds"] == 5.0  # read back


def test_two_jobs_give_the_same_cells_as_one(tmp_path):
    """The order and the processes change nothing but the seconds: every cell is seeded."""
    budget = Budget(steps=50, draws=100)
    strategies = ("auto-normal", "auto-mvn")
    one = runner.run_grid(suite(), strategies, budget, tmp_path / "one", jobs=1)
    two = runner.run_grid(suite(), strategies, budget, tmp_path / "two", jobs=2,
                          suite=f"{HERE}:suite")
    timing = {"seconds", "wall_seconds", "info", "where"}
    for a, b in zip(one, two, strict=True):
        assert a["status"] == b["status"] == "ok", (a.get("error"), b.get("error"))
        assert {k: v for k, v in a.items() if k not in timing} == {
            k: v for k, v in b.items() if k not in timing}
        assert (a["info"]["steps"], a["info"]["elbo"]) == (b["info"]["steps"],
                                                           b["info"]["elbo"])
