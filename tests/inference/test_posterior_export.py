"""Posterior export: ArviZ InferenceData groups and shapes, the round trip through netCDF, the
pointwise log-likelihood against a closed form, draws against exact posteriors, NUTS."""

import numpy as np
import pytest
import torch

from inference import api
from inference import posterior_export as export
from inference.catalog import get_model
from inference.data import DataRequest
from inference.strategies import fit
from zoo.errors import InputError

DRAWS = 400


@pytest.fixture(scope="module")
def ppca():
    spec = get_model("ppca")
    x = api.load_data(DataRequest("iris", device="cpu"), spec).train
    config = spec.make_config(dim=4, latent_dim=2)
    return spec, config, x


def _svi(spec, config, x, guide, steps=40, **options):
    return fit(spec, config, x, inference="svi", guide=guide, steps=steps, **options)


def test_inference_data_has_every_group_with_the_right_shapes(ppca, tmp_path):
    spec, config, x = ppca
    result = _svi(spec, config, x, "mean-field")
    rows = export.chosen_rows(x.shape[0], count=3)
    draws = export.draw_posterior(spec, config, result, x, rows=rows, label="svi mean-field",
                                  num_draws=50, log_likelihood_rows=100)
    idata = export.to_inference_data(draws, history=result.history,
                                     attrs={"strategy": "svi mean-field", "seed": 0})
    assert set(idata.groups()) == {"posterior", "log_likelihood", "observed_data",
                                   "sample_stats"}
    assert idata.posterior["z"].shape == (1, 50, 3, 2)  # chain, draw, row, latent dimension
    assert idata.posterior["z"].coords["row"].values.tolist() == rows.tolist()
    assert idata.log_likelihood["x"].shape == (1, 50, 100)  # pointwise per training row
    np.testing.assert_array_equal(idata.observed_data["x"].values, x[:100].numpy())
    assert idata.sample_stats["elbo"].shape == (1, 40)  # the ELBO trace, one per step
    assert idata.posterior.attrs["strategy"] == "svi mean-field"

    path = export.save_inference_data(idata, tmp_path / "run" / export.POSTERIOR_FILE)
    back = export.load_inference_data(path)
    assert set(back.groups()) == set(idata.groups())
    for group in idata.groups():
        for name, value in getattr(idata, group).data_vars.items():
            np.testing.assert_array_equal(getattr(back, group)[name].values, value.values)
    assert back.posterior.attrs["seed"] == 0
    table = export.summary(back)
    assert len(table) == 3 * 2 and {"mean", "sd"} <= set(table.columns)


def test_exact_posterior_draws_and_pointwise_log_likelihood_match_closed_forms(ppca):
    """EM's fit has no guide: its draws come from the exact posterior, and log p(x_n | z)
    is a Gaussian density written out here."""
    spec, config, x = ppca
    result = fit(spec, config, x, inference="closed-form")
    rows = export.chosen_rows(x.shape[0], count=4)
    draws = export.draw_posterior(spec, config, result, x, rows=rows, label="closed-form",
                                  num_draws=DRAWS, log_likelihood_rows=30)
    posterior = spec.posterior(config, result.params, x[rows])
    z = draws.local["z"]
    assert z.shape == (DRAWS, 4, 2)
    np.testing.assert_allclose(z.mean(0), posterior.mean, atol=5 * posterior.stddev.max()
                               / DRAWS ** 0.5)
    params = result.params
    # the log-likelihood's draws are not stored; check its mean against the expectation
    # E_q[log N(x | W z + mu, sigma^2 I)] in closed form
    w, loc, noise = params["weight"], params["loc"], params["noise"]
    exact = spec.posterior(config, params, x[:30])
    residual = x[:30] - loc - exact.mean @ w.T
    trace = (w @ exact.covariance_matrix[0] @ w.T).diagonal().sum()
    expected = -0.5 * (4 * np.log(2 * np.pi * float(noise))
                       + (residual.square().sum(-1) + trace) / noise)
    values = draws.log_likelihood["x"]
    error = 5 * values.std(0) / DRAWS ** 0.5  # five Monte Carlo standard errors
    assert ((values.mean(0) - expected).abs() < error).all()


def test_enumerated_guide_draws_from_the_responsibilities():
    """The GMM's 'enumerate' guide has no z: TraceEnum_ELBO sums it out, so its draws come
    from the exact conditional (infer_discrete) and match the responsibilities."""
    spec = get_model("gmm")
    x = api.load_data(DataRequest(device="cpu"), spec).train
    config = spec.make_config(dim=2)
    result = _svi(spec, config, x, "enumerate", steps=50)
    rows = torch.arange(0, 200, 5)
    draws = export.draw_posterior(spec, config, result, x, rows=rows, label="svi enumerate",
                                  num_draws=DRAWS, log_likelihood_rows=10)
    assert draws.discrete == {"z"} and draws.local["z"].shape == (DRAWS, rows.numel())
    frequency = (draws.local["z"] == 1).double().mean(0)
    expected = spec.posterior(config, result.params, x[rows]).probs[:, 1].double()
    assert (frequency - expected).abs().max() < 0.1  # about 4 binomial standard errors


def test_nuts_reference_matches_the_exact_posterior(ppca):
    spec, config, x = ppca
    result = fit(spec, config, x, inference="closed-form")
    rows = export.chosen_rows(x.shape[0], count=2)
    exact = export.draw_posterior(spec, config, result, x, rows=rows, label="exact",
                                  num_draws=DRAWS, log_likelihood_rows=0)
    # no global latents: the rows are independent given the parameters, so NUTS on the
    # chosen rows alone (max_local_rows=0) is exact for them
    nuts = export.nuts_reference(spec, config, result, x, rows=rows, num_samples=200,
                                 warmup_steps=150, num_chains=2, max_local_rows=0)
    # two chains of 200 draws, one after the other, with R-hat and ESS across them
    assert nuts.local["z"].shape == (400, 2, 2) and nuts.diagnostics["divergences"] == 0
    assert nuts.rows.tolist() == rows.tolist() and nuts.chains == 2
    assert nuts.diagnostics["chains"] == 2 and nuts.diagnostics["r_hat_max"] < 1.05
    assert nuts.diagnostics["ess_bulk_min"] > 50
    near = export.reference_distance(exact, nuts)
    shifted = export.PosteriorDraws("shifted", rows, {"z": exact.local["z"] + 0.5})
    assert near < 0.1 < export.reference_distance(shifted, nuts)


def test_nuts_needs_a_continuous_latent():
    spec = get_model("gmm")
    config = spec.make_config(dim=2)
    with pytest.raises(InputError, match="no continuous latent"):
        export.check_nuts_applies(spec, config, torch.randn(5, 2))


def test_gaussian_wasserstein_against_its_closed_form():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 2, generator=generator, dtype=torch.float64)
    b = 2.0 * torch.randn(20000, 2, generator=generator, dtype=torch.float64) + 1.0
    # N(0, I) against N(1, 4 I): |m|² = 2, tr(I + 4I − 2·2I) = 2 → W2 = 2
    assert export.gaussian_wasserstein(a, b) == pytest.approx(2.0, rel=0.02)


def test_procrustes_undoes_a_rotation():
    source = torch.randn(50, 3, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64))
    found = export.procrustes_rotation(source @ rotation, source)
    torch.testing.assert_close(source @ rotation @ found, source)


def test_forest_plot_sets_fits_side_by_side(ppca, tmp_path):
    spec, config, x = ppca
    rows = export.chosen_rows(x.shape[0], count=2)
    idatas = {}
    for label, result in (("closed-form", fit(spec, config, x, inference="closed-form")),
                          ("svi mean-field", _svi(spec, config, x, "mean-field"))):
        draws = export.draw_posterior(spec, config, result, x, rows=rows, label=label,
                                      num_draws=50, log_likelihood_rows=0)
        idatas[label] = export.to_inference_data(draws)
    path = export.plot_forest(idatas, tmp_path / "forest.png", site="z",
                              rows=rows.tolist(), title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000
