"""Running a model or a guide once for ``lvm-zoo check`` and reading what happened: the trace
helpers, and the translation of a failed run into a :class:`Problem` naming the site."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyro
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from inference.preflight.devices import _DeviceAudit
from inference.preflight.report import Problem
from zoo.errors import InputError
from zoo.registry import DATA_PLATE


@dataclass
class _Run:
    trace: poutine.Trace
    error: BaseException | None
    created: list  # device audit findings, :class:`_Created`


def _sample_sites(trace) -> list[tuple[str, dict]]:
    return [(n, s) for n, s in trace.nodes.items()
            if s["type"] == "sample" and not site_is_subsample(s)]


def _data_frame(site: dict):
    return next((f for f in site["cond_indep_stack"] if f.vectorized and f.name == DATA_PLATE),
                None)


def _shape(values) -> str:
    return "(" + ", ".join(str(int(v)) for v in values) + ("," if len(values) == 1 else "") + ")"


def _last_site(trace) -> str | None:
    names = [n for n, _ in _sample_sites(trace)]
    return names[-1] if names else None


def _original(error: BaseException) -> BaseException:
    """Pyro's trace re-raises errors with the trace's shapes appended; the cause is cleaner."""
    while error.__cause__ is not None and type(error.__cause__) is type(error):
        error = error.__cause__
    return error


def _message(error: BaseException) -> str:
    text = str(_original(error)).strip().split("\n")[0]
    return text if len(text) < 240 else text[:237] + "..."



def _run(fn, *args, audit: bool = False, **kwargs) -> _Run:
    """Trace ``fn`` once, keeping the partial trace and the error if it fails."""
    tracer = poutine.trace(fn)
    mode = _DeviceAudit(lambda: len(_sample_sites(tracer.msngr.trace))) if audit else None
    error = None
    try:
        if mode is not None:
            with mode:
                tracer(*args, **kwargs)
        else:
            tracer(*args, **kwargs)
    except Exception as caught:  # noqa: BLE001 - every failure becomes a Problem
        error = caught
    return _Run(tracer.msngr.trace, error, mode.found if mode is not None else [])


def _log_probs(trace) -> Problem | None:
    """Compute every site's log-probability; a failure names the site."""
    for name, site in _sample_sites(trace):
        try:
            site["fn"].log_prob(site["value"])
        except Exception as error:  # noqa: BLE001 - every failure becomes a Problem
            return _value_problem(name, site, error)
    return None


def _value_problem(name: str, site: dict, error: BaseException) -> Problem:
    text = _message(error)
    fn, value = site["fn"], site["value"]
    expected = tuple(fn.batch_shape) + tuple(fn.event_shape)
    if "support" in text:
        return Problem("shape", name, f"its value lies outside the support of {_dist_name(fn)} "
                       f"({fn.support})", "draw it from a distribution on that support (in a "
                       "guide: the same support as the model's site)")
    if tuple(value.shape) != expected:
        return Problem("shape", name, f"its value has shape {_shape(value.shape)} but its "
                       f"distribution has shape {_shape(expected)} ({text})",
                       "index the data with the plate's indices (x[idx]) and make batch and "
                       "event dimensions match the value")
    return Problem("error", name, f"its log-probability fails: {text}",
                   "check the distribution's arguments at this site")


def _is_factor(site: dict) -> bool:
    """A ``pyro.factor`` term (a log-prior, a penalty): observed, but not data."""
    return isinstance(site["fn"], pyro.distributions.Unit) or \
        site["infer"].get("is_factor", False)


def _dist_name(fn) -> str:
    base = fn
    while hasattr(base, "base_dist"):
        base = base.base_dist
    return type(base).__name__


_PLATE_MISMATCH = re.compile(
    r"Shape mismatch inside plate\('([^']+)'\) at site (\S+) dim (-?\d+), (\d+) vs (\d+)")
_DEVICE = re.compile(r"(same device|device type|on the expected device|found at least two "
                     r"devices|Expected all tensors)", re.IGNORECASE)
_CONSTRAINT = re.compile(r"Expected parameter (\w+) .*? of distribution (\w+).*?to satisfy the "
                         r"constraint ([^,]+(?:\([^)]*\))?)", re.DOTALL)
_SITE_IN_INPUT_ERROR = re.compile(r"site '([^']+)'")


def _failure(run: _Run, what: str, guide: str | None = None,
             full_trace: poutine.Trace | None = None) -> Problem:
    """The error of a failed run, as a Problem naming the site."""
    error = _original(run.error)
    text = _message(error)
    match = _PLATE_MISMATCH.search(str(error))
    if match:
        plate, site, dim, plate_size, batch_size = match.groups()
        return Problem(
            "shape", site, f"its distribution has a batch dimension of size {batch_size} at "
            f"dim {dim}, where pyro.plate('{plate}') of size {plate_size} sits",
            "declare the per-datapoint dimensions as event dimensions with .to_event(n) "
            "(e.g. dist.Normal(loc, scale).to_event(1)), so that only the plate's dimension "
            "is a batch dimension", guide)
    if isinstance(error, InputError):
        named = _SITE_IN_INPUT_ERROR.search(str(error))
        site = named.group(1) if named else (_last_site(run.trace) or what)
        return Problem("error", site, str(error).split(";")[0],
                       (str(error).split(";", 1)[1].strip() if ";" in str(error)
                        else "see the message"), guide)
    next_site = _next_site(run.trace, full_trace)
    last = _last_site(run.trace)
    if _DEVICE.search(text):
        site = next_site or last or what
        return Problem("device", site, f"tensors on different devices meet ({text})",
                       "make every tensor from the data or the parameters: x.new_zeros(...), "
                       "torch.zeros(..., device=x.device), and pyro.plate(..., device=x.device)",
                       guide)
    where = f"after site '{last}'" if last else "before its first site"
    site = next_site or last or what
    return Problem("error", site, f"the {what} fails {where}: {type(error).__name__}: {text}",
                   "run it by hand on a few rows to see why", guide)


def _next_site(partial: poutine.Trace, full: poutine.Trace | None) -> str | None:
    """The site a failed run was about to sample, from a complete trace of the same code."""
    if full is None:
        return None
    done = len(_sample_sites(partial))
    names = [n for n, _ in _sample_sites(full)]
    return names[done] if done < len(names) else None
