"""What ``lvm-zoo check`` reports: each :class:`Problem` found, and the :class:`CheckReport` that
gathers them for one model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    """One thing that would break a fit: ``site`` (a sample site or a parameter), ``what`` is
    wrong, the ``fix``, and the ``guide`` it was found in (``None``: the model)."""

    kind: str
    site: str
    what: str
    fix: str
    guide: str | None = None

    def line(self) -> str:
        where = f" (guide {self.guide})" if self.guide else ""
        return f"{self.kind}: site '{self.site}'{where}: {self.what}; {self.fix}"


@dataclass
class CheckReport:
    """What :func:`check` found; ``ok`` when nothing."""

    model: str
    data: str
    rows: int
    device: str
    guides: tuple[str, ...]
    sites: dict[str, tuple[str, ...]]
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # not problems: what the fit will do

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        sites = "; ".join(f"{kind} {', '.join(names) or '-'}" for kind, names in self.sites.items())
        guides = ", ".join(self.guides) or "none"
        if self.ok:
            return "\n".join(
                [f"ok: model '{self.model}' and its guides ({guides}) run on {self.rows} rows "
                 f"of {self.data} on {self.device}, also subsampled ({sites})"]
                + [f"note: {note}" for note in self.notes])
        return (f"{len(self.problems)} problem(s) in model '{self.model}' on {self.rows} rows of "
                f"{self.data}")

    def to_dict(self) -> dict:
        return {"model": self.model, "data": self.data, "rows": self.rows, "device": self.device,
                "guides": list(self.guides), "sites": {k: list(v) for k, v in self.sites.items()},
                "ok": self.ok, "problems": [dataclasses.asdict(p) for p in self.problems],
                "notes": list(self.notes)}
