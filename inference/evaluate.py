"""One yardstick for every fit: log p(x) and the ELBO in mean nats per datapoint.

The log-likelihood is exact where the model has a closed form (``spec.log_marginal``) and an
importance-sampled bound otherwise (IWAE-K with the fit's guide as proposal,
log p(x) ≥ E[log (1/K) Σ_k p(x, z_k) / q(z_k | x)], tight as K → ∞). The ELBO is the average
of the same log-weights. Both come from :func:`pointwise_log_weights`, which works for any model
and guide with the zoo's signature.

Every log-likelihood comes with its standard error over the rows judged (``*_se``: the rows'
sample standard deviation / √n, which holds the Monte Carlo noise of each row's estimate too).
The importance-sampled figures have a stated cost: at most :data:`IMPORTANCE_WEIGHTS` log-weights
(rows × K) per split by default (:func:`importance_rows`), on a subsample of rows drawn by the
seed, so the yardstick of a fit costs about the same whatever the number of rows.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager

import pyro
import torch
from pyro import poutine
from torch.distributions import transform_to
from tqdm.auto import tqdm

from inference import diagnostics, distributed
from inference.enumeration import enumerable_sites, site_log_prob, summed_out_log_weights
from inference.global_latents import global_yardstick
from inference.results import FitResult
from inference.sampling import (
    LOOP_NOTE,
    broadcasts_over_particles,
    own_random_stream,
    particle_traces,
)
from inference.shards import return_large_buffers
from zoo.errors import InputError
from zoo.registry import DATA_PLATE, ModelSpec, Params

MAX_TRAIN_ROWS = 5_000  # importance-sampled training figures on a seeded subsample beyond
IMPORTANCE_WEIGHTS = 250_000  # log-weights (rows × K) per split of the default budget
MIN_IMPORTANCE_ROWS = 100  # rows per split the default budget keeps whatever K


def importance_rows(num_samples: int, iwae_rows: int | str | None = None) -> int | None:
    """Rows per split judged by importance sampling with ``num_samples`` (K) particles:
    ``iwae_rows`` when given (:func:`settle_iwae_rows`; ``"all"``: every row, returned as
    ``None``), by default max(:data:`MIN_IMPORTANCE_ROWS`, :data:`IMPORTANCE_WEIGHTS` // K),
    e.g. 250 rows at K = 1000. A split with more rows is judged on a subsample drawn by the
    seed."""
    iwae_rows = settle_iwae_rows(iwae_rows)
    if iwae_rows is None:
        return max(MIN_IMPORTANCE_ROWS, IMPORTANCE_WEIGHTS // max(1, num_samples))
    return None if iwae_rows == "all" else iwae_rows


def settle_iwae_rows(value: int | str | None) -> int | str | None:
    """``--iwae-rows`` (``iwae_rows=``) checked: ``None`` (the budget), ``"all"`` or a number
    of rows of at least 2, given as an integer or its text."""
    if value is None or value == "all":
        return value
    number = None
    if isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and value.strip().isdigit():
        number = int(value)
    if number is None or number < 2:
        raise InputError(f"--iwae-rows {value} is not a number of rows of at least 2 (a "
                         "standard error needs two); give e.g. 500, or 'all' for every row")
    return number


def load_params(values: Params) -> None:
    """Write constrained ``values`` into the already-registered params of the current store."""
    store = pyro.get_param_store()
    unconstrained = dict(store.named_parameters())
    constraints = store.get_state()["constraints"]
    with torch.no_grad():
        for name, value in values.items():
            target = unconstrained[name]
            target.copy_(transform_to(constraints[name]).inv(value.to(target)))


@contextmanager
def fitted(spec: ModelSpec, config, params: Params, x: torch.Tensor, *,
           guide: str | None = None, guide_params: Params | None = None):
    """``(model, guide)`` of a fit inside a param-store scope of their own (``guide`` is
    ``None`` when no guide name is given). ``x`` registers the parameters' shapes and device."""
    with pyro.get_param_store().scope():
        model = spec.make_model(config, {k: v.to(x.device) for k, v in params.items()})
        guide_fn = spec.guides[guide](model, config) if guide is not None else None
        # a few rows register the parameters (a streamed x is never read whole)
        rows = torch.arange(min(x.shape[0], 8), device=x.device)
        kwargs = {"num_data": x.shape[0], "subsample_size": rows.numel()}
        with torch.no_grad(), poutine.block():
            if guide_fn is not None:
                trace = poutine.trace(poutine.condition(guide_fn, {DATA_PLATE: rows})).get_trace(
                    x, **kwargs)
                poutine.replay(poutine.condition(model, {DATA_PLATE: rows}), trace=trace)(
                    x, **kwargs)
            else:
                poutine.condition(model, {DATA_PLATE: rows})(x, **kwargs)
        load_params({**params, **(guide_params or {})})
        yield model, guide_fn


def pointwise_log_weights(model, guide, x: torch.Tensor, num_samples: int, *,
                          indices: torch.Tensor | None = None,
                          max_elements: int = 2**22, grad: bool = False,
                          vectorize: bool | None = None,
                          summed_out: bool = False, on_rows=None) -> torch.Tensor:
    """Log importance weights log p(x_n, z) − log q(z | x_n), shape ``(num_samples, N)``.

    ``z`` is drawn from ``guide``; particles are vectorized in a plate outside the data plate
    and processed in chunks of at most ``max_elements`` = particles × rows × D numbers. Rows
    are chosen through the data plate (``indices``, default all of ``x``), so per-datapoint
    guides see their own parameters. ``grad=True`` keeps the graph (the reparameterized ELBO
    of a guide being fitted is ``pointwise_log_weights(..., grad=True).mean()``).
    ``vectorize=False`` draws the particles one at a time, for a model that does not
    broadcast over them; ``None`` asks :func:`~inference.sampling.broadcasts_over_particles`.
    ``summed_out=True`` sums the model's discrete local sites out by enumeration
    (:func:`enumerable_sites`): log Σ_c p(x_n, c, z) − log q(z | x_n), the guide drawing only
    the continuous sites (none: exact log p(x_n) in every particle). ``on_rows(n)`` is
    called after each chunk of ``n`` rows (a progress bar's update).
    """
    if vectorize is None:
        vectorize = _broadcasts(model, guide, x)
    num_data = x.shape[0]
    indices = torch.arange(num_data, device=x.device) if indices is None else indices
    row_size = max(1, x[0].numel())
    rows_per_chunk = max(1, max_elements // (row_size * num_samples))
    particles_per_chunk = max(1, min(num_samples, max_elements // row_size))
    if indices.numel() > rows_per_chunk:  # chunk after chunk of equal large buffers
        return_large_buffers()
    out = []
    for rows in indices.split(rows_per_chunk):
        parts = []
        remaining = num_samples
        while remaining > 0:
            k = min(remaining, particles_per_chunk if rows.numel() == 1 else num_samples)
            parts.append(_log_weights(model, guide, x, rows, k, grad, vectorize, summed_out))
            remaining -= k
        out.append(torch.cat(parts, dim=0))
        if on_rows is not None:
            on_rows(rows.numel())
    return torch.cat(out, dim=1)


def yardstick_notes(spec: ModelSpec, config, x: torch.Tensor,
                    guides: tuple[str, ...] | None = None) -> list[str]:
    """What the yardstick will do differently for ``spec`` on rows ``x``, one line per guide
    (``lvm-zoo check`` prints them before any training): draw importance samples one at a
    time where the model does not broadcast over the particle plate
    (:func:`~inference.sampling.broadcasts_over_particles`)."""
    notes = []
    for name in tuple(spec.guides) if guides is None else guides:
        with pyro.get_param_store().scope(), torch.no_grad():
            model = spec.make_model(config)
            guide = spec.guides[name](model, config)
            try:
                poutine.block(guide)(x, num_data=x.shape[0])  # its parameters, registered
                vectorize = broadcasts_over_particles(model, guide, x)
            except Exception:  # noqa: BLE001  (the check's own findings name it)
                continue
        if not vectorize:
            notes.append(f"guide {name}: {LOOP_NOTE}")
    return notes


_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {guide: bool}


def _broadcasts(model, guide, x: torch.Tensor) -> bool:
    """:func:`~inference.sampling.broadcasts_over_particles`, probed once per model and guide
    (a loop such as the gap split's q* fit asks at every step)."""
    try:
        known = _PROBED.setdefault(model, weakref.WeakKeyDictionary())
        if guide is not None and guide in known:
            return known[guide]
    except TypeError:  # not weakly referenceable: probe every time
        known = None
    with torch.no_grad():
        answer = broadcasts_over_particles(model, guide, x)
    if known is not None and guide is not None:
        try:
            known[guide] = answer
        except TypeError:
            pass
    return answer


def guide_site(guide_fn, x: torch.Tensor, site: str):
    """The distribution the guide puts on ``site`` for the rows ``x`` (``None``: it leaves
    the site to the model, e.g. to enumeration)."""
    with torch.no_grad(), poutine.block():
        trace = poutine.trace(guide_fn).get_trace(x, num_data=x.shape[0])
    return trace.nodes[site]["fn"] if site in trace.nodes else None


def _log_weights(model, guide, x, rows, num_samples, grad=False, vectorize=True,
                 summed_out=False):
    if summed_out:
        return summed_out_log_weights(model, guide, x, rows, num_samples, grad, vectorize)
    with torch.set_grad_enabled(grad), poutine.block():
        # the data plate's subsample site is fixed to these rows
        guide_trace, model_trace = particle_traces(model, guide, x, rows, num_samples,
                                                   vectorize=vectorize)
        return (site_log_prob(model_trace, num_samples, rows.numel())
                - site_log_prob(guide_trace, num_samples, rows.numel()))


def iwae(log_weights: torch.Tensor) -> torch.Tensor:
    """IWAE estimate of log p(x_n) from ``(K, N)`` log-weights: logsumexp − log K, shape (N,)."""
    return torch.logsumexp(log_weights, dim=0) - math.log(log_weights.shape[0])


def evaluate_fit(spec: ModelSpec, config, result: FitResult, x_train: torch.Tensor,
                 x_test: torch.Tensor | None = None, *, num_samples: int = 1000,
                 elbo_samples: int = 100, seed: int = 0,
                 max_train_rows: int = MAX_TRAIN_ROWS, device: torch.device | None = None,
                 iwae_rows: int | str | None = None, progress: bool = False) -> dict:
    """The yardstick for one fit, every figure in mean nats per datapoint.

    Returns ``train_log_likelihood``, ``test_log_likelihood`` (``None`` without test rows),
    ``log_likelihood_method`` ("exact", "iwae-K" per row, or for models with global latents
    "iwae-joint-K" / "iwae-nested-KxM": :mod:`inference.global_latents`), ``elbo`` (train;
    ``None`` without a guide; where log p(x) is importance-sampled, the mean of the same K
    log-weights whose log-mean-exp is IWAE-K, so both cost one pass; else ``elbo_samples``
    draws) and ``gap`` = log p(x) − ELBO on the training rows. Monte Carlo
    draws use their own random stream seeded by ``seed``, so the same files give the same
    numbers. Importance-sampled figures of a training set larger than ``max_train_rows`` are
    taken on a seeded subsample of that many rows (``train_rows_evaluated`` says how many), so
    that judging a fit costs no more than the fit; exact figures use every row.

    The cost of importance sampling is bounded per split: at most
    :func:`importance_rows` ``(num_samples, iwae_rows)`` rows of each split are judged (by
    default 250,000 log-weights' worth, at least 100 rows; ``iwae_rows="all"``: every row),
    a subsample drawn by ``seed`` beyond (``train_rows_evaluated``, ``test_rows_evaluated``).
    ``train_log_likelihood_se`` and ``test_log_likelihood_se`` are the standard errors of the
    two means: the sample standard deviation of the per-row figures over √n (it includes each
    row's Monte Carlo noise; not the bias of IWAE-K below log p(x)); ``None`` for the joint
    estimate of a model with global latents. ``progress`` shows a bar (tqdm, on stderr) over
    the rows being importance-sampled.

    Rows are judged in chunks of :data:`EVAL_ROWS` moved to ``device`` (default: the rows'
    own), so a memory-mapped training set is read, never held. Under a process group
    (:mod:`inference.distributed`) every rank judges its shard of the rows and the sums are
    reduced: every rank returns the same figures.
    """
    group = distributed.current()
    with own_random_stream(seed, x_train.device):
        rows = None
        # the subsample serves importance sampling only: exact figures take every row (a
        # permutation of 8 million rows cost 0.2 s of a yardstick that took 0.6 s)
        if x_train.shape[0] > max_train_rows and spec.log_marginal is None:
            rows = torch.randperm(x_train.shape[0], device=x_train.device)[:max_train_rows]
        metrics = _evaluate_fit(spec, config, result, x_train, x_test, num_samples,
                                elbo_samples, rows, group, device or x_train.device,
                                importance_rows(num_samples, iwae_rows), progress)
    for split in ("train", "test"):
        metrics.setdefault(f"{split}_log_likelihood_se", None)
    metrics.setdefault("test_rows_evaluated", None if x_test is None else x_test.shape[0])
    if metrics.get("test_log_likelihood") is None:
        metrics["test_rows_evaluated"] = None
    return metrics


EVAL_ROWS = 2**16  # rows per chunk of the exact log-likelihood


def _mine(count: int, group) -> slice:
    """This rank's share of ``count`` rows (rank 0 takes them all when there are fewer rows
    than ranks)."""
    return distributed.shard(count, group) if count >= (group.world_size if group else 1) \
        else slice(0, count if group is None or group.is_main else 0)


def _row_mean(values_of, x: torch.Tensor, group, device, indices=None):
    """The mean over the rows ``x[indices]`` (default all) of ``values_of(rows) -> (..., n)``,
    this rank's shard of them chunk by chunk, summed in float64 over the ranks: a float, or a
    list of floats for several figures per row."""
    return _row_stats(values_of, x, group, device, indices)[0]


def _row_stats(values_of, x: torch.Tensor, group, device, indices=None):
    """:func:`_row_mean` and the standard error of each mean: the rows' sample standard
    deviation / √n (``None`` for fewer than two rows), from float64 sums of the values and of
    their squares over the chunks and the ranks."""
    count = x.shape[0] if indices is None else indices.numel()
    mine = _mine(count, group)
    total = None
    for start in range(mine.start, mine.stop, EVAL_ROWS):
        stop = min(start + EVAL_ROWS, mine.stop)
        chosen = slice(start, stop) if indices is None else indices[start:stop]
        values = values_of(chosen).detach().double()
        part = torch.stack([values.sum(-1), values.square().sum(-1)]).to(device)
        total = part if total is None else total + part
    if total is None:  # a rank without rows: the shape of one figure or of several
        probe = values_of(slice(0, 1) if indices is None else indices[:1])
        total = torch.zeros((2, *probe.shape[:-1]), dtype=torch.float64, device=device)
    sums, squares = distributed.total(total, group)
    means = sums / count
    if count > 1:
        variance = ((squares - sums * means) / (count - 1)).clamp(min=0.0)
        errors = (variance / count).sqrt()
    else:
        errors = None
    if means.dim() == 0:
        return float(means), None if errors is None else float(errors)
    return means.tolist(), [None] * means.numel() if errors is None else errors.tolist()


def _evaluate_fit(spec, config, result, x_train, x_test, num_samples, elbo_samples,
                  rows=None, group=None, device=None, cap=None, progress=False) -> dict:
    metrics: dict = {"log_likelihood_method": "exact", "train_rows_evaluated": x_train.shape[0],
                     "test_rows_evaluated": None if x_test is None else x_test.shape[0]}
    guide = result.guide if result.guide in spec.guides else None
    if spec.log_marginal is None and spec.global_sites and guide is not None:
        return _evaluate_global(spec, config, result, guide, x_train, x_test, num_samples)
    splits = {"train": x_train, "test": x_test}
    if spec.log_marginal is not None:
        metrics["log_likelihood_method"] = "exact"
        params = _on(result.params, torch.empty(0, device=device))
        for split, x in splits.items():
            metrics[f"{split}_log_likelihood"], metrics[f"{split}_log_likelihood_se"] = (
                (None, None) if x is None or x.shape[0] == 0 else
                _row_stats(lambda chosen, x=x: spec.log_marginal(
                    config, params, x[chosen].to(device)), x, group, device))
    else:
        return _importance_sampled(spec, config, result, guide, splits, num_samples,
                                   elbo_samples, rows, group, metrics, cap, progress)
    metrics.update(elbo=None, gap=None, **NO_PARETO_K,
                   pareto_k_note="log p(x) is exact: no importance sampling to diagnose")
    if guide is not None:
        with fitted(spec, config, result.params, x_train, guide=guide,
                    guide_params=result.guide_params) as (model, guide_fn):
            metrics["elbo"] = _row_mean(lambda chosen: pointwise_log_weights(
                model, guide_fn, x_train, elbo_samples,
                indices=_positions(chosen, x_train)).mean(0), x_train, group, x_train.device,
                rows)
        if metrics["train_log_likelihood"] is not None:
            metrics["gap"] = metrics["train_log_likelihood"] - metrics["elbo"]
    return metrics


def _importance_sampled(spec, config, result, guide, splits, num_samples, elbo_samples, rows,
                        group, metrics, cap=None, progress=False) -> dict:
    """IWAE-K per row with the fit's guide (one set of K log-weights gives IWAE-K and the
    ELBO, their mean); discrete local sites summed out where :func:`enumerable_sites` allows
    (exact when they are the only latents: ``exact-enumerated``, no guide needed); particles
    one at a time when the model does not broadcast over them (``yardstick_note``). At most
    ``cap`` rows of each split (``None``: all) are importance-sampled, drawn by the stream."""
    metrics["log_likelihood_method"] = f"iwae-{num_samples}"
    metrics.update(elbo=None, gap=None, yardstick_note=None)
    x_train = splits["train"]
    vectorize, summed, continuous = _probed(spec, config, result, guide, x_train)
    if not vectorize:
        metrics["yardstick_note"] = LOOP_NOTE
    if summed:
        metrics["log_likelihood_method"] = (f"iwae-{num_samples}-enumerated" if continuous
                                            else "exact-enumerated")
    sampled = continuous or not summed  # the figures are importance-sampled
    usable = {split: guide is not None and (split == "train" or not _per_datapoint(spec, guide))
              for split in splits}
    judged = {split: x is not None and x.shape[0] > 0 and (usable[split] or not sampled)
              for split, x in splits.items()}
    subsets = {"train": rows if sampled else None, "test": None}
    if sampled and cap is not None:  # the stated budget: a subsample drawn by the seed
        for split, x in splits.items():
            count = 0 if x is None else (x.shape[0] if subsets[split] is None
                                         else subsets[split].numel())
            if judged[split] and count > cap:
                subsets[split] = (subsets[split] if subsets[split] is not None
                                  else torch.randperm(x.shape[0], device=x.device))[:cap]
    for split, x in splits.items():
        if x is not None:
            metrics[f"{split}_rows_evaluated"] = (x.shape[0] if subsets[split] is None
                                                  else int(subsets[split].numel()))
    evaluated = metrics["train_rows_evaluated"]
    kept = ParetoRows(evaluated) if guide is not None and sampled else None
    def keep(split, log_weights):  # the train rows' log-weights give k̂ on the way
        return kept(log_weights) if kept is not None and split == "train" else log_weights
    shares = [_mine(metrics[f"{split}_rows_evaluated"], group) for split in splits
              if judged[split]]
    total = sum(share.stop - share.start for share in shares)  # this rank's rows
    bar = tqdm(total=total, desc=f"yardstick {metrics['log_likelihood_method']}", unit="row",
               leave=False, disable=not progress or total == 0)
    for split, x in splits.items():
        value = error = None
        if judged[split]:
            with fitted(spec, config, result.params, x, guide=guide if usable[split] else None,
                        guide_params=result.guide_params if usable[split] else None
                        ) as (model, guide_fn):
                subset = subsets[split]
                if summed:
                    draws = num_samples if continuous else 1
                    value, error = _row_stats(
                        lambda chosen, x=x, m=model, g=guide_fn, k=draws, s=split: iwae(keep(
                            s, pointwise_log_weights(m, g if continuous else None, x, k,
                                                     indices=_positions(chosen, x),
                                                     vectorize=vectorize, summed_out=True,
                                                     on_rows=bar.update))),
                        x, group, x.device, subset)
                    if split == "train" and usable[split]:  # the guide's own ELBO beside it
                        elbo = _row_mean(lambda chosen, x=x, m=model, g=guide_fn:
                                         pointwise_log_weights(
                                             m, g, x, elbo_samples, vectorize=vectorize,
                                             indices=_positions(chosen, x)).mean(0),
                                         x, group, x.device, subset if sampled else rows)
                        metrics.update(elbo=elbo, gap=value - elbo)
                else:
                    (value, elbo), (error, _) = _row_stats(
                        lambda chosen, x=x, m=model, g=guide_fn, s=split: _iwae_and_elbo(keep(
                            s, pointwise_log_weights(m, g, x, num_samples, vectorize=vectorize,
                                                     indices=_positions(chosen, x),
                                                     on_rows=bar.update))),
                        x, group, x.device, subset)
                    if split == "train":
                        metrics.update(elbo=elbo, gap=value - elbo)
        metrics[f"{split}_log_likelihood"] = value
        metrics[f"{split}_log_likelihood_se"] = error
    bar.close()
    metrics.update(kept.record() if kept is not None else NO_PARETO_K)
    if summed and not continuous:
        metrics["pareto_k_note"] = "log p(x) is exact (discrete latents summed out)"
    return metrics


def _probed(spec, config, result, guide, x_train) -> tuple[bool, tuple[str, ...], bool]:
    """What :func:`_importance_sampled` asks of the fit's model and guide on ``x_train``:
    whether they broadcast over the particle plate, the discrete sites summed out and whether
    continuous local sites remain (:func:`enumerable_sites`)."""
    # the probes (and the model and guide they build) draw from a fork of the stream: the
    # figures are the same draws as without them, e.g. an estimator's score of the same rows
    with own_random_stream(None, x_train.device), fitted(
            spec, config, result.params, x_train, guide=guide,
            guide_params=result.guide_params) as (model, guide_fn), torch.no_grad():
        vectorize = broadcasts_over_particles(model, guide_fn, x_train)
        summed, continuous = enumerable_sites(model, guide_fn, x_train)
    return vectorize, summed, continuous


def _evaluate_global(spec, config, result, guide, x_train, x_test, num_samples) -> dict:
    """Models with global latents: the joint (or nested) estimate of log p(X) / N, the
    posterior predictive on held-out rows, the whole-data ELBO / N (:mod:`global_latents`)."""
    local = bool(spec.local_sites)
    with own_random_stream(None, x_train.device), fitted(
            spec, config, result.params, x_train, guide=guide,
            guide_params=result.guide_params) as (model, guide_fn), torch.no_grad():
        vectorize = broadcasts_over_particles(model, guide_fn, x_train)
    with fitted(spec, config, result.params, x_train, guide=guide,
                guide_params=result.guide_params) as (model, guide_fn):
        held_out = None if local and _per_datapoint(spec, guide) else x_test
        metrics = global_yardstick(model, guide_fn, x_train, held_out, spec.global_sites,
                                   local=local, num_samples=num_samples, vectorize=vectorize)
    metrics["yardstick_note"] = None if vectorize else LOOP_NOTE
    metrics["gap"] = metrics["train_log_likelihood"] - metrics["elbo"]
    metrics["train_rows_evaluated"] = x_train.shape[0]  # the joint evidence needs every row
    return metrics


PARETO_K_ROWS = 1000  # rows whose k̂ is computed (spread evenly): ~1 ms each by ArviZ
NO_PARETO_K = {"pareto_k": None, "pareto_k_median": None, "pareto_k_share_above_0.7": None,
               "pareto_k_rows": None}


class ParetoRows:
    """Keeps the log-weights of at most :data:`PARETO_K_ROWS` of ``count`` rows, evenly spread,
    as the yardstick's chunks pass through (in row order), and gives their k̂
    (:func:`inference.diagnostics.summarize`): one k̂ per row of an amortized or per-row
    proposal, with the share of rows above 0.7."""

    def __init__(self, count: int):
        self.stride = max(1, math.ceil(count / PARETO_K_ROWS))
        self.seen = 0
        self.parts: list[torch.Tensor] = []

    def __call__(self, log_weights: torch.Tensor) -> torch.Tensor:
        first = (-self.seen) % self.stride
        picked = log_weights.detach()[:, first::self.stride]
        if picked.shape[-1]:
            self.parts.append(picked.cpu())
        self.seen += log_weights.shape[-1]
        return log_weights

    def record(self) -> dict:
        if not self.parts or self.parts[0].shape[0] < 2:
            return dict(NO_PARETO_K)
        return diagnostics.summarize(torch.cat(self.parts, -1)).record()


def _iwae_and_elbo(log_weights: torch.Tensor) -> torch.Tensor:
    """``(K, n)`` log-weights -> ``(2, n)``: IWAE-K and the mean log-weight (the ELBO)."""
    return torch.stack([iwae(log_weights), log_weights.mean(0)])


def _positions(chosen, x: torch.Tensor) -> torch.Tensor:
    """Row positions: a slice as an index tensor, an index tensor as it is."""
    if isinstance(chosen, slice):
        return torch.arange(chosen.start, chosen.stop, device=x.device)
    return chosen


def _per_datapoint(spec: ModelSpec, guide: str) -> bool:
    """A guide with free per-datapoint parameters (mean-field) has none for new rows; its
    factory says so with a ``per_datapoint = True`` attribute."""
    return bool(getattr(spec.guides[guide], "per_datapoint", False))


def _on(params: Params, x: torch.Tensor) -> Params:
    return {k: v.to(device=x.device) for k, v in params.items()}


def _mean_or_none(values: torch.Tensor | None) -> float | None:
    return None if values is None else float(values.mean())
