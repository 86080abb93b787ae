"""The comparison's figures: training curves, the yardstick, posteriors aligned across fits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inference import posterior_export as export
from inference.compare.fits import Fit, anchor_of
from inference.figures import plt, save_figure


def comparison_figures(spec, dataset, config, fits: list[Fit], summary, x, compare_dir: Path,
             seed: int) -> dict[str, Path]:
    """curves.png, yardstick.png, and where the fits have posterior draws posterior.png and
    forest.png; returns {name: path}."""
    figures: dict[str, Path] = {}
    first = [f for f in fits if f.seed == seed]
    curves = {}
    for fit in first:
        history = fit.result.history
        values = history.get("elbo") or history.get("log_likelihood") or []
        if len(values) > 1:
            curves[fit.cell.label] = values
    optimum = next((f.record["train_log_likelihood"] for f in first
                    if f.baseline), None)
    if curves:
        figures["curves"] = plot_training_curves(
            curves, compare_dir / "curves.png", optimum=optimum,
            title=f"{spec.name} on {dataset.name}: ELBO per SVI step, log p(x) per EM "
                  "iteration (first seed)")
    figures["yardstick"] = _plot_yardstick(summary, compare_dir / "yardstick.png",
                                           title=f"{spec.name} on {dataset.name}")
    draws = _aligned_draws(spec, config, first, x, seed)
    sites = list(next(iter(draws.values())).local) if draws else []
    if sites:
        discrete = next(iter(draws.values())).discrete
        site = next((n for n in sites if n not in discrete), sites[0])  # continuous first
        draws = {label: d for label, d in draws.items() if site in d.local}
        note = ("labels matched to the anchor fit" if site in next(iter(draws.values())).discrete
                else "rotated onto the anchor fit's coordinates (orthogonal Procrustes)")
        figures["posterior"] = export.plot_posteriors(
            draws, compare_dir / "posterior.png", site=site,
            title=f"q({site} | x) for chosen training rows; {note}")
        continuous = {k: v for k, v in draws.items() if site not in v.discrete}
        if continuous:
            idatas = {label: export.to_inference_data(d) for label, d in continuous.items()}
            rows = [int(r) for r in next(iter(continuous.values())).rows[:2]]
            figures["forest"] = export.plot_forest(
                idatas, compare_dir / "forest.png", site=site, rows=rows,
                title=f"{spec.name}: posterior of {site} for training rows {rows}, by fit")
    return figures


def plot_training_curves(curves: dict[str, list[float]], path: Path, *,
                         optimum: float | None = None, title: str = "") -> Path:
    """Every strategy's curve on one axis, the closed-form / EM optimum as a dashed line, the
    legend beside the axis; the y-range leaves out the first tenth of the curves (the initial
    climb) and rare dips, so that the distance of each to the optimum stays visible."""
    fig, ax = plt.subplots(figsize=(9, 4.4))
    for label, values in curves.items():
        ax.plot(np.arange(len(values)), values, label=label, lw=1.2,
                marker="o" if len(values) < 30 else None, ms=3)
    if optimum is not None:
        ax.axhline(optimum, color="k", ls="--", lw=1, label="closed form / EM log p(x)")
    tails = np.concatenate([np.asarray(v[len(v) // 10:], dtype=float) for v in curves.values()])
    tails = tails[np.isfinite(tails)]
    if tails.size:
        low, high = np.percentile(tails, 1), tails.max()
        if optimum is not None:
            low, high = min(low, optimum), max(high, optimum)
        pad = 0.15 * (high - low) + 1e-6
        ax.set_ylim(low - pad, high + pad)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlim(left=0)
    ax.set_xlabel("SVI step / EM iteration (linear to 10, then logarithmic)")
    ax.set_ylabel("nats per datapoint")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return save_figure(fig, path)


def _aligned_draws(spec, config, fits: list[Fit], x, seed) -> dict[str, export.PosteriorDraws]:
    """Each fit's draws (and NUTS references) in the anchor fit's coordinates: continuous
    local sites rotated by orthogonal Procrustes on the posterior means of up to 256 training
    rows, discrete ones relabelled by the label matching."""
    anchor = anchor_of(fits)
    if anchor is None:
        return {}
    align_rows = export.chosen_rows(x.shape[0], count=256, seed=seed + 1)

    def means(fit):
        d = export.draw_posterior(spec, config, fit.result, x, rows=align_rows, label="",
                                  num_draws=32, log_likelihood_rows=0, seed=seed)
        return {name: v.double().mean(0) for name, v in d.local.items() if name not in d.discrete}

    target = means(anchor)
    out = {}
    for fit in fits:
        if fit.draws is None:
            continue
        rotations = {}
        for name, source in means(fit).items():
            if name in target and source.dim() == 2 and source.shape[0] >= source.shape[1]:
                rotations[name] = export.procrustes_rotation(source, target[name])
        permutations = ({name: fit.permutation for name in fit.draws.discrete}
                        if fit.permutation is not None else {})
        out[fit.cell.label] = export.aligned(fit.draws, rotations, permutations)
        if fit.reference is not None:
            out[fit.reference.label] = export.aligned(fit.reference, rotations)
    return out


def _plot_yardstick(summary: list[dict], path: Path, *, title: str) -> Path:
    """Left: train and test log p(x) and the ELBO per strategy (mean ± std over seeds);
    right: the gap split into approximation and amortization gaps."""
    labels = [row["strategy"] for row in summary]
    y = np.arange(len(labels))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.5 * len(labels) + 1.8),
                                      sharey=True)
    for offset, (metric, name) in zip((-0.2, 0.0, 0.2), (
            ("train_log_likelihood", "train log p(x)"), ("test_log_likelihood", "test log p(x)"),
            ("elbo", "ELBO (train)")), strict=True):
        means = [row.get(f"{metric}_mean") for row in summary]
        stds = [row.get(f"{metric}_std") or 0.0 for row in summary]
        keep = [i for i, m in enumerate(means) if m is not None]
        if keep:
            left.errorbar([means[i] for i in keep], y[keep] + offset,
                          xerr=[stds[i] for i in keep], fmt="o", capsize=3, label=name, ms=4)
    left.set_xlabel("nats per datapoint")
    left.set_yticks(y, labels)
    left.invert_yaxis()
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    approximation = np.array([row.get("approximation_gap_mean") or 0.0 for row in summary])
    amortization = np.array([row.get("amortization_gap_mean") or 0.0 for row in summary])
    right.barh(y, approximation, color="tab:blue", label="approximation gap")
    right.barh(y, amortization, left=approximation, color="tab:orange",
               label="amortization gap")
    right.set_xlabel("nats per datapoint (log p(x) − ELBO)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3, axis="x")
    fig.suptitle(title + ": the yardstick (mean ± std over seeds)", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)

