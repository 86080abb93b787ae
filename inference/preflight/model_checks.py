"""The checks of ``lvm-zoo check`` on the model alone: batch and event shapes, the data plate and
the local / global declarations, subsampling and its N / B scale, enumeration, and the
constraints of its parameters."""

from __future__ import annotations

import dataclasses
import math

import torch
from pyro import poutine
from pyro.infer import config_enumerate

from inference.preflight.report import Problem
from inference.preflight.tracing import (
    _data_frame,
    _dist_name,
    _is_factor,
    _log_probs,
    _message,
    _run,
    _sample_sites,
    _shape,
)


class _ModelChecks:
    """Mixed into :class:`inference.preflight.checker._Checker`, which holds the state (``spec``,
    ``config``, ``x``, ``rows``, ``batch``, ``full``, ``sub``) and the methods shared with the
    guide checks (``add``, ``_perturb``, ``_subsampled_failure``)."""

    def shapes(self, trace) -> None:
        for name, site in _sample_sites(trace):
            fn, value = site["fn"], site["value"]
            frames = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized}
            batch = tuple(fn.batch_shape)
            for position, size in enumerate(reversed(batch)):
                dim = -1 - position
                if size == 1 or dim in frames:
                    continue
                plates = ", ".join(f"pyro.plate('{f.name}') at dim {f.dim}"
                                   for f in frames.values())
                enclosing = f"only {plates} encloses it" if plates else "no plate encloses it"
                extra = len(batch) - position
                self.add(Problem(
                    "shape", name, f"its distribution has batch shape {_shape(batch)} but "
                    f"{enclosing}, so dimension {dim} (size {size}) is a batch dimension no "
                    "plate accounts for",
                    f"add .to_event({extra if not frames else extra - len(frames)}) to make the "
                    "per-datapoint dimensions event dimensions (or put them in a plate)"))
                break
            frame = _data_frame(site)
            if site["is_observed"] and frame is not None:
                expected = batch + tuple(fn.event_shape)
                if tuple(value.shape) != expected and len(expected) > value.dim():
                    self.add(Problem(
                        "shape", name, f"its distribution has shape {_shape(expected)} but the "
                        f"observed rows have shape {_shape(value.shape)}: its event shape "
                        f"{_shape(fn.event_shape)} swallows the data plate's dimension, so every "
                        "row is scored once per row",
                        "use .to_event(n) for the per-datapoint dimensions only (e.g. "
                        ".to_event(1) for rows of a matrix), never for the data's dimension"))

    def plates(self, trace) -> None:
        declared_local = set(self.spec.local_sites)
        declared_global = set(self.spec.global_sites)
        latent = {n: s for n, s in _sample_sites(trace) if not s["is_observed"]}
        for name, site in _sample_sites(trace):
            inside = _data_frame(site) is not None
            if site["is_observed"] and not inside and not _is_factor(site):
                self.add(Problem(
                    "plate", name, "the observed site is not inside pyro.plate('data')",
                    "wrap it in `with pyro.plate('data', N, subsample_size=subsample_size) as "
                    "idx:` and observe x[idx]; Pyro then subsamples and scales it, and "
                    "evaluation scores each row"))
            if site["is_observed"]:
                continue
            if name in declared_local and not inside:
                self.add(Problem(
                    "plate", name, "it is declared local (one value per datapoint) but sits "
                    "outside pyro.plate('data'), so subsampling neither selects nor scales it",
                    "sample it inside the data plate, with .to_event() for its per-datapoint "
                    "dimensions, or declare it global"))
            elif not inside and name not in declared_global and self.rows > 1 and \
                    self.rows in tuple(site["value"].shape):
                self.add(Problem(
                    "plate", name, f"it sits outside pyro.plate('data') but has a dimension of "
                    f"{self.rows}, the number of rows: it looks per-datapoint, and subsampling "
                    "neither selects nor scales it", "sample it inside the data plate and "
                    "declare it in local_sites (or declare it in global_sites if it is shared)"))
            if name in declared_global and inside:
                self.add(Problem(
                    "plate", name, "it is declared global but sits inside pyro.plate('data'), "
                    "so it gets one value per datapoint",
                    "sample it before the data plate, or declare it local"))
            if (declared_local or declared_global) and name not in declared_local | \
                    declared_global:
                kind = "local_sites" if inside else "global_sites"
                self.add(Problem(
                    "plate", name, "it is a latent site declared neither local nor global",
                    f"add '{name}' to {kind}= in the declaration"))
        for name in sorted((declared_local | declared_global) - set(latent)):
            self.add(Problem(
                "plate", name, "it is declared but the model has no latent site of that name "
                f"(its latent sites: {', '.join(latent) or 'none'})",
                "declare the model's own site names"))

    def subsampling(self, model, full_trace) -> None:
        if not any(_data_frame(s) is not None for _, s in _sample_sites(full_trace)):
            return
        run = _run(model, self.x, **self.sub)
        if run.error is not None:
            self.add(self._subsampled_failure(run, "model", None, full_trace))
            return
        problem = _log_probs(run.trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, kind="subsampling", what=(
                f"with subsample_size={self.batch} of {self.rows} rows: {problem.what}")))
            return
        full_sites = dict(_sample_sites(full_trace))
        expected_ratio = self.rows / self.batch
        for name, site in _sample_sites(run.trace):
            frame = _data_frame(site)
            if frame is None:
                continue
            full_size = frame.full_size or frame.size
            if full_size != self.rows:
                self.add(Problem(
                    "subsampling", name, f"pyro.plate('data') has size {full_size} but the data "
                    f"have {self.rows} rows, so subsampling is not scaled by N / B",
                    "give the plate the full number of rows, pyro.plate('data', N, "
                    "subsample_size=subsample_size), and let it choose the rows (idx)"))
                return
            if frame.size == self.rows:
                self.add(Problem(
                    "subsampling", name, f"the model ignores subsample_size: asked for "
                    f"{self.batch} of {self.rows} rows, the site covers all {self.rows}",
                    "pass subsample_size=subsample_size to pyro.plate('data', ...) and index "
                    "the data with the plate's indices (x[idx])"))
                return
            if name not in full_sites:
                continue
            ratio = float(torch.as_tensor(site["scale"]).max()) / \
                float(torch.as_tensor(full_sites[name]["scale"]).max())
            if not math.isclose(ratio, expected_ratio, rel_tol=1e-4):
                times = ("not at all" if math.isclose(ratio, 1.0, rel_tol=1e-4)
                         else "twice" if math.isclose(ratio, expected_ratio ** 2, rel_tol=1e-4)
                         else f"by {ratio:g}")
                self.add(Problem(
                    "subsampling", name, f"with {self.batch} of {self.rows} rows its "
                    f"log-probability must be scaled by N / B = {expected_ratio:g}, but it is "
                    f"scaled {times}",
                    "let pyro.plate('data', N, subsample_size=...) do the scaling: no "
                    "poutine.scale by N / B of your own, no plate of the batch's size"))

    def enumeration(self, model, trace) -> None:
        discrete = [(n, s) for n, s in _sample_sites(trace)
                    if not s["is_observed"] and s["fn"].support.is_discrete]
        if not discrete:
            return
        for name, site in discrete:
            if not site["fn"].has_enumerate_support:
                self.add(Problem(
                    "enumeration", name, f"it is discrete ({_dist_name(site['fn'])}, support "
                    f"{site['fn'].support}) without a finite support, so it cannot be "
                    "enumerated", "give it a guide site of its own (and an ELBO that does not "
                    "enumerate), or bound its support (e.g. a Categorical)"))
        names = [n for n, s in discrete if s["fn"].has_enumerate_support]
        if not names:
            return
        enumerated = poutine.enum(config_enumerate(model, "parallel"),
                                  first_available_dim=-2)
        run = _run(enumerated, self.x, **self.full)
        problem = None
        if run.error is not None:
            problem = _message(run.error)
        else:
            for site_name, site in _sample_sites(run.trace):
                try:
                    log_prob = site["fn"].log_prob(site["value"])
                except Exception as error:  # noqa: BLE001
                    problem = f"site '{site_name}' fails: {_message(error)}"
                    break
                frame = _data_frame(site)
                if frame is not None and log_prob.dim() >= -frame.dim and \
                        log_prob.shape[frame.dim] not in (1, frame.size):
                    problem = (f"site '{site_name}' gets log-probabilities of shape "
                               f"{_shape(log_prob.shape)}: the data plate's dimension moved")
                    break
        if problem is not None:
            self.add(Problem(
                "enumeration", ", ".join(names), "enumerating it in parallel fails "
                f"({problem})",
                "the model must broadcast over a new dimension on the left of the site's value "
                "(shape (K, 1) under the data plate): index with it (locs[c]) and do not use "
                ".item(), Python if/for on it, .squeeze(), .view() or .reshape() with explicit "
                "sizes"))

    def constraints(self, model, trace) -> None:
        params = {n: s for n, s in trace.nodes.items() if s["type"] == "param"}
        for name, site in params.items():
            self.add(self._perturb(model, name, site, None, trace))
