"""Where a fit's start is not finite: the site, its prior and the guide's value there.

SVI's first step can fail before any learning rate matters: a guide that starts a latent where
its prior has no density (a HalfCauchy scale at its infinite mean, a value outside the
support), or a likelihood that is not finite at the start. :func:`nonfinite_start` runs the
guide once, replays the model on its draw, and names the first site whose value or
log-density is not finite, with its distribution, so the message says what to change.
"""

from __future__ import annotations

import torch
from pyro import poutine

_TRANSPARENT = ("Independent", "MaskedDistribution", "ExpandedDistribution")
_WRAPPERS = ("FoldedDistribution", "TransformedDistribution")


def describe(fn) -> str:
    """A distribution's name; a generic wrapper's with what it wraps
    (``FoldedDistribution(StudentT)``); reshaping wrappers (``Independent``) left out."""
    name = type(fn).__name__
    inner = getattr(fn, "base_dist", None)
    if name in _TRANSPARENT and inner is not None:
        return describe(inner)
    if name in _WRAPPERS and inner is not None:
        return f"{name}({describe(inner)})"
    return name


def _finite(value) -> bool:
    return bool(torch.isfinite(value).all()) if torch.is_tensor(value) else True


def _log_density(site) -> torch.Tensor | None:
    try:
        return site["fn"].log_prob(site["value"])
    except (ValueError, RuntimeError):  # outside the support, with validation on
        return None


def nonfinite_start(model, guide, *args, **kwargs) -> str:
    """A phrase naming the first site at which ``guide``'s draw (with ``model`` replayed on it)
    is not finite: its value, or its density under the model ("" when every site is finite).

    Model sites come first, in the model's order (a latent's prior, then the likelihood), then
    the guide's own sites."""
    with torch.no_grad(), poutine.block():
        try:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
                *args, **kwargs)
        except (ValueError, RuntimeError) as error:  # the start fails before any density
            return f"the guide's start fails: {str(error).splitlines()[0]}"
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site["infer"].get("is_auxiliary"):
            continue
        role = "the likelihood" if site["is_observed"] else "its prior"
        if not _finite(site["value"]):
            return (f"site '{name}' ({role} {describe(site['fn'])}) starts at a non-finite "
                    "value; give the guide a finite start there (Pyro's init_to_median or "
                    "init_to_feasible) or a prior with a finite median")
        density = _log_density(site)
        if density is None or not _finite(density):
            return (f"site '{name}' ({role} {describe(site['fn'])}) has no finite "
                    "log-density at the guide's start; check that prior's parameters and "
                    "support" + (" and the data" if site["is_observed"] else ""))
    for name, site in guide_trace.nodes.items():
        if site["type"] == "sample":
            density = _log_density(site)
            if not _finite(site["value"]) or density is None or not _finite(density):
                return (f"the guide's site '{name}' ({describe(site['fn'])}) is not finite "
                        "at its start; check its initial parameters")
    return ""
