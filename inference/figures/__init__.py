"""Figures: generic training curves here, one module per model family beside it.

A model's figure module registers a function ``(dataset, config, result, out_dir) -> list[Path]``
under the model's name with :func:`figures_for`; ``lvm-zoo fit`` calls it after a fit. Figures
are PNG files written atomically with :func:`save_figure`.
"""

from __future__ import annotations

import importlib
import io
import pkgutil
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt  # headless machines fall back to Agg by themselves

from inference.runs import atomic_write

MODEL_FIGURES: dict[str, Callable[..., list[Path]]] = {}


def figures_for(model_name: str):
    """Decorator: register ``fn(dataset, config, result, out_dir) -> list[Path]``."""
    def register(fn):
        MODEL_FIGURES[model_name] = fn
        return fn
    return register


def load_model_figures() -> None:
    """Import every figure module in this package, so that each registers itself."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def save_figure(fig, path: str | Path, dpi: int = 120) -> Path:
    """Save ``fig`` as a PNG at ``path`` atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))
    return Path(path)


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
    return save_figure(fig, path)
