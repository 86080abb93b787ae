"""Simulation-based calibration of a guide on a model with global latents.

SBC (Talts et al. 2018): if θ ~ p(θ) and x ~ p(x | θ), and the fitted posterior q(θ | x) is
the exact one, the rank of θ among L draws of q is uniform on {0, ..., L}. Repeating
prior draw -> data -> fit -> rank M times and binning the M ranks of each scalar parameter
gives a histogram that should be flat; a chi-square test on B bins says how far it is not.
VSBC (Yao et al. 2018) reads the same ranks for a variational fit, which cannot be exact: a
guide too narrow (mean-field's underdispersion) piles ranks into the outer bins (a U), one too
wide into the middle, and a biased one makes them lean to one side (the symmetry test).

One replicate ``i`` runs from its own seed (from ``seed`` and ``i``), so the ranks do not
depend on ``jobs``; each is written to ``OUT/replicates/<i>.json`` when it ends (atomically),
and a rerun into the same folder reuses them. The fit is a hook (:class:`PosteriorFit`): by
default the model's SVI strategy with the chosen guide (:class:`GuideFit`); a closed-form
posterior can stand in for it.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyro
import torch
from pyro import poutine
from scipy import stats

from inference import strategies
from inference.catalog import get_model
from inference.runs import write_json
from zoo.errors import InputError
from zoo.registry import DATA_PLATE, ModelSpec, model_reference

SETTINGS_FILE, RECORD_FILE, FIGURE_FILE = "settings.json", "calibration.json", "ranks.png"
REPLICATES = "replicates"
ALPHA = 0.01  # a parameter's ranks are called non-uniform below this p-value
BAND = 0.99  # the figure's band: where a bin's count falls with this probability if uniform


class PosteriorFit(Protocol):
    """``fit(spec, config, x, *, seed, num_draws) -> {site: (num_draws, *site_shape)}``:
    draws of each global latent site from the posterior fitted to ``x : (N, D)``."""

    def __call__(self, spec: ModelSpec, config, x: torch.Tensor, *, seed: int,
                 num_draws: int) -> Mapping[str, torch.Tensor]: ...


@dataclass(frozen=True)
class GuideFit:
    """The default :class:`PosteriorFit`: the model's first strategy that takes a guide (SVI)
    fits ``guide`` to ``x``, and its posterior is drawn as ``fit`` draws it."""

    guide: str | None = None
    inference: str | None = None
    options: tuple = ()  # the strategy's options, as (name, value) pairs

    def __call__(self, spec, config, x, *, seed, num_draws):
        from inference.posterior_export import draw_posterior

        result = strategies.fit(spec, config, x, inference=self.inference, guide=self.guide,
                                seed=seed, **dict(self.options))
        draws = draw_posterior(spec, config, result, x, rows=torch.arange(1), label="sbc",
                               num_draws=num_draws, log_likelihood_rows=0, seed=seed)
        return {name: draws.globals[name] for name in spec.global_sites}

    def describe(self) -> dict:
        return {"guide": self.guide, "inference": self.inference, "options": dict(self.options)}


def guide_fit(spec: ModelSpec, guide: str | None = None, **options) -> GuideFit:
    """:class:`GuideFit` for ``spec``, checked before any work: the strategy (the first that
    applies and takes a guide), the guide, and the strategy's options (``steps``, ``lr``...)."""
    chosen = [s for s in strategies.strategies().values() if s.uses_guide and s.applies(spec)]
    if not chosen:
        raise InputError(f"model '{spec.name}' has no guide to calibrate; declare it with "
                         "global_sites=... so that it gets the generic guides")
    strategy = chosen[0]
    guide = guide or spec.default_guide or next(iter(spec.guides))
    if guide not in spec.guides:
        raise InputError(f"--guide {guide}: model '{spec.name}' has no such guide; choose one "
                         "of: " + ", ".join(spec.guides))
    strategies.make_options(strategy.Options, options, owner=f"--inference {strategy.name}")
    given = tuple(sorted((k, v) for k, v in options.items() if v is not None))
    return GuideFit(guide=guide, inference=strategy.name, options=given)


@dataclass(frozen=True)
class Settings:
    """What one calibration is; a rerun into the same folder must agree on all but
    ``replicates`` (more replicates extend it)."""

    model: str  # the model's reference (a registry name or /abs/file.py:NAME)
    fit: dict  # the posterior fit: guide, strategy and its options, or the hook's name
    rows: int = 20  # N: rows drawn per replicate
    draws: int = 99  # L: posterior draws ranked against θ (L + 1 rank values)
    seed: int = 0
    model_options: dict = field(default_factory=dict)

    def agrees(self, other: dict) -> bool:
        return json.loads(json.dumps(asdict(self))) == other


@dataclass
class ParameterCheck:
    """The ranks of one scalar parameter (``site[i]`` for a component of a vector site)."""

    name: str
    ranks: list[int]
    counts: list[int]  # replicates per bin
    expected: list[float]  # per bin under uniform ranks
    chi_square: float  # sum over bins of (count - expected)² / expected
    df: int  # bins - 1
    p_value: float  # chi-square survival function at chi_square on df
    uniform: bool  # p_value >= alpha
    extreme_share: float  # share of ranks in the outermost bin on either side
    expected_extreme_share: float
    extreme_p: float  # two-sided binomial test of extreme_share against its expectation
    mean_rank: float  # mean of rank / L; 0.5 when q is centred on θ on average
    symmetry_p: float  # VSBC: KS two-sample test of rank / L against 1 - rank / L
    verdict: str


@dataclass
class Calibration:
    """The record of one calibration (``calibration.json``; ``lvm-zoo calibrate --json``)."""

    model: str
    fit: dict
    replicates: int  # replicates ranked
    failed: list[dict]  # replicates whose fit failed: index and reason (not ranked)
    rows: int
    draws: int
    bins: int
    alpha: float
    seed: int
    seconds: float  # the fits' own time, summed over replicates
    parameters: list[ParameterCheck]
    test: str = ("Pearson chi-square of the bins' counts of the ranks of θ among the L "
                 "draws against uniform ranks, df = bins - 1; a parameter is uniform when "
                 "p >= alpha (per parameter, uncorrected for their number)")
    out: str | None = None
    figure: str | None = None

    @property
    def uniform(self) -> bool:
        return all(p.uniform for p in self.parameters)

    def to_dict(self) -> dict:
        record = asdict(self)
        record["uniform"] = self.uniform
        return record


def replicate_seed(seed: int, index: int) -> int:
    """Replicate ``index``'s seed: independent streams from one seed, the same whatever the
    number of processes."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0] & 0x7FFFFFFF)


def simulate(spec: ModelSpec, config, rows: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """θ from the prior and ``rows`` rows from the model given θ (the model run forward with
    ``x=None``): the global sites' values and ``x : (rows, D)``."""
    with pyro.get_param_store().scope():  # a model's pyro.params at their initial values
        trace = poutine.trace(spec.make_model(config)).get_trace(None, num_data=rows)
    theta = {name: trace.nodes[name]["value"].detach() for name in spec.global_sites}
    latent = set(spec.global_sites) | set(spec.local_sites)
    observed = [name for name, site in trace.nodes.items()
                if site["type"] == "sample" and name not in latent and name != DATA_PLATE
                and any(f.name == DATA_PLATE for f in site["cond_indep_stack"])]
    if len(observed) != 1:
        raise InputError(f"model '{spec.name}' draws {len(observed)} non-latent sites inside "
                         f"the '{DATA_PLATE}' plate ({', '.join(observed) or 'none'}); "
                         "calibration needs exactly one, the rows x, and every other sample "
                         "site declared in local_sites or global_sites")
    x = trace.nodes[observed[0]]["value"].detach()
    return theta, x.reshape(rows, -1)


def ranks_of(theta: Mapping[str, torch.Tensor], draws: Mapping[str, torch.Tensor],
             generator: torch.Generator) -> dict[str, int]:
    """Per scalar parameter, how many of the L draws lie below θ (ties, from a discrete site,
    broken at random): an integer in [0, L]."""
    ranks = {}
    for name, true in theta.items():
        drawn = draws[name].detach().double().cpu()
        flat = drawn.reshape(drawn.shape[0], -1)
        value = true.double().cpu().reshape(-1)
        if flat.shape[1] != value.numel():
            raise InputError(f"the posterior draws of '{name}' have shape "
                             f"{tuple(drawn.shape[1:])}, θ has {tuple(true.shape)}")
        below = (flat < value).sum(0)
        ties = (flat == value).sum(0)
        broken = (torch.rand(ties.shape, generator=generator, dtype=torch.float64)
                  * (ties + 1)).floor().long()
        for i, rank in enumerate((below + broken).tolist()):
            ranks[name if true.numel() == 1 and true.dim() == 0 else f"{name}[{i}]"] = rank
    return ranks


_SPECS: dict[str, ModelSpec] = {}  # a worker's models, resolved once by reference


def run_replicate(reference: str, fit: PosteriorFit, settings: Settings, index: int,
                  spec: ModelSpec | None = None) -> dict:
    """One replicate: θ and data from its seed, the fit, the ranks (a JSON-ready dict)."""
    if spec is None:
        spec = _SPECS.get(reference) or _SPECS.setdefault(reference, get_model(reference))
    seed = replicate_seed(settings.seed, index)
    pyro.set_rng_seed(seed)
    options = settings.model_options
    config = spec.make_config(dim=_default_dim(spec), **options)
    theta, x = simulate(spec, config, settings.rows)
    config = spec.make_config(dim=x.shape[1], **options)
    config.validate(settings.rows)
    start = time.perf_counter()
    try:
        draws = fit(spec, config, x, seed=seed, num_draws=settings.draws)
    except (FloatingPointError, ValueError, RuntimeError) as error:
        if isinstance(error, InputError):
            raise
        return {"index": index, "seed": seed, "failed": f"{type(error).__name__}: "
                f"{(str(error).strip().splitlines() or [''])[0]}"}
    seconds = time.perf_counter() - start
    ranks = ranks_of(theta, draws, torch.Generator().manual_seed(seed))
    return {"index": index, "seed": seed, "ranks": ranks, "seconds": seconds,
            "theta": {k: v.double().cpu().reshape(-1).tolist() for k, v in theta.items()}}


def _default_dim(spec: ModelSpec) -> int:
    fields = {f.name: f for f in spec.config_class.__dataclass_fields__.values()}
    default = fields["dim"].default if "dim" in fields else 1
    return default if isinstance(default, int) else 1


def _start_worker() -> None:
    torch.set_num_threads(1)


def uniformity(ranks: list[int], draws: int, bins: int, alpha: float = ALPHA,
               name: str = "") -> ParameterCheck:
    """The chi-square test of ``ranks`` (integers in [0, draws]) for uniformity on ``bins``
    bins (rank r falls in bin ⌊r · bins / (draws + 1)⌋), the outer bins' share and the
    symmetry of VSBC, and a one-line verdict."""
    values = np.asarray(ranks, dtype=np.int64)
    m, levels = values.size, draws + 1
    counts = np.bincount(values * bins // levels, minlength=bins)
    per_bin = np.bincount(np.arange(levels) * bins // levels, minlength=bins)
    expected = m * per_bin / levels
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    p_value = float(stats.chi2.sf(chi_square, bins - 1))
    outer = int(counts[0] + counts[-1])
    outer_expected = float((per_bin[0] + per_bin[-1]) / levels)
    extreme_p = float(stats.binomtest(outer, m, outer_expected).pvalue)
    u = values / draws
    symmetry_p = float(stats.ks_2samp(u, 1 - u, method="asymp").pvalue)
    check = ParameterCheck(
        name=name, ranks=values.tolist(), counts=counts.tolist(), expected=expected.tolist(),
        chi_square=chi_square, df=bins - 1, p_value=p_value, uniform=p_value >= alpha,
        extreme_share=outer / m, expected_extreme_share=outer_expected, extreme_p=extreme_p,
        mean_rank=float(u.mean()), symmetry_p=symmetry_p, verdict="")
    check.verdict = _verdict(check, alpha)
    return check


def _verdict(check: ParameterCheck, alpha: float) -> str:
    test = f"chi2 = {check.chi_square:.1f} on {check.df} df, p = {check.p_value:.3g}"
    if check.uniform:
        return f"uniform ({test})"
    reasons = []
    # too narrow: both outer bins above their share (one alone is a lean, said below)
    outer = check.expected[0] <= min(check.counts[0], check.counts[-1]) or (
        check.extreme_share < check.expected_extreme_share)
    if check.extreme_p < alpha and outer:
        if check.extreme_share > check.expected_extreme_share:
            reasons.append(f"{check.extreme_share:.0%} of ranks in the outer bins (uniform: "
                           f"{check.expected_extreme_share:.0%}): the posterior is too narrow")
        else:
            reasons.append(f"{check.extreme_share:.0%} of ranks in the outer bins (uniform: "
                           f"{check.expected_extreme_share:.0%}): the posterior is too wide")
    if check.symmetry_p < alpha:
        side = "high" if check.mean_rank > 0.5 else "low"
        under = "below" if side == "high" else "above"
        reasons.append(f"ranks lean {side} (mean {check.mean_rank:.2f}): the posterior sits "
                       f"{under} θ")
    return f"NOT uniform ({test}); " + ("; ".join(reasons) or "the histogram is not flat")


def calibrate(spec: ModelSpec | str, *, guide: str | None = None,
              fit: PosteriorFit | None = None, replicates: int = 100, rows: int = 20,
              draws: int = 99, bins: int = 10, seed: int = 0, jobs: int = 1,
              alpha: float = ALPHA, out: str | Path | None = None, overwrite: bool = False,
              figure: bool = True, model_options: Mapping[str, Any] | None = None,
              progress: Callable[[int, int], None] | None = None,
              **options) -> Calibration:
    """SBC of ``guide`` (or of the posterior ``fit`` draws) on ``spec``: ``replicates``
    replicates of ``rows`` rows, ranks among ``draws`` posterior draws, ``bins`` bins.

    ``options`` are the SVI strategy's (``steps``, ``lr``, ...). With ``out``, every
    replicate is written there as it ends and a rerun reuses them; the record
    (calibration.json) and, with ``figure``, the rank histograms (ranks.png) are written at
    the end. ``jobs`` processes (spawned, one thread each) run the replicates; the result
    does not depend on it. ``fit`` must then be picklable."""
    spec = get_model(spec) if isinstance(spec, str) else spec
    if not spec.global_sites:
        raise InputError(f"calibrate: model '{spec.name}' declares no global latent site; SBC "
                         "ranks global parameters (declare them with global_sites=...)")
    _check_sizes(replicates, rows, draws, bins, jobs, alpha)
    model_options = {k: v for k, v in (model_options or {}).items() if v is not None}
    spec.make_config(dim=_default_dim(spec), **model_options)  # unknown options, now
    if fit is None:
        fit = guide_fit(spec, guide, **options)
    elif guide is not None or any(v is not None for v in options.values()):
        raise InputError("calibrate: give either a fit hook or a guide and its options")
    described = fit.describe() if hasattr(fit, "describe") else {
        "hook": getattr(fit, "__qualname__", type(fit).__qualname__)}
    settings = Settings(model=model_reference(spec), fit=described, rows=rows, draws=draws,
                        seed=seed, model_options=model_options)
    folder = _prepare_folder(Path(out), settings, overwrite) if out is not None else None
    done = _finished(folder, replicates) if folder is not None else {}
    todo = [i for i in range(replicates) if i not in done]
    for result in _run_all(spec, fit, settings, todo, jobs):
        if folder is not None:
            write_json(folder / REPLICATES / f"{result['index']:06d}.json", result)
        done[result["index"]] = result
        if progress is not None:
            progress(len(done), replicates)
    calibration = summarize(spec, settings, [done[i] for i in range(replicates)], bins, alpha)
    if calibration.replicates < 2:
        raise InputError(f"calibrate: {len(calibration.failed)} of {replicates} fits failed "
                         f"({calibration.failed[0]['reason']}); try another --lr or --steps")
    if folder is not None:
        if figure:
            calibration.figure = str(folder / FIGURE_FILE)
            plot_ranks(calibration, folder / FIGURE_FILE)
        calibration.out = str(folder)
        write_json(folder / RECORD_FILE, calibration.to_dict())
    return calibration


def _check_sizes(replicates, rows, draws, bins, jobs, alpha) -> None:
    for flag, value, least in (("replicates", replicates, 2), ("rows", rows, 1),
                               ("draws", draws, 1), ("bins", bins, 2), ("jobs", jobs, 1)):
        if not isinstance(value, int) or value < least:
            raise InputError(f"--{flag} {value}: give an integer of at least {least}")
    if bins > draws + 1:
        raise InputError(f"--bins {bins} exceeds the {draws + 1} rank values of --draws "
                         f"{draws}; use at most {draws + 1} bins")
    if not 0 < alpha < 1:
        raise InputError(f"--alpha {alpha}: give a level in (0, 1), e.g. 0.01")


def _prepare_folder(folder: Path, settings: Settings, overwrite: bool) -> Path:
    """The output folder, its settings written; another calibration's is refused."""
    written = folder / SETTINGS_FILE
    if written.exists() and not overwrite:
        try:
            previous = json.loads(written.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"{written} is damaged ({error}); give --overwrite to start "
                             "again") from None
        if not settings.agrees(previous):
            raise InputError(f"{folder} holds a calibration with other settings; use another "
                             "--out, or --overwrite to replace it")
        return folder
    if overwrite:
        shutil.rmtree(folder / REPLICATES, ignore_errors=True)
    elif folder.exists() and any(folder.iterdir()):
        raise InputError(f"{folder} is not empty and holds no calibration; use another --out")
    write_json(written, asdict(settings))
    return folder


def _finished(folder: Path, replicates: int) -> dict[int, dict]:
    """The replicates already written (a damaged file is run again)."""
    done = {}
    for index in range(replicates):
        path = folder / REPLICATES / f"{index:06d}.json"
        try:
            done[index] = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
    return done


def _run_all(spec, fit, settings: Settings, todo: list[int], jobs: int):
    """The replicates ``todo``, as they end: here with one job, else in ``jobs`` spawned
    processes of one thread each."""
    if jobs == 1 or len(todo) <= 1:
        for index in todo:
            yield run_replicate(settings.model, fit, settings, index, spec=spec)
        return
    threads = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the workers, read when torch loads
    try:
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=get_context(
                "spawn"), initializer=_start_worker) as pool:
            futures = [pool.submit(run_replicate, settings.model, fit, settings, i)
                       for i in todo]
            for future in futures:
                yield future.result()
    finally:
        if threads is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = threads


def summarize(spec: ModelSpec, settings: Settings, results: list[dict], bins: int,
              alpha: float = ALPHA) -> Calibration:
    """The record of finished replicates: per scalar parameter, :func:`uniformity`."""
    ranked = [r for r in results if "ranks" in r]
    names = list(ranked[0]["ranks"]) if ranked else []
    parameters = [uniformity([r["ranks"][name] for r in ranked], settings.draws, bins, alpha,
                             name=name) for name in names] if len(ranked) >= 2 else []
    return Calibration(
        model=spec.name, fit=settings.fit, replicates=len(ranked),
        failed=[{"index": r["index"], "reason": r["failed"]} for r in results
                if "failed" in r],
        rows=settings.rows, draws=settings.draws, bins=bins, alpha=alpha, seed=settings.seed,
        seconds=sum(r.get("seconds", 0.0) for r in ranked), parameters=parameters)


def plot_ranks(calibration: Calibration, path: str | Path) -> None:
    """One rank histogram per parameter, with the band where a bin's count falls with
    probability ``BAND`` under uniform ranks (binomial), and the expected count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = calibration.parameters
    columns = min(4, max(1, len(checks)))
    lines = max(1, math.ceil(len(checks) / columns))
    figure, axes = plt.subplots(lines, columns, figsize=(3.6 * columns, 2.9 * lines + 0.6),
                                squeeze=False)
    m, bins = calibration.replicates, calibration.bins
    share = 1 / bins  # a bin's probability (up to rounding when bins does not divide L + 1)
    low, high = stats.binom.ppf([(1 - BAND) / 2, (1 + BAND) / 2], m, share)
    for axis, check in zip(axes.flat, checks, strict=False):
        axis.axhspan(low, high, color="0.88", zorder=0)
        axis.axhline(m * share, color="0.4", lw=1, zorder=3)
        axis.bar(np.arange(bins), check.counts, width=1, align="edge", edgecolor="white",
                 color="tab:blue" if check.uniform else "tab:red", alpha=0.85, zorder=2)
        axis.set_xlim(0, bins)
        ticks = sorted({0, bins // 2, bins})
        axis.set_xticks(ticks, [f"{t * (calibration.draws + 1) // bins}" for t in ticks])
        axis.set_title(f"{check.name}: chi2 = {check.chi_square:.1f} ({check.df} df), "
                       f"p = {check.p_value:.2g}\nouter bins {check.extreme_share:.0%} "
                       f"(uniform {check.expected_extreme_share:.0%}), mean rank "
                       f"{check.mean_rank:.2f}", fontsize=8.5)
        axis.set_xlabel(f"rank of θ among {calibration.draws} posterior draws", fontsize=8)
        axis.set_ylabel("replicates", fontsize=8)
        axis.tick_params(labelsize=8)
    for axis in list(axes.flat)[len(checks):]:
        axis.set_visible(False)
    what = calibration.fit.get("guide") or calibration.fit.get("hook", "the fit")
    figure.suptitle(f"SBC of {what} on {calibration.model}: {m} replicates of "
                    f"{calibration.rows} rows, {bins} bins; red: not uniform at "
                    f"{calibration.alpha:g}\ngrey: where a bin's count falls with "
                    f"{BAND:.0%} probability if the ranks are uniform; line: expected count",
                    fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def table(calibration: Calibration) -> str:
    """The printed table: one line per parameter, its test and verdict."""
    lines = [f"{'parameter':<14} {'chi2':>7} {'p':>8} {'outer':>6} {'mean rank':>9}  verdict"]
    for p in calibration.parameters:
        lines.append(f"{p.name:<14} {p.chi_square:>7.1f} {p.p_value:>8.3g} "
                     f"{p.extreme_share:>6.0%} {p.mean_rank:>9.2f}  {p.verdict}")
    return "\n".join(lines)
