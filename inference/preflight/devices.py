"""The device audit of ``lvm-zoo check``: tensors that model or guide code makes without
``device=`` (they land on the CPU when the data are on a GPU), told apart from those torch, Pyro
and the zoo's own plumbing make by the file each call comes from."""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path

import pyro
import torch
from torch.overrides import TorchFunctionMode


class _Created:
    """A tensor made without ``device=`` by model or guide code. ``mixed`` once it (or a tensor
    computed from it, before any ``.to(...)``, ``.cuda()`` or ``.type_as(...)``) meets a tensor
    of other origin, the data's or the parameters': on a GPU that computation would fail."""

    def __init__(self, kind: str, function: str, filename: str, line: int, sites_before: int):
        self.kind, self.function, self.filename, self.line = kind, function, filename, line
        self.sites_before = sites_before
        self.mixed = kind == "numbers"


class _DeviceAudit(TorchFunctionMode):
    """Records tensors made without ``device=`` by model or guide code (not by torch or Pyro):
    on a GPU they would land on the CPU. Tensors computed from them are followed, so
    ``torch.zeros(d).to(x)`` is fine."""

    FACTORIES = frozenset({torch.zeros, torch.ones, torch.empty, torch.full, torch.rand,
                           torch.randn, torch.randint, torch.arange, torch.linspace,
                           torch.logspace, torch.eye, torch.tensor, torch.as_tensor,
                           torch.randperm})
    MOVES = frozenset({torch.Tensor.to, torch.Tensor.cuda, torch.Tensor.type_as,
                       torch.Tensor.copy_})

    def __init__(self, sites_done: Callable[[], int]):
        super().__init__()
        self.sites_done = sites_done  # how many sample sites the traced code has reached
        self.created: list[_Created] = []
        self.followed: dict[int, tuple[torch.Tensor, _Created]] = {}

    @property
    def found(self) -> list[_Created]:
        return [c for c in self.created if c.mixed]

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        if self.followed:
            self._follow(func, args, kwargs, result)
        if func in self.FACTORIES and kwargs.get("device") is None and \
                isinstance(result, torch.Tensor) and not _has_tensor_device(func, args):
            self._record(func, result)
        return result

    def _follow(self, func, args, kwargs, result) -> None:
        if func is torch.Tensor.__getitem__:  # CPU indices may index a CUDA tensor
            args, kwargs = args[:1], {}
        inputs = _tensors((args, kwargs))
        sources = [self.followed[id(t)][1] for t in inputs
                   if id(t) in self.followed and self.followed[id(t)][0] is t]
        if not sources:
            return
        if func in self.MOVES and (func is not torch.Tensor.to or _names_device(args, kwargs)):
            for tensor in _tensors(result):  # sent to a device (.to may return the tensor itself)
                self.followed.pop(id(tensor), None)
            return
        others = [t for t in inputs if t.dim() and not (
            id(t) in self.followed and self.followed[id(t)][0] is t)]
        if others:
            for source in sources:
                source.mixed = True
        for tensor in _tensors(result):
            self.followed[id(tensor)] = (tensor, sources[0])

    def _record(self, func, result: torch.Tensor) -> None:
        caller = sys._getframe(2)
        via_distribution = _is_file(caller.f_code.co_filename, _TORCH_DISTRIBUTIONS)
        frame = caller
        while frame is not None and _library(frame.f_code.co_filename):
            frame = frame.f_back
        if frame is None or (frame is not caller and not via_distribution):
            return
        if not via_distribution and result.dim() == 0:
            return  # a 0-dim CPU tensor mixes with CUDA tensors
        sites_before = self.sites_done()
        created = _Created("numbers" if via_distribution else "factory", func.__name__,
                           frame.f_code.co_filename, frame.f_lineno, sites_before)
        self.created.append(created)
        if not via_distribution:
            self.followed[id(result)] = (result, created)


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for item in value for t in _tensors(item)]
    if isinstance(value, dict):
        return [t for item in value.values() for t in _tensors(item)]
    return []


def _names_device(args, kwargs) -> bool:
    """Whether a ``Tensor.to`` call says where to go (a device, or a tensor to follow)."""
    return "device" in kwargs or any(isinstance(a, (torch.Tensor, torch.device, str))
                                     for a in args[1:])


def _has_tensor_device(func, args) -> bool:
    """``torch.as_tensor(t)`` and ``torch.tensor(t)`` of a tensor keep its device."""
    return func in (torch.as_tensor, torch.tensor) and bool(args) and \
        isinstance(args[0], torch.Tensor)


_TORCH = str(Path(torch.__file__).resolve().parent)
_TORCH_DISTRIBUTIONS = str(Path(torch.__file__).resolve().parent / "distributions")
_PYRO = str(Path(pyro.__file__).resolve().parent)
_STDLIB = tuple(str(Path(p).resolve()) for p in {sysconfig.get_paths()["stdlib"],
                                                  sysconfig.get_paths()["platstdlib"]})
_HERE = os.path.join(str(Path(__file__).resolve().parent), "")  # inference/preflight/, all of it
_ZOO_DECLARE = str(Path(__file__).resolve().parents[2] / "zoo" / "declare.py")


@functools.lru_cache(maxsize=1024)
def _resolved(filename: str) -> str:
    try:
        return str(Path(filename).resolve())
    except (OSError, RuntimeError):
        return filename


def _is_file(filename: str, folder: str) -> bool:
    return _resolved(filename).startswith(folder)


def _library(filename: str) -> bool:
    """torch, Pyro, the standard library and the zoo's own plumbing: not model code."""
    if filename.startswith("<") and filename != "<string>":
        return True  # <frozen ...>, <built-in>; code run from a string counts as the user's
    resolved = _resolved(filename)
    return resolved.startswith((_TORCH, _PYRO, *_STDLIB, _HERE)) or resolved == _ZOO_DECLARE

