"""Online (stepwise) EM (inference/online_em.py, the "online-em" strategy and
GaussianMixture.partial_fit): one pass over a million rows reaches batch EM, a stream of
partial_fit calls is the same stepwise EM, the step-size schedule averages exactly, the data
are read one minibatch at a time, and the command line fits with it."""

import dataclasses
import json
import math
import time
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import (
    check_estimators_partial_fit_n_features,
    parametrize_with_checks,
)

from inference import strategies
from inference.catalog import get_model
from inference.cli import main
from inference.em import fit_em
from inference.estimators_sklearn import GaussianMixture, load, starts
from inference.online_em import (
    StepwiseState,
    default_batch_size,
    fit_online_em,
    run_online_em,
    step_size,
    stepwise_update,
)
from zoo import gmm
from zoo.errors import InputError

SPEC = get_model("gmm")


def mixture(num_data: int, seed: int = 2, dtype=torch.float32):
    """Four overlapping full-covariance components in 3-D (EM needs a few dozen iterations)."""
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, 3, generator=g, dtype=torch.float64) * 3
    factors = torch.randn(4, 3, 3, generator=g, dtype=torch.float64) * 0.5
    covariance = factors @ factors.transpose(-1, -2) + 0.5 * torch.eye(3, dtype=torch.float64)
    truth = {"weights": torch.tensor([0.4, 0.3, 0.2, 0.1], dtype=torch.float64),
             "means": means, "scale_tril": torch.linalg.cholesky(covariance)}
    config = gmm.GMMConfig(dim=3, components=4)
    x, _ = gmm.sample(config, truth, num_data, torch.Generator().manual_seed(seed))
    return config, x.to(dtype)


def mean_log_likelihood(config, params, x) -> float:
    params = {k: v.to(x) for k, v in params.items()}
    return float(SPEC.log_marginal(config, params, x).double().mean())


# --- the headline: one pass over a million rows --------------------------------------------


def test_one_pass_over_a_million_rows_reaches_batch_em(tmp_path):
    """Stepwise EM with its defaults (α = 0.6, 1000-row minibatches: 1000 updates), reading a
    memory-mapped file one minibatch at a time, ends within 1e-2 nats per datapoint of batch
    EM's log-likelihood on the same 10^6 rows (measured: about 1e-4)."""
    config, x = mixture(10**6)
    path = tmp_path / "rows.f32"
    x.numpy().tofile(path)
    mapped = torch.from_numpy(np.memmap(path, dtype=np.float32, mode="c", shape=tuple(x.shape)))
    start = time.perf_counter()
    online = fit_online_em(SPEC, config, mapped, seed=0)
    online_seconds = time.perf_counter() - start
    batch = fit_em(SPEC, config, x, seed=0)
    assert batch.converged
    gap = mean_log_likelihood(config, batch.params, x) - mean_log_likelihood(
        config, online.params, x)
    assert online.info["passes"] == 1 and online.info["updates"] == 1000 == online.steps
    assert online.info["batch_size"] == 1000 and online.info["step_decay"] == 0.6
    assert abs(gap) < 1e-2, (f"online EM ends {gap:.2e} nats per datapoint below batch EM "
                             f"({batch.steps} EM iterations; online {online_seconds:.1f} s)")
    assert not online.converged and online.info["done"]  # one pass: read once, not "converged"
    assert len(online.history["log_likelihood"]) == 1000


class RowsOnly:
    """Data that allow ``shape``, ``dim()``, ``device``, ``dtype`` and row indexing only, and
    record how many rows every read takes."""

    def __init__(self, x: torch.Tensor):
        self._x, self.reads = x, []
        self.shape, self.device, self.dtype, self.is_cuda = x.shape, x.device, x.dtype, False

    def dim(self) -> int:
        return self._x.dim()

    def __getitem__(self, index):
        rows = self._x[index]
        self.reads.append(rows.shape[0])
        return rows


def test_online_em_reads_the_data_one_minibatch_at_a_time():
    config, x = mixture(5000, dtype=torch.float64)
    guarded = RowsOnly(x)
    result = fit_online_em(SPEC, config, guarded, batch_size=200, init_size=500, passes=2,
                           seed=3, tol=1.0)
    assert max(guarded.reads) == 500 and guarded.reads[1:] == [200] * 50  # init, 2 passes
    assert result.steps == 50 and result.converged  # tol=1: two passes agree to a nat
    # and the same fit as on the tensor itself
    plain = fit_online_em(SPEC, config, x, batch_size=200, init_size=500, passes=2, seed=3,
                          tol=1.0)
    for name, value in plain.params.items():
        torch.testing.assert_close(result.params[name], value, rtol=0, atol=0)


def test_defaults_and_the_record():
    assert default_batch_size(10**6) == 1000 and default_batch_size(217) == 32
    assert default_batch_size(10_000) == 100 and default_batch_size(5) == 5
    config, x = mixture(3000, dtype=torch.float64)
    result = fit_online_em(SPEC, config, x, seed=0)
    info = result.info
    assert info["batch_size"] == 32 and info["updates"] == 94 == result.steps
    assert info["init_size"] == 3000 and info["warmup"] == 80 and info["m_steps"] == 92
    assert info["final_step_size"] == pytest.approx(94 ** -0.6)
    json.dumps(info)  # JSON-serializable, as run.json needs
    assert result.inference == "online-em" and result.device == "cpu"


# --- partial_fit is the same stepwise EM ---------------------------------------------------


def test_a_stream_of_partial_fits_is_fit_online_em_on_the_same_batches():
    """partial_fit on consecutive 100-row minibatches, the first one the start (init_params=
    "kmeans"), gives fit_online_em's parameters and history over the same minibatches in the
    same order (shuffle=False, the start from the first minibatch): bit for bit, since both
    run :func:`stepwise_update` with the same defaults."""
    _, x = mixture(2000, seed=5, dtype=torch.float64)
    X = x.numpy()
    config = gmm.GMMConfig(dim=3, components=4)
    # the estimator's start is scikit-learn's (numpy RandomState(7)) on the first minibatch
    first = starts.start("kmeans", config, x[:100], np.random.RandomState(7))
    reference = fit_online_em(SPEC, config, x, batch_size=100, init_size=100, shuffle=False,
                              init=first, seed=7)
    stream = GaussianMixture(4, inference="online-em", init_params="kmeans", random_state=7)
    for begin in range(0, 2000, 100):
        stream.partial_fit(X[begin:begin + 100])
    assert stream.n_steps_ == stream.n_iter_ == 20 == reference.steps
    for name, value in reference.params.items():
        torch.testing.assert_close(stream.params_[name], value, rtol=0, atol=0)
    assert stream.history_["log_likelihood"] == reference.history["log_likelihood"]
    assert stream.statistics_.num_data == pytest.approx(1.0)  # one datapoint's statistics
    assert not stream.converged_
    # fit() by online EM is the strategy's fit (its shuffled minibatches, same defaults)
    fitted = GaussianMixture(4, inference="online-em", batch_size=100, random_state=7).fit(X)
    strategy = fit_online_em(  # the strategy's defaults, from the estimator's start
        SPEC, config, x, batch_size=100, seed=7,
        init=lambda config, rows, _: starts.start("kmeans", config, rows,
                                                  np.random.RandomState(7)))
    for name, value in strategy.params.items():
        torch.testing.assert_close(fitted.params_[name], value, rtol=0, atol=0)
    # partial_fit continues a fit: one more update, the running statistics carried on
    fitted.partial_fit(X[:100])
    assert fitted.n_steps_ == 21 and len(fitted.history_["log_likelihood"]) == 21


def test_partial_fit_after_batch_em_continues_from_its_parameters():
    _, x = mixture(1000, dtype=torch.float64)
    X = x.numpy()
    model = GaussianMixture(4, random_state=0).fit(X)
    assert not hasattr(model, "partial_fit")  # EM itself takes no minibatches
    before = model.score(X)
    model.set_params(inference="online-em")
    model.partial_fit(X[:500])
    assert model.n_steps_ == 1 and model.inference_ == "online-em"
    assert abs(model.score(X) - before) < 0.05  # one update on half the rows: near EM's
    model.partial_fit(X[500:])
    assert model.n_steps_ == 2


# --- the step-size schedule ----------------------------------------------------------------


def fixed(spec, params):
    """``spec`` with an M-step that always returns ``params``: the parameters never move."""
    return dataclasses.replace(spec, em=dataclasses.replace(
        spec.em, m_step=lambda config, x, statistics: params))


def schedule_cases(count: int = 25):
    """(minibatches, rows per minibatch, seed): drawn once, from a seeded stream."""
    rng = np.random.default_rng(20090101)
    return [(int(rng.integers(2, 9)), int(rng.integers(1, 41)), int(rng.integers(2**16)))
            for _ in range(count)]


@pytest.mark.parametrize("batches, rows, seed", schedule_cases())
def test_step_size_one_over_t_averages_the_minibatch_statistics(batches, rows, seed):
    """With α = 1 and t0 = 0 (η_t = 1/t), under fixed parameters, the running statistics after
    t updates are the plain average of the t minibatches' per-datapoint statistics: the
    statistics of all their rows divided by their number (25 random sizes and data)."""
    config, x = mixture(batches * rows, seed=seed, dtype=torch.float64)
    _, other = mixture(200, seed=seed + 1, dtype=torch.float64)
    params = SPEC.em.init(config, other, torch.Generator().manual_seed(seed), "random")
    spec = fixed(SPEC, params)
    state = StepwiseState(params)
    for t in range(batches):
        assert step_size(t + 1, 1.0, 0.0) == pytest.approx(1.0 / (t + 1))
        stepwise_update(spec, config, state, x[t * rows:(t + 1) * rows], step_decay=1.0,
                        step_offset=0.0, warmup=0)
    assert state.m_steps == batches  # the schedule, not the warm-up's exact average, ran
    whole, _ = SPEC.em.e_step(config, params, x)
    average = SPEC.em.combine([whole], [1.0 / x.shape[0]])
    running = state.statistics
    torch.testing.assert_close(running.counts, average.counts, rtol=1e-10, atol=1e-12)
    assert running.num_data == pytest.approx(1.0, abs=1e-12)
    ours, theirs = (SPEC.em.m_step(config, None, s) for s in (running, average))
    for name, value in theirs.items():
        torch.testing.assert_close(ours[name], value, rtol=1e-8, atol=1e-9)


def test_other_step_sizes_keep_one_datapoint_and_favour_recent_minibatches():
    config, x = mixture(400, dtype=torch.float64)
    params = SPEC.em.init(config, x, torch.Generator().manual_seed(0), "random")
    spec = fixed(SPEC, params)
    state = StepwiseState(params)
    for t in range(4):
        stepwise_update(spec, config, state, x[t * 100:(t + 1) * 100], step_decay=0.6)
    # weights of minibatches 1..4: ∏(1 - η) η with η_1 = 1, η_t = t^-0.6
    eta = [1.0] + [t ** -0.6 for t in (2, 3, 4)]
    weights = [eta[i] * math.prod(1 - e for e in eta[i + 1:]) for i in range(4)]
    assert sum(weights) == pytest.approx(1.0) and weights == sorted(weights)
    parts = [SPEC.em.e_step(config, params, x[t * 100:(t + 1) * 100])[0] for t in range(4)]
    expected = SPEC.em.combine(parts, [w / 100 for w in weights])
    torch.testing.assert_close(state.statistics.counts, expected.counts, rtol=1e-10, atol=0)
    assert state.statistics.num_data == pytest.approx(1.0)


def test_warm_up_averages_exactly_and_delays_the_m_step():
    config, x = mixture(300, dtype=torch.float64)
    start = SPEC.em.init(config, x, torch.Generator().manual_seed(0), "random")
    state = StepwiseState(dict(start))
    for t in range(3):
        stepwise_update(SPEC, config, state, x[t * 50:(t + 1) * 50], warmup=150)
        assert (state.m_steps == 0) == (t < 2)
    # the statistics are those of the 150 rows at the start, exactly: an EM step from it
    whole, _ = SPEC.em.e_step(config, start, x[:150])
    expected = SPEC.em.m_step(config, None, whole)
    for name, value in expected.items():
        torch.testing.assert_close(state.params[name], value, rtol=1e-9, atol=1e-10)


# --- options and errors --------------------------------------------------------------------


@pytest.mark.parametrize("options, words", [
    ({"step_decay": 0.5}, "--step-decay 0.5 must be in (0.5, 1]"),
    ({"step_decay": 1.2}, "--step-decay 1.2 must be in (0.5, 1]"),
    ({"passes": 0}, "--passes 0 must be at least 1"),
    ({"init": "nope"}, "unknown EM init 'nope'"),
])
def test_bad_options_are_input_errors_naming_them(options, words):
    config, x = mixture(100)
    with pytest.raises(InputError, match=words.replace("(", r"\(").replace("]", r"\]")):
        fit_online_em(SPEC, config, x, **options)


def test_the_strategy_applies_to_mixtures_with_combining_statistics():
    online = strategies.strategies()["online-em"]
    assert online.applies(SPEC) and not online.applies(get_model("dglvm"))
    assert [c.slug for c in online.cells(SPEC, None, None, None)] == ["online-em"]
    assert strategies.get(None, SPEC).name == "em"  # EM stays the mixture's default
    with pytest.raises(InputError, match="--passes 0 must be at least 1"):
        strategies.make_options(online.Options, {"passes": 0}, owner="--inference online-em")


# --- the command line ----------------------------------------------------------------------

CLI_TOLERANCE = 0.02  # nats per datapoint: 8 updates (2 passes of 64-row minibatches)


def test_the_command_line_fits_old_faithful_near_em(capsys, tmp_path):
    """`lvm-zoo fit gmm --inference online-em --batch-size 64 --passes 2` on the default data
    (217 training rows of Old Faithful: 8 updates) ends within CLI_TOLERANCE of `--inference
    em` (measured: 0.008 nats per datapoint)."""
    rows = {}
    for name, extra in (("online-em", ["--batch-size", "64", "--passes", "2"]), ("em", [])):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)  # two passes still move
            code = main(["fit", "gmm", "--inference", name, *extra, "--out",
                         str(tmp_path / name), "--json"])
        out, err = capsys.readouterr()
        assert code == 0, err
        rows[name] = json.loads(out)
    online, em = rows["online-em"], rows["em"]
    assert online["inference"] == "online-em" and online["steps"] == 8
    gap = em["train_log_likelihood"] - online["train_log_likelihood"]
    assert abs(gap) < CLI_TOLERANCE, f"online EM ends {gap:.4f} nats per datapoint below EM"
    run = json.loads((tmp_path / "online-em" / "run.json").read_text())
    assert run["options"] == {"batch_size": 64, "passes": 2}
    assert run["info"]["batch_size"] == 64 and run["info"]["updates"] == 8
    # the run folder loads as scikit-learn's estimator, which continues the stream
    model = load(tmp_path / "online-em")
    assert model.inference == "online-em" and (model.batch_size, model.passes) == (64, 2)
    assert model.score(model.sample(200)[0]) > -6
    model.partial_fit(model.sample(64)[0])
    assert model.n_steps_ == 1  # a run folder keeps no statistics: fresh ones


def test_the_command_line_refuses_a_bad_step_decay(capsys, tmp_path):
    code = main(["fit", "gmm", "--inference", "online-em", "--step-decay", "0.3", "--out",
                 str(tmp_path / "bad")])
    assert code == 2 and "--step-decay 0.3 must be in (0.5, 1]" in capsys.readouterr().err


# --- scikit-learn's estimator checks for the online estimator ------------------------------


@parametrize_with_checks([GaussianMixture(n_components=2, inference="online-em",
                                          random_state=0)])
def test_sklearn_checks_of_the_online_estimator(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


def test_partial_fit_refuses_a_change_of_columns():
    """scikit-learn's check for partial_fit (run for classifiers, regressors and clusterers
    only, so not by parametrize_with_checks on a density estimator)."""
    check_estimators_partial_fit_n_features(
        "GaussianMixture", GaussianMixture(2, inference="online-em", random_state=0))


def test_run_state_is_returned_for_continuing_the_stream():
    config, x = mixture(1000, dtype=torch.float64)
    result, state = run_online_em(SPEC, config, x, batch_size=100, seed=0)
    assert state.updates == result.steps == 10 and state.rows == 1000
    stepwise_update(SPEC, config, state, x[:100])
    assert state.updates == 11
