"""The comparison harness: every applicable strategy on one split, judged by one yardstick.

``compare(spec)`` runs the grid (each registered strategy's cells: closed form, EM, K-means,
then SVI with each guide and its ELBO estimator) over ``seeds`` seeds on ONE train/test split.
Every fit goes through :func:`inference.fitting.fit`, in memory, so each is isolated (its own
param-store scope and seed). On top of the fit's record each row gets the exact ELBO and gap
and the gap split (:mod:`.gaps`), the label-switching measures for mixtures (:mod:`.labels`),
and with ``reference="nuts"`` the distance of the fit's posterior draws to NUTS draws at its
parameters. Each fit's run folder is written once, at the end, with its ``posterior.nc``.

The comparison folder (default ``runs/compare-<model>-<data>-<time>``) then holds
``comparison.json`` / ``.csv`` (one row per fit), ``summary.json`` / ``.csv`` (one row per
strategy: mean and standard deviation over seeds), the figures and ``report.html``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from torch.distributions import Categorical

from inference import interrupt
from inference import posterior_export as export
from inference import strategies as registry
from inference.catalog import get_model
from inference.compare.figures import comparison_figures
from inference.compare.fits import Fit, anchor_of
from inference.compare.gaps import GAP_ROWS, judge_fit
from inference.compare.labels import label_switching_measures
from inference.compare.report import write_report
from inference.compare.resume import CellStore, ComparisonInterrupted, fingerprint
from inference.compare.tables import summarize, write_csv
from inference.data import DataRequest, load
from inference.fitting import (
    DATA_KEYWORDS,
    data_request,
    grid_option_names,
    make_config,
    plan,
    run,
    split_options,
    write_run,
)
from inference.preflight import preflight
from inference.run_folder import staged
from inference.runs import (
    check_writable,
    earlier_files,
    fresh_folder,
    locked,
    refuse_earlier,
    write_json,
)
from inference.strategies import Cell
from zoo.errors import InputError
from zoo.registry import ModelSpec
from zoo.resources import MAX_FITS, check_count

REFERENCES = ("nuts",)


def strategy_grid(spec: ModelSpec, config=None, x: torch.Tensor | None = None,
                  **grid_options) -> list[Cell]:
    """Every cell of ``spec``'s grid, strategy by strategy in registry order. ``grid_options``
    are the strategies' ``GridOptions`` fields (SVI's ``elbos``)."""
    cells = []
    for name in registry.applicable(spec):
        strategy = registry.strategies()[name]
        options = None
        if strategy.GridOptions is not None:
            names = {f for f in strategy.GridOptions.__dataclass_fields__}
            options = registry.make_options(
                strategy.GridOptions, {k: v for k, v in grid_options.items() if k in names},
                owner=f"compare --inference {name}")
        cells += strategy.cells(spec, config, x, options)
    return cells


class Comparison(list):
    """The records of a comparison, one per fit (a list), with ``summary``: one row per
    strategy, mean and standard deviation over seeds, computed once."""

    def __init__(self, records: list[dict], summary: list[dict]):
        super().__init__(records)
        self.summary = summary


def compare(spec: ModelSpec | str, *, seeds: int = 1, out: str | Path | None = None,
            data: DataRequest | str | None = None, seed: int = 0,
            strategies: Sequence[str] | None = None, reference: str | None = None,
            gap_rows: int = GAP_ROWS, draws: int = export.DRAWS, report: bool = True,
            progress: bool = False, iwae_samples: int | None = None,
            iwae_rows: int | str | None = None, overwrite: bool = False,
            nuts_samples: int | None = None,
            nuts_warmup: int | None = None, nuts_chains: int | None = None,
            resume: bool = False, **options) -> Comparison:
    """Run every applicable strategy on one train/test split (drawn by ``seed``), ``seeds``
    seeds each (``seed``, ``seed + 1``, ...), judge each fit, write the comparison folder;
    returns one record per fit (and their ``summary``).

    ``options`` are the model's config fields, the strategies' options (each cell takes those
    of its own strategy) and the strategies' grid options (``elbos``); ``strategies``
    keeps only the named cells (by slug: ``"em"``, ``"svi-exact"``); ``reference="nuts"``
    adds NUTS as the reference posterior (``nuts_samples``, ``nuts_warmup``, ``nuts_chains``:
    per chain, and how many chains); ``gap_rows`` (0: none) sizes the amortization-gap
    subset; ``draws`` is the number of posterior draws exported per fit. An ``out`` folder
    that already holds a comparison is refused unless ``overwrite``, which removes the earlier
    comparison's files and run folders once the new fits are done. Each fit is kept in
    ``out/.compare-cells`` as it finishes (:mod:`.resume`); ``resume=True`` continues a
    comparison that was stopped part way in ``out``, fitting only the cells that did not
    finish (under the same options, else an InputError naming the one that differs).
    """
    spec = get_model(spec)
    grid_names = grid_option_names()
    grid_options = {k: v for k, v in options.items() if k in grid_names}
    options = {k: v for k, v in options.items() if k not in grid_names}
    _check_options(seeds=seeds, reference=reference, gap_rows=gap_rows, draws=draws,
                   grid_options=grid_options, options=options, resume=resume, out=out)
    data_keywords = {k: options.pop(k) for k in list(options) if k in DATA_KEYWORDS}
    model_options, fit_options = split_options(spec, options)
    request = data_request(spec, data, seed, **data_keywords)
    loaded = load(request, spec)
    config = make_config(spec, loaded, model_options)  # once, for every cell and seed
    nuts = {"samples": nuts_samples, "warmup": nuts_warmup, "chains": nuts_chains}
    if reference == "nuts":
        export.NutsOptions.make(**nuts)
        export.check_nuts_applies(spec, config, loaded.train)
    if any(registry.strategies()[name].uses_guide for name in registry.applicable(spec)):
        preflight(spec, config, loaded.train, None, seed=seed)  # the grid traces the model
    cells = _chosen(strategy_grid(spec, config, loaded.train, **grid_options), strategies)
    check_count(f"the fits of --seeds {seeds:,} × {len(cells)} cells", seeds * len(cells),
                MAX_FITS,
                "give fewer --seeds or --strategies (or split the seeds over several "
                "comparisons with --seed)")
    plans = [(cell, plan(spec, inference=cell.strategy, guide=cell.guide, data=request, seed=s,
                         iwae_samples=iwae_samples, iwae_rows=iwae_rows, progress=progress,
                         posterior=False,
                         **model_options, **_cell_options(cell, fit_options)))
             for cell in cells for s in range(seed, seed + seeds)]  # all checked before work
    kept = fingerprint(seeds=seeds, seed=seed, cells=cells, reference=reference,
                       gap_rows=gap_rows, draws=draws, iwae_samples=iwae_samples,
                       iwae_rows=iwae_rows, nuts=nuts,
                       request=request, options={**model_options, **fit_options,
                                                 **grid_options}, config=config,
                       rows=(*loaded.train.shape, int(loaded.test.shape[0])))
    return _run_grid(spec, plans, loaded, config, out=out, overwrite=overwrite, seed=seed,
                     gap_rows=gap_rows, draws=draws, reference=reference, nuts=nuts,
                     report=report, resume=resume, kept=kept)


def _run_grid(spec: ModelSpec, plans: list, loaded, config, *, out, overwrite: bool, seed: int,
              gap_rows: int, draws: int, reference: str | None, nuts: dict,
              report: bool, resume: bool = False, kept: dict | None = None) -> Comparison:
    """Fit the planned cells into a comparison folder (locked), judge, export, report; each
    fit is kept as it finishes (``kept``: the options it is kept under), ``resume`` fits only
    those not kept yet."""
    progress = any(settled.progress for _, settled in plans)
    compare_dir = check_writable(Path(out) if out else fresh_folder(Path("runs") / (
        f"compare-{spec.name}-{Path(loaded.dataset.name).stem}-{time.strftime('%Y%m%d-%H%M%S')}")))
    with locked(compare_dir):  # one process at a time writes a comparison folder
        store = _cell_store(compare_dir, kept or {}, resume=resume, overwrite=overwrite)
        # a comparison stopped while replacing an earlier one (--overwrite) goes on replacing
        overwrite = overwrite or (resume and store.exists())
        refuse_earlier(compare_dir, comparison=True, overwrite=overwrite)
        earlier = earlier_files(compare_dir, comparison=True) if overwrite else {}
        try:
            records, summary = _staged_grid(
                spec, plans, loaded, config, compare_dir, earlier, store, seed=seed,
                gap_rows=gap_rows, draws=draws, reference=reference, nuts=nuts,
                report=report, progress=progress)
        except interrupt.Interrupted as stop:
            if isinstance(stop, ComparisonInterrupted) or not store.finished():
                raise
            raise ComparisonInterrupted(stop, compare_dir, store.finished(),
                                        len(plans)) from None
        store.clear()  # the comparison is in place: nothing is left to resume
    return Comparison(records, summary)


def _cell_store(compare_dir: Path, kept: dict, *, resume: bool, overwrite: bool) -> CellStore:
    """The fits kept in ``compare_dir``: checked against ``kept`` (``resume``), cleared
    (``overwrite``), else an earlier comparison's kept fits are refused."""
    store = CellStore(compare_dir, kept)
    if resume:
        if store.exists():
            store.check()
    elif store.folder.exists():
        if not overwrite and store.finished():
            raise InputError(f"--out {compare_dir} holds a comparison that was stopped after "
                             f"{store.finished()} fit(s); continue it with --resume, or start "
                             "it again with --overwrite")
        store.clear()
    return store


def _staged_grid(spec: ModelSpec, plans: list, loaded, config, compare_dir: Path,
                 earlier: dict, store: CellStore, *, seed: int, gap_rows: int, draws: int,
                 reference: str | None, nuts: dict, report: bool,
                 progress: bool) -> tuple[list[dict], list[dict]]:
    """The comparison written into a staging folder and moved into place when whole."""
    # written beside the earlier comparison, moved into place when whole (--overwrite:
    # then what the new comparison did not write anew goes)
    with staged(compare_dir, earlier) as staging:
        fits = []
        for cell, settled in plans:
            item = store.load(cell, settled, loaded, config)
            if item is None:
                item = _fitted(cell, settled, loaded, config, compare_dir, gap_rows)
                store.save(item)
            elif settled.progress:
                print(f"compare: {cell.label}, seed {settled.seed} (kept)",
                      file=sys.stderr, flush=True)
            fits.append(item)
        _measured(spec, config, fits, loaded.train, seed, draws, reference, nuts)
        for item in fits:
            name = f"{item.cell.slug}-seed{item.seed}"
            item.run_dir = staging / name
            write_run(item.fitted, item.run_dir, final=compare_dir / name, figures=False,
                      posterior=False, measures=item.measures)  # posterior.nc next
            _export(item, compare_dir / name)
            item.run_dir = compare_dir / name
        records = [item.record for item in fits]
        records += _baselines(spec, config, loaded, compare_dir, seed, progress, staging)
        summary = summarize(records)
        _write(staging, records, summary)
        figures = comparison_figures(spec, loaded.dataset, config, fits, summary,
                                     loaded.train, staging, seed)
        if report:
            write_report(staging, spec=spec, dataset=loaded.dataset, config=config,
                         records=records, summary=summary, figures=figures,
                         summaries=_arviz_summaries(fits, seed), nuts=_nuts_notes(fits))
    return records, summary


def _fitted(cell: Cell, settled, loaded, config, compare_dir: Path, gap_rows: int) -> Fit:
    """One cell at one seed: fitted on the shared data and config, judged, its gaps added."""
    if settled.progress:
        print(f"compare: {cell.label}, seed {settled.seed}", file=sys.stderr, flush=True)
    fitted = run(settled, loaded=loaded, config=config)
    item = Fit(cell, settled.seed, fitted, baseline=settled.strategy.baseline)
    item.add(strategy=cell.label, elbo_estimator=fitted.result.info.get("elbo_estimator"),
             compare_dir=str(compare_dir))
    item.add(**judge_fit(settled.spec, config, fitted.result, loaded.train, fitted.metrics,
                         gap_rows=gap_rows, seed=settled.seed))
    return item


def _measured(spec, config, fits: list[Fit], x: torch.Tensor, seed: int, draws: int,
              reference: str | None, nuts: dict | None = None) -> None:
    """The chosen rows' posterior draws of every fit, labels matched, NUTS beside them."""
    rows_chosen = _chosen_rows(spec, config, fits, x, seed)
    for item in fits:
        item.draws = export.draw_posterior(spec, config, item.result, x, rows=rows_chosen,
                                           label=item.cell.label, num_draws=draws,
                                           seed=item.seed)
    _label_switching(spec, config, fits, x)
    if reference == "nuts":
        _nuts_reference(spec, config, fits, x, rows_chosen, seed, **(nuts or {}))


def _write(compare_dir: Path, records: list[dict], summary: list[dict]) -> None:
    write_json(compare_dir / "comparison.json", records)
    write_csv(compare_dir / "comparison.csv", records)
    write_json(compare_dir / "summary.json", summary)
    write_csv(compare_dir / "summary.csv", summary)


def _cell_options(cell: Cell, options: dict) -> dict:
    """The options of ``cell``'s own strategy among ``options``, with the cell's overrides."""
    names = set(registry.strategies()[cell.strategy].Options.__dataclass_fields__)
    return {**{k: v for k, v in options.items() if k in names}, **dict(cell.overrides)}


def _baselines(spec: ModelSpec, config, loaded, compare_dir: Path, seed: int,
               progress: bool, staging: Path) -> list[dict]:
    """The other models ``spec.baselines`` names (PPCA beside the deep model), fitted on the
    same split by their baseline strategies (closed form, EM), options derived from ``config``."""
    records = []
    for name, derive in spec.baselines.items():
        other = get_model(name)
        for inference in registry.applicable(other):
            if not registry.strategies()[inference].baseline:
                continue
            if progress:
                print(f"compare: baseline {name} {inference}", file=sys.stderr, flush=True)
            settled = plan(other, inference=inference, seed=seed, data=loaded.request,
                           posterior=False, **derive(config))
            fitted = run(settled, loaded=loaded)
            folder = f"baseline-{name}-{inference}-seed{seed}"
            record = write_run(fitted, staging / folder, final=compare_dir / folder,
                               figures=False, posterior=False,
                               measures={"strategy": f"{name} {inference}",
                                         "compare_dir": str(compare_dir)})
            records.append(record.to_dict())
    return records


def _chosen(grid: list[Cell], names: Sequence[str] | None) -> list[Cell]:
    if names is None:
        return grid
    if isinstance(names, str):  # "em,svi-exact", as the flag takes it
        names = [n for n in names.split(",") if n]
    if not names:
        raise InputError("--strategies names no cell; name at least one (e.g. "
                         f"{grid[0].slug if grid else 'em'}), or leave it out for every cell")
    slugs = {c.slug: c for c in grid}
    unknown = [n for n in names if n not in slugs]
    if unknown:
        raise InputError(f"--strategies {','.join(unknown)}: not in this model's grid; choose "
                         "from: " + ", ".join(slugs))
    return [slugs[n] for n in dict.fromkeys(names)]


def _check_options(*, seeds, reference, gap_rows, draws, grid_options, options, resume,
                   out) -> None:
    """What can be refused before the data are read."""
    if not isinstance(seeds, int) or seeds < 1:
        raise InputError(f"--seeds {seeds} must be at least 1")
    if resume and out is None:
        raise InputError("--resume continues the comparison stopped in a folder: give its "
                         "--out DIR")
    if not isinstance(seeds, bool):
        check_count(f"the fits of --seeds {seeds:,} (at least one per seed)", seeds, MAX_FITS,
                    "give fewer --seeds")
    if reference is not None and reference not in REFERENCES:
        raise InputError(f"--reference {reference} is unknown; choose one of: "
                         + ", ".join(REFERENCES))
    if gap_rows < 0:
        raise InputError(f"--gap-rows {gap_rows} must be at least 0 (0 skips the split)")
    if draws < 2:
        raise InputError(f"--draws {draws} must be at least 2")
    for name, value in grid_options.items():
        if value and options.get(name.rstrip("s")):  # --elbos beside --elbo
            raise InputError(f"--{name.rstrip('s')} fixes one value for every cell and "
                             f"--{name} adds cells; give one of them")


def _chosen_rows(spec, config, fits: list[Fit], x: torch.Tensor, seed: int) -> torch.Tensor:
    """The training rows whose latents are exported: drawn at random by ``seed``; for a
    categorical posterior, half of them are the rows the first baseline is least sure about
    (largest entropy), where fits can differ at all."""
    rows = export.chosen_rows(x.shape[0], seed=seed)
    baseline = next((f for f in fits if f.baseline), None)
    if baseline is None or spec.posterior is None:
        return rows
    with torch.no_grad():
        posterior = spec.posterior(config, baseline.result.params, x)
    if not isinstance(posterior, Categorical):
        return rows
    ambiguous = posterior.entropy().argsort(descending=True)[: rows.numel() // 2].cpu()
    others = [r for r in rows.tolist() if r not in set(ambiguous.tolist())]
    chosen = ambiguous.tolist() + others[: rows.numel() - ambiguous.numel()]
    return torch.tensor(sorted(chosen))


def _label_switching(spec, config, fits: list[Fit], x: torch.Tensor) -> None:
    anchor = anchor_of(fits)
    for item in fits:
        measures = None if anchor is None else label_switching_measures(
            spec, config, item.result.params, anchor.result.params, x)
        item.add(ari=None if measures is None else measures["ari"],
                 matched_param_error=None if measures is None
                 else measures["matched_param_error"])
        item.permutation = None if measures is None else measures["permutation"]


def _nuts_reference(spec, config, fits: list[Fit], x, rows, seed, **nuts) -> None:
    """NUTS at each fit's parameters (first seed of each strategy), run once per distinct
    parameters (once for a Bayesian model without point parameters): given every training
    row for a model with global latents, on the chosen rows otherwise (exact for them: the
    rows are independent given the parameters). ``nuts``: samples, warmup, chains."""
    options = export.NutsOptions.make(**nuts)
    runs: list[tuple[dict, export.PosteriorDraws]] = []
    for item in fits:
        item.add(reference_distance=None)
        if item.seed != seed or item.draws is None:
            continue
        params = item.result.params
        found = next((draws for key, draws in runs if key.keys() == params.keys() and all(
            torch.equal(key[k].cpu(), params[k].cpu()) for k in key)), None)
        if found is None:
            found = export.nuts_reference(
                spec, config, item.result, x, rows=rows, seed=seed,
                label="nuts" if not params else f"nuts ({item.cell.label})",
                num_samples=options.samples, warmup_steps=options.warmup,
                num_chains=options.chains, max_local_rows=0)
            runs.append((params, found))
        item.reference = export.restricted(found, rows)  # the rows the figures show
        item.add(reference_distance=export.reference_distance(item.draws, item.reference))


def _export(item: Fit, final: Path) -> None:
    """posterior.nc (and nuts.nc) into the fit's run folder (``final`` once in place)."""
    run_dir = item.run_dir
    record = item.record
    attrs = {"model": record["model"], "strategy": item.cell.label,
             "inference": item.cell.strategy, "guide": item.cell.guide,
             "elbo_estimator": record.get("elbo_estimator"), "seed": item.seed,
             "data": record["data"]}
    item.add(posterior_file=None)
    if item.draws is not None:
        item.idata = export.to_inference_data(item.draws, history=item.result.history,
                                              attrs=attrs)
        export.save_inference_data(item.idata, run_dir / export.POSTERIOR_FILE)
        item.add(posterior_file=str(final / export.POSTERIOR_FILE))
    if item.reference is not None:
        item.reference_idata = export.to_inference_data(
            item.reference, attrs={**attrs, "reference": "nuts", **item.reference.diagnostics})
        export.save_inference_data(item.reference_idata, run_dir / export.NUTS_FILE)


def _arviz_summaries(fits: list[Fit], seed: int) -> dict:
    """ArviZ summary tables (pandas) of the first seed's fits, keyed by strategy label."""
    tables = {}
    for item in fits:
        if item.seed == seed and item.idata is not None:
            tables[item.cell.label] = export.summary(item.idata)
            if item.reference_idata is not None:
                tables[item.reference.label] = export.summary(item.reference_idata)
    return tables


def _nuts_notes(fits: list[Fit]) -> dict:
    return {f.reference.label: f.reference.diagnostics for f in fits if f.reference is not None}
