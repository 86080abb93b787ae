"""The comparison's figures: training curves, the yardstick, posteriors aligned across fits."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import NamedTuple

import arviz as az
import numpy as np

from inference import posterior_export as export
from inference.compare.fits import Fit, anchor_of
from inference.figures import plt, save_figure


class Shown(NamedTuple):
    """A saved figure and its caption, written from what the figure shows."""

    path: Path
    caption: str


def comparison_figures(spec, dataset, config, fits: list[Fit], summary, x, compare_dir: Path,
                       seed: int) -> dict[str, Shown]:
    """curves.png, yardstick.png, and where the fits have posterior draws posterior.png and
    forest.png (local latents) and global.png (global latents, NUTS beside the guides);
    returns {name: Shown(path, caption)}, in the report's order."""
    first = [f for f in fits if f.seed == seed]
    figures: dict[str, Shown] = {}
    curves = _curves(spec, dataset, first, compare_dir)
    if curves is not None:
        figures["curves"] = curves
    figures["yardstick"] = _plot_yardstick(summary, compare_dir / "yardstick.png",
                                           title=f"{spec.name} on {dataset.label}")
    figures.update(_local_figures(spec, config, first, x, compare_dir, seed))
    global_ = _global_forest(spec, first, compare_dir / "global.png")
    if global_ is not None:
        figures["global"] = global_
    return figures


def _curves(spec, dataset, first: list[Fit], compare_dir: Path) -> Shown | None:
    curves, estimated = {}, set()
    for fit in first:
        history = fit.result.history
        values = history.get("elbo") or history.get("log_likelihood") or []
        if len(values) > 1:
            curves[fit.cell.label] = values
            if fit.result.info.get("batch_size"):  # a curve of minibatch estimates
                estimated.add(fit.cell.label)
    if not curves:
        return None
    optimum = next((f.record["train_log_likelihood"] for f in first if f.baseline), None)
    path = plot_training_curves(
        curves, compare_dir / "curves.png", optimum=optimum, estimated=estimated,
        title=f"{spec.name} on {dataset.label}: ELBO per SVI step, log p(x) per EM "
              "iteration (first seed)")
    caption = ("Training curves of every strategy (first seed): the ELBO per SVI step, "
               "log p(x) per EM iteration, in mean nats per datapoint. Left: the whole run; "
               "right: the last 90% of each run, where the fits settle.")
    if any(len(v) > 200 for v in curves.values()):
        caption += (" Curves longer than 200 points are drawn as a running mean (the raw "
                    "values faint behind).")
    if estimated:
        caption += (" Dotted: " + ", ".join(sorted(estimated)) + ", whose values are "
                    "minibatch estimates, noisy and not comparable point by point with a "
                    "whole-data curve.")
    if optimum is not None:
        caption += " The dashed line is the closed-form / EM optimum of log p(x)."
    return Shown(path, caption)


def _local_figures(spec, config, first: list[Fit], x, compare_dir: Path,
                   seed: int) -> dict[str, Shown]:
    draws = _aligned_draws(spec, config, first, x, seed)
    sites = list(next(iter(draws.values())).local) if draws else []
    if not sites:
        return {}
    figures = {}
    discrete = next(iter(draws.values())).discrete
    site = next((n for n in sites if n not in discrete), sites[0])  # continuous first
    draws = {label: d for label, d in draws.items() if site in d.local}
    is_discrete = site in next(iter(draws.values())).discrete
    note = ("labels matched to the anchor fit" if is_discrete
            else "rotated onto the anchor fit's coordinates (orthogonal Procrustes)")
    path = export.plot_posteriors(draws, compare_dir / "posterior.png", site=site,
                                  title=f"q({site} | x) for chosen training rows; {note}")
    shape = ("q(z = k | x) of each component as grouped bars" if is_discrete
             else "the 2-σ ellipse of each fit in the first two dimensions (a bar of ±2σ "
                  "for one dimension)")
    figures["posterior"] = Shown(path, f"The posterior of the local latent {site} for chosen "
                                       f"training rows (first seed), {note}: {shape}.")
    continuous = {k: v for k, v in draws.items() if site not in v.discrete}
    if continuous:
        idatas = {label: export.to_inference_data(d) for label, d in continuous.items()}
        rows = [int(r) for r in next(iter(continuous.values())).rows[:2]]
        path = export.plot_forest(
            idatas, compare_dir / "forest.png", site=site, rows=rows,
            title=f"{spec.name}: posterior of {site} for training rows {rows}, by fit")
        figures["forest"] = Shown(path, f"ArviZ forest plot of {site} for training rows "
                                        f"{rows}, every fit side by side (94% HDI, "
                                        "interquartile range and mean).")
    return figures


GLOBAL_DIMS = 6  # coordinates of a vector-valued global site drawn in the forest plot


def _global_forest(spec, first: list[Fit], path: Path) -> Shown | None:
    """ArviZ forest plot of every global site: each guide's posterior and NUTS's side by
    side; ``None`` when no fit has global draws."""
    draws = {}
    for fit in first:
        if fit.draws is not None and fit.draws.globals:
            draws[fit.cell.label] = fit.draws
        if fit.reference is not None and fit.reference.globals:
            draws.setdefault(fit.reference.label, fit.reference)
    if not draws:
        return None
    sites = list(next(iter(draws.values())).globals)
    idatas = {label: export.to_inference_data(d) for label, d in draws.items()}
    coords = {}
    for site in sites:
        first_posterior = next(iter(idatas.values())).posterior[site]
        extra = [d for d in first_posterior.dims if d not in ("chain", "draw")]
        for dim in extra:
            coords[dim] = list(range(min(GLOBAL_DIMS, first_posterior.sizes[dim])))
    lines = sum(int(np.prod([len(coords[d]) for d in idatas[next(iter(idatas))].posterior[s]
                             .dims if d in coords])) for s in sites)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        axes = az.plot_forest(list(idatas.values()), model_names=list(idatas), var_names=sites,
                              coords=coords, combined=True, hdi_prob=0.94,
                              figsize=(7.5, min(max(1.0 + 0.25 * lines * len(idatas), 3.0),
                                                24.0)))
    ax = np.ravel(axes)[0]
    legend = ax.get_legend()
    if legend is not None:
        handles = list(legend.legend_handles)
        labels = [text.get_text() for text in legend.get_texts()]
        legend.remove()
        ax.legend(handles[::-1], labels[::-1], fontsize=8, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0))
    ax.set_title(f"{spec.name}: the global latents by fit\n(94% HDI, interquartile range, "
                 "mean)", fontsize=10)
    save_figure(ax.figure, path)
    nuts = [label for label in draws if label not in {f.cell.label for f in first}]
    caption = (f"ArviZ forest plot of the global latents ({', '.join(sites)}): every fit's "
               "posterior side by side (94% HDI, interquartile range and mean)")
    caption += (f", with the reference posterior ({', '.join(nuts)}) among them." if nuts
                else ".")
    if any(len(c) == GLOBAL_DIMS for c in coords.values()):
        caption += f" Vector-valued sites show their first {GLOBAL_DIMS} coordinates."
    return Shown(path, caption)


def plot_training_curves(curves: dict[str, list[float]], path: Path, *,
                         optimum: float | None = None, estimated: set[str] = frozenset(),
                         title: str = "") -> Path:
    """Every strategy's curve, the closed-form / EM optimum as a dashed line, the legend
    beside the axes. Left: the whole run (symlog steps); right: the last 90% of each run on
    a y-range that leaves out rare dips, so the distance of each to the optimum is visible.
    A curve longer than 200 points is drawn as its running mean over a 50th of its length
    (raw values faint behind); the ``estimated`` curves (minibatch estimates) are dotted."""
    fig, (whole, settled) = plt.subplots(1, 2, figsize=(12, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=float)
        steps = np.arange(len(values))
        colour = colours[index % len(colours)]
        style = ":" if label in estimated else "-"
        smooth = _running_mean(values)
        for ax in (whole, settled):
            shown = steps if ax is whole else steps[len(steps) // 10:]
            if smooth is not values:
                ax.plot(shown, values[shown], color=colour, lw=0.6, alpha=0.2)
            ax.plot(shown, smooth[shown], color=colour, ls=style, lw=1.4,
                    marker="o" if len(values) < 30 else None, ms=3,
                    label=label + (" (minibatch estimate)" if label in estimated else ""))
    for ax in (whole, settled):
        if optimum is not None:
            ax.axhline(optimum, color="k", ls="--", lw=1, label="closed form / EM log p(x)")
        ax.set_ylabel("nats per datapoint")
        ax.grid(alpha=0.3)
    whole.set_xscale("symlog", linthresh=10)
    whole.set_xlim(left=0)
    whole.set_xlabel("SVI step / EM iteration (linear to 10, then logarithmic)")
    whole.set_title("the whole run", fontsize=9)
    settled.set_xlabel("SVI step / EM iteration")
    settled.set_title("the last 90% of each run", fontsize=9)
    _settled_limits(settled, curves, optimum)
    settled.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path)


def _running_mean(values: np.ndarray) -> np.ndarray:
    """The running mean over ``len / 50`` points of a curve longer than 200; else itself."""
    if len(values) <= 200 or not np.isfinite(values).all():
        return values
    window = max(2, len(values) // 50)
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def _settled_limits(ax, curves, optimum) -> None:
    tails = np.concatenate([np.asarray(v[len(v) // 10:], dtype=float) for v in curves.values()])
    tails = tails[np.isfinite(tails)]
    if tails.size:
        low, high = np.percentile(tails, 1), tails.max()
        if optimum is not None:
            low, high = min(low, optimum), max(high, optimum)
        pad = 0.15 * (high - low) + 1e-6
        ax.set_ylim(low - pad, high + pad)


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


def _plot_yardstick(summary: list[dict], path: Path, *, title: str) -> Shown:
    """Left: train and test log p(x) and the ELBO per strategy (mean ± std over seeds);
    right: the gap log p(x) − ELBO and, where it was split, its approximation and
    amortization parts, as bars side by side. A value that is missing or not finite is not
    drawn, and the figure and its caption say which."""
    labels = [row["strategy"] for row in summary]
    y = np.arange(len(labels))
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.55 * len(labels) + 2.0),
                                      sharey=True)
    left_out = _draw_log_densities(left, summary, labels, y)
    left_out += _draw_gaps(right, summary, labels, y)
    fig.suptitle(title + ": the yardstick (mean ± std over seeds)", fontsize=10)
    if left_out:
        fig.text(0.01, 0.005, "not drawn (not finite): " + "; ".join(left_out), fontsize=7,
                 color="tab:red", ha="left", va="bottom", wrap=True)
    fig.tight_layout(rect=(0, 0.05 if left_out else 0, 1, 1))
    return Shown(save_figure(fig, path), _yardstick_caption(summary, left_out))


def _draw_log_densities(axis, summary: list[dict], labels: list, y: np.ndarray) -> list[str]:
    """The yardstick's left panel: train and test log p(x) and the ELBO per strategy, mean ±
    std over seeds; returns the values left out as not finite, one line each."""
    left_out = []
    for offset, (metric, name) in zip((-0.2, 0.0, 0.2), (
            ("train_log_likelihood", "train log p(x)"), ("test_log_likelihood", "test log p(x)"),
            ("elbo", "ELBO (train)")), strict=True):
        means = [row.get(f"{metric}_mean") for row in summary]
        stds = [row.get(f"{metric}_std") or 0.0 for row in summary]
        keep = [i for i, m in enumerate(means) if m is not None and np.isfinite(m)]
        left_out += [f"{labels[i]}: {name} {means[i]}" for i, m in enumerate(means)
                     if m is not None and not np.isfinite(m)]
        if keep:
            axis.errorbar([means[i] for i in keep], y[keep] + offset,
                          xerr=[stds[i] for i in keep], fmt="o", capsize=3, label=name, ms=4)
    axis.set_xlabel("nats per datapoint")
    axis.set_yticks(y, labels)
    axis.invert_yaxis()
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    return left_out


def _draw_gaps(axis, summary: list[dict], labels: list, y: np.ndarray) -> list[str]:
    """The yardstick's right panel: the gap log p(x) − ELBO and, where it was split, its
    approximation and amortization parts, as bars side by side on a symlog scale; returns
    the values left out as not finite, one line each."""
    left_out, drawn = [], False
    for offset, (metric, name, colour) in zip((-0.27, 0.0, 0.27), (
            ("gap", "gap log p(x) − ELBO", "tab:gray"),
            ("approximation_gap", "approximation gap", "tab:blue"),
            ("amortization_gap", "amortization gap", "tab:orange")), strict=True):
        values = [row.get(f"{metric}_mean") for row in summary]
        keep = [i for i, v in enumerate(values) if v is not None and np.isfinite(v)]
        left_out += [f"{labels[i]}: {name} {values[i]}" for i, v in enumerate(values)
                     if v is not None and not np.isfinite(v)]
        if keep:
            axis.barh(y[keep] + offset, [values[i] for i in keep], height=0.26,
                      color=colour, label=name)
            drawn = True
    axis.axvline(0, color="k", lw=0.6)
    axis.set_xscale("symlog", linthresh=0.01)  # gaps of 0.01 and of 10 nats both readable
    axis.set_xlabel("nats per datapoint (linear within ±0.01, then logarithmic)")
    for i, row in enumerate(summary):  # say why a row is empty rather than leave it blank
        if row.get("gap_mean") is None:
            axis.text(0.02, y[i], "no ELBO: not a variational fit", va="center", fontsize=7,
                      color="0.4", transform=axis.get_yaxis_transform())
    if drawn:
        low, high = axis.get_xlim()
        axis.set_xlim(low, high * 1.5 if high > 0 else high)  # room past the longest bar
        axis.legend(fontsize=8, framealpha=0.9)
    else:
        axis.text(0.5, 0.5, "no fit has an ELBO: no gap to show", ha="center",
                  va="center", transform=axis.transAxes, color="0.4")
    axis.grid(alpha=0.3, axis="x")
    return left_out


def _yardstick_caption(summary: list[dict], left_out: list[str]) -> str:
    """The yardstick figure's caption, naming the values not drawn."""
    caption = ("Train and test log p(x) and the ELBO per strategy (mean ± standard deviation "
               "over seeds); right: the gap log p(x) − ELBO and, where it was split (amortized "
               "guides), the approximation and amortization gaps.")
    if any(row.get("gap_on_subset") for row in summary):
        caption += (" A split computed on a subset of the training rows adds up to the gap on "
                    "those rows, not to the gap drawn beside it.")
    if left_out:
        caption += " Not drawn because not finite: " + "; ".join(left_out) + "."
    return caption
