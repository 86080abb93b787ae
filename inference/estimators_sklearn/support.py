"""Small helpers of the scikit-learn estimators: the model a reference names, seeds and the
caller's random streams, numpy out, the SVI state a fit leaves, a run's config and options.

Split out of :mod:`.base`, which re-exports every name here.
"""

from __future__ import annotations

import contextlib
import numbers
import random
import re
from collections.abc import Iterator
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions

from inference import strategies
from inference.catalog import get_model
from inference.results import FitResult
from inference.runs import check_svi_checkpoint, load_checkpoint
from inference.svi import ELBOS
from zoo.errors import InputError
from zoo.registry import ModelSpec

NEVER = 2**62  # a stop_window no history reaches: partial_fit's SVI never stops by itself
_BEST_KEYS = ("best_step", "best_window", "best_params")


class DeviceOption(StrOptions):
    """scikit-learn's constraint for ``device``: ``"auto"``, ``"cpu"``, ``"cuda"``,
    ``"cuda:N"`` or a ``torch.device`` of type cpu or cuda (whether CUDA is present is checked
    at fit time, by :func:`resolve_device`)."""

    def __init__(self):
        super().__init__({"auto", "cpu", "cuda"})

    def is_satisfied_by(self, val) -> bool:
        if isinstance(val, torch.device):
            return val.type in ("cpu", "cuda")
        return isinstance(val, str) and re.fullmatch(r"auto|cpu|cuda(:\d+)?", val) is not None

    def __str__(self) -> str:
        return ("a str among {'auto', 'cpu', 'cuda'} or 'cuda:N' (N a GPU index), or a "
                "torch.device of type 'cpu' or 'cuda'")


class StrategyOption(StrOptions):
    """scikit-learn's constraint for an estimator's ``inference``: the name of a registered
    strategy that applies to the model ``model`` (:func:`inference.strategies.applicable`),
    asked of the registry whenever a value is checked, so that a strategy registered later (a
    plugin, a test file) is accepted and one whose ``applies`` refuses the model is not."""

    def __init__(self, model: str):  # no StrOptions.__init__: the options are the registry's
        self.hidden = False
        self.type = str
        self.deprecated: set = set()
        self.model = model

    @property
    def options(self) -> dict[str, None]:
        """The applicable strategies' names, in the registry's order."""
        return dict.fromkeys(strategies.applicable(model_spec(self.model)))


def resolve_device(device, owner: str = "estimator") -> torch.device:
    """The ``torch.device`` an estimator's ``device`` parameter (already validated by
    :class:`DeviceOption`) names: ``"auto"`` is CUDA when present, else the CPU; CUDA asked
    for where there is none, or a GPU index past the last, is an :class:`InputError`."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = torch.device(device)
    if chosen.type != "cuda":
        return chosen
    if not torch.cuda.is_available():
        raise InputError(f"{owner}(device={str(device)!r}): no CUDA device is available here "
                         "(torch.cuda.is_available() is False); use device='cpu' or 'auto'")
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise InputError(f"{owner}(device={str(device)!r}): this machine has {count} CUDA "
                         f"device(s), cuda:0 to cuda:{count - 1}; pick one of them or 'cuda'")
    return chosen


# Parameters every estimator takes the same way (each class adds its own).
COMMON_CONSTRAINTS: dict[str, list] = {
    "guide": [str, None],
    "elbo": [StrOptions(set(ELBOS)), None],
    "steps": [Interval(Integral, 1, None, closed="left"), None],
    "lr": [Interval(Real, 0.0, None, closed="neither"), None],
    "batch_size": [Interval(Integral, 1, None, closed="left"), None],
    "random_state": ["random_state"],
    "device": [DeviceOption()],
}


def _svi_strategy_module():
    """:mod:`inference.strategies.svi`, imported only after the registry has loaded every
    built-in strategy: importing it first would register SVI ahead of EM and so change the
    default strategy (``strategies.get(None, spec)``) of every model in the process."""
    strategies.strategies()
    from inference.strategies import svi

    return svi


_FILE_MODELS: dict[str, str] = {}  # "path/file.py:NAME" -> NAME, once the file is imported


def is_file_reference(reference: str) -> bool:
    return ":" in reference and reference.split(":", 1)[0].endswith(".py")


def model_spec(reference: str) -> ModelSpec:
    """The catalog's spec for a registry name or ``path/file.py:NAME`` (a file is imported
    once per process; later look-ups use the name it registered)."""
    name = _FILE_MODELS.get(reference)
    if name is not None:
        with contextlib.suppress(InputError):
            return get_model(name)
    spec = get_model(reference)
    if is_file_reference(reference):
        _FILE_MODELS[reference] = spec.name
    return spec


def seed_from(random_state) -> int:
    """One integer seed: an int ``random_state`` as it is, else a draw from it (None: numpy's
    global stream, as scikit-learn)."""
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state)
    return int(check_random_state(random_state).randint(np.iinfo(np.int32).max))


@contextlib.contextmanager
def kept_random_state(device: torch.device) -> Iterator[None]:
    """The caller's Python, numpy and torch streams are as they were afterwards (the zoo's
    fits call ``pyro.set_rng_seed``, which seeds all three)."""
    # the legacy global stream is the one pyro.set_rng_seed seeds, so it is the one to restore
    python_state, numpy_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)  # noqa: NPY002


def as_numpy(tensor: torch.Tensor) -> np.ndarray:
    """A float64 (or integer) numpy array of a tensor, on the CPU."""
    array = tensor.detach().cpu().numpy()
    return array.astype(np.float64) if np.issubdtype(array.dtype, np.floating) else array


def svi_state(result: FitResult, checkpoint: Path, kept: str | None = None) -> dict | None:
    """The SVI checkpoint of the state ``result`` returned (its best restart's file), with the
    best-window bookkeeping removed (a continuation starts its own), or None."""
    restart = int(result.info.get("best_restart", 0) or 0)
    path = _svi_strategy_module().restart_checkpoint(checkpoint, restart)
    if path is None or not Path(path).is_file():
        return None
    state = check_svi_checkpoint(path, load_checkpoint(path))
    if (kept or result.info.get("kept")) == "best" and "best_params" in state:
        state["params"] = state["best_params"]  # the fit returned the best window's state
    for key in _BEST_KEYS:
        state.pop(key, None)
    return state


def config_from_fields(spec: ModelSpec, fields: dict):
    """The config dataclass from its fields (lists from JSON become tuples)."""
    return spec.config_class(**{k: tuple(v) if isinstance(v, list) else v
                                for k, v in fields.items()})


def strategy_options(run: dict) -> dict[str, Any]:
    """A run's strategy options (``run.json``'s ``options``)."""
    options = run.get("options")
    return dict(options) if isinstance(options, dict) else {}
