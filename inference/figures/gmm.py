"""Figures of a Gaussian-mixture fit.

- :func:`plot_em_contours`: the fitted density over the data at several EM iterations, one panel
  each (Bishop's "L = 1, 2, 5, 20" picture): points coloured by their responsibilities, density
  contours, and each component's 2-sigma ellipse. Data of more than two dimensions show the
  exact marginal of the mixture on the first two. The panels are the parameters the fit itself
  kept (:attr:`FitResult.snapshots`): no figure re-runs EM. At most
  :data:`inference.figures.MAX_ROWS` seeded rows are drawn, whatever N.
- :func:`plot_training_curves`: EM's log-likelihood per iteration and SVI's ELBO per step of
  every guide on one axis (logarithmic in the step), nats per datapoint.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from matplotlib.collections import LineCollection
from matplotlib.ticker import LogFormatter

from inference import strategies
from inference.figures import MAX_ROWS, figures_for, fixed_layout, sample_rows, save_figure
from inference.results import FitResult
from zoo.gmm import GMMConfig, log_marginal, responsibilities
from zoo.registry import Params

COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#17becf", "#bcbd22", "#7f7f7f")


def config_of(params: Params) -> GMMConfig:
    """The config a parameter dict belongs to, read off its names and shapes."""
    components, dim = params["means"].shape
    if "scale_tril" in params:
        covariance_type = "full"
    else:
        covariance_type = "diag" if params["scale"].dim() == 2 else "spherical"
    return GMMConfig(dim=dim, components=components, covariance_type=covariance_type)


def marginal_2d(params: Params) -> Params:
    """The mixture's exact marginal on the first two coordinates, as full-covariance params.

    The leading 2 x 2 block of a lower Cholesky factor is the Cholesky factor of the leading
    2 x 2 block of the covariance, so no refactorization is needed.
    """
    config = config_of(params)
    k = config.components
    if config.covariance_type == "full":
        scale_tril = params["scale_tril"][:, :2, :2]
    else:
        scale = params["scale"].reshape(k, -1).expand(k, config.dim)[:, :2]
        scale_tril = torch.diag_embed(scale)
    return {"weights": params["weights"], "means": params["means"][:, :2],
            "scale_tril": scale_tril}


def fit_snapshots(result: FitResult) -> dict[int, Params]:
    """The parameters the fit kept at a few points of its history (EM: 0, 3, 5, 16, as far as
    it ran) and its last, ``{history index: Params}``; empty when it kept none (SVI, or
    parameters too large to keep)."""
    if not result.snapshots:
        return {}
    return dict(sorted({**result.snapshots, result.steps: result.params}.items()))


def _ellipses(params: Params, radius: float = 2.0):
    """The ``radius``-sigma ellipses of every component of 2-D full-covariance ``params``:
    ``(K, 100, 2)`` points."""
    angle = torch.linspace(0, 2 * math.pi, 100, dtype=params["means"].dtype)
    circle = torch.stack([angle.cos(), angle.sin()])  # (2, 100)
    points = params["means"][:, :, None] + radius * params["scale_tril"] @ circle
    return points.transpose(1, 2)


def _grid(points) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 120 x 120 float64 grid over the drawn ``points`` (N, 2), padded by 15% each way:
    ``(mesh_x, mesh_y, grid)``, ``grid`` the (120 * 120, 2) points of the mesh."""
    low, high = points.min(0), points.max(0)
    pad = 0.15 * (high - low + 1e-12)
    grid_x = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), 120,
                            dtype=torch.float64)
    grid_y = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), 120,
                            dtype=torch.float64)
    mesh_x, mesh_y = torch.meshgrid(grid_x, grid_y, indexing="xy")
    return mesh_x, mesh_y, torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], 1)


def _component_colors(k: int) -> torch.Tensor:
    """The RGB colour of each of ``k`` components, (k, 3) in [0, 1] (:data:`COLORS`, cycled)."""
    return torch.tensor([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
                         for c in (COLORS * (k // len(COLORS) + 1))[:k]], dtype=torch.float64)


def _draw_panel(ax, x: torch.Tensor, params: Params, mesh: tuple, size: float) -> GMMConfig:
    """One panel's points (coloured by responsibilities), density contours, 2-sigma ellipses
    and means, for 2-D full-covariance float64 ``params``; returns their config."""
    mesh_x, mesh_y, grid = mesh
    points = x.numpy()
    config = config_of(params)
    colors = _component_colors(config.components)
    resp = responsibilities(config, params, x)
    ax.scatter(points[:, 0], points[:, 1], s=size,
               c=(resp @ colors).clamp(0, 1).numpy(), alpha=0.75, linewidths=0)
    density = log_marginal(config, params, grid).exp().reshape(mesh_x.shape)
    ax.contour(mesh_x.numpy(), mesh_y.numpy(), density.numpy(), levels=7, colors="k",
               linewidths=0.6, alpha=0.6)
    ax.add_collection(LineCollection(_ellipses(params).numpy(), colors=colors.numpy(),
                                     linewidths=1.6))
    means = params["means"].numpy()
    ax.scatter(means[:, 0], means[:, 1], marker="x", c=colors.numpy(), s=49,
               linewidths=2, zorder=3)
    return config


def _panel_title(label: int | str, mean_ll: float) -> str:
    name = f"iteration {label}" if isinstance(label, int) else str(label)
    return f"{name}\nlog p(x) = {mean_ll:.4f} nats/point"


def _notes(dim: int, drawn: int, num_rows: int, log_likelihoods) -> list[str]:
    """The figure's footnotes: a marginal shown, a sample of the rows drawn, whose log p(x)."""
    notes = []
    if dim > 2:
        notes.append(f"the first two of {dim} coordinates (the mixture's exact marginal)")
    if drawn < num_rows:
        notes.append(f"{drawn:,} of {num_rows:,} rows drawn (a seeded sample)")
    if log_likelihoods and (dim > 2 or drawn < num_rows):
        notes.append("log p(x): the fit's, over all rows and coordinates")
    return notes


def plot_em_contours(x: torch.Tensor, snapshots: Mapping[int | str, Params], path: str | Path,
                     *, feature_names: Sequence[str] | None = None,
                     log_likelihoods: Mapping[int | str, float] | None = None,
                     num_rows: int | None = None, max_rows: int = MAX_ROWS,
                     seed: int = 0) -> Path:
    """One panel per snapshot (``{iteration or label: params}``) of the data ``x : (N, D)``
    coloured by responsibilities, the mixture density's contours and 2-sigma ellipses.

    At most ``max_rows`` rows are drawn (a seeded sample, :func:`inference.figures.sample_rows`;
    ``num_rows`` is N when ``x`` is already such a sample). A panel's title gives its entry of
    ``log_likelihoods`` (the fit's mean log p(x) over all rows and dimensions) where there is
    one, else the mean log p(x) of the drawn rows under the panel's first-two-coordinate
    marginal."""
    num_rows = x.shape[0] if num_rows is None else num_rows
    dim = x.shape[1]
    x = sample_rows(x, max_rows, seed=seed)[:, :2]
    points = x.numpy()
    panels = len(snapshots)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.6), squeeze=False,
                             sharex=True, sharey=True)
    mesh = _grid(points)
    size = 7 if len(points) <= 500 else 3
    for ax, (label, params) in zip(axes[0], snapshots.items(), strict=True):
        params = {k: v.detach().cpu().double() for k, v in marginal_2d(params).items()}
        config = _draw_panel(ax, x, params, mesh, size)
        if log_likelihoods is not None and label in log_likelihoods:
            mean_ll = float(log_likelihoods[label])
        else:
            mean_ll = float(log_marginal(config, params, x).mean())
        ax.set_title(_panel_title(label, mean_ll), fontsize=9)
        ax.set_xlim(float(mesh[0][0, 0]), float(mesh[0][0, -1]))
        ax.set_ylim(float(mesh[1][0, 0]), float(mesh[1][-1, 0]))
        if feature_names:
            ax.set_xlabel(feature_names[0], fontsize=8)
    if feature_names and len(feature_names) > 1:
        axes[0][0].set_ylabel(feature_names[1], fontsize=8)
    notes = _notes(dim, len(points), num_rows, log_likelihoods)
    lines = 0
    if notes:
        # wrapped to the figure's width (about 13 characters of 8-point text an inch)
        text = textwrap.fill("; ".join(notes), width=int(13 * 3.6 * panels))
        lines = text.count("\n") + 1
        fig.suptitle(text, fontsize=8, y=0.995)
    fixed_layout(fig, top=0.45 + 0.16 * lines, bottom=0.5 if feature_names else 0.35,
                 label=0.22 if feature_names and len(feature_names) > 1 else 0.0)
    return save_figure(fig, path, crop=False)


def plot_training_curves(curves: Mapping[str, Sequence[float]], path: str | Path, *,
                         optimum: float | None = None, title: str = "") -> Path:
    """Every curve (EM log-likelihood per iteration, SVI ELBO per step of each guide) on one
    axis, against step + 1 on a log scale, with the exact optimum as a dashed line."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    tails = []
    for label, values in curves.items():
        values = list(values)
        ax.plot(range(1, len(values) + 1), values, label=label, lw=1.4)
        tails += values[len(values) // 10:]
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=1, label=f"EM optimum {optimum:.4f}")
        tails.append(optimum)
    finite = [v for v in tails if math.isfinite(v)]
    if finite:
        low, high = min(finite), max(finite)
        # at least a thousandth of a nat shown: a fit that converged at once has no
        # finer detail worth an axis of 1e-6 steps
        pad = max(0.08 * (high - low), 5e-4)
        ax.set_ylim(low - pad, high + pad)
    ax.ticklabel_format(axis="y", useOffset=False)
    ax.set_xscale("log")
    # plain numbers on the log axis ("20", not mathtext's 2×10¹: parsing TeX costs a command
    # about 0.2 s); minor ticks are labelled only where the axis spans under a decade or so
    ax.xaxis.set_major_formatter(LogFormatter())
    ax.xaxis.set_minor_formatter(LogFormatter(minor_thresholds=(1, 0.4)))
    ax.set_xlabel("EM iteration / SVI step (+1)")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fixed_layout(fig, top=0.35 if title else 0.15, bottom=0.55, label=0.3)
    return save_figure(fig, path, crop=False)


def _curve_label(result: FitResult, key: str) -> str:
    """``"EM log-likelihood"``, ``"SVI ELBO (exact)"``: the strategy, the curve, the guide."""
    what = {"log_likelihood": "log-likelihood", "elbo": "ELBO"}.get(key, key)
    return f"{result.inference.upper()} {what}" + (f" ({result.guide})" if result.guide else "")


@figures_for("gmm", curves=True)
def gmm_figures(dataset, config: GMMConfig, result: FitResult, out_dir: str | Path) -> list[Path]:
    """Contours of the fit (at the EM iterations the fit kept, for EM) and its training curve;
    reads at most :data:`inference.figures.MAX_ROWS` rows of ``dataset.train``."""
    out_dir = Path(out_dir)
    paths = []
    # an exact maximum-likelihood fit's history is log p(x) of all rows, its end the optimum
    strategy = strategies.strategies().get(result.inference)
    exact = strategy is not None and strategy.baseline
    if config.dim >= 2:  # contours need a plane; wider data show their first two coordinates
        x = sample_rows(dataset.train, seed=result.seed)
        snapshots = fit_snapshots(result) or {"fitted": result.params}
        history = result.history.get("log_likelihood") or []
        known = ({i: history[i] for i in snapshots if isinstance(i, int) and i < len(history)}
                 if exact else {})
        names = getattr(dataset, "feature_names", None)
        paths.append(plot_em_contours(x, snapshots, out_dir / "gmm_contours.png",
                                      feature_names=names, log_likelihoods=known,
                                      num_rows=dataset.train.shape[0]))
    curves = {_curve_label(result, key): values for key, values in result.history.items()}
    history = result.history.get("log_likelihood")
    optimum = history[-1] if exact and history else None
    paths.append(plot_training_curves(curves, out_dir / "gmm_curves.png", optimum=optimum,
                                      title=f"gmm, K={config.components}, "
                                            f"{config.covariance_type} covariance"))
    return paths
