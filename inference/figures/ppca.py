"""Figures for PPCA and factor analysis.

- ``latent_means.png``: the posterior means E[z_n | x_n] in the fit's principal coordinates,
  coloured by class label when the data have labels (the digits, by default);
- ``spectrum.png``: the eigenvalues of the sample covariance against the fitted model's, with
  the fitted noise level sigma^2 (mean psi for factor analysis) and the cut at q;
- ``posterior_ellipses.png``: exact and best mean-field posteriors of a few datapoints, at the
  fitted W and at W rotated by 45 degrees (same likelihood, correlated posterior): there the
  axis-aligned mean-field ellipse is visibly too small.

The scatters draw at most :data:`inference.figures.MAX_ROWS` seeded rows; the spectrum's sample
covariance reads every row once, in chunks (one D x D product: the closed-form fit's own cost).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Ellipse

from inference.figures import figure_rows, figures_for, save_figure
from zoo.ppca import diagonalizing_rotation, log_marginal, posterior


@figures_for("ppca")
@figures_for("fa")
def ppca_figures(dataset, config, result, out_dir) -> list[Path]:
    """The three figures for a fitted PPCA / factor analysis ``result`` on ``dataset.train``."""
    out_dir = Path(out_dir)
    params = {k: v.detach().cpu() for k, v in result.params.items()}
    dtype = params["weight"].dtype
    index = figure_rows(dataset.train.shape[0], seed=result.seed)
    x = dataset.train[index.to(dataset.train.device)].detach().to("cpu", dtype)
    labels = dataset.train_labels
    labels = None if labels is None else np.asarray(labels)[index.numpy()]
    title = f"{result.model} ({result.inference}{', ' + result.guide if result.guide else ''})"
    paths = [latent_means_figure(x, labels, config, params,
                                 out_dir / "latent_means.png", title=title),
             spectrum_figure(dataset.train, config, params, out_dir / "spectrum.png",
                             title=title)]
    if config.latent_dim >= 2:
        paths.append(posterior_ellipses_figure(x, config, params,
                                               out_dir / "posterior_ellipses.png", title=title,
                                               num_rows=dataset.train.shape[0]))
    return paths


def sample_covariance(x: torch.Tensor, chunk_rows: int = 1 << 16) -> torch.Tensor:
    """The covariance of ``x : (N, D)`` (divided by N) in float64 on the CPU, accumulated over
    chunks of rows around a shift (the first row) against cancellation; no copy of ``x``."""
    shift = x[0].detach().to("cpu", torch.float64)
    total = torch.zeros_like(shift)
    second = torch.zeros(shift.shape[0], shift.shape[0], dtype=torch.float64)
    for chunk in x.split(chunk_rows):
        centred = chunk.detach().to("cpu", torch.float64) - shift
        total += centred.sum(0)
        second += centred.T @ centred
    mean = total / x.shape[0]
    return second / x.shape[0] - torch.outer(mean, mean)


def canonical(params: dict) -> dict:
    """The same model at W R, where the posterior is diagonal and z1 is its best-determined
    coordinate (the first principal direction for PPCA): any rotation of W fits equally well,
    so figures use this one."""
    return dict(params, weight=params["weight"] @ diagonalizing_rotation(params))


def latent_means_figure(x, labels, config, params, path, *, title: str = "") -> Path:
    means = posterior(config, canonical(params), x).mean.numpy()
    fig, ax = plt.subplots(figsize=(6.4, 5.6))
    second = means[:, 1] if means.shape[1] > 1 else np.zeros(len(means))
    size = 6 if len(means) > 5000 else 12
    if labels is None:
        ax.scatter(means[:, 0], second, s=size, alpha=0.6, lw=0)
    else:
        labels = np.asarray(labels)
        cmap = plt.get_cmap("tab10" if labels.max() < 10 else "tab20")
        for label in np.unique(labels):
            chosen = labels == label
            ax.scatter(means[chosen, 0], second[chosen], s=size, alpha=0.7, lw=0,
                       color=cmap(int(label) % cmap.N), label=str(label))
        ax.legend(title="label", fontsize=8, markerscale=2, loc="best", ncol=2)
    ax.set_xlabel("z1 (the best-determined latent direction)")
    ax.set_ylabel("z2" if means.shape[1] > 1 else "")
    ax.set_title(f"posterior means E[z | x]: {title}")
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def spectrum_figure(x, config, params, path, *, title: str = "") -> Path:
    """The eigenvalues of the sample covariance of every row of ``x : (N, D)`` against the
    fitted model's."""
    sample = torch.linalg.eigvalsh(sample_covariance(x)).flip(0).numpy()
    weight = params["weight"].double()
    psi = params["noise"].double().expand(weight.shape[0])
    fitted = torch.linalg.eigvalsh(weight @ weight.T + torch.diag(psi)).flip(0).numpy()
    index = np.arange(1, len(sample) + 1)
    floor = max(sample.max() * 1e-8, 1e-12)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.semilogy(index, np.maximum(sample, floor), "o", ms=3.5, label="sample covariance")
    ax.semilogy(index, fitted, "-", lw=1.5, label="fitted W W^T + noise")
    noise = float(psi.mean())
    name = "sigma^2" if config.noise == "isotropic" else "mean psi"
    ax.axhline(noise, color="k", ls="--", lw=1, label=f"fitted {name} = {noise:.3g}")
    ax.axvline(config.latent_dim + 0.5, color="gray", ls=":", lw=1,
               label=f"q = {config.latent_dim}")
    ax.set_xlabel("eigenvalue index")
    ax.set_ylabel("variance")
    ax.set_title(f"eigenvalue spectrum: {title}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return save_figure(fig, path)


def posterior_ellipses_figure(x, config, params, path, *, title: str = "",
                              angle: float = math.pi / 4, count: int = 4,
                              num_rows: int | None = None) -> Path:
    """Exact (solid) and best mean-field (dashed) posteriors, 1 and 2 standard deviations, of
    ``count`` datapoints, in the plane of the best- and worst-determined latent coordinates
    (z1 and zq), at the fitted W and at W turned by ``angle`` in that plane. ``num_rows`` is
    the data's N when ``x`` is a sample of its rows (the title then says so)."""
    fitted = canonical(params)
    q = config.latent_dim
    plane = [0, q - 1]
    rotation = torch.eye(q, dtype=fitted["weight"].dtype)
    rotation[np.ix_(plane, plane)] = torch.tensor([[math.cos(angle), -math.sin(angle)],
                                                   [math.sin(angle), math.cos(angle)]],
                                                  dtype=rotation.dtype)
    rotated = dict(fitted, weight=fitted["weight"] @ rotation)
    chosen = x[_spread_out(posterior(config, fitted, x).mean[:, plane], count)]
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.6), layout="constrained")
    for ax, at, label in ((axes[0], fitted, "at the fitted W (posterior axes)"),
                          (axes[1], rotated, f"at W rotated by {math.degrees(angle):.0f} deg")):
        exact = posterior(config, at, chosen)
        covariance = exact.covariance_matrix[0]
        # the best diagonal Gaussian: the exact mean, variances 1 / (Sigma^-1)_ii
        mean_field = torch.linalg.inv(covariance).diagonal().reciprocal()
        gap = 0.5 * (-mean_field.log().sum() + torch.logdet(covariance)).item()
        means = posterior(config, at, x).mean[:, plane].numpy()
        ax.scatter(means[:, 0], means[:, 1], s=4, color="0.8", lw=0, zorder=0)
        block = covariance[np.ix_(plane, plane)].numpy()
        for i, centre in enumerate(exact.mean[:, plane].numpy()):
            colour = plt.get_cmap("tab10")(i)
            for k in (1, 2):
                _ellipse(ax, centre, block * k ** 2, colour, "-",
                         "exact" if i == 0 and k == 1 else None)
                _ellipse(ax, centre, np.diag(mean_field[plane].numpy()) * k ** 2, colour, "--",
                         "best mean-field" if i == 0 and k == 1 else None)
            ax.plot(*centre, "+", color=colour)
        ax.set_title(f"{label}\nmean-field gap KL = {gap:.3f} nats per datapoint", fontsize=10)
        ax.set_xlabel("z1")
        ax.set_ylabel(f"z{q}")
        ax.set_aspect("equal", adjustable="datalim")
        ax.legend(fontsize=8, loc="upper right")
        ax.grid(alpha=0.3)
    variances = posterior(config, fitted, chosen[:1]).covariance_matrix[0].diagonal()
    ratio = (variances[-1] / variances[0]).item()
    likelihood = log_marginal(config, rotated, x).mean().item()
    drawn = (f" over {x.shape[0]:,} of {num_rows:,} rows"
             if num_rows is not None and num_rows > x.shape[0] else "")
    fig.suptitle(f"posterior of {count} datapoints, {title}: mean log p(x){drawn} = "
                 f"{likelihood:.3f} at both W\nthe posterior variances of z{q} and z1 differ "
                 f"{ratio:.2g}-fold; "
                 "the more they differ, the more a rotation costs mean-field", fontsize=10)
    return save_figure(fig, path)


def _spread_out(means: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of ``count`` rows whose 2-D means lie nearest to points spread on a circle of
    one standard deviation, so that their ellipses do not pile up."""
    angles = torch.arange(count, dtype=means.dtype) * (2 * math.pi / count) + math.pi / 4
    targets = torch.stack([angles.cos(), angles.sin()], 1) * means.std(0) + means.mean(0)
    return torch.cdist(targets, means).argmin(1)


def _ellipse(ax, centre, covariance, colour, style, label):
    values, vectors = np.linalg.eigh(covariance)
    angle = math.degrees(math.atan2(vectors[1, 1], vectors[0, 1]))
    ax.add_patch(Ellipse(centre[:2], 2 * math.sqrt(values[1]), 2 * math.sqrt(values[0]),
                         angle=angle, fill=False, ls=style, lw=1.4, color=colour, label=label))
