"""Simulation-based calibration (inference/calibrate.py) on the conjugate normal-normal model
of tests/data/bayes_models.py, whose posterior is known: exact draws give uniform ranks by
the chi-square test at a fixed seed, a posterior half as wide fails it (too many extreme
ranks) and a shifted one fails the symmetry check; the SVI path runs at a tiny size, alone
and in two processes, through the command line."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from inference import calibrate as sbc
from inference.catalog import get_model
from inference.cli import main
from zoo.errors import InputError

MODEL = str(Path(__file__).resolve().parents[1] / "data" / "bayes_models.py") + ":normal-normal"
PRIOR_SCALE, NOISE = 2.0, 0.7  # as in tests/data/bayes_models.py
TREND = str(Path(__file__).resolve().parents[1] / "data" / "sbc_models.py") + ":linear-trend"
TREND_NOISE = 0.5  # as in tests/data/sbc_models.py
SIZES = {"replicates": 200, "rows": 10, "draws": 99, "bins": 10, "seed": 0}


@dataclass(frozen=True)
class NormalMeanPosterior:
    """The exact posterior of mu, N(m, v) with 1/v = 1/s0² + N/s², m = v Σx / s², its sd
    scaled by ``sd_scale`` and its mean moved by ``shift`` posterior sds."""

    sd_scale: float = 1.0
    shift: float = 0.0
    calls: list | None = None

    def __call__(self, spec, config, x, *, seed, num_draws):
        if self.calls is not None:
            self.calls.append(seed)
        precision = PRIOR_SCALE ** -2 + x.shape[0] / NOISE ** 2
        sd = precision ** -0.5
        mean = x.sum() / NOISE ** 2 / precision + self.shift * sd
        noise = torch.randn(num_draws, generator=torch.Generator().manual_seed(seed))
        return {"mu": mean + self.sd_scale * sd * noise}


@dataclass(frozen=True)
class TrendPosterior:
    """The linear trend's exact posterior N(Λ⁻¹ Aᵀx / s², Λ⁻¹), Λ = I + AᵀA / s², A = [1, t];
    or, with ``mean_field``, the best factorized Gaussian by KL(q || p): the same means and
    variances 1 / Λ_ii, narrower than the marginals where the parameters are correlated."""

    mean_field: bool = False

    def __call__(self, spec, config, x, *, seed, num_draws):
        design = torch.stack([torch.ones(x.shape[0]), torch.linspace(0, 1, x.shape[0])], 1)
        precision = torch.eye(2) + design.T @ design / TREND_NOISE ** 2
        covariance = torch.linalg.inv(precision)
        mean = covariance @ design.T @ x[:, 0] / TREND_NOISE ** 2
        if self.mean_field:
            covariance = torch.diag(1 / precision.diagonal())
        noise = torch.randn(num_draws, 2, generator=torch.Generator().manual_seed(seed))
        return {"beta": mean + noise @ torch.linalg.cholesky(covariance).T}


@pytest.fixture(scope="module")
def spec():
    return get_model(MODEL)


def test_exact_posterior_gives_uniform_ranks(spec):
    result = sbc.calibrate(spec, fit=NormalMeanPosterior(), **SIZES)
    (mu,) = result.parameters
    assert mu.name == "mu" and result.replicates == 200 and sum(mu.counts) == 200
    assert mu.p_value >= sbc.ALPHA and mu.uniform and result.uniform
    assert mu.verdict.startswith("uniform")
    # the statistic is Pearson's: scipy's on the same counts
    reference = stats.chisquare(mu.counts, mu.expected)
    assert mu.chi_square == pytest.approx(reference.statistic)
    assert mu.p_value == pytest.approx(reference.pvalue)


def test_too_narrow_posterior_fails_with_extreme_ranks(spec):
    exact = sbc.calibrate(spec, fit=NormalMeanPosterior(), **SIZES)
    narrow = sbc.calibrate(spec, fit=NormalMeanPosterior(sd_scale=0.5), **SIZES)
    (mu,) = narrow.parameters
    assert mu.p_value < 1e-6 and not narrow.uniform
    # the outer bins are q's outer tenths, beyond m ± 1.28 · (sd / 2), while θ - m ~ N(0, sd²):
    # P(|Z| > 0.64) ≈ 0.52 of the ranks land there, not 0.2
    expected = 2 * stats.norm.sf(0.5 * stats.norm.isf(0.1))
    assert mu.extreme_share == pytest.approx(expected, abs=0.1)
    assert mu.extreme_share > 2.5 * exact.parameters[0].extreme_share
    assert "too narrow" in mu.verdict and "lean" not in mu.verdict


def test_shifted_posterior_fails_the_symmetry_check(spec):
    (mu,) = sbc.calibrate(spec, fit=NormalMeanPosterior(shift=1.0), **SIZES).parameters
    assert not mu.uniform and mu.symmetry_p < 0.01
    # θ lies above a posterior that sits one sd too high in only Φ(-1) ≈ 16% of cases
    assert mu.mean_rank < 0.35 and "ranks lean low" in mu.verdict
    assert "too narrow" not in mu.verdict  # one outer bin full, the other nearly empty


def test_mean_field_is_too_narrow_for_correlated_parameters():
    """Intercept and slope correlate about -0.83 a posteriori: the exact posterior's ranks of
    both components are uniform, the mean-field one (sds about 0.55 of the marginals') piles
    them into the outer bins."""
    trend = get_model(TREND)
    sizes = {**SIZES, "rows": 20}
    exact = sbc.calibrate(trend, fit=TrendPosterior(), **sizes)
    assert [p.name for p in exact.parameters] == ["beta[0]", "beta[1]"] and exact.uniform
    mean_field = sbc.calibrate(trend, fit=TrendPosterior(mean_field=True), **sizes)
    for check in mean_field.parameters:
        assert not check.uniform and check.extreme_share > 0.35
        assert "too narrow" in check.verdict


def test_uniformity_on_known_ranks():
    rng = np.random.default_rng(0)
    flat = sbc.uniformity(rng.integers(0, 100, 500).tolist(), draws=99, bins=10)
    assert flat.uniform and flat.df == 9 and flat.expected == [50.0] * 10
    u_shaped = sbc.uniformity([0, 99] * 30 + list(range(0, 100, 5)), draws=99, bins=10)
    assert not u_shaped.uniform and u_shaped.extreme_share == pytest.approx(64 / 80)
    # 7 bins over 100 rank values: unequal bins, expected counts in proportion
    uneven = sbc.uniformity(list(range(100)), draws=99, bins=7)
    assert sum(uneven.expected) == pytest.approx(100) and uneven.chi_square == pytest.approx(0)


def test_ranks_do_not_depend_on_the_order_and_resume_reuses_replicates(spec, tmp_path):
    calls: list[int] = []
    small = {**SIZES, "replicates": 6}
    first = sbc.calibrate(spec, fit=NormalMeanPosterior(calls=calls), out=tmp_path,
                          figure=False, **small)
    assert len(calls) == 6
    (tmp_path / "replicates" / "000002.json").unlink()
    (tmp_path / "replicates" / "000004.json").write_text("{trunc")  # a damaged file
    calls.clear()
    more = sbc.calibrate(spec, fit=NormalMeanPosterior(calls=calls), out=tmp_path,
                         figure=False, **{**small, "replicates": 8})
    assert len(calls) == 4  # replicates 2, 4 again and the new 6, 7
    assert more.parameters[0].ranks[:6] == first.parameters[0].ranks
    fresh = sbc.calibrate(spec, fit=NormalMeanPosterior(), **{**small, "replicates": 8})
    assert fresh.parameters[0].ranks == more.parameters[0].ranks
    record = json.loads((tmp_path / "calibration.json").read_text())
    assert record["parameters"][0]["ranks"] == more.parameters[0].ranks
    with pytest.raises(InputError, match="other settings"):
        sbc.calibrate(spec, fit=NormalMeanPosterior(), out=tmp_path, **{**small, "rows": 11})


def test_bad_inputs_are_refused_by_name(spec):
    with pytest.raises(InputError, match="--bins 200 exceeds the 100 rank values"):
        sbc.calibrate(spec, fit=NormalMeanPosterior(), replicates=5, draws=99, bins=200)
    with pytest.raises(InputError, match="no such guide"):
        sbc.calibrate(spec, guide="flow-of-nothing", replicates=5)
    with pytest.raises(InputError, match="no global latent"):
        sbc.calibrate("gmm", replicates=5)


def test_ranks_do_not_depend_on_the_number_of_processes(spec):
    small = {**SIZES, "replicates": 6}
    alone = sbc.calibrate(spec, fit=NormalMeanPosterior(sd_scale=0.8), **small)
    shared = sbc.calibrate(spec, fit=NormalMeanPosterior(sd_scale=0.8), jobs=2, **small)
    assert shared.parameters[0].ranks == alone.parameters[0].ranks
    assert len(set(alone.parameters[0].ranks)) > 3  # six replicates, six seeds


def test_svi_path_through_the_command_line(tmp_path, capsys):
    tiny = [MODEL, "--guide", "auto-normal", "--replicates", "2", "--rows", "8", "--draws",
            "19", "--bins", "4", "--steps", "40", "--stop-tol", "0", "--seed", "1",
            "--out", str(tmp_path), "--json"]
    assert main(["calibrate", *tiny]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["fit"] == {"guide": "auto-normal", "inference": "svi",
                             "options": {"steps": 40, "stop_tol": 0.0}}
    (mu,) = record["parameters"]
    assert record["replicates"] == 2 and all(0 <= r <= 19 for r in mu["ranks"])
    assert sum(mu["counts"]) == 2 and mu["df"] == 3
    assert (tmp_path / "ranks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(list((tmp_path / "replicates").glob("*.json"))) == 2
    # a rerun reuses both replicates and says the same
    assert main(["calibrate", *tiny]) == 0
    assert json.loads(capsys.readouterr().out)["parameters"][0]["ranks"] == mu["ranks"]
    assert main(["calibrate", *tiny[:-1], "--steps", "41"]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["calibrate", MODEL, "--guide", "nope"]) == 2
    assert "no such guide" in capsys.readouterr().err


def test_the_exit_status_is_the_verdict(tmp_path, capsys, monkeypatch):
    # the command line's own path, with the guide's fit replaced by posteriors whose answer is
    # known: exact draws pass (0), half as wide fails (1) and says which parameter
    argv = ["calibrate", MODEL, "--replicates", "200", "--rows", "10", "--draws", "99",
            "--bins", "10", "--seed", "0", "--json"]
    for scale, status in ((1.0, 0), (0.5, 1)):
        monkeypatch.setattr(sbc, "guide_fit", lambda spec, guide=None, s=scale, **o:
                            NormalMeanPosterior(sd_scale=s))
        assert main([*argv, "--out", str(tmp_path / str(scale))]) == status
        captured = capsys.readouterr()
        assert json.loads(captured.out)["uniform"] is (status == 0)
        assert ("ranks not uniform for mu" in captured.err) is (status == 1)
