"""Figures of a Gaussian-mixture fit.

- :func:`plot_em_contours`: the fitted density over the data at several EM iterations, one panel
  each (Bishop's "L = 1, 2, 5, 20" picture): points coloured by their responsibilities, density
  contours, and each component's 2-sigma ellipse. Data of more than two dimensions show the
  exact marginal of the mixture on the first two.
- :func:`plot_training_curves`: EM's log-likelihood per iteration and SVI's ELBO per step of
  every guide on one axis (logarithmic in the step), nats per datapoint.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import torch
from sklearn.exceptions import ConvergenceWarning

from inference.em import fit_em
from inference.figures import figures_for, save_figure
from inference.results import FitResult
from zoo.gmm import SPEC, GMMConfig, log_marginal, responsibilities
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


def em_snapshots(config: GMMConfig, x: torch.Tensor, result: FitResult,
                 iterations: Sequence[int] | None = None) -> dict[int, Params]:
    """Parameters after the given numbers of EM iterations (0: the start), re-run from the
    fit's recorded start (same init method, seed and restart); empty if that start was given.

    Default iterations: 0, 3, 5, 16 and the last, as far as the fit ran.
    """
    method = result.info.get("init")
    if result.inference != "em" or method not in SPEC.em.init_methods:
        return {}
    last = result.steps
    wanted = sorted({i for i in (iterations or (0, 3, 5, 16, last)) if 0 <= i <= last})
    generator = torch.Generator(device=x.device).manual_seed(result.seed)
    for _ in range(result.info.get("best_restart", 0) + 1):
        params = SPEC.em.init(config, x, generator, method)
    snapshots = {0: params} if 0 in wanted else {}
    with warnings.catch_warnings():  # stopping after i updates is the point here
        warnings.simplefilter("ignore", ConvergenceWarning)
        for iteration in (i for i in wanted if i > 0):  # the one EM loop, i updates from there
            snapshots[iteration] = fit_em(SPEC, config, x, init=params, max_iter=iteration,
                                          tol=0.0, accelerate=False).params
    return snapshots


def _ellipse(mean: torch.Tensor, scale_tril: torch.Tensor, radius: float = 2.0):
    angle = torch.linspace(0, 2 * math.pi, 100, dtype=scale_tril.dtype)
    circle = torch.stack([angle.cos(), angle.sin()])
    points = mean[:, None] + radius * scale_tril @ circle
    return points[0], points[1]


def plot_em_contours(x: torch.Tensor, snapshots: Mapping[int | str, Params], path: str | Path,
                     *, feature_names: Sequence[str] | None = None) -> Path:
    """One panel per snapshot (``{iteration or label: params}``) of the data ``x : (N, D)``
    coloured by responsibilities, the mixture density's contours and 2-sigma ellipses."""
    x = x.detach().cpu().double()[:, :2]
    panels = len(snapshots)
    fig, axes = plt.subplots(1, panels, figsize=(3.6 * panels, 3.6), squeeze=False,
                             sharex=True, sharey=True)
    low, high = x.min(0).values, x.max(0).values
    pad = 0.15 * (high - low + 1e-12)
    grid_x = torch.linspace(float(low[0] - pad[0]), float(high[0] + pad[0]), 120,
                            dtype=torch.float64)
    grid_y = torch.linspace(float(low[1] - pad[1]), float(high[1] + pad[1]), 120,
                            dtype=torch.float64)
    mesh_x, mesh_y = torch.meshgrid(grid_x, grid_y, indexing="xy")
    grid = torch.stack([mesh_x.reshape(-1), mesh_y.reshape(-1)], 1)
    for ax, (label, params) in zip(axes[0], snapshots.items(), strict=True):
        params = {k: v.detach().cpu().double() for k, v in marginal_2d(params).items()}
        config = config_of(params)
        k = config.components
        colors = torch.tensor([[int(c[i:i + 2], 16) / 255 for i in (1, 3, 5)]
                               for c in (COLORS * (k // len(COLORS) + 1))[:k]],
                              dtype=torch.float64)
        resp = responsibilities(config, params, x)
        ax.scatter(x[:, 0], x[:, 1], s=7, c=(resp @ colors).clamp(0, 1).numpy(),
                   alpha=0.75, linewidths=0)
        density = log_marginal(config, params, grid).exp().reshape(mesh_x.shape)
        ax.contour(mesh_x.numpy(), mesh_y.numpy(), density.numpy(), levels=7, colors="k",
                   linewidths=0.6, alpha=0.6)
        for j in range(k):
            ex, ey = _ellipse(params["means"][j], params["scale_tril"][j])
            ax.plot(ex, ey, color=colors[j].numpy(), lw=1.6)
            ax.plot(*params["means"][j], marker="x", color=colors[j].numpy(), ms=7, mew=2)
        mean_ll = float(log_marginal(config, params, x).mean())
        name = f"iteration {label}" if isinstance(label, int) else str(label)
        ax.set_title(f"{name}\nlog p(x) = {mean_ll:.4f} nats/point", fontsize=9)
        ax.set_xlim(float(grid_x[0]), float(grid_x[-1]))
        ax.set_ylim(float(grid_y[0]), float(grid_y[-1]))
        if feature_names:
            ax.set_xlabel(feature_names[0], fontsize=8)
    if feature_names and len(feature_names) > 1:
        axes[0][0].set_ylabel(feature_names[1], fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


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
        pad = 0.08 * (high - low + 1e-9)
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("log")
    ax.set_xlabel("EM iteration / SVI step (+1)")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def _curve_label(result: FitResult) -> str:
    if result.inference == "em":
        return "EM log-likelihood"
    return f"SVI ELBO ({result.guide or 'svi'})"


@figures_for("gmm")
def gmm_figures(dataset, config: GMMConfig, result: FitResult, out_dir: str | Path) -> list[Path]:
    """Contours of the fit (at several EM iterations for EM) and its training curve."""
    out_dir = Path(out_dir)
    x = dataset.train.to(dtype=result.params["means"].dtype,
                         device=result.params["means"].device)
    paths = []
    if config.dim >= 2:  # contours need a plane; wider data show their first two coordinates
        snapshots = em_snapshots(config, x, result) or {"fitted": result.params}
        names = getattr(dataset, "feature_names", None)
        paths.append(plot_em_contours(x, snapshots, out_dir / "gmm_contours.png",
                                      feature_names=names))
    curves = {_curve_label(result): values for values in result.history.values()}
    optimum = result.history["log_likelihood"][-1] if result.inference == "em" else None
    paths.append(plot_training_curves(curves, out_dir / "gmm_curves.png", optimum=optimum,
                                      title=f"gmm, K={config.components}, "
                                            f"{config.covariance_type} covariance"))
    return paths
