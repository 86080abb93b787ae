"""Figures: generic training curves here, one module per model family beside it.

A model's figure module registers a function ``(dataset, config, result, out_dir) -> list[Path]``
under the model's name with :func:`figures_for`; ``lvm-zoo fit`` calls it after a fit. The
registry, :data:`MODEL_FIGURES`, imports the built-in figure modules below, then those other
distributions name under the entry point group ``lvm_zoo.figures`` (:mod:`zoo.plugins`).
Figures are PNG files written atomically with :func:`save_figure`.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves
import numpy as np
import torch
from matplotlib.font_manager import FontProperties

from inference.runs import atomic_write
from zoo.plugins import Registry

# The built-in figure modules; pyproject.toml declares the same modules under
# [project.entry-points."lvm_zoo.figures"].
BUILTINS = (("gmm", "inference.figures.gmm"), ("ppca", "inference.figures.ppca"),
            ("dglvm", "inference.figures.dglvm"))
MODEL_FIGURES: Registry[Callable[..., list[Path]]] = Registry("lvm_zoo.figures", "figure",
                                                               BUILTINS)  # model name -> fn
MAX_ROWS = 2000  # rows a figure draws at most: a scatter of more shows nothing more, and costs


def figure_rows(num_rows: int, max_rows: int = MAX_ROWS, *, seed: int = 0) -> torch.Tensor:
    """The indices, in increasing order, of the rows a figure of ``num_rows`` rows draws: all of
    them up to ``max_rows``, else a seeded uniform sample of ``max_rows`` without replacement."""
    if num_rows <= max_rows:
        return torch.arange(num_rows)
    chosen = np.random.default_rng(seed).choice(num_rows, size=max_rows, replace=False)
    return torch.from_numpy(np.sort(chosen))


def sample_rows(x: torch.Tensor, max_rows: int = MAX_ROWS, *, seed: int = 0) -> torch.Tensor:
    """The rows of ``x : (N, ...)`` at :func:`figure_rows`, as a float64 CPU tensor: only those
    rows are read (a memory-mapped file stays on disk, a GPU tensor on the GPU)."""
    index = figure_rows(x.shape[0], max_rows, seed=seed)
    return x[index.to(x.device)].detach().to("cpu", torch.float64)


def figures_for(model_name: str, *, curves: bool = False):
    """Decorator: register ``fn(dataset, config, result, out_dir) -> list[Path]``. ``curves``:
    ``fn`` draws the fit's training curve itself, so the run folder leaves out the generic
    ``curves.png`` (:func:`draws_curves`)."""
    def register(fn):
        fn.draws_curves = curves
        return MODEL_FIGURES.register(model_name, fn, origin=fn.__module__)
    return register


def draws_curves(model_name: str) -> bool:
    """Whether the figures registered for ``model_name`` include its training curve."""
    return model_name in MODEL_FIGURES and bool(
        getattr(MODEL_FIGURES[model_name], "draws_curves", False))


def load_model_figures() -> None:
    """Import the figure modules, so that each registers itself (:data:`MODEL_FIGURES` does
    this on its first look-up too)."""
    MODEL_FIGURES.load()


def save_figure(fig, path: str | Path, dpi: int = 120, *, crop: bool = True) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it.

    ``crop``: the image is the box around everything drawn (``bbox_inches="tight"``), so a
    legend beside the axes, outside the canvas, is kept; it measures every artist once more
    before the draw. ``crop=False`` saves the canvas as it is, for a figure its maker placed
    (:func:`fixed_layout`). zlib at level 1 encodes the PNG several times faster than the
    default, for a file a few % larger."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, pil_kwargs={"compress_level": 1},
                **({"bbox_inches": "tight"} if crop else {}))
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return Path(path)


def fixed_layout(fig, *, top: float, bottom: float, label: float = 0.0, right: float = 0.2,
                 gap: float = 0.15) -> None:
    """Place the figure's one row of axes by margins in inches: ``top``, ``bottom``,
    ``right``, ``gap`` between panels, and on the left the first axes' y tick labels (their
    characters at the tick font size, from the axis's own formatter) plus ``label`` inches for
    a y label. A fixed layout costs nothing; matplotlib's tight layout measures every text of
    the figure once more before the draw (about 0.1 s a figure)."""
    first, last = fig.axes[0], fig.axes[-1]
    left = 0.2 + _widest(first.yaxis, "ytick.labelsize") + label
    right = max(right, 0.1 + _widest(last.xaxis, "xtick.labelsize") / 2)  # the last, centred
    width, height = fig.get_size_inches()
    panels = len(fig.axes)
    panel_width = (width - left - right - gap * (panels - 1)) / panels
    fig.subplots_adjust(left=left / width, right=1 - right / width, bottom=bottom / height,
                        top=1 - top / height, wspace=gap / panel_width)


def _widest(axis, size_key: str) -> float:
    """Inches of the axis's widest major tick label, about (0.7 em a character)."""
    size = FontProperties(size=plt.rcParams[size_key]).get_size_in_points()
    labels = axis.get_major_formatter().format_ticks(axis.get_majorticklocs())
    return max(map(len, labels), default=0) * 0.7 * size / 72


def present(path: str | Path) -> Path:
    """Name a saved figure on stdout and, inside a notebook, display it (tutorials use this,
    so that a script and its jupytext notebook show the same pictures)."""
    try:
        from IPython import get_ipython
        from IPython.display import Image, display

        if get_ipython() is not None:
            display(Image(filename=str(path)))
    except ImportError:
        pass
    print(f"figure: {path}")
    return Path(path)


def plot_curves(curves: dict[str, list[float]], path: str | Path, *, optimum: float | None = None,
                optimum_label: str = "exact optimum", ylabel: str = "nats per datapoint",
                title: str = "") -> Path:
    """Training curves on one axis (ELBO per SVI step, log-likelihood per EM iteration), with
    an optional horizontal line at the closed-form / EM optimum."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in curves.items():
        ax.plot(range(len(values)), values, label=label, lw=1.4)
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=1, label=optimum_label)
    finite = [v for values in curves.values() for v in values[len(values) // 10:]]
    if finite:
        low, high = min(finite), max(finite + ([optimum] if optimum is not None else []))
        pad = 0.05 * (high - low + 1e-9)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xlabel("step / iteration")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fixed_layout(fig, top=0.35 if title else 0.15, bottom=0.55, label=0.3)
    return save_figure(fig, path, crop=False)
