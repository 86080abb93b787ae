"""Every model's figures read a bounded sample of the rows; ``lvm-zoo fit --no-figures``."""

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from inference.figures import MAX_ROWS, MODEL_FIGURES, sample_rows
from inference.figures.ppca import sample_covariance
from inference.strategies import fit
from zoo.registry import get_model


class _ReadsOf(TorchFunctionMode):
    """Records every torch operation that takes ``watched`` as an argument."""

    def __init__(self, watched: torch.Tensor):
        super().__init__()
        self.watched, self.reads = watched, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(a is self.watched for a in args):
            rows = out.shape[0] if isinstance(out, torch.Tensor) and out.dim() else None
            self.reads.append((getattr(func, "__name__", str(func)), rows))
        return out


def test_sample_covariance_matches_numpy_far_from_the_origin():
    generator = torch.Generator().manual_seed(0)
    x = (torch.randn(5000, 6, generator=generator, dtype=torch.float64)
         @ torch.randn(6, 6, generator=generator, dtype=torch.float64) + 1e4)
    expected = np.cov(x.numpy().T, ddof=0)
    np.testing.assert_allclose(sample_covariance(x, chunk_rows=777).numpy(), expected,
                               rtol=1e-9, atol=1e-9)


def test_sample_rows_reads_the_chosen_rows_in_float64():
    x = torch.arange(30_000, dtype=torch.float32).reshape(10_000, 3)
    drawn = sample_rows(x, 100, seed=1)
    assert drawn.shape == (100, 3) and drawn.dtype == torch.float64
    rows = (drawn[:, 0] / 3).long()
    torch.testing.assert_close(drawn, x[rows].double())


def test_ppca_figures_of_many_rows_scatter_a_sample_and_read_the_rest_once(tmp_path):
    from types import SimpleNamespace

    import inference.figures.ppca  # noqa: F401  (registers the figures)

    spec = get_model("ppca")
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(200_000, 8, generator=generator) @ torch.randn(8, 8, generator=generator)
    config = spec.make_config(8, latent_dim=2)
    result = fit(spec, config, x, inference="closed-form")
    dataset = SimpleNamespace(train=x, train_labels=torch.arange(200_000) % 3)
    with _ReadsOf(x) as reads:
        paths = MODEL_FIGURES["ppca"](dataset, config, result, tmp_path)
    assert len(paths) == 3
    names = {name for name, rows in reads.reads if rows is not None}
    # the scatters index at most MAX_ROWS rows; the spectrum's covariance reads them in chunks
    assert names <= {"__getitem__", "split"}, reads.reads
    assert all(rows <= MAX_ROWS for name, rows in reads.reads if name == "__getitem__")


def test_fit_without_figures_writes_none(tmp_path, capsys):
    from inference.cli import main

    for flags, out in (([], tmp_path / "with"), (["--no-figures"], tmp_path / "without")):
        assert main(["fit", "gmm", "--inference", "em", "--data", "old-faithful", "--out",
                     str(out), "--json", *flags]) == 0
    capsys.readouterr()
    # the mixture's own figures draw its training curve: no second, generic curves.png
    assert {p.name for p in (tmp_path / "with").glob("*.png")} == {"gmm_contours.png",
                                                                    "gmm_curves.png"}
    assert not list((tmp_path / "without").glob("*.png"))
    assert {p.name for p in (tmp_path / "without").iterdir()} == {
        p.name for p in (tmp_path / "with").iterdir() if p.suffix != ".png"}
