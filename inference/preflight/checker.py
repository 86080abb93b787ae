"""The checker of ``lvm-zoo check``: runs the model, then each guide, and gathers the problems;
the model's own checks are in :mod:`inference.preflight.model_checks`, the guides' in
:mod:`inference.preflight.guide_checks`. Here: what both share (the device audit's findings, the
parameter constraints, a failure under subsampling)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pyro
import torch
from pyro.poutine.util import site_is_subsample

from inference.preflight.guide_checks import _GuideChecks
from inference.preflight.model_checks import _ModelChecks
from inference.preflight.report import Problem
from inference.preflight.tracing import (
    _CONSTRAINT,
    _PLATE_MISMATCH,
    _failure,
    _log_probs,
    _next_site,
    _original,
    _Run,
    _run,
    _sample_sites,
)
from zoo.registry import ModelSpec


class _Checker(_ModelChecks, _GuideChecks):
    """One check of ``spec``'s model and guides on ``x``; what it finds goes to ``found``."""

    def __init__(self, spec: ModelSpec, config, x: torch.Tensor, found: list[Problem], *,
                 thorough: bool = True):
        self.spec, self.config, self.x, self.found = spec, config, x, found
        self.thorough = thorough  # False: only what a fit and the yardstick need (shapes)
        self.rows = x.shape[0]
        self.batch = max(1, self.rows // 4)
        self.model_lines: set[tuple[str, int]] = set()  # where the model makes tensors
        self.model_ok = True
        self.full = {"num_data": self.rows}
        self.sub = {"num_data": self.rows, "subsample_size": self.batch}

    def add(self, problem: Problem | None) -> None:
        """Keep ``problem``, unless it is a guide's echo of a problem of the model's own at the
        same site (a guide runs the model too)."""
        if problem is None:
            return
        if problem.guide is not None and any(p.guide is None and p.site == problem.site
                                             for p in self.found):
            return
        self.found.append(problem)

    def run(self, guides: tuple[str, ...]) -> None:
        with pyro.get_param_store().scope():
            model = self.spec.make_model(self.config, None)
            run = _run(model, self.x, audit=self.thorough, **self.full)
            if run.error is not None:
                self.add(_failure(run, "model"))
                return
            trace = run.trace
            problem = _log_probs(trace)
            if problem is not None:
                self.add(problem)
                return
            self.shapes(trace)
            if self.thorough:
                self.devices(run, trace, None)
                self.plates(trace)
                self.subsampling(model, trace)
                self.enumeration(model, trace)
                self.constraints(model, trace)
        self.model_ok = not self.found  # else the guides' ELBO and subsampling only echo it
        for name in guides:
            with pyro.get_param_store().scope():
                self.guide(name, trace)

    # shared by the model's checks and the guides'

    def _subsampled_failure(self, run: _Run, what: str, guide: str | None,
                            full_trace) -> Problem:
        """A run that fails only when subsampled; tensors made for all rows are the usual
        cause (data not indexed with the plate's indices, parameters not subsampled)."""
        match = _PLATE_MISMATCH.search(str(_original(run.error)))
        if match and int(match.group(5)) == self.rows and int(match.group(4)) == self.batch:
            return Problem(
                "subsampling", match.group(2), f"with subsample_size={self.batch} of "
                f"{self.rows} rows its distribution still has a dimension of all {self.rows} "
                "rows", "index per-datapoint tensors with the plate's indices (x[idx], "
                "loc[idx]), or create per-datapoint parameters inside the plate with "
                "pyro.param(..., event_dim=...) so Pyro subsamples them", guide)
        problem = _failure(run, what, guide, full_trace=full_trace)
        return dataclasses.replace(problem, kind="subsampling", what=(
            f"with subsample_size={self.batch} of {self.rows} rows: {problem.what}"))

    def _perturb(self, fn, name, site, guide, full_trace, replay=None) -> Problem | None:
        """Push an unconstrained ``pyro.param`` out of every constrained set (negative
        entries, mixed signs) and run ``fn``; a constraint error names the parameter."""
        store = pyro.get_param_store()
        if name not in store:
            return None
        # a parameter fetched without its initial value (a PyroModule's PyroParam) has the
        # constraint it was registered with, in the store, not in the site
        constraint = (getattr(store, "_constraints", {}).get(name) if len(site["args"]) < 2
                      else site["kwargs"].get("constraint"))
        if constraint is not None and constraint is not pyro.distributions.constraints.real:
            return None
        if "$$$" in name or ("." in name and guide is not None):
            return None  # network weights and AutoGuide parameters: unconstrained by design
        original = store[name].detach().clone()
        if not original.is_floating_point():
            return None
        magnitude = original.abs() + 1.0
        signs = torch.ones_like(original).flatten()
        signs[1::2] = -1.0
        perturbations = [-magnitude, magnitude * signs.reshape(original.shape)]
        try:
            for value in perturbations:
                store[name] = value
                run = _run(fn, self.x, **self.full) if replay is None else replay()
                if run.error is None:
                    continue
                match = _CONSTRAINT.search(str(_original(run.error)))
                if match is None:
                    continue
                argument, distribution, needed = match.groups()
                site_name = _next_site(run.trace, full_trace) or name
                return Problem(
                    "constraint", name, f"the parameter has no constraint, but it reaches the "
                    f"'{argument}' of {distribution} at site '{site_name}', which must satisfy "
                    f"{needed.strip()}: a gradient step can leave that set and the fit fails",
                    f"declare pyro.param('{name}', ..., constraint={_constraint_fix(needed)})",
                    guide)
        finally:
            store[name] = original
        return None

    def devices(self, run: _Run, trace, guide: str | None) -> None:
        sites = _sample_sites(trace)
        for created in run.created:
            if guide is None:
                self.model_lines.add((created.filename, created.line))
            elif (created.filename, created.line) in self.model_lines:
                continue  # the guide ran the model's code (AutoNormal's prototype trace)
            before, function = created.sites_before, created.function
            site_name, site = sites[before] if before < len(sites) else (None, None)
            where = f"line {created.line} of {Path(created.filename).name}"
            if created.kind == "numbers":
                if site is None or site["is_observed"] or not any(
                        f.vectorized for f in site["cond_indep_stack"]):
                    continue
                self.add(Problem(
                    "device", site_name, f"its distribution ({where}) is built from Python "
                    "numbers only, so its draws are made on the CPU whatever the data's device",
                    "build it from a tensor on the data's device, e.g. "
                    "dist.Normal(x.new_zeros(()), 1.0)", guide))
            else:
                self.add(Problem(
                    "device", site_name or (guide or "model"), f"torch.{function}(...) at {where} "
                    "makes a tensor without device=, so it lands on the CPU when the data are "
                    "on a GPU", f"make it from the data: x.new_{_new_name(function)}(...) or "
                    f"torch.{function}(..., device=x.device, dtype=x.dtype)", guide))
        for name, site in trace.nodes.items():
            if site["type"] not in ("sample", "param") or site_is_subsample(site):
                continue
            value = site["value"]
            if isinstance(value, torch.Tensor) and value.dim() and value.device != self.x.device:
                self.add(Problem(
                    "device", name, f"its value is on {value.device} but the data are on "
                    f"{self.x.device}", "make its tensors from the data (x.new_zeros, "
                    "device=x.device)", guide))



def _new_name(function: str) -> str:
    return {"zeros": "zeros", "ones": "ones", "empty": "empty", "full": "full",
            "tensor": "tensor", "as_tensor": "tensor"}.get(function, "zeros")


def _constraint_fix(needed: str) -> str:
    text = needed.replace(" ", "")
    if text.startswith("GreaterThan(lower_bound=0") or text.startswith("GreaterThanEq"):
        return "constraints.positive"
    if text.startswith("Simplex"):
        return "constraints.simplex"
    if text.startswith("PositiveDefinite"):
        return "constraints.positive_definite"
    if text.startswith("LowerCholesky"):
        return "constraints.lower_cholesky"
    if text.startswith("Interval(lower_bound=0.0,upper_bound=1.0)"):
        return "constraints.unit_interval"
    return f"a constraint matching {needed.strip()}"
