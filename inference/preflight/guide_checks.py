"""The checks of ``lvm-zoo check`` on each guide against the model: a run of its own, its sites
matched to the model's, the model replaying its draws, subsampling, and one ELBO."""

from __future__ import annotations

import dataclasses
import math
import re

import torch
from pyro import poutine

from inference.preflight.report import Problem
from inference.preflight.tracing import (
    _data_frame,
    _failure,
    _log_probs,
    _message,
    _Run,
    _run,
    _sample_sites,
    _shape,
)
from inference.svi import make_elbo


class _GuideChecks:
    """Mixed into :class:`inference.preflight.checker._Checker`, which holds the state (``spec``,
    ``config``, ``x``, ``rows``, ``batch``, ``full``, ``sub``, ``found``, ``model_ok``) and the
    methods shared with the model checks (``add``, ``devices``, ``_perturb``,
    ``_subsampled_failure``)."""

    def guide(self, name: str, model_trace) -> None:
        model = self.spec.make_model(self.config, None)
        _run(model, self.x, **self.full)  # the model's parameters first, as SVI has them
        try:
            guide = self.spec.guides[name](model, self.config)
        except Exception as error:  # noqa: BLE001
            self.add(_failure(_Run(poutine.Trace(), error, []), "guide", name))
            return
        run = _run(guide, self.x, audit=self.thorough, **self.full)
        if run.error is not None:
            self.add(_failure(run, "guide", name))
            return
        guide_trace = run.trace
        problem = _log_probs(guide_trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, guide=name))
            return
        if self.thorough:
            self.devices(run, guide_trace, name)
        elbo_name = self.spec.default_elbo.get(name, "Trace_ELBO")
        before = len(self.found)
        self.match(name, guide_trace, model_trace, enumerates="Enum" in elbo_name)
        if len(self.found) > before or not self.model_ok:
            return  # the model cannot replay draws that do not fit it; or it is broken itself
        replayed = _run(poutine.replay(model, trace=guide_trace), self.x, **self.full)
        if replayed.error is not None:
            self.add(_failure(replayed, "model, replaying the guide's draws,", name,
                              full_trace=model_trace))
            return
        problem = _log_probs(replayed.trace)
        if problem is not None:
            self.add(dataclasses.replace(problem, guide=name, what=(
                f"with the guide's draws: {problem.what}")))
            return
        if not self.thorough:
            return
        params = {n: s for n, s in guide_trace.nodes.items() if s["type"] == "param"}
        for param, site in params.items():
            self.add(self._perturb(guide, param, site, name, guide_trace,
                                   replay=lambda g=guide: _run(g, self.x, **self.full)))
        self.guide_subsampling(name, model, guide)
        self.elbo(name, elbo_name, model, guide)

    def match(self, guide_name: str, guide_trace, model_trace, *, enumerates: bool) -> None:
        model_sites = dict(_sample_sites(model_trace))
        guide_sites = {n: s for n, s in _sample_sites(guide_trace)
                       if not s["infer"].get("is_auxiliary")}
        latent = [n for n, s in model_sites.items() if not s["is_observed"]]
        for name, site in guide_sites.items():
            if name not in model_sites:
                self.add(Problem(
                    "mismatch", name, "the guide samples it but the model has no site of that "
                    f"name (the model's latent sites: {', '.join(latent) or 'none'})",
                    "name the guide's sites after the model's, or remove it", guide_name))
                continue
            model_site = model_sites[name]
            if model_site["is_observed"]:
                self.add(Problem(
                    "mismatch", name, "the guide samples it but the model observes it",
                    "the guide covers latent sites only: remove it from the guide",
                    guide_name))
                continue
            self.match_site(guide_name, name, site, model_site)
        for name in latent if self.thorough else ():  # a fit may enumerate it (--elbo)
            if name in guide_sites:
                continue
            enumerated = model_sites[name]["infer"].get("enumerate") == "parallel"
            if enumerated and enumerates:
                continue
            self.add(Problem(
                "mismatch", name, "the model samples it but the guide has no site of that name, "
                "so it is drawn from the prior and nothing learns its posterior",
                f"sample '{name}' in the guide (or mark a discrete site "
                "infer={'enumerate': 'parallel'} and fit with TraceEnum_ELBO)", guide_name))

    def match_site(self, guide_name: str, name: str, site, model_site) -> None:
        g_fn, m_fn = site["fn"], model_site["fn"]
        if g_fn.event_dim != m_fn.event_dim:
            self.add(Problem(
                "shape", name, f"the guide's distribution has {g_fn.event_dim} event "
                f"dimension(s) but the model's has {m_fn.event_dim}",
                f"use the same .to_event({m_fn.event_dim}) in the guide as in the model",
                guide_name))
            return
        g_shape = tuple(site["value"].shape)
        m_shape = tuple(m_fn.batch_shape) + tuple(m_fn.event_shape)
        if g_shape != m_shape:
            self.add(Problem(
                "shape", name, f"the guide draws shape {_shape(g_shape)} but the model's site "
                f"has shape {_shape(m_shape)}", "give the guide's distribution the model's "
                "batch and event shape", guide_name))
            return
        g_data, m_data = _data_frame(site), _data_frame(model_site)
        if (g_data is None) != (m_data is None):
            where = "outside" if g_data is None else "inside"
            self.add(Problem(
                "plate", name, f"the guide samples it {where} pyro.plate('data') but the model "
                "does not", "use the same plate in the guide: pyro.plate('data', N, "
                "subsample_size=subsample_size)", guide_name))

    def guide_subsampling(self, name: str, model, guide) -> None:
        run = _run(guide, self.x, **self.sub)
        if run.error is not None:
            self.add(self._subsampled_failure(run, "guide", name, None))
            return
        replayed = _run(poutine.replay(model, trace=run.trace), self.x, **self.sub)
        if replayed.error is not None:
            problem = _failure(replayed, "model, replaying the subsampled guide,", name)
            self.add(dataclasses.replace(problem, kind="subsampling"))
            return
        model_sites = dict(_sample_sites(replayed.trace))
        for site_name, site in _sample_sites(run.trace):
            if site["infer"].get("is_auxiliary") or site_name not in model_sites:
                continue
            frame = _data_frame(site)
            model_frame = _data_frame(model_sites[site_name])
            if frame is None or model_frame is None:
                continue
            if frame.size != model_frame.size or float(torch.as_tensor(site["scale"]).max()) \
                    != float(torch.as_tensor(model_sites[site_name]["scale"]).max()):
                self.add(Problem(
                    "subsampling", site_name, f"with {self.batch} of {self.rows} rows the guide "
                    f"draws it for {frame.size} rows scaled by {float(site['scale']):g}, the "
                    f"model for {model_frame.size} rows scaled by "
                    f"{float(model_sites[site_name]['scale']):g}",
                    "give the guide the model's plate, pyro.plate('data', N, "
                    "subsample_size=subsample_size), so both see the same rows", name))

    def elbo(self, name: str, elbo_name: str, model, guide) -> None:
        try:
            loss = make_elbo(elbo_name).loss(model, guide, self.x, **self.full)
        except Exception as error:  # noqa: BLE001
            text = _message(error)
            discrete = self._discrete_names(model)
            if "Enum" in elbo_name and discrete:
                self.add(Problem(
                    "enumeration", ", ".join(discrete), f"{elbo_name} with guide {name} fails "
                    f"({text})", "the model must broadcast over the enumerated values on a new "
                    "dimension on the left: index with them (locs[c]); no .item(), squeeze or "
                    "reshape with explicit sizes", name))
            else:
                named = re.search(r"""site ["']([^"']+)["']""", text)
                self.add(Problem("error", named.group(1) if named else name,
                                 f"{elbo_name} fails ({text})",
                                 "run svi.step once by hand to see why", name))
            return
        if not math.isfinite(loss):
            self.add(Problem("error", name, f"{elbo_name} is {loss} at the initial parameters",
                             "check the scales (a scale of 0, the log of a negative number) "
                             "and the data", name))

    def _discrete_names(self, model) -> list[str]:
        run = _run(model, self.x, **self.full)
        return [n for n, s in _sample_sites(run.trace)
                if not s["is_observed"] and s["fn"].support.is_discrete]
