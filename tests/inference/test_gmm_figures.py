"""The Gaussian mixture's figures are written, one panel per requested EM iteration."""

import warnings

import numpy as np
import torch
from matplotlib.image import imread

from inference.em import fit_em
from inference.figures import MODEL_FIGURES
from inference.figures.gmm import em_snapshots, marginal_2d, plot_training_curves
from zoo import gmm
from zoo.datasets import load_dataset


def test_em_snapshots_replay_the_fit_from_its_recorded_start():
    x = load_dataset("old-faithful", test_fraction=0, standardize=True,
                     dtype=torch.float64).train
    config = gmm.GMMConfig(dim=2, components=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_em(gmm.SPEC, config, x, init="random", n_init=2, seed=3, max_iter=20)
    snapshots = em_snapshots(config, x, result, iterations=(0, 3, result.steps))
    assert sorted(snapshots) == [0, 3, result.steps]
    for name, value in result.params.items():
        np.testing.assert_allclose(snapshots[result.steps][name].numpy(), value.numpy(),
                                   rtol=1e-12)
    history = result.history["log_likelihood"]
    np.testing.assert_allclose(float(gmm.log_marginal(config, snapshots[3], x).mean()),
                               history[3], rtol=1e-12)


def test_marginal_of_a_wide_mixture_is_its_first_two_coordinates():
    config = gmm.GMMConfig(dim=4, components=2, covariance_type="diag")
    generator = torch.Generator().manual_seed(0)
    params = {"weights": torch.tensor([0.4, 0.6]), "means": torch.randn(2, 4, generator=generator),
              "scale": torch.rand(2, 4, generator=generator) + 0.5}
    x, _ = gmm.sample(config, params, 50, generator)
    plane = marginal_2d(params)
    # the exact marginal: integrate out coordinates 3 and 4 of a diagonal mixture
    expected = torch.logsumexp(torch.log(params["weights"]) + torch.distributions.Normal(
        params["means"][:, :2], params["scale"][:, :2]).log_prob(x[:, None, :2]).sum(-1), 1)
    torch.testing.assert_close(gmm.log_marginal(gmm.GMMConfig(dim=2, components=2), plane,
                                                x[:, :2]), expected)


def test_fit_figures_are_written(tmp_path):
    dataset = load_dataset("old-faithful", test_fraction=0, standardize=True)
    config = gmm.GMMConfig(dim=2, components=2)
    result = fit_em(gmm.SPEC, config, dataset.train, seed=0)
    paths = MODEL_FIGURES["gmm"](dataset, config, result, tmp_path)
    assert [p.name for p in paths] == ["gmm_contours.png", "gmm_curves.png"]
    contours = imread(paths[0])
    assert contours.shape[1] > 2.5 * contours.shape[0]  # a row of panels
    curves = plot_training_curves({"EM": [-2.0, -1.5, -1.4], "SVI": [-3.0, -1.45]},
                                  tmp_path / "curves.png", optimum=-1.4)
    assert imread(curves).std() > 0
