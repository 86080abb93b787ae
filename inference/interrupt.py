"""Signals are faults like any other: SIGINT (Ctrl-C) and SIGTERM stop a long fit at its next
step boundary with its state saved, one line said, and exit status 128 + the signal.

The command line runs every command inside :func:`handled`, which installs one handler for
both signals. What the handler does depends on where the process is:

- inside a loop that can save its state (:func:`listening`: SVI, EM, online EM with a
  checkpoint path, alone), the first signal is only recorded; the loop sees it
  (:func:`pending`) after the step it is in, writes its checkpoint and raises
  :class:`Interrupted` naming the file;
- inside a write (:func:`deferred`: a checkpoint being saved), any signal waits until the file
  is whole and renamed into place, so that no second Ctrl-C leaves a torn file;
- anywhere else, or on a second signal while a loop is finishing its step, the handler raises
  :class:`Interrupted` at once (the files already written are whole: every write is atomic).

:class:`Interrupted` is a ``KeyboardInterrupt``, so that code which cleans up on Ctrl-C
(the run folder's staging, the lock) cleans up on SIGTERM too; :meth:`Interrupted.line` is
the one line the command line prints, with the command that resumes the fit.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A fit stopped by ``signum``; ``checkpoint``: the file its state was saved to (or
    ``None``), ``where``: how far it had come ("step 120 of 600"). The run folder fills in
    ``folder`` and whether the fit was ``replacing`` an earlier run (``--overwrite``)."""

    def __init__(self, signum: int, *, checkpoint: Path | str | None = None,
                 where: str | None = None):
        super().__init__(signal.Signals(signum).name)
        self.signum, self.where = int(signum), where
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.folder: Path | None = None
        self.replacing = False
        self.resumable = False

    @property
    def status(self) -> int:
        """The exit status a shell gives a process ended by the signal: 130 (SIGINT), 143
        (SIGTERM)."""
        return 128 + self.signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    def line(self, argv: Sequence[str] | None) -> str:
        """The one line on stderr: what stopped, where the state is, how to resume."""
        where = f" at {self.where}" if self.where else ""
        head = f"lvm-zoo: interrupted ({self.name}){where}"
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world > 1:  # torchrun stops every worker when one fails (or it is stopped)
            head = (f"lvm-zoo: rank {os.environ.get('RANK', '?')} of {world} interrupted "
                    f"({self.name}){where}: torchrun stops every worker when one fails or "
                    "torchrun is stopped (its report names the worker)")
        if world > 1 and os.environ.get("RANK", "0") != "0":
            return head  # rank 0 alone writes, and says what was saved
        if self.replacing:
            return (f"{head}; --overwrite had not finished, so the earlier run in "
                    f"{self.folder} is kept as it was (run the command again to replace it)")
        if not self.resumable:
            return f"{head}; nothing was saved to resume from"
        saved = (f"checkpoint saved to {self.checkpoint}" if self.checkpoint is not None
                 else f"the training so far is in {self.folder}")
        command = resume_command(argv, self.folder) if argv is not None else None
        tail = f"; resume with: {command}" if command else "; resume it with --resume"
        return f"{head}; {saved}{tail}"


def resume_command(argv: Sequence[str], folder: Path | None) -> str | None:
    """``argv`` (the command line after ``lvm-zoo``) as the command that resumes the fit in
    ``folder``: ``--overwrite`` dropped, ``--out`` set to the folder, ``--resume`` added."""
    if not argv or argv[0] != "fit":
        return None
    words, skip = [], False
    for word in argv:
        if skip:
            skip = False
            continue
        if word in ("--out", "-o"):
            skip = True
            continue
        if word.startswith("--out=") or word in ("--overwrite", "--resume"):
            continue
        words.append(word)
    if folder is not None:
        words += ["--out", str(folder)]
    return shlex.join(["lvm-zoo", *words, "--resume"])


class _State:
    received: int | None = None  # the first signal a listening loop has not acted on yet
    listening = 0  # loops that save at their next step boundary
    deferring = 0  # writes that must end before a signal acts


_STATE = _State()


def _handler(signum, frame) -> None:
    state = _STATE
    if state.deferring:
        if state.received is None:
            state.received = signum
        return
    if state.listening and state.received is None:
        state.received = signum  # the loop saves after this step and raises
        return
    first = state.received or signum
    state.received = None
    raise Interrupted(first)


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` (or wait for a step boundary) within;
    the earlier handlers are back afterwards. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # a signal the process was started ignoring (SIGINT of a background job, nohup) stays so
    earlier = {signum: signal.getsignal(signum) for signum in SIGNALS
               if signal.getsignal(signum) is not signal.SIG_IGN}
    for signum in earlier:
        signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, handler in earlier.items():
            signal.signal(signum, handler)
        _STATE.received, _STATE.listening, _STATE.deferring = None, 0, 0


def installed() -> bool:
    return any(signal.getsignal(signum) is _handler for signum in SIGNALS)


@contextlib.contextmanager
def listening(enabled: bool = True) -> Iterator[None]:
    """Within it a first signal waits for the loop to call :func:`stop_if_pending` (its step
    boundary); ``enabled=False`` (nothing to save to, or ranks that must stop together) leaves
    signals acting at once."""
    if not enabled or not installed():
        yield
        return
    _STATE.listening += 1
    try:
        yield
    finally:
        _STATE.listening -= 1
    if not _STATE.listening and _STATE.received is not None:
        signum, _STATE.received = _STATE.received, None
        raise Interrupted(signum)


def pending() -> int | None:
    """The signal a listening loop has to act on, if any."""
    return _STATE.received


def take() -> int:
    """The pending signal, cleared (the loop raises :class:`Interrupted` with it)."""
    signum, _STATE.received = _STATE.received, None
    return signum


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals wait until the block (a checkpoint's write) has ended; one that came meanwhile
    then acts as it would have."""
    _STATE.deferring += 1
    try:
        yield
    finally:
        _STATE.deferring -= 1
    if not _STATE.deferring and not _STATE.listening and _STATE.received is not None:
        signum, _STATE.received = _STATE.received, None
        raise Interrupted(signum)


def save_state(path: Path | str, kind: str, settings: dict, state: dict) -> None:
    """Write a loop's ``state`` (tensors, numbers, lists and dicts of them) to ``path``
    atomically, with the loop's ``kind`` and the ``settings`` a resume must share; signals
    wait for the file to be whole."""
    from inference.runs import save_checkpoint

    with deferred():
        save_checkpoint(path, {"kind": kind, "settings": settings, **state})


def load_state(path: Path | str, kind: str, settings: dict, *, device=None,
               streams: tuple[str, ...] = ()) -> dict:
    """What :func:`save_state` wrote to ``path``, checked: a file of another loop, or of a fit
    under other ``settings``, is an InputError naming the difference and the fix. Its tensors
    go to ``device`` (the data's), but the random ``streams``' states (CPU byte tensors)."""
    from torch.utils import _pytree as pytree

    from inference.runs import load_checkpoint
    from zoo.errors import InputError

    state = load_checkpoint(path)
    if state.get("kind") != kind:
        raise InputError(f"checkpoint {path} was not written by {kind} (it holds "
                         f"{state.get('kind') or 'another kind of fit'}); resume with the "
                         "strategy that wrote it, or fit into a new --out folder")
    stored = state.get("settings")
    stored = stored if isinstance(stored, dict) else {}
    differ = [f"{key} {stored.get(key)!r}, not {value!r}" for key, value in settings.items()
              if stored.get(key) != value]
    if differ:
        raise InputError(f"checkpoint {path} was written by a fit with {'; '.join(differ)}; "
                         "resume with the same options, or fit into a new --out folder")
    if device is None:
        return state
    return {key: value if key in streams else pytree.tree_map(
        lambda leaf: leaf.to(device) if hasattr(leaf, "to") else leaf, value)
        for key, value in state.items()}
