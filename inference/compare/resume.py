"""A comparison that was stopped part way (SIGINT, SIGTERM, a crash) continues with
``compare ... --out DIR --resume``: only the fits that did not finish run again, and the
finished comparison equals an uninterrupted one.

Each fit of the grid (a cell at one seed), once fitted and judged, is kept in
``DIR/.compare-cells/`` (:data:`CELLS_DIR`): ``<slug>-seed<s>.json`` (its result but the
tensors, the yardstick's metrics and the comparison's measures so far, with the record the
table is built from) and ``<slug>-seed<s>.pt`` (its parameters, read with
``weights_only=True``: nothing is unpickled), both written atomically and together (a signal
waits until both are whole). ``options.json`` beside them holds the comparison's options
(:func:`fingerprint`); ``--resume`` under other options is refused in one line naming the
option that differs. Everything after the fits (posterior draws, label matching, the run
folders, tables, figures, report) is computed from the kept fits as it would have been, and
the folder goes once the comparison is in place. The staging folder of the comparison itself
(:func:`inference.run_folder.staged`) is per process and removed when a run fails, so the
kept fits live beside it, not in it.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import torch

from inference import interrupt
from inference.compare.fits import Fit
from inference.fitting import Fitted
from inference.results import FitResult
from inference.runs import load_checkpoint, read_json, save_checkpoint, write_json
from zoo.errors import InputError

CELLS_DIR = ".compare-cells"
OPTIONS_FILE = "options.json"
RESULT_FIELDS = ("model", "inference", "guide", "history", "seconds", "steps", "converged",
                 "device", "seed", "info")


def _plain(value):
    """``value`` as JSON gives it back (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(value, default=str))


def fingerprint(*, seeds: int, seed: int, cells: list, reference, gap_rows: int, draws: int,
                iwae_samples, iwae_rows, nuts: dict, request, options: dict, config,
                rows: tuple) -> dict:
    """The options a resumed comparison must share, keyed by the flag's name: the grid
    (``strategies``: the cells' slugs), the seeds, the yardstick, the data request, the
    model's and strategies' options as given, the resolved config and the data's shape."""
    data = {k: v for k, v in request.to_dict().items() if k != "seed"}
    data["data"] = data.pop("name", None)
    given = {"seeds": seeds, "seed": seed, "strategies": [c.slug for c in cells],
             "reference": reference, "gap_rows": gap_rows, "draws": draws,
             "iwae_samples": iwae_samples, "iwae_rows": iwae_rows,
             **{f"nuts_{k}": v for k, v in nuts.items()},
             **data, **options}
    given = {k: v for k, v in given.items() if v is not None}
    return _plain({**given, "config": dataclasses.asdict(config), "data shape": list(rows)})


def _flag(name: str) -> str:
    return name if " " in name or name == "config" else "--" + name.replace("_", "-")


def _shown(value) -> str:
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class CellStore:
    """The finished fits of one comparison folder (``folder/.compare-cells``)."""

    def __init__(self, compare_dir: Path, options: dict):
        self.folder = Path(compare_dir) / CELLS_DIR
        self.options = options
        self.kept = 0  # fits kept in the folder (loaded or saved by this process)

    def exists(self) -> bool:
        return (self.folder / OPTIONS_FILE).is_file()

    def finished(self) -> int:
        return len(list(self.folder.glob("*-seed*.json"))) if self.folder.is_dir() else 0

    def check(self) -> None:
        """The kept fits were made under this comparison's options; else an InputError
        naming the first option that differs."""
        path = self.folder / OPTIONS_FILE
        stored = read_json(path, dict)
        for key in dict.fromkeys([*stored, *self.options]):
            was, now = stored.get(key), self.options.get(key)
            if was == now:
                continue
            flag = _flag(key)
            differs = (f"without {flag}, not with {flag} {_shown(now)}" if was is None else
                       f"with {flag} {_shown(was)}, not without it" if now is None else
                       f"with {flag} {_shown(was)}, not {_shown(now)}")
            raise InputError(f"--resume: the comparison stopped in {self.folder.parent} was "
                             f"run {differs}; resume it with the same options, or start it "
                             "again with --overwrite (or into another --out)")

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _name(self, fit: Fit | tuple) -> str:
        slug, seed = (fit.cell.slug, fit.seed) if isinstance(fit, Fit) else fit
        return f"{slug}-seed{seed}"

    def save(self, item: Fit) -> None:
        """Keep ``item`` (fitted and judged): its tensors, then its record; a signal waits."""
        result = item.result
        name = self._name(item)
        with interrupt.deferred():
            if not self.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
                write_json(self.folder / OPTIONS_FILE, self.options)
            save_checkpoint(self.folder / f"{name}.pt", {
                "params": {k: v.detach().cpu() for k, v in result.params.items()},
                "guide_params": {k: v.detach().cpu() for k, v in result.guide_params.items()},
                "snapshots": {str(i): {k: v.detach().cpu() for k, v in p.items()}
                              for i, p in result.snapshots.items()}})
            write_json(self.folder / f"{name}.json", {
                "cell": item.cell.slug, "seed": item.seed,
                "result": {k: getattr(result, k) for k in RESULT_FIELDS},
                "metrics": item.fitted.metrics, "measures": item.measures,
                "record": item.record})
        self.kept += 1

    def load(self, cell, settled, loaded, config) -> Fit | None:
        """The kept fit of ``cell`` at ``settled.seed`` (None: not finished), as it was when
        it was saved; a damaged file is an InputError naming it."""
        name = self._name((cell.slug, settled.seed))
        path = self.folder / f"{name}.json"
        if not path.is_file():
            return None
        fix = f"remove it (and {name}.pt) and --resume again to fit that cell anew"
        saved = read_json(path, dict)
        result = saved.get("result")
        if (saved.get("cell") != cell.slug or saved.get("seed") != settled.seed
                or not isinstance(result, dict) or any(k not in result for k in RESULT_FIELDS)
                or not isinstance(saved.get("metrics"), dict)
                or not isinstance(saved.get("measures"), dict)):
            raise InputError(f"{path} is not the kept fit of {cell.slug} at seed "
                             f"{settled.seed} (it is damaged or not written by lvm-zoo); {fix}")
        tensors = load_checkpoint(self.folder / f"{name}.pt")
        groups = [tensors.get("params"), tensors.get("guide_params"),
                  *(tensors.get("snapshots") or {}).values()]
        if not all(isinstance(g, dict) and all(isinstance(v, torch.Tensor) and
                                               v.is_floating_point() for v in g.values())
                   for g in groups):
            raise InputError(f"{self.folder / f'{name}.pt'} does not hold the fit's "
                             f"floating-point parameters; {fix}")
        device = loaded.train.device
        on = lambda group: {k: v.to(device) for k, v in group.items()}  # noqa: E731
        snapshots = {int(i): on(p) for i, p in (tensors.get("snapshots") or {}).items()
                     if re.fullmatch(r"-?\d+", i)}
        fitted = Fitted(plan=settled, config=config, data=loaded, result=FitResult(
            params=on(tensors["params"]), guide_params=on(tensors["guide_params"]),
            snapshots=snapshots, **{k: result[k] for k in RESULT_FIELDS}),
            metrics=saved["metrics"])
        item = Fit(cell, settled.seed, fitted, baseline=settled.strategy.baseline)
        item.add(**saved["measures"])
        self.kept += 1
        return item


class ComparisonInterrupted(interrupt.Interrupted):
    """A comparison stopped by a signal after ``kept`` of its ``total`` fits were kept in
    ``folder``: its line names the command that resumes it."""

    def __init__(self, stop: interrupt.Interrupted, folder: Path, kept: int, total: int):
        super().__init__(stop.signum, where=f"fit {kept + 1} of {total}" if kept < total
                         else "its tables and figures")
        self.folder, self.kept, self.total = Path(folder), kept, total
        self.resumable = True

    def line(self, argv) -> str:
        head = f"lvm-zoo: interrupted ({self.name}) at {self.where}"
        saved = (f"{self.kept} finished fit{'s are' if self.kept != 1 else ' is'} kept in "
                 f"{self.folder / CELLS_DIR}")
        command = None
        if argv and argv[0] == "compare":  # the fit's resume command, for compare
            command = interrupt.resume_command(["fit", *argv[1:]], self.folder)
            command = command and command.replace("lvm-zoo fit", "lvm-zoo compare", 1)
        tail = (f"; resume with: {command}" if command else
                f"; resume it with --out {self.folder} --resume")
        return f"{head}; {saved}{tail}"
