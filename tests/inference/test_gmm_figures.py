"""The Gaussian mixture's figures: drawn from the fit's own history and a bounded sample of rows."""

import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.image import imread
from torch.overrides import TorchFunctionMode

from inference.em import SNAPSHOT_ITERATIONS, fit_em
from inference.figures import MAX_ROWS, MODEL_FIGURES, figure_rows
from inference.figures.gmm import fit_snapshots, marginal_2d, plot_training_curves
from zoo import gmm
from zoo.datasets import load_dataset


def _faithful(dtype=torch.float64):
    return load_dataset("old-faithful", test_fraction=0, standardize=True, dtype=dtype)


@pytest.mark.parametrize("accelerate", [False, True])
def test_the_fit_keeps_its_snapshots_and_they_match_its_history(accelerate):
    x = _faithful().train
    config = gmm.GMMConfig(dim=2, components=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_em(gmm.SPEC, config, x, init="random", n_init=2, seed=3, max_iter=20,
                        accelerate=accelerate)
    snapshots = fit_snapshots(result)
    history = result.history["log_likelihood"]
    expected = sorted({i for i in SNAPSHOT_ITERATIONS if i < len(history)} | {result.steps})
    assert sorted(snapshots) == expected
    for index, params in snapshots.items():  # the point of history[index], every one of them
        np.testing.assert_allclose(float(gmm.log_marginal(config, params, x).mean()),
                                   history[index], rtol=1e-12)
    if not accelerate:  # plain EM: snapshot i is i EM updates from the start, replayed here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            replay = fit_em(gmm.SPEC, config, x, init=snapshots[0], max_iter=3, tol=0.0,
                            accelerate=False)
        for name, value in replay.params.items():
            np.testing.assert_allclose(snapshots[3][name].numpy(), value.numpy(), rtol=1e-12)


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
    dataset = _faithful(torch.float32)
    config = gmm.GMMConfig(dim=2, components=2)
    result = fit_em(gmm.SPEC, config, dataset.train, seed=0)
    paths = MODEL_FIGURES["gmm"](dataset, config, result, tmp_path)
    assert [p.name for p in paths] == ["gmm_contours.png", "gmm_curves.png"]
    contours = imread(paths[0])
    panels = len(fit_snapshots(result))
    # the start, iteration 3, 5 (16 if it ran so far) and the last: EM here converges at 5
    # (log p(x) summed in float64: it no longer wobbles in float32's last digit for a 6th)
    assert list(fit_snapshots(result)) == [0, 3, 5] == [0, 3, result.steps]
    assert contours.shape[1] > (panels - 0.5) * contours.shape[0]  # a row of panels
    curves = plot_training_curves({"EM": [-2.0, -1.5, -1.4], "SVI": [-3.0, -1.45]},
                                  tmp_path / "curves.png", optimum=-1.4)
    assert imread(curves).std() > 0


def test_figure_rows_are_a_seeded_sample_without_repeats():
    assert figure_rows(10).tolist() == list(range(10))
    rows = figure_rows(10**6, seed=4)
    assert len(rows) == MAX_ROWS == len(set(rows.tolist()))
    assert bool((rows[1:] > rows[:-1]).all()) and int(rows[-1]) < 10**6
    assert torch.equal(rows, figure_rows(10**6, seed=4))
    assert not torch.equal(rows, figure_rows(10**6, seed=5))


class _ReadsOf(TorchFunctionMode):
    """Records every torch operation that takes ``watched`` as an argument, with the number
    of rows of what it returned."""

    def __init__(self, watched: torch.Tensor):
        super().__init__()
        self.watched, self.reads = watched, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(a is self.watched for a in args) or any(
                v is self.watched for v in (kwargs or {}).values()):
            rows = out.shape[0] if isinstance(out, torch.Tensor) and out.dim() else None
            self.reads.append((getattr(func, "__name__", str(func)), rows))
        return out


def test_figures_of_a_million_rows_read_at_most_max_rows(tmp_path):
    generator = torch.Generator().manual_seed(0)
    config = gmm.GMMConfig(dim=16, components=8)
    truth = {"weights": torch.full((8,), 1 / 8), "means": 4 * torch.randn(8, 16,
                                                                          generator=generator),
             "scale_tril": torch.eye(16).expand(8, 16, 16).clone()}
    x, _ = gmm.sample(config, truth, 10**6, generator)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = fit_em(gmm.SPEC, config, x[:4000], max_iter=8, seed=0)
    dataset = SimpleNamespace(train=x, feature_names=None)
    with _ReadsOf(x) as reads:
        paths = MODEL_FIGURES["gmm"](dataset, config, result, tmp_path)
    # the million rows are only indexed, at most MAX_ROWS of them (shape queries aside)
    data_reads = [(name, rows) for name, rows in reads.reads if rows is not None]
    assert data_reads and all(name == "__getitem__" and rows <= MAX_ROWS
                              for name, rows in data_reads), data_reads
    assert imread(paths[0]).std() > 0


@pytest.mark.parametrize("shift, dim, panels", [(0.0, 2, 4), (-1e5, 5, 1), (123.456, 3, 2)])
def test_every_text_of_a_fixed_layout_lies_on_the_canvas(tmp_path, monkeypatch, shift, dim,
                                                        panels):
    """The contours and the curves are placed by fixed margins, not measured: every text the
    figure draws (tick labels of six-digit values, titles, the wrapped notes) still ends up on
    the saved canvas, and the panels do not overlap."""
    import inference.figures.gmm as figures

    drawn = []
    monkeypatch.setattr(figures, "save_figure",
                        lambda fig, path, crop=True: drawn.append((fig, crop)) or path)
    g = torch.Generator().manual_seed(0)
    x = shift + torch.randn(3000, dim, generator=g, dtype=torch.float64) * (1 + abs(shift) / 50)
    config = gmm.GMMConfig(dim=dim, components=3)
    params = gmm.SPEC.init_params(config, x, torch.Generator().manual_seed(1))
    snapshots = {i: params for i in range(panels)}
    figures.plot_em_contours(x, snapshots, tmp_path / "c.png", feature_names=["a", "b"],
                             num_rows=10 ** 6)
    figures.plot_training_curves({"EM log-likelihood": [shift - 2.0, shift - 1.0, shift]},
                                 tmp_path / "t.png", optimum=shift, title="a title")
    for fig, crop in drawn:
        assert crop is False
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        # everything drawn (the box bbox_inches="tight" would crop to) lies on the canvas
        drawn_box = fig.get_tightbbox(renderer).transformed(fig.dpi_scale_trans)
        assert (drawn_box.x0 >= -0.5 and drawn_box.y0 >= -0.5
                and drawn_box.x1 <= fig.bbox.x1 + 0.5 and drawn_box.y1 <= fig.bbox.y1 + 0.5), \
            f"drawn {drawn_box} beyond the canvas {fig.bbox}"
        boxes = [ax.get_window_extent(renderer) for ax in fig.axes]
        assert all(a.x1 <= b.x0 for a, b in zip(boxes, boxes[1:], strict=False))
