"""PSIS k̂ on cases whose answer is known: a proposal equal to the target gives k̂ < 0.5; a
Gaussian proposal narrower than a Student-t target gives k̂ > 0.7 (the target's tails are
heavier than the proposal's: the weights' variance is infinite)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from inference import diagnostics


def _log_weights(target, proposal, samples, rows, seed, dim=1):
    """log p/q of ``samples`` draws of q for each of ``rows`` rows, over ``dim`` independent
    coordinates."""
    draws = proposal.rvs(size=(samples, rows, dim), random_state=np.random.default_rng(seed))
    return (target.logpdf(draws) - proposal.logpdf(draws)).sum(-1)


def test_a_proposal_equal_to_the_target_has_small_k():
    target = stats.norm(0.5, 2.0)
    summary = diagnostics.summarize(_log_weights(target, target, 2000, 20, seed=0))
    # equal densities: every weight is 1, k̂ is -inf (nothing to fit), far below 0.5
    assert summary.max < 0.5 and summary.share_above == 0 and summary.trusted


def test_a_slightly_wider_proposal_has_small_k():
    summary = diagnostics.summarize(
        _log_weights(stats.norm(0, 1), stats.norm(0, 1.2), 4000, 20, seed=1))
    assert summary.max < 0.5 and summary.trusted


def test_a_too_narrow_gaussian_for_a_student_t_target_has_large_k():
    # ten coordinates, each a Student-t(3) target under a N(0, 0.7²) proposal: p/q grows like
    # exp(x²/2σ²) in the tails q rarely visits; k̂ estimated from 4000 draws per row
    summary = diagnostics.summarize(
        _log_weights(stats.t(df=3), stats.norm(0, 0.7), 4000, 30, seed=2, dim=10))
    assert summary.median > diagnostics.THRESHOLD and not summary.trusted
    assert summary.share_above > 0.8


def test_torch_log_weights_and_one_joint_estimate():
    draws = _log_weights(stats.t(df=3), stats.norm(0, 0.7), 4000, 1, 3, dim=10)
    weights = torch.as_tensor(draws[:, 0])
    summary = diagnostics.summarize(weights)
    assert summary.rows == 1 and summary.samples == 4000 and summary.max > 0.7
    assert set(summary.record()) == {"pareto_k", "pareto_k_median",
                                     "pareto_k_share_above_0.7", "pareto_k_rows"}


def test_too_few_samples_are_refused():
    with pytest.raises(ValueError, match="K >= 2"):
        diagnostics.pareto_k(np.zeros((1, 5)))


def test_one_draw_carrying_all_the_weight_is_an_infinite_k():
    # the others 800 nats below: 0 in float64, no tail left to fit; the proposal is hopeless
    weights = np.full((1000, 2), -800.0)
    weights[0, 0] = 0.0
    weights[:, 1] = np.random.default_rng(0).normal(size=1000) * 0.1  # a good row beside it
    k = diagnostics.pareto_k(weights)
    assert k[0] == np.inf and k[1] < 0.5
    summary = diagnostics.summarize(weights)
    assert summary.max == np.inf and summary.share_above == 0.5 and not summary.trusted


# --- k̂ in the yardstick's record ----------------------------------------------------------


def test_the_yardstick_keeps_evenly_spread_rows_for_k():
    from inference.evaluate import PARETO_K_ROWS, ParetoRows

    count = 2 * PARETO_K_ROWS + 500
    weights = torch.randn(50, count, generator=torch.Generator().manual_seed(0))
    kept = ParetoRows(count)
    for start in range(0, count, 777):  # chunks as the yardstick passes them
        kept(weights[:, start:start + 777])
    chosen = torch.cat(kept.parts, -1)
    assert torch.equal(chosen, weights[:, ::kept.stride])
    assert chosen.shape[-1] <= PARETO_K_ROWS
    assert kept.record() == diagnostics.summarize(weights[:, ::kept.stride]).record()


def test_an_importance_sampled_fit_records_k_and_an_exact_one_says_why_not():
    from inference import api

    sampled = api.fit("dglvm", inference="svi", steps=5, iwae_samples=50).record
    rows = sampled["train_rows_evaluated"]
    assert sampled["pareto_k_rows"] == len(range(0, rows, math.ceil(rows / 1000)))
    assert 0.0 <= sampled["pareto_k_share_above_0.7"] <= 1.0
    assert sampled["pareto_k_median"] <= sampled["pareto_k"]
    exact = api.fit("gmm", data="old-faithful", inference="em", components=2).record
    assert exact["pareto_k"] is None and "exact" in exact["pareto_k_note"]
