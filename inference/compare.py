"""The comparison harness: every applicable strategy on one split, judged by one yardstick.

``compare(spec)`` runs the grid of :func:`strategy_grid` (closed form, EM, then SVI with each
guide and its ELBO estimator) over ``seeds`` seeds on ONE train/test split. Every fit goes
through :func:`inference.api.fit`, so each is isolated (its own param-store scope and seed) and
leaves an ordinary run folder. On top of the fit's record (``lvm-zoo fit --json``) each row gets:

- ``elbo`` and ``gap`` = log p(x) − ELBO exactly where the model has ``log_marginal`` and
  ``posterior`` (the gap is then KL(q ‖ p(z | x)) in closed form, :mod:`inference.decomposition`),
  else the Monte Carlo ELBO of :func:`inference.evaluate.evaluate_fit` (``elbo_method``);
- the gap split (Cremer et al., 2018): ``approximation_gap`` = log p(x) − ELBO(q*), with q* the
  best member of the guide's family for each datapoint, and ``amortization_gap`` = ELBO(q*) −
  ELBO(encoder), for amortized guides, on ``gap_rows`` training rows. q* is in closed form where
  the model has an exact posterior (the posterior itself, or its mean-field projection), else it
  is fitted per datapoint with the model's parameters held fixed, starting from the encoder;
- for mixtures (``spec.posterior`` is Categorical): ``ari``, the adjusted Rand index of the MAP
  assignments against the anchor fit (EM where it applies), and ``matched_param_error``, the
  largest absolute difference of the component parameters after matching the labels, so that two
  equal solutions with swapped labels compare as equal;
- with ``reference="nuts"``: ``reference_distance``, the mean Gaussian 2-Wasserstein distance of
  the fit's posterior draws for the chosen rows from NUTS draws at the fit's parameters.

The folder then holds ``comparison.json`` / ``comparison.csv`` (one row per fit),
``summary.json`` / ``summary.csv`` (one row per strategy, mean and standard deviation over the
seeds), ``curves.png``, ``yardstick.png``, ``posterior.png``, ``forest.png``, ``report.html``,
and per fit its run folder with ``posterior.nc`` (ArviZ InferenceData, netCDF).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

from inference import api
from inference import posterior_export as export
from inference.decomposition import elbo_decomposition
from inference.evaluate import fitted, iwae, pointwise_log_weights
from inference.figures import plt, save_figure
from inference.results import FitResult
from inference.runs import atomic_write, load_run, write_json
from inference.svi import ELBOS
from zoo.errors import InputError
from zoo.registry import ModelSpec, get_model

GAP_ROWS = 64  # training rows of the amortization-gap split
GAP_STEPS = 300  # Adam steps of the per-datapoint q* where it has no closed form
GAP_SAMPLES = 500  # importance samples of the gap split's Monte Carlo ELBOs and log p(x)
REFERENCES = ("nuts",)
# the numbers aggregated over seeds (mean and standard deviation), in table order
METRICS = ("train_log_likelihood", "test_log_likelihood", "elbo", "gap", "approximation_gap",
           "amortization_gap", "ari", "matched_param_error", "reference_distance", "seconds",
           "steps")


@dataclass(frozen=True)
class Strategy:
    """One cell of the grid: an inference method, and for SVI a guide and an ELBO estimator
    (``None``: the model's default for that guide)."""

    inference: str
    guide: str | None = None
    elbo: str | None = None

    @property
    def label(self) -> str:
        """``"em"``, ``"svi exact"``, ``"svi exact [TraceEnum_ELBO]"`` (the estimator is named
        when it is not the guide's default)."""
        parts = [self.inference] + ([self.guide] if self.guide else [])
        return " ".join(parts) + (f" [{self.elbo}]" if self.elbo else "")

    @property
    def slug(self) -> str:
        """A folder name: ``svi-exact`` or ``svi-exact-TraceEnum_ELBO``."""
        return "-".join(p for p in (self.inference, self.guide, self.elbo) if p)


def strategy_grid(spec: ModelSpec, elbos: Sequence[str] | None = None, *, config=None,
                  x: torch.Tensor | None = None) -> list[Strategy]:
    """Every applicable strategy: the closed form and EM (the baselines), then SVI with each
    guide under its default ELBO estimator and each estimator of ``elbos``. Given the
    ``config`` and some data ``x``, a model with a discrete local latent also gets
    ``TraceEnum_ELBO`` for every guide (the expectation over z is then summed exactly)."""
    extra = list(elbos or ())
    if config is not None and x is not None and has_discrete_local_latent(spec, config, x):
        extra.append("TraceEnum_ELBO")
    grid = [Strategy(method) for method in spec.inference_methods if method != "svi"]
    if "svi" in spec.inference_methods:
        for guide in spec.guides:
            grid.append(Strategy("svi", guide))
            default = spec.default_elbo.get(guide, "Trace_ELBO")
            grid += [Strategy("svi", guide, e) for e in dict.fromkeys(extra) if e != default]
    return grid


def has_discrete_local_latent(spec: ModelSpec, config, x: torch.Tensor) -> bool:
    """Whether the model draws a discrete latent inside the data plate (one trace, two rows)."""
    with pyro.get_param_store().scope(), torch.no_grad(), poutine.block():
        trace = poutine.trace(spec.make_model(config)).get_trace(x[:2])
    return any(site["type"] == "sample" and not site["is_observed"]
               and site["fn"].has_enumerate_support
               and any(f.name == "data" for f in site["cond_indep_stack"])
               for site in trace.nodes.values())


def compare(spec: ModelSpec | str, *, seeds: int = 1, out: str | Path | None = None,
            data: str | None = None, data_root=None, download: bool = False,
            test_fraction: float = 0.2, binarize: str | None = None, standardize: bool = False,
            device: str = "auto", dtype: str = "float32", seed: int = 0,
            elbos: Sequence[str] | None = None, strategies: Sequence[str] | None = None,
            reference: str | None = None,
            gap_rows: int = GAP_ROWS, draws: int = export.DRAWS, report: bool = True,
            progress: bool = False, **options) -> list[dict]:
    """Run every applicable strategy on one train/test split (drawn by ``seed``), ``seeds``
    seeds each (``seed``, ``seed + 1``, ...), judge each fit, write the comparison folder
    (default ``runs/compare-<model>-<data>``); returns one record per fit.

    ``options`` are the model's config fields and the strategies' options, as for
    :func:`inference.api.fit`. ``elbos`` adds SVI estimators to every guide; ``strategies``
    keeps only the named cells of the grid (by slug: ``"em"``, ``"svi-exact"``);
    ``reference="nuts"`` adds NUTS as the reference posterior; ``gap_rows`` (0: none) sizes the
    amortization-gap subset; ``draws`` is the number of posterior draws exported per fit.
    """
    spec = get_model(spec) if isinstance(spec, str) else spec
    _check_options(seeds=seeds, reference=reference, gap_rows=gap_rows, draws=draws,
                   elbos=elbos, elbo=options.get("elbo"))
    loaded = api.load_data(spec, data=data, data_root=data_root, download=download,
                           test_fraction=test_fraction, binarize=binarize,
                           standardize=standardize, seed=seed, dtype=dtype, device=device)
    dataset, x_train, x_test, _ = loaded
    config_names = {f.name for f in dataclasses.fields(spec.config_class)}
    config = spec.make_config(dim=dataset.dim,
                              **{k: v for k, v in options.items() if k in config_names})
    config.validate(x_train.shape[0])
    if reference == "nuts":
        export.check_nuts_applies(spec, config, x_train)
    compare_dir = (Path(out) if out
                   else Path("runs") / f"compare-{spec.name}-{Path(dataset.name).stem}")
    fits: list[_Fit] = []
    for strategy in _chosen(strategy_grid(spec, elbos, config=config, x=x_train), strategies):
        for s in range(seed, seed + seeds):
            if progress:
                print(f"compare: {strategy.label}, seed {s}", file=sys.stderr, flush=True)
            fit_options = dict(options)
            if strategy.elbo:
                fit_options["elbo"] = strategy.elbo
            record = api.fit(spec, inference=strategy.inference, guide=strategy.guide, seed=s,
                             loaded=loaded, out=compare_dir / f"{strategy.slug}-seed{s}",
                             progress=progress, figures=False, data=data, data_root=data_root,
                             test_fraction=test_fraction, binarize=binarize,
                             standardize=standardize, dtype=dtype, **fit_options)
            result = _result_from_run(Path(record["run_dir"]), spec, x_train)
            record.update(strategy=strategy.label, elbo_estimator=result.info.get(
                "elbo_estimator"), compare_dir=str(compare_dir))
            record.update(judge_fit(spec, config, result, x_train, record, gap_rows=gap_rows,
                                    seed=s))
            fits.append(_Fit(strategy, s, record, result))
    rows_chosen = _chosen_rows(spec, config, fits, x_train, seed)
    for fit in fits:
        fit.draws = export.draw_posterior(spec, config, fit.result, x_train, rows=rows_chosen,
                                          label=fit.strategy.label, num_draws=draws,
                                          seed=fit.seed)
    _label_switching(spec, config, fits, x_train)
    if reference == "nuts":
        _nuts_reference(spec, config, fits, x_train, rows_chosen, seed)
    for fit in fits:
        _export(fit)
    records = [fit.record for fit in fits]
    records += _baselines(spec, config, loaded, compare_dir, seed, progress,
                          data=data, data_root=data_root, test_fraction=test_fraction,
                          binarize=binarize, standardize=standardize, dtype=dtype)
    summary = summarize(records)
    write_json(compare_dir / "comparison.json", records)
    write_csv(compare_dir / "comparison.csv", records)
    write_json(compare_dir / "summary.json", summary)
    write_csv(compare_dir / "summary.csv", summary)
    figures = _figures(spec, dataset, config, fits, summary, x_train, compare_dir, seed)
    if report:
        from inference.report import write_report

        write_report(compare_dir, spec=spec, dataset=dataset, config=config, records=records,
                     summary=summary, figures=figures,
                     summaries=_arviz_summaries(fits, seed), nuts=_nuts_notes(fits))
    return records


def _baselines(spec: ModelSpec, config, loaded, compare_dir: Path, seed: int, progress: bool,
               **data) -> list[dict]:
    """The other models ``spec.baselines`` names (PPCA beside the deep model), fitted on the
    same split by their closed form and EM, with options derived from ``config``."""
    records = []
    for name, derive in spec.baselines.items():
        other = get_model(name)
        for inference in (m for m in other.inference_methods if m != "svi"):
            if progress:
                print(f"compare: baseline {name} {inference}", file=sys.stderr, flush=True)
            record = api.fit(other, inference=inference, seed=seed, loaded=loaded,
                             out=compare_dir / f"baseline-{name}-{inference}-seed{seed}",
                             figures=False, **data, **derive(config))
            record.update(strategy=f"{name} {inference}", compare_dir=str(compare_dir))
            records.append(record)
    return records


def _chosen(grid: list[Strategy], names: Sequence[str] | None) -> list[Strategy]:
    if not names:
        return grid
    slugs = {s.slug: s for s in grid}
    unknown = [n for n in names if n not in slugs]
    if unknown:
        raise InputError(f"--strategies {','.join(unknown)}: not in this model's grid; choose "
                         "from: " + ", ".join(slugs))
    return [slugs[n] for n in dict.fromkeys(names)]


@dataclass
class _Fit:
    strategy: Strategy
    seed: int
    record: dict
    result: FitResult
    draws: export.PosteriorDraws | None = None  # the chosen rows' posterior draws
    reference: export.PosteriorDraws | None = None  # NUTS at this fit's parameters
    permutation: torch.Tensor | None = None  # labels matched to the anchor fit (mixtures)
    idata: object = None  # az.InferenceData of ``draws``
    reference_idata: object = None  # az.InferenceData of ``reference``


def _check_options(*, seeds, reference, gap_rows, draws, elbos, elbo) -> None:
    if seeds < 1:
        raise InputError(f"--seeds {seeds} must be at least 1")
    if reference is not None and reference not in REFERENCES:
        raise InputError(f"--reference {reference} is unknown; choose one of: "
                         + ", ".join(REFERENCES))
    if gap_rows < 0:
        raise InputError(f"--gap-rows {gap_rows} must be at least 0 (0 skips the split)")
    if draws < 2:
        raise InputError(f"--draws {draws} must be at least 2")
    for name in elbos or ():
        if name not in ELBOS:
            raise InputError(f"--elbos: unknown ELBO '{name}'; choose from: {', '.join(ELBOS)}")
    if elbos and elbo:
        raise InputError("--elbo fixes one estimator for every guide and --elbos adds "
                         "estimators to every guide; give one of them")


def _result_from_run(run_dir: Path, spec: ModelSpec, like: torch.Tensor) -> FitResult:
    """The fit back from its run folder (what `lvm-zoo evaluate` reads), on ``like``'s device."""
    run, params, guide_params, saved = load_run(run_dir)
    history = json.loads((run_dir / "history.json").read_text())
    move = {"device": like.device, "dtype": like.dtype}
    return FitResult(
        model=spec.name, inference=run["inference"], guide=run["guide"],
        params={k: v.to(**move) if v.is_floating_point() else v for k, v in params.items()},
        guide_params={k: v.to(**move) if v.is_floating_point() else v
                      for k, v in guide_params.items()},
        history=history, seconds=saved.get("seconds") or 0.0, steps=saved.get("steps") or 0,
        converged=bool(saved.get("converged")), device=str(like.device), seed=run["seed"],
        info=run.get("info", {}))


# ---------------------------------------------------------------------------------------------
# The yardstick beyond evaluate_fit: the exact ELBO, the gap split
# ---------------------------------------------------------------------------------------------


def judge_fit(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, record: dict, *,
              gap_rows: int = GAP_ROWS, seed: int = 0) -> dict:
    """``elbo``, ``gap``, ``elbo_method``, ``approximation_gap``, ``amortization_gap`` and
    ``gap_rows`` for one fit on its training rows ``x``, mean nats per datapoint. An amortized
    guide's gap is split on every row where q* has a closed form, else on ``gap_rows`` random
    training rows (0: not split)."""
    out = {"elbo": record.get("elbo"), "gap": record.get("gap"),
           "elbo_method": None if record.get("elbo") is None else "monte-carlo",
           "approximation_gap": None, "amortization_gap": None, "gap_rows": None}
    guide = result.guide if result.guide in spec.guides else None
    if guide is None:
        return out
    exact = exact_decomposition(spec, config, result, x)
    if exact is not None:
        out.update(elbo=exact["elbo"], gap=exact["log_likelihood"] - exact["elbo"],
                   elbo_method="exact")
    out["approximation_gap"] = out["gap"]
    if is_amortized(spec, guide, result, x.shape[0]):
        out["approximation_gap"] = None  # not the whole gap: it is split below, or unknown
        devices = [x.device] if x.is_cuda else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            try:  # q* in closed form: on every training row; fitted: on gap_rows of them
                rows = torch.arange(x.shape[0], device=x.device)
                split = amortization_split(spec, config, result, x, seed=seed, fit=False)
                if split is None and gap_rows:
                    rows = torch.randperm(x.shape[0], device=x.device)[:gap_rows]
                    split = amortization_split(spec, config, result, x[rows], seed=seed)
            except InputError:  # several local latents, or an encoder family without q*
                return out
            if split is None:
                return out
        out.update(approximation_gap=split["approximation_gap"],
                   amortization_gap=split["amortization_gap"], gap_rows=int(rows.numel()))
    return out


def is_amortized(spec: ModelSpec, guide: str, result: FitResult, num_rows: int) -> bool:
    """An amortized guide has parameters of its own (an encoder) and none per datapoint. The
    guide factory's ``per_datapoint`` attribute says so; without it, parameters whose first
    dimension is the number of training rows mark a per-datapoint guide."""
    if not result.guide_params:
        return False
    flag = getattr(spec.guides[guide], "per_datapoint", None)
    if flag is not None:
        return not flag
    return not any(v.dim() >= 1 and v.shape[0] == num_rows for v in result.guide_params.values())


def exact_decomposition(spec: ModelSpec, config, result: FitResult,
                        x: torch.Tensor) -> dict | None:
    """Mean exact log p(x), ELBO and KL of the fit's guide on ``x`` where the model has a
    closed-form marginal and posterior over one local site (a guide that leaves the site to
    enumeration has q = p(z | x): KL 0); ``None`` otherwise."""
    if spec.log_marginal is None or spec.posterior is None or len(spec.local_sites) != 1:
        return None
    site = spec.local_sites[0]
    with fitted(spec, config, result.params, x, guide=result.guide,
                guide_params=result.guide_params) as (model, guide_fn):
        q = _guide_site(guide_fn, x, site)
        try:
            if q is None:
                log_likelihood = spec.log_marginal(config, result.params, x)
                return {"log_likelihood": float(log_likelihood.mean()),
                        "elbo": float(log_likelihood.mean()), "kl": 0.0}
            return elbo_decomposition(spec, config, result.params, x, q).means()
        except (InputError, NotImplementedError):
            return None


def _guide_site(guide_fn, x: torch.Tensor, site: str):
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide_fn).get_trace(x, num_data=x.shape[0])
    return trace.nodes[site]["fn"] if site in trace.nodes else None


def amortization_split(spec: ModelSpec, config, result: FitResult, x: torch.Tensor, *,
                       steps: int = GAP_STEPS, lr: float = 0.02, num_particles: int = 8,
                       num_samples: int = GAP_SAMPLES, seed: int = 0,
                       fit: bool = True) -> dict | None:
    """log p(x) − ELBO(encoder) = (log p(x) − ELBO(q*)) + (ELBO(q*) − ELBO(encoder)) on the rows
    ``x : (n, D)``, with q* the best per-datapoint member of the encoder's family: in closed form
    from ``spec.posterior`` where possible, else (unless ``fit=False``: then ``None``) fitted by
    Adam with the model held fixed, from the encoder's output. Returns log p(x), both ELBOs and
    both gaps, means in nats per datapoint; raises :class:`InputError` where q* is undefined."""
    if len(spec.local_sites) != 1:
        raise InputError(f"model '{spec.name}' has local sites {spec.local_sites}; the "
                         "amortization gap handles one local latent")
    site = spec.local_sites[0]
    with fitted(spec, config, result.params, x, guide=result.guide,
                guide_params=result.guide_params) as (model, encoder):
        with torch.no_grad():
            q_encoder = _guide_site(encoder, x, site)
        exact = spec.posterior is not None and spec.log_marginal is not None
        best = _closed_form_optimum(q_encoder, spec.posterior(config, result.params, x)) \
            if exact else None
        if best is not None:
            encoder_terms = elbo_decomposition(spec, config, result.params, x, q_encoder)
            best_terms = elbo_decomposition(spec, config, result.params, x, best)
            log_likelihood = float(encoder_terms.log_likelihood.mean())
            encoder_elbo, best_elbo = float(encoder_terms.elbo.mean()), float(
                best_terms.elbo.mean())
        elif not fit:
            return None
        else:
            free = _FreeGuide.from_distribution(site, q_encoder)
            _fit_free_guide(model, free, x, steps=steps, lr=lr, num_particles=num_particles)
            encoder_weights = pointwise_log_weights(model, encoder, x, num_samples)
            best_weights = pointwise_log_weights(model, free, x, num_samples)
            encoder_elbo = float(encoder_weights.mean())
            best_elbo = float(best_weights.mean())
            if spec.log_marginal is not None:
                with torch.no_grad():
                    log_likelihood = float(spec.log_marginal(config, result.params, x).mean())
            else:
                log_likelihood = max(float(iwae(encoder_weights).mean()),
                                     float(iwae(best_weights).mean()))
    return {"log_likelihood": log_likelihood, "encoder_elbo": encoder_elbo,
            "best_elbo": best_elbo, "approximation_gap": log_likelihood - best_elbo,
            "amortization_gap": best_elbo - encoder_elbo}


def _closed_form_optimum(q, posterior):
    """The member of q's family closest to the exact posterior in KL(q ‖ p), where known: the
    posterior itself when the family contains it, the mean-field projection N(m, diag(1/Λ_ii))
    of a Gaussian posterior for a diagonal family; ``None`` otherwise."""
    if isinstance(q, Categorical) and isinstance(posterior, Categorical):
        return posterior
    if isinstance(q, MultivariateNormal) and isinstance(posterior, MultivariateNormal):
        return posterior
    diagonal = isinstance(q, Independent) and isinstance(q.base_dist, Normal)
    if diagonal and isinstance(posterior, MultivariateNormal):
        precision = posterior.precision_matrix.diagonal(dim1=-2, dim2=-1)
        return dist.Normal(posterior.mean, precision.rsqrt()).to_event(1)
    if diagonal and isinstance(posterior, Independent) and isinstance(posterior.base_dist,
                                                                       Normal):
        return posterior
    return None


class _FreeGuide:
    """Free per-datapoint parameters in the family of an encoder's distribution (diagonal or
    full-covariance Gaussian), started at the encoder's values; a guide with the model's
    signature for rows of one fixed batch."""

    def __init__(self, site: str, loc: torch.Tensor, raw_scale: torch.Tensor, full: bool,
                 event_dims: int = 1):
        self.site, self.full, self.event_dims = site, full, event_dims
        self.loc = loc.detach().clone().requires_grad_(True)
        self.raw_scale = raw_scale.detach().clone().requires_grad_(True)

    @classmethod
    def from_distribution(cls, site: str, q) -> _FreeGuide:
        if isinstance(q, MultivariateNormal):
            tril = q.scale_tril
            raw = tril.tril(-1) + torch.diag_embed(tril.diagonal(dim1=-2, dim2=-1).log())
            return cls(site, q.loc.expand(q.batch_shape + q.event_shape),
                       raw.expand(q.batch_shape + tril.shape[-2:]), True)
        if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
            return cls(site, q.base_dist.loc, q.base_dist.scale.log(), False,
                       q.reinterpreted_batch_ndims)
        if isinstance(q, Normal):
            return cls(site, q.loc, q.scale.log(), False, 0)
        raise InputError(f"no per-datapoint family for a {type(q).__name__} guide; the "
                         "amortization gap needs a Gaussian or a categorical encoder")

    def parameters(self) -> list[torch.Tensor]:
        return [self.loc, self.raw_scale]

    def distribution(self, idx):
        if self.full:
            raw = self.raw_scale[idx]
            tril = raw.tril(-1) + torch.diag_embed(raw.diagonal(dim1=-2, dim2=-1).exp())
            return dist.MultivariateNormal(self.loc[idx], scale_tril=tril)
        normal = dist.Normal(self.loc[idx], self.raw_scale[idx].exp())
        return normal.to_event(self.event_dims) if self.event_dims else normal

    def __call__(self, x=None, *, num_data=None, subsample_size=None):
        with pyro.plate("data", x.shape[0], subsample_size=subsample_size,
                        device=x.device) as idx:
            pyro.sample(self.site, self.distribution(idx))


def _fit_free_guide(model, guide: _FreeGuide, x: torch.Tensor, *, steps: int, lr: float,
                    num_particles: int) -> None:
    """Maximize the (unscaled, reparameterized) ELBO of ``guide`` alone on ``x``."""
    optimizer = torch.optim.Adam(guide.parameters(), lr=lr)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = -_differentiable_elbo(model, guide, x, num_particles)
        loss.backward()
        optimizer.step()


def _differentiable_elbo(model, guide, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """Mean over particles and rows of log p(x_n, z) − log q(z | x_n), with gradients."""
    def particles(fn):
        def wrapped(*args, **kw):
            with pyro.plate("particles", num_particles, dim=-2):
                return fn(*args, **kw)
        return wrapped

    with poutine.block():
        guide_trace = poutine.trace(particles(guide)).get_trace(x, num_data=x.shape[0])
        model_trace = poutine.trace(poutine.replay(particles(model), trace=guide_trace)
                                    ).get_trace(x, num_data=x.shape[0])
    total = 0.0
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        trace.compute_log_prob()
        for site in trace.nodes.values():
            if site["type"] == "sample" and site["name"] != "data" and "log_prob" in site:
                total = total + sign * scale_and_mask(site["unscaled_log_prob"],
                                                      mask=site["mask"])
    return torch.as_tensor(total).expand(num_particles, x.shape[0]).mean()


# ---------------------------------------------------------------------------------------------
# Label switching: matched parameters and the adjusted Rand index
# ---------------------------------------------------------------------------------------------


def map_assignments(spec: ModelSpec, config, params, x: torch.Tensor) -> torch.Tensor | None:
    """argmax_k p(z_n = k | x_n) for every row, where ``spec.posterior`` is Categorical."""
    if spec.posterior is None:
        return None
    with torch.no_grad():
        posterior = spec.posterior(config, params, x)
    if not isinstance(posterior, Categorical):
        return None
    return posterior.probs.argmax(-1)


def match_labels(labels: torch.Tensor, anchor: torch.Tensor, categories: int) -> torch.Tensor:
    """The relabelling ``permutation`` (fit's label k → anchor's label permutation[k]) that
    maximizes the agreement of the two assignments (Hungarian algorithm on the cross-table)."""
    table = torch.zeros(categories, categories, dtype=torch.float64)
    table.index_put_((labels.cpu(), anchor.cpu()), torch.ones(labels.numel(),
                                                              dtype=torch.float64),
                     accumulate=True)
    fit_index, anchor_index = linear_sum_assignment(table.numpy(), maximize=True)
    permutation = torch.empty(categories, dtype=torch.long)
    permutation[torch.as_tensor(fit_index)] = torch.as_tensor(anchor_index)
    return permutation


def label_switching_measures(spec: ModelSpec, config, params, anchor_params,
                             x: torch.Tensor) -> dict | None:
    """``ari`` (adjusted Rand index of the MAP assignments; 1 for the same partition under any
    labelling), ``matched_param_error`` (largest |θ − θ_anchor| over the parameters indexed by
    component, after relabelling) and the ``permutation``; ``None`` for a model without a
    categorical posterior."""
    labels = map_assignments(spec, config, params, x)
    anchor = map_assignments(spec, config, anchor_params, x)
    if labels is None or anchor is None:
        return None
    categories = spec.posterior(config, params, x[:1]).probs.shape[-1]
    permutation = match_labels(labels, anchor, categories)
    inverse = torch.argsort(permutation)  # anchor label j ← fit label inverse[j]
    error = 0.0
    for name, value in params.items():
        reference = anchor_params.get(name)
        if reference is None or value.shape != reference.shape:
            continue
        if value.dim() >= 1 and value.shape[0] == categories:
            value = value[inverse.to(value.device)]
        error = max(error, float((value - reference.to(value)).abs().max()))
    return {"ari": float(adjusted_rand_score(anchor.cpu().numpy(), labels.cpu().numpy())),
            "matched_param_error": error, "permutation": permutation}


def _anchor(fits: list[_Fit]) -> _Fit | None:
    """The fit the others are aligned to: the first baseline (closed form, EM) of the first
    seed, else the first fit with posterior draws."""
    with_draws = [f for f in fits if f.draws is not None]
    baselines = [f for f in with_draws if f.strategy.inference != "svi"]
    return (baselines or with_draws or [None])[0]


def _chosen_rows(spec, config, fits: list[_Fit], x: torch.Tensor, seed: int) -> torch.Tensor:
    """The training rows whose latents are exported: drawn at random by ``seed``; for a
    categorical posterior, half of them are the rows the first baseline is least sure about
    (largest entropy), where fits can differ at all."""
    rows = export.chosen_rows(x.shape[0], seed=seed)
    baseline = next((f for f in fits if f.strategy.inference != "svi"), None)
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


def _label_switching(spec, config, fits: list[_Fit], x: torch.Tensor) -> None:
    anchor = _anchor(fits)
    for fit in fits:
        measures = None if anchor is None else label_switching_measures(
            spec, config, fit.result.params, anchor.result.params, x)
        fit.record.update(ari=None if measures is None else measures["ari"],
                          matched_param_error=None if measures is None
                          else measures["matched_param_error"])
        fit.permutation = None if measures is None else measures["permutation"]


# ---------------------------------------------------------------------------------------------
# NUTS reference, ArviZ export
# ---------------------------------------------------------------------------------------------


def _nuts_reference(spec, config, fits: list[_Fit], x, rows, seed) -> None:
    """NUTS at each fit's parameters (first seed of each strategy), on the chosen rows."""
    for fit in fits:
        fit.record["reference_distance"] = None
        if fit.seed != seed or fit.draws is None:
            continue
        fit.reference = export.nuts_reference(spec, config, fit.result, x, rows=rows,
                                              seed=seed, label=f"nuts ({fit.strategy.label})")
        fit.record["reference_distance"] = export.reference_distance(fit.draws, fit.reference)


def _export(fit: _Fit) -> None:
    run_dir = Path(fit.record["run_dir"])
    attrs = {"model": fit.record["model"], "strategy": fit.strategy.label,
             "inference": fit.strategy.inference, "guide": fit.strategy.guide,
             "elbo_estimator": fit.record.get("elbo_estimator"), "seed": fit.seed,
             "data": fit.record["data"]}
    fit.record["posterior_file"] = None
    if fit.draws is not None:
        idata = export.to_inference_data(fit.draws, history=fit.result.history, attrs=attrs)
        fit.idata = idata
        fit.record["posterior_file"] = str(export.save_inference_data(
            idata, run_dir / export.POSTERIOR_FILE))
    if fit.reference is not None:
        nuts = export.to_inference_data(fit.reference, attrs={**attrs, "reference": "nuts",
                                                              **fit.reference.diagnostics})
        fit.reference_idata = nuts
        export.save_inference_data(nuts, run_dir / export.NUTS_FILE)


def _arviz_summaries(fits: list[_Fit], seed: int) -> dict:
    """ArviZ summary tables (pandas) of the first seed's fits, keyed by strategy label."""
    tables = {}
    for fit in fits:
        if fit.seed == seed and fit.idata is not None:
            tables[fit.strategy.label] = export.summary(fit.idata)
            if fit.reference_idata is not None:
                tables[fit.reference.label] = export.summary(fit.reference_idata)
    return tables


def _nuts_notes(fits: list[_Fit]) -> dict:
    return {f.reference.label: f.reference.diagnostics for f in fits if f.reference is not None}


# ---------------------------------------------------------------------------------------------
# Seeds: mean and standard deviation per strategy
# ---------------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> list[dict]:
    """One row per strategy (in grid order): for each metric ``<name>_mean`` and ``<name>_std``
    (sample standard deviation over seeds; ``None`` for one seed), ``seeds`` and
    ``converged`` (how many seeds converged)."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(record["strategy"], []).append(record)
    summary = []
    for label, group in groups.items():
        first = group[0]
        row = {"strategy": label, "inference": first["inference"], "guide": first["guide"],
               "elbo_estimator": first.get("elbo_estimator"),
               "log_likelihood_method": first["log_likelihood_method"],
               "elbo_method": first.get("elbo_method"), "gap_rows": first.get("gap_rows"),
               "gap_on_subset": first.get("gap_rows") is not None
               and first["gap_rows"] < first.get("n_train", 0),
               "seeds": len(group),
               "converged": sum(bool(r["converged"]) for r in group)}
        for metric in METRICS:
            values = [float(r[metric]) for r in group if r.get(metric) is not None]
            row[f"{metric}_mean"] = float(np.mean(values)) if values else None
            row[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        summary.append(row)
    return summary


def format_mean_std(row: dict, metric: str, digits: int = 4) -> str:
    """``"-1.2345 ± 0.0012"``, ``"-1.2345"`` for one seed, ``"-"`` without a value."""
    mean, std = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if mean is None:
        return "-"
    text = f"{mean:.{digits}f}"
    return text if std is None else f"{text} ± {std:.{digits}f}"


TABLE_COLUMNS = (("train log p(x)", "train_log_likelihood", 4),
                 ("test log p(x)", "test_log_likelihood", 4), ("ELBO", "elbo", 4),
                 ("gap", "gap", 4), ("approx. gap", "approximation_gap", 4),
                 ("amort. gap", "amortization_gap", 4), ("ARI", "ari", 3),
                 ("matched |Δθ|", "matched_param_error", 4),
                 ("dist. to NUTS", "reference_distance", 3), ("seconds", "seconds", 2),
                 ("steps", "steps", 0))


def table(summary: list[dict]) -> list[list[str]]:
    """The summary as text cells, header first; columns without any value are left out."""
    columns = [c for c in TABLE_COLUMNS
               if any(row.get(f"{c[1]}_mean") is not None for row in summary)]
    cells = [["strategy", *(c[0] for c in columns), "converged"]]
    for row in summary:
        marked = row.get("gap_on_subset")
        cells.append([row["strategy"], *(
            format_mean_std(row, key, digits) + ("*" if marked and key in SPLIT else "")
            for _, key, digits in columns), f"{row['converged']}/{row['seeds']}"])
    return cells


SPLIT = ("approximation_gap", "amortization_gap")


def footnote(summary: list[dict]) -> str:
    """The note the table's ``*`` refers to ("" when no split was made on a subset)."""
    rows = sorted({row["gap_rows"] for row in summary if row.get("gap_on_subset")})
    if not rows:
        return ""
    return (f"* on {', '.join(map(str, rows))} training rows, with q* fitted per datapoint; "
            "the two add up to the gap on those rows, not on all of them")


def format_table(summary: list[dict]) -> str:
    """The summary table as aligned text, with its footnote."""
    cells = table(summary)
    widths = [max(len(line[i]) for line in cells) for i in range(len(cells[0]))]
    lines = []
    for n, line in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    note = footnote(summary)
    return "\n".join(lines + ([note] if note else []))


def write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(path, lambda f: f.write(buffer.getvalue().encode()))


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figures(spec, dataset, config, fits: list[_Fit], summary, x, compare_dir: Path,
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
            curves[fit.strategy.label] = values
    optimum = next((f.record["train_log_likelihood"] for f in first
                    if f.strategy.inference in ("closed-form", "em")), None)
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


def _aligned_draws(spec, config, fits: list[_Fit], x, seed) -> dict[str, export.PosteriorDraws]:
    """Each fit's draws (and NUTS references) in the anchor fit's coordinates: continuous
    local sites rotated by orthogonal Procrustes on the posterior means of up to 256 training
    rows, discrete ones relabelled by the label matching."""
    anchor = _anchor(fits)
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
        out[fit.strategy.label] = export.aligned(fit.draws, rotations, permutations)
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
