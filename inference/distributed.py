"""Data parallelism on PyTorch's own ``torch.distributed``: one process per device, launched by
``torchrun`` (single- or multi-node), gloo on CPUs and NCCL on CUDA.

A fit under ``torchrun`` finds its process group here (:func:`from_environment` reads what
``torchrun`` puts in the environment: ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, the rendezvous
address) and every strategy asks :func:`current`. A :class:`Group` knows the three collective
operations the strategies need, all on tensors (nothing is pickled between the processes):

- :meth:`Group.gather`: every rank's value of a tree of tensors (a ``NamedTuple`` of
  statistics, a tuple, a dict), in rank order, on every rank. EM folds the gathered E-step
  statistics with the model's ``combine`` in that order, so every rank holds bit-identical
  statistics and runs an identical M-step.
- :meth:`Group.sum`: an all-reduce (sum) of one tensor, e.g. the gradients of data-parallel SVI.
- :meth:`Group.broadcast`: a dict of tensors from one rank (the start EM computes once); the
  names, shapes and dtypes travel as a JSON header in a byte tensor.

Rows are sharded in contiguous blocks (:func:`shard`): rank ``r`` of ``W`` holds rows
``[r N / W, (r + 1) N / W)``.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.utils import _pytree as pytree

from zoo.errors import InputError


class WorkerLost(RuntimeError):
    """A collective failed: another worker died, erred or stopped while this one waited for
    it (or did not come within :func:`collective_timeout`). The command line says it in one
    line, beside the failed worker's own line and torchrun's report."""


def _collective(method):
    """``method`` (a collective of :class:`Group`) with its failure as one
    :class:`WorkerLost`, naming this rank and what torchrun's report holds."""

    @functools.wraps(method)
    def wrapped(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except RuntimeError as error:  # gloo / NCCL: a peer gone, a timeout
            detail = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
            raise WorkerLost(
                f"rank {self.rank} of {self.world_size} stopped: another torchrun worker "
                f"died, failed or stopped while this one waited for it ({detail}); the worker "
                "that failed first said why above, and torchrun's report names it") from None

    return wrapped


@dataclass(frozen=True)
class Group:
    """The default process group as the strategies see it."""

    rank: int
    world_size: int
    backend: str  # "gloo" or "nccl"
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run folder and the checkpoints."""
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        """Where collective buffers live: the rank's GPU for NCCL, the CPU for gloo."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else \
            torch.device("cpu")

    def describe(self) -> dict:
        """What a run record says about the processes that made it."""
        return {"world_size": self.world_size, "backend": self.backend}

    @_collective
    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of ``tensor`` over all ranks (a new tensor, on ``tensor``'s device)."""
        buffer = tensor.detach().to(self.device, copy=True)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        return buffer.to(tensor.device)

    @_collective
    def gather(self, tree):
        """Every rank's ``tree`` (same structure and shapes on every rank), in rank order."""
        leaves, spec = pytree.tree_flatten(tree)
        flat = _flatten(leaves, self.device)
        parts = [torch.empty_like(flat) for _ in range(self.world_size)]
        dist.all_gather(parts, flat)
        return [pytree.tree_unflatten(_unflatten(part, leaves), spec) for part in parts]

    @_collective
    def broadcast(self, values: dict[str, torch.Tensor] | None, *, src: int = 0,
                  like: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``values`` of rank ``src`` on every rank (other ranks pass ``None``), on ``like``'s
        device (default: where ``src``'s values were)."""
        if self.rank == src:
            header = json.dumps({name: [list(v.shape), str(v.dtype).removeprefix("torch.")]
                                 for name, v in values.items()}).encode()
            size = torch.tensor([len(header)], dtype=torch.int64, device=self.device)
        else:
            size = torch.zeros(1, dtype=torch.int64, device=self.device)
        dist.broadcast(size, src)
        data = (torch.tensor(list(header), dtype=torch.uint8, device=self.device)
                if self.rank == src else torch.empty(int(size), dtype=torch.uint8,
                                                     device=self.device))
        dist.broadcast(data, src)
        layout = json.loads(bytes(data.cpu().tolist()).decode())
        templates = [torch.empty(shape, dtype=getattr(torch, dtype))
                     for shape, dtype in layout.values()]
        if self.rank == src:
            flat = _flatten([values[name] for name in layout], self.device)
        else:
            flat = torch.empty(sum(t.numel() for t in templates), dtype=torch.float64,
                               device=self.device)
        dist.broadcast(flat, src)
        out = dict(zip(layout, _unflatten(flat, templates), strict=True))
        target = like.device if like is not None else (
            next(iter(values.values())).device if values else self.device)
        return {name: value.to(target) for name, value in out.items()}

    @_collective
    def barrier(self) -> None:
        """Every rank waits here until all have come (NCCL: on this rank's GPU, named, so
        that NCCL need not guess the device)."""
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.local_rank])
        else:
            dist.barrier()


_ALONE: list[bool] = []


@contextmanager
def alone():
    """Within it :func:`current` is ``None``: rank 0 writes the run folder (figures, posterior
    draws) by itself after the others are done."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def current() -> Group | None:
    """The process group of this process, or ``None`` when it runs alone (world size 1)."""
    if _ALONE or not (dist.is_available() and dist.is_initialized()):
        return None
    world = dist.get_world_size()
    if world == 1:
        return None
    return Group(dist.get_rank(), world, dist.get_backend(),
                 int(os.environ.get("LOCAL_RANK", dist.get_rank())))


def launched() -> bool:
    """Whether ``torchrun`` (or another launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def from_environment(device: str = "auto") -> Group | None:
    """Join the process group ``torchrun`` describes in the environment (once per process):
    NCCL when this fit runs on CUDA, gloo on the CPU. ``None`` outside ``torchrun``."""
    group = current()
    if group is not None or not launched():
        return group
    if not dist.is_available():
        raise InputError("this PyTorch build has no torch.distributed; run without torchrun")
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        if local_rank >= torch.cuda.device_count():
            raise InputError(f"torchrun started local rank {local_rank} but this node has "
                             f"{torch.cuda.device_count()} CUDA device(s); give "
                             "--nproc-per-node at most that many, or --device cpu")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", timeout=collective_timeout())
    return current()


def collective_timeout() -> datetime.timedelta:
    """How long a rank waits in a collective for the others before it gives up with an error:
    ``LVM_ZOO_COLLECTIVE_TIMEOUT`` seconds (default 120). A rank that died or erred leaves the
    others waiting; torchrun's agent stops them when a worker fails, and this bounds the wait
    when it does not (a rank that finished early, say)."""
    raw = os.environ.get("LVM_ZOO_COLLECTIVE_TIMEOUT", "120")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds > 0 or seconds != seconds or seconds == float("inf"):
        raise InputError(f"LVM_ZOO_COLLECTIVE_TIMEOUT={raw!r} must be a positive number of "
                         "seconds, e.g. 120")
    return datetime.timedelta(seconds=seconds)


def _digest(value) -> int:
    """A 52-bit hash of ``value``'s canonical JSON (stable across processes, unlike hash()),
    exact in the float64 vectors the collectives carry."""
    text = json.dumps(value, sort_keys=True, default=str).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 12


def data_fingerprint(x: torch.Tensor, rows: int = 64) -> dict:
    """What every rank must agree on about the rows: shape, dtype and a hash of a few of
    them (the first and last ``rows``; reading them costs nothing next to a fit)."""
    sample = torch.cat([x[:rows], x[-rows:]]).detach().to("cpu", torch.float64)
    digest = hashlib.blake2b(sample.contiguous().numpy().tobytes(), digest_size=8).hexdigest()
    return {"shape": list(x.shape), "dtype": str(x.dtype).removeprefix("torch."),
            "rows_hash": digest}


def agree(fingerprint: dict, group: Group | None) -> None:
    """Stop every rank together, with one line naming what differs, when the ranks were
    started with different options or data (``fingerprint``: a flat dict of what must agree,
    e.g. the command's options and :func:`data_fingerprint`). Nothing happens alone.

    Every rank hashes each entry, the hashes are gathered, and each rank compares them all,
    so all ranks reach the same verdict and raise the same :class:`InputError` at once,
    instead of one rank waiting forever in a collective the others never join."""
    if group is None:
        return
    keys = sorted(fingerprint)
    hashes = torch.tensor([_digest(keys)] + [_digest(fingerprint[key]) for key in keys],
                          dtype=torch.int64)
    size = torch.tensor([len(keys)], dtype=torch.int64)
    sizes = group.gather(size)
    if len({int(s) for s in sizes}) > 1:
        raise InputError("the torchrun workers were started with different options (each "
                         "rank has another set of settings); start every worker with the same "
                         "command line")
    every = group.gather(hashes)
    if any(int(h[0]) != int(hashes[0]) for h in every):
        raise InputError("the torchrun workers were started with different options; start "
                         "every worker with the same command line")
    differ = [key for i, key in enumerate(keys)
              if len({int(h[i + 1]) for h in every}) > 1]
    if differ:
        raise InputError(f"the torchrun workers disagree on {', '.join(differ)} (rank "
                         f"{group.rank} of {group.world_size} sees "
                         f"{', '.join(f'{k}={fingerprint[k]!r}' for k in differ)}); start "
                         "every worker with the same options and the same data file")


def leave() -> None:
    """Leave the process group this process joined (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device, group: Group | None) -> torch.device:
    """The rank's own GPU where ``device`` is CUDA without an index, under a process group."""
    if group is not None and device.type == "cuda" and device.index is None:
        return torch.device("cuda", group.local_rank)
    return device


def shard(num_rows: int, group: Group | None) -> slice:
    """The contiguous rows rank ``r`` of ``W`` holds: ``[r N / W, (r + 1) N / W)``."""
    if group is None:
        return slice(0, num_rows)
    if num_rows < group.world_size:
        raise InputError(f"{num_rows} training rows cannot be shared by {group.world_size} "
                         "processes; use fewer processes (--nproc-per-node)")
    return slice(group.rank * num_rows // group.world_size,
                 (group.rank + 1) * num_rows // group.world_size)


def gather(tree, group: Group | None) -> list:
    """``[tree]`` alone, every rank's ``tree`` under a process group."""
    return [tree] if group is None else group.gather(tree)


def total(tensor: torch.Tensor, group: Group | None) -> torch.Tensor:
    """``tensor`` alone, its sum over the ranks under a process group."""
    return tensor if group is None else group.sum(tensor)


def _flatten(leaves: list, device: torch.device) -> torch.Tensor:
    """Tensors and Python numbers -> one float64 vector (exact for every float and for
    integers below 2**53)."""
    parts = [torch.as_tensor(leaf).detach().reshape(-1).to(device, torch.float64)
             for leaf in leaves]
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)


def _unflatten(flat: torch.Tensor, like: list) -> list:
    """The inverse of :func:`_flatten`, with ``like``'s shapes, dtypes, devices and types."""
    out, offset = [], 0
    for leaf in like:
        if isinstance(leaf, torch.Tensor):
            size = leaf.numel()
            out.append(flat[offset:offset + size].reshape(leaf.shape).to(leaf.device,
                                                                         leaf.dtype))
        else:
            size = 1
            value = float(flat[offset])
            out.append(type(leaf)(round(value)) if isinstance(leaf, int | bool) else
                       type(leaf)(value))
        offset += size
    return out
