"""SVI's checkpoints: when a fit saves, what the file must hold, and how a resume reads it.

A :class:`Checkpointer` writes ``checkpoint.pt`` atomically (:func:`inference.runs.save_checkpoint`)
every ``every`` steps when set, else every ``seconds`` of training; under a process group only
rank 0 writes, with every rank's random streams in the file, and every rank reads it back on a
resume. A file that does not fit the fit (another model size, seed, world size, or not an SVI
checkpoint at all) is refused with one :class:`~zoo.errors.InputError` that names the fix.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from inference import interrupt
from inference.distributed import Group
from inference.runs import check_svi_checkpoint, load_checkpoint, save_checkpoint
from inference.svi_rows import checkpoint_exists
from zoo.errors import InputError

CHECKPOINT_SECONDS = 60.0  # a long fit with a checkpoint path saves at least this often
REQUIRED_KEYS = ("step", "history", "params", "optimizer", "rng")


class Checkpointer:
    """One fit's checkpoint file (``path=None``: none). ``seed`` and the world size are written
    into it and checked on a resume; ``restart`` only names the restart in the resume line."""

    def __init__(self, path: str | Path | None = None, *, every: int = 0,
                 seconds: float = CHECKPOINT_SECONDS, group: Group | None = None, seed: int = 0,
                 restart: int | None = None):
        self.path, self.every, self.seconds, self.group = path, every, seconds, group
        self.seed, self.restart = seed, restart
        self.rank, self.world = (group.rank, group.world_size) if group else (0, 1)
        self.saved_step: int | None = None  # the step the file holds, written by this fit
        self.last = time.perf_counter()

    @property
    def enabled(self) -> bool:
        return self.path is not None

    def clock(self) -> bool:
        """Whether this rank's clock says a time-based checkpoint is due (a process group
        or-s the ranks' clocks, so that every rank saves at the same step)."""
        return (self.path is not None and not self.every and self.seconds > 0
                and time.perf_counter() - self.last >= self.seconds)

    def due(self, step: int, agreed: bool | None = None) -> bool:
        """Whether to save after ``step`` steps; ``agreed``: the ranks' reduced clock."""
        if self.path is None:
            return False
        if self.every:
            return step % self.every == 0
        return self.clock() if agreed is None else agreed

    def save(self, state: dict, streams: dict) -> None:
        """Write ``state`` with this rank's random ``streams`` (and every rank's under a group:
        a collective, so every rank calls it)."""
        every_rank = self.group.gather(streams) if self.group is not None else None
        if self.rank == 0:
            with interrupt.deferred():  # a signal meanwhile waits for the file to be whole
                self._write(state, streams, every_rank)

    def _write(self, state: dict, streams: dict, every_rank: list | None) -> None:
        save_checkpoint(self.path, {
            **state, "seed": self.seed, "world_size": self.world, **streams,
            **({"rank_streams": every_rank} if every_rank is not None else {})})

    def saved(self, step: int) -> None:
        self.saved_step, self.last = step, time.perf_counter()

    def exists(self) -> bool:
        return self.path is not None and checkpoint_exists(self.path, self.group)

    def load(self, names: list[str], unconstrained: dict) -> tuple[dict, dict]:
        """The checkpoint's state and this rank's random streams, checked against a fit of the
        parameters ``names`` (their current values in ``unconstrained``)."""
        path, state = self.path, load_checkpoint(self.path)
        missing = [k for k in REQUIRED_KEYS if k not in state]
        if missing:
            raise InputError(f"checkpoint {path} lacks {', '.join(missing)}; it is not an SVI "
                             "checkpoint of lvm-zoo: fit again into a new --out folder")
        check_svi_checkpoint(path, state)  # step, history, finite parameters
        _check_world(path, int(state.get("world_size", 1)), self.world)
        for key in ("params", "best_params"):
            if key in state and sorted(state[key]) != names:
                raise InputError(f"checkpoint {path} holds parameters {sorted(state[key])}, "
                                 f"not this model and guide's {names}; use a new --out folder")
        if int(state.get("seed", self.seed)) != self.seed:
            raise InputError(f"checkpoint {path} was written by a fit with seed "
                             f"{state['seed']}, not {self.seed}; resume with the same --seed, "
                             "or use a new --out folder")
        shapes = [f"{n} {tuple(state['params'][n].shape)} (this fit: "
                  f"{tuple(unconstrained[n].shape)})" for n in names
                  if state["params"][n].shape != unconstrained[n].shape]
        if shapes:
            raise InputError(f"checkpoint {path} holds parameters of other shapes: "
                             f"{'; '.join(shapes)} — it was written for another model size; "
                             "resume with the same options, or use a new --out folder")
        return state, self._rank_streams(state)

    def _rank_streams(self, state: dict) -> dict:
        """The random streams of this rank in a checkpoint (the top level alone)."""
        if self.world == 1:
            return state
        streams = state.get("rank_streams")
        if not isinstance(streams, list) or len(streams) != self.world:
            raise InputError(f"checkpoint {self.path} lacks the random streams of its "
                             f"{self.world} processes; use a new --out folder")
        return streams[self.rank]

    def announce(self, step: int, steps: int, finished: bool) -> None:
        """One line on stderr (rank 0): where a resumed fit picks up."""
        if self.rank:
            return
        who = "" if self.restart is None else f" restart {self.restart}"
        if finished:
            line = (f"lvm-zoo:{who or ' the fit'} had ended at step {step} of {steps} "
                    f"(checkpoint {self.path}); reusing it")
        else:
            line = f"lvm-zoo: resuming{who} from step {step} of {steps} (checkpoint {self.path})"
        print(line, file=sys.stderr, flush=True)

    def kept_message(self) -> str:
        """What a divergence message says of the file on disk."""
        if self.path is None:
            return ""
        if self.saved_step is None:
            return f"; no checkpoint of this fit was written before it ({self.path})"
        return (f"; the last good checkpoint is {self.path} (step {self.saved_step}, written "
                "before the bad update; --resume continues from it)")


def _check_world(path, written: int, world: int) -> None:
    if written != world:
        plural = "es" if written > 1 else ""
        raise InputError(f"checkpoint {path} was written by a fit of world size {written} "
                         f"({written} process{plural}), and this fit has world size {world}; "
                         f"resume it with {written} process{plural} (torchrun "
                         "--nproc-per-node), or use a new --out folder")


def history_tensor(history: list[float]) -> torch.Tensor:
    return torch.tensor(history, dtype=torch.float64)
