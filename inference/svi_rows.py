"""Data-parallel SVI's parts: each step's minibatch rows and the collectives.

:class:`RowDraw` draws each step's rows from a seeded generator of its own (the same draws
alone and under ``torchrun``; its state is checkpointed), :class:`OnRows` conditions them
onto the model's data plate, and the collectives keep the ranks of a process group in step:
rank 0's initial parameters broadcast, the gradients and the loss averaged in one all-reduce.
:class:`RowSampler` decides, once per fit, which of them a fit needs (a minibatch, a rank's
shard, all rows alone) and hands each step its arguments; :mod:`inference.svi_loop` calls it.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from pyro import poutine

from inference import distributed
from inference.distributed import Group
from zoo.errors import InputError
from zoo.registry import DATA_PLATE  # the model contract's data plate (its subsample site)


class OnRows:
    """``fn(x, rows, **kwargs)`` is ``fn(x, **kwargs)`` with the data plate's subsample indices
    fixed to ``rows`` (conditioned, as :mod:`inference.evaluate` fixes them). The rows are a
    positional tensor: a JIT-compiled estimator takes them as an input of its graph, new rows
    every step, never as constants baked into the trace. One object per fit, so that the
    estimator's compiled graph (keyed by the callables' identity) is reused."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, x, rows, **kwargs):
        with poutine.condition(data={DATA_PLATE: rows}):
            return self.fn(x, **kwargs)


@contextmanager
def rows_fixed_quietly():
    """Silence the one warning Pyro's validation gives because :class:`OnRows` conditions the
    model's subsample site too (Pyro counts an observed one as no plate of the model's)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Found plate statements in guide but not "
                                f"model: \\{{'{DATA_PLATE}'\\}}$")
        yield


class RowSampler:
    """Which rows each step of a fit on ``num_data`` rows fits, alone or as one rank of
    ``group``. ``batch_size=None`` (or all rows, alone): the whole of ``x`` as it is (no row
    input); a process group without a minibatch: rank ``r`` fits its shard
    (:func:`~inference.distributed.shard`) with weight ``n_r / N``; a minibatch: a
    :class:`RowDraw` of ``batch_size`` rows per rank with weight ``1 / W``. :meth:`sync` is the
    step's hook under a group: gradients and loss summed with those weights (and the flag in
    :attr:`raised` or-ed over the ranks into :attr:`agreed`, in the same collective)."""

    def __init__(self, num_data: int, batch_size: int | None, *, group: Group | None = None,
                 seed: int = 0, device: torch.device | str = "cpu"):
        world = group.world_size if group is not None else 1
        if batch_size is not None and world == 1 and not 1 <= batch_size <= num_data:
            raise InputError(f"batch_size={batch_size} must be between 1 and the {num_data} "
                             "training rows")
        if batch_size is not None and world > 1 and not 1 <= batch_size * world <= num_data:
            raise InputError(f"batch_size={batch_size} rows per process times {world} "
                             f"processes must be between 1 and the {num_data} training rows; "
                             "use a smaller --batch-size or fewer processes")
        self.num_data, self.group = num_data, group
        alone_all = batch_size is None or (world == 1 and batch_size == num_data)
        self.batch = None if alone_all else batch_size
        shard = distributed.shard(num_data, group) if group and self.batch is None else None
        # the rows one rank fits per step (None: all of x, alone) and its share of the batch
        self.size = self.batch if self.batch is not None else (
            shard.stop - shard.start if shard else None)
        self.weight = 1.0 / world if self.batch is not None else (
            self.size / num_data if shard else 1.0)
        self.steps_per_epoch = (math.ceil(num_data / (world * self.batch))
                                if self.batch is not None else 1)
        self.draw = RowDraw(num_data, self.batch, world=world, rank=group.rank if group else 0,
                            seed=seed, device=device) if self.batch is not None else None
        self.fixed = torch.arange(shard.start, shard.stop, device=device) if shard else None
        self.raised = self.agreed = False

    @property
    def on_rows(self) -> bool:
        """Whether the rows are chosen here (an input of each step), not by the plate."""
        return self.size is not None

    @property
    def kwargs(self) -> dict:
        return {"num_data": self.num_data, "subsample_size": self.size}

    def __call__(self, data: torch.Tensor) -> tuple:
        """The step's positional arguments: ``(data,)`` or ``(data, rows)``."""
        rows = self.draw() if self.draw is not None else self.fixed
        return (data,) if rows is None else (data, rows)

    def sync(self, names: list[str], unconstrained: dict, value: float) -> float:
        value, self.agreed = all_reduce(self.group, names, unconstrained, value, self.weight,
                                        self.raised)
        return value

    def state(self) -> dict:
        return self.draw.state() if self.draw is not None else {}

    def restore(self, state: dict) -> None:
        if self.draw is not None:
            self.draw.restore(state)


LARGE_ROWS = 2**22  # beyond this many rows minibatches are drawn without a permutation


class RowDraw:
    """Each step's minibatch rows: one global draw of ``world * batch`` distinct rows of
    ``range(num_data)`` (the head of a uniform random permutation, as ``pyro.plate`` draws a
    subsample) from a generator of its own on ``device``, seeded alike on every rank; rank
    ``r`` takes rows ``[r batch, (r + 1) batch)`` of it. A fit alone is ``world=1``: the draws
    of a ``W``-rank fit with ``batch`` rows each are those of one process with ``W batch``.
    Its state goes into the checkpoint (:meth:`state`, :meth:`restore`)."""

    def __init__(self, num_data: int, batch: int, *, world: int = 1, rank: int = 0,
                 seed: int = 0, device: torch.device | str = "cpu"):
        self.num_data, self.device = num_data, torch.device(device)
        self.rows = slice(rank * batch, (rank + 1) * batch)
        self.wanted = world * batch  # one global draw of this many rows
        self.generator = torch.Generator(device=self.device)
        self.generator.manual_seed(_row_seed(seed))

    def __call__(self) -> torch.Tensor:
        wanted = self.wanted
        if self.num_data <= LARGE_ROWS:
            order = torch.randperm(self.num_data, generator=self.generator, device=self.device)
            return order[self.rows]
        # a streamed file of many rows: no permutation of all of them per step (8 bytes a
        # row). The distinct values of 2k uniform draws, in random order, are a uniform
        # k-subset by symmetry; with k² far below N there are k of them almost always.
        while True:
            draws = torch.unique(torch.randint(self.num_data, (2 * wanted,),
                                               generator=self.generator, device=self.device))
            if draws.numel() >= wanted:
                order = torch.randperm(draws.numel(), generator=self.generator,
                                       device=self.device)
                return draws[order[self.rows]]

    def state(self) -> dict:
        return {"row_rng": self.generator.get_state()}

    def restore(self, state: dict) -> None:
        if "row_rng" in state:  # a checkpoint of an older lvm-zoo has none: drawn afresh
            self.generator.set_state(state["row_rng"])


def _row_seed(seed: int) -> int:
    """The rows' generator seed: a fixed mix of ``seed``, so that its stream is not the one
    ``torch.manual_seed(seed)`` gives the ELBO's noise."""
    return (seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64


def broadcast_params(group: Group, names: list[str], unconstrained: dict) -> None:
    """Rank 0's unconstrained values of ``names`` into every rank's parameters."""
    values = group.broadcast({n: unconstrained[n].detach() for n in names}
                             if group.is_main else None, like=unconstrained[names[0]])
    with torch.no_grad():
        for name in names:
            unconstrained[name].copy_(values[name])


def all_reduce(group: Group, names: list[str], unconstrained: dict, value: float,
                weight: float, flag: bool) -> tuple[float, bool]:
    """Replace every rank's gradients by the ``weight``-ed sum over the ranks (``weight = 1/W``:
    their mean) and return the same sum of the losses, and whether any rank raised ``flag``.
    A parameter without a gradient on every rank keeps none, as Adam then skips it; gradients
    are summed in one buffer per dtype and device, the numbers in one more."""
    params = [unconstrained[n] for n in names]
    scalars = torch.tensor([value * weight, float(flag)]
                           + [float(p.grad is not None) for p in params], dtype=torch.float64)
    buckets: dict[tuple, list] = {}
    for p in params:
        buckets.setdefault((p.dtype, p.device), []).append(p)
    for bucket in buckets.values():
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in bucket])
        if weight != 1.0:
            flat.mul_(weight)
        flat = group.sum(flat)
        offset = 0
        for p in bucket:
            p.grad = flat[offset:offset + p.numel()].view_as(p)
            offset += p.numel()
    scalars = group.sum(scalars)
    for p, count in zip(params, scalars[2:].tolist(), strict=True):
        if count == 0:
            p.grad = None
    return float(scalars[0]), bool(scalars[1] > 0)


def checkpoint_exists(checkpoint, group: Group | None) -> bool:
    """Whether ``checkpoint`` is there to resume from; under a process group every rank must
    see the same (a file only some ranks see cannot be resumed alike)."""
    here = Path(checkpoint).exists()
    if group is None:
        return here
    seen = int(group.sum(torch.tensor([float(here)], dtype=torch.float64)))
    if 0 < seen < group.world_size:
        raise InputError(f"checkpoint {checkpoint} is seen by {seen} of {group.world_size} "
                         "processes; a resume needs it on a filesystem every process reads")
    return seen > 0


