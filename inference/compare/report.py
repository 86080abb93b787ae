"""``report.html``: one self-contained page per comparison.

The page embeds the summary table (mean ± standard deviation over seeds), the per-fit table,
every figure (PNG as a base64 ``data:`` URI, so the file opens offline, from anywhere, with no
server, no CDN and no script) and the ArviZ summaries of each fit's posterior draws.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping
from pathlib import Path

from inference.compare.tables import footnote, format_mean_std, table
from inference.diagnostics import EXPLAINED
from inference.runs import atomic_write

REPORT_FILE = "report.html"
HEADINGS = {"curves": "Training curves", "yardstick": "The yardstick",
            "posterior": "Local latents: the posterior of chosen rows",
            "forest": "Local latents: forest plot of chosen rows",
            "global": "Global latents: every fit and the reference side by side"}
STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1200px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
figure { margin: 1em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; } .note { font-size: 0.85em; color: #555; }
details { margin: 0.5em 0; } summary { cursor: pointer; } .scroll { overflow-x: auto; }
#fits { font-size: 0.78em; } #fits td, #fits th { padding: 0.2em 0.3em; }  /* all in view */
td:first-child { min-width: 7em; }
"""


def write_report(compare_dir: str | Path, *, spec, dataset, config, records: list[dict],
                 summary: list[dict], figures: Mapping[str, Path],
                 summaries: Mapping[str, object] | None = None,
                 nuts: Mapping[str, dict] | None = None) -> Path:
    """Write ``compare_dir/report.html``; returns its path."""
    path = Path(compare_dir) / REPORT_FILE
    text = render(spec=spec, dataset=dataset, config=config, records=records, summary=summary,
                  figures=figures, summaries=summaries or {}, nuts=nuts or {})
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))
    return path


def render(*, spec, dataset, config, records, summary, figures, summaries, nuts) -> str:
    first = records[0]
    esc = html.escape
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>lvm-zoo compare {esc(spec.name)} on {esc(dataset.label)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>Comparison of inference strategies: {esc(spec.name)} on {esc(dataset.label)}</h1>",
        f"<p>{esc(spec.summary.rstrip(' .;:,'))}. {esc(str(first['n_train']))} training and "
        f"{esc(str(first['n_test']))} test rows, one split for every fit; "
        f"{max(row['seeds'] for row in summary)} seed(s) per strategy. Log-likelihood: "
        f"<b>{esc(first['log_likelihood_method'])}</b>; every number is in mean nats per "
        "datapoint.</p>",
        f"<p class='note'>Config: {esc(_config_text(config))}</p>",
        "<h2>Summary: mean ± standard deviation over seeds</h2>",
        _html_table(table(summary), table_id="summary"),
        f"<p class='note'>{esc(footnote(summary))}</p>" if footnote(summary) else "",
        _gap_note(records),
        _pareto_note(records),
        _held_out_note(spec, records),
        _estimate_note(records),
        _nuts_note(nuts),
    ]
    parts.append("<nav><p class='note'>Figures:</p><ul id='contents'>" + "".join(
        f"<li data-figure='{esc(name)}'>{esc(HEADINGS.get(name, name.capitalize()))}</li>"
        for name in figures) + "</ul></nav>")
    for name, figure in figures.items():
        path, caption = (figure.path, figure.caption) if hasattr(figure, "caption") \
            else (Path(figure), "")
        parts.append(f"<h2>{esc(HEADINGS.get(name, name.capitalize()))}</h2>")
        parts.append(_figure(path, caption))
    parts.append("<h2>Every fit</h2>")
    parts.append(_html_table(_record_cells(records), table_id="fits"))
    if summaries:
        parts.append("<h2>ArviZ summaries of the exported posteriors (first seed)</h2>")
        parts.append(f"<p class='note'>{esc(_summaries_note(spec, records, nuts, summaries))}"
                     "</p>")
        for label, frame in summaries.items():
            notes = nuts.get(label)
            extra = f" — {_nuts_diagnostics(notes)}" if notes else ""
            parts.append(f"<details><summary>{esc(label)}{esc(extra)}</summary>"
                         f"{frame.to_html(border=0)}</details>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _gap_note(records: list[dict]) -> str:
    """What the gap columns mean, for the columns the table shows."""
    def shown(key):
        return any(r.get(key) is not None for r in records)
    notes = []
    if shown("gap"):
        notes.append("gap = log p(x) − ELBO on the training rows (exact where the model has a "
                     "closed-form posterior, else Monte Carlo)")
    if shown("approximation_gap"):
        notes.append("approximation gap = log p(x) − ELBO of the best per-datapoint member of "
                     "the guide's family")
    if shown("amortization_gap"):
        notes.append("amortization gap = ELBO of that optimum − ELBO of the encoder (amortized "
                     "guides, on a subset of training rows where marked)")
    if shown("ari"):
        notes.append("ARI and matched |Δθ| compare mixtures with the anchor fit up to "
                     "relabelling")
    if shown("reference_distance"):
        notes.append("dist. to NUTS: the Gaussian 2-Wasserstein distance between a fit's "
                     "posterior draws and NUTS's, averaged over the global sites and the "
                     "chosen rows' local sites")
    return f"<p class='note'>{html.escape('; '.join(notes))}.</p>" if notes else ""


def _held_out_note(spec, records: list[dict]) -> str:
    """Why a strategy's test log p(x) is "-" although the split has test rows."""
    missing = {r["strategy"]: r.get("guide") for r in records
               if r.get("n_test") and r.get("test_log_likelihood") is None}
    if not missing:
        return ""
    guides = getattr(spec, "guides", None) or {}
    free = [label for label, guide in missing.items()
            if getattr(guides.get(guide), "per_datapoint", False)]
    notes = []
    if free:
        notes.append(f"test log p(x) of {', '.join(free)} is not estimated: the guide keeps "
                     "free parameters for each training row and has none for the held-out "
                     "rows, so there is no proposal to importance-sample them with")
    other = [label for label in missing if label not in free]
    if other:
        notes.append(f"test log p(x) of {', '.join(other)} was not computed")
    return f"<p class='note'>{html.escape('; '.join(notes))}.</p>"


def _summaries_note(spec, records: list[dict], nuts: Mapping[str, dict],
                    shown: Mapping[str, object] | None = None) -> str:
    """What the ArviZ summaries below hold, for this model and these fits (``shown``: the
    summaries' labels, when only some fits have one)."""
    drawn = []
    if getattr(spec, "global_sites", ()):
        drawn.append(f"the global latents ({', '.join(spec.global_sites)})")
    if getattr(spec, "local_sites", ()) or not drawn:
        drawn.append("the local latents of the chosen training rows")
    text = f"Draws of {' and '.join(drawn)}, from each fit's guide"
    exact = list(dict.fromkeys(r["strategy"] for r in records if r.get("guide") is None
                               and (shown is None or r["strategy"] in shown)))
    if exact:
        text += (f" ({', '.join(exact)}: the exact posterior of the local latents at the "
                 "fitted parameters)")
    if nuts:
        text += f"; {', '.join(nuts)}: the reference posterior by NUTS"
    return (text + "; stored as ArviZ InferenceData in each run folder (posterior.nc"
            + (", and posterior-nuts.nc for NUTS)." if nuts else ")."))


def _nuts_diagnostics(notes: Mapping) -> str:
    """One line on a NUTS run: its size, divergences, acceptance, R-hat and ESS."""
    parts = []
    if notes.get("chains") is not None:
        parts.append(f"{notes['chains']} chains × {notes.get('samples_per_chain')} draws "
                     f"({notes.get('warmup_steps')} warm-up)")
    parts.append(f"divergences {notes.get('divergences')}")
    if notes.get("acceptance_rate") is not None:
        parts.append(f"acceptance rate {float(notes['acceptance_rate']):.2f}")
    if notes.get("r_hat_max") is not None:
        parts.append(f"largest R-hat {float(notes['r_hat_max']):.3f} "
                     f"({notes.get('r_hat_site')})")
    if notes.get("ess_bulk_min") is not None:
        parts.append(f"smallest bulk ESS {float(notes['ess_bulk_min']):.0f} "
                     f"({notes.get('ess_bulk_site')})")
    if notes.get("ess_tail_min") is not None:
        parts.append(f"smallest tail ESS {float(notes['ess_tail_min']):.0f} "
                     f"({notes.get('ess_tail_site')})")
    return ", ".join(parts)


def _nuts_note(nuts: Mapping[str, dict]) -> str:
    """The reference posterior's own diagnostics, beside the distances measured against it,
    and a warning when it misses the R-hat / ESS targets."""
    lines = []
    for label, notes in nuts.items():
        text = f"{label}: {_nuts_diagnostics(notes)}"
        if str(notes.get("meets_targets")) == "False":
            text += (f". It misses the targets R-hat ≤ {notes.get('r_hat_target')} and ESS ≥ "
                     f"{notes.get('ess_target')}: the reference is itself uncertain, so read "
                     "'dist. to NUTS' with care (more --nuts-warmup / --nuts-samples / "
                     "--nuts-chains)")
        elif str(notes.get("meets_targets")) == "True":
            text += ". It meets the R-hat and ESS targets"
        lines.append(text)
    return "".join(f"<p class='note'>NUTS reference — {html.escape(line)}.</p>"
                   for line in lines)


def _estimate_note(records: list[dict]) -> str:
    """What an importance-sampled log p(x) is, where the table shows one."""
    methods = sorted({r["log_likelihood_method"] for r in records
                      if str(r.get("log_likelihood_method", "")).startswith("iwae")})
    if not methods:
        return ""
    return ("<p class='note'>log p(x) by " + html.escape(", ".join(methods)) + ": importance "
            "sampling with each fit's guide as the proposal: a lower bound in expectation, tighter "
            "the better the guide, so a difference between two fits mixes the quality of their "
            "models with that of their guides (k̂ says how far to trust each estimate).</p>")


def _pareto_note(records: list[dict]) -> str:
    """One line on k̂ where the yardstick importance-sampled, or why there is none."""
    if any(r.get("pareto_k") is not None for r in records):
        return (f"<p class='note'>k̂: {html.escape(EXPLAINED)} (per fit, the largest over the rows "
                "whose k̂ was computed; per row for an amortized guide).</p>")
    notes = {r["pareto_k_note"] for r in records if r.get("pareto_k_note")}
    return "".join(f"<p class='note'>k̂: {html.escape(note)}.</p>" for note in sorted(notes))


def _config_text(config) -> str:
    fields = getattr(config, "__dataclass_fields__", {})
    return ", ".join(f"{name}={getattr(config, name)!r}" for name in fields)


def _figure(path: Path, caption: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f"<figure><img src=\"data:image/png;base64,{data}\" alt=\"{html.escape(path.stem)}\">"
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _html_table(cells: list[list[str]], *, table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cells[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in cells[1:])
    return (f'<div class="scroll"><table id="{table_id}"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table></div>")


RECORD_COLUMNS = (("strategy", "strategy", None), ("seed", "seed", None),
                  ("ELBO estimator", "elbo_estimator", None),
                  ("train log p(x)", "train_log_likelihood", 4),
                  ("train s.e.", "train_log_likelihood_se", 4),
                  ("test log p(x)", "test_log_likelihood", 4),
                  ("test s.e.", "test_log_likelihood_se", 4), ("ELBO", "elbo", 4),
                  ("ELBO method", "elbo_method", None), ("gap", "gap", 4),
                  ("approx. gap", "approximation_gap", 4),
                  ("amort. gap", "amortization_gap", 4), ("ARI", "ari", 3),
                  ("matched |Δθ|", "matched_param_error", 4),
                  ("dist. to NUTS", "reference_distance", 3), ("k̂", "pareto_k", 2),
                  ("share k̂ > 0.7", "pareto_k_share_above_0.7", 2),
                  ("seconds", "seconds", 2), ("yardstick seconds", "yardstick_seconds", 2),
                  ("steps", "steps", None), ("converged", "converged", None),
                  ("run folder", "run_dir", None))


def _record_cells(records: list[dict]) -> list[list[str]]:
    columns = [c for c in RECORD_COLUMNS if any(r.get(c[1]) is not None for r in records)]
    cells = [[c[0] for c in columns]]
    for record in records:
        row = []
        for _, key, digits in columns:
            value = record.get(key)
            if value is None:
                row.append("-")
            elif digits is not None:
                row.append(format_mean_std({f"{key}_mean": value}, key, digits))
            elif key == "run_dir":
                row.append(Path(value).name)
            else:
                row.append(str(value))
        cells.append(row)
    return cells
