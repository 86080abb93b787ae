"""What data a fit runs on: one frozen :class:`DataRequest`, loaded once onto one device.

The request names the dataset (a registered name or a file), where its files live, the
held-out share, the preprocessing, the dtype and the device. ``load(request, spec)`` returns
:class:`LoadedData`: the dataset's metadata and the train/test tensors already moved to the
device. The command line builds the request from its data flags; the Python API takes one, or
a dataset name.
"""

from __future__ import annotations

import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from inference import distributed
from inference.shared_split import SharedGather
from zoo import datasets
from zoo.datasets import mapped
from zoo.errors import InputError
from zoo.registry import ModelSpec

DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEVICES = ("auto", "cpu", "cuda")


@dataclass(frozen=True)
class DataRequest:
    """The data of one fit. ``name=None`` means the model's default dataset; ``seed`` draws the
    train/test split (datasets without an official one); ``device="auto"`` is CUDA when present."""

    name: str | None = None  # dataset name, or a .csv/.npy/.npz file
    root: str | None = None  # folder with mnist/, fashion-mnist/, frey-face/
    download: bool = False  # fetch MNIST / Fashion-MNIST through torchvision if missing
    test_fraction: float = 0.2  # held-out share for datasets without an official split
    binarize: str | None = None  # "static" or "dynamic" (images, Bernoulli likelihoods)
    standardize: bool = False  # z-score columns with the training mean and deviation
    dequantize: bool = False  # 8-bit images: k/255 -> (k + u)/256, u ~ U[0, 1) seeded by seed
    dtype: str = "float32"
    device: str = "auto"
    seed: int = 0  # the split's seed (and static binarization's, dequantization's)
    chunk_rows: int | None = None  # stream a .npy this many rows at a time (memory-mapped)

    # ``chunk_rows=None`` loads the rows into memory, unless the file is a .npy larger than
    # half the memory available: that one is streamed in chunks of 64 MiB (and a line says so)

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype {self.dtype} is not supported; use float32 or float64")
        if not isinstance(self.device, str) or not (self.device in DEVICES
                                                    or self.device.startswith("cuda:")):
            raise InputError(f"--device {self.device!r} is unknown; use auto, cpu or cuda")
        if isinstance(self.root, Path):
            object.__setattr__(self, "root", str(self.root))
        if self.chunk_rows is not None and (isinstance(self.chunk_rows, bool) or not isinstance(
                self.chunk_rows, int) or self.chunk_rows < 1):
            raise InputError(f"--chunk-rows {self.chunk_rows!r} must be a positive integer")

    def to_dict(self) -> dict:
        """What run.json stores (with the file's absolute path, so that a run can be evaluated
        from another folder)."""
        record = dataclasses.asdict(self)
        if record["name"] and Path(record["name"]).suffix in datasets.USER_FILE_SUFFIXES:
            record["name"] = str(Path(record["name"]).resolve())
        if record["root"]:
            record["root"] = str(Path(record["root"]).resolve())
        return record

    @classmethod
    def coerce(cls, data: DataRequest | str | None, **changes) -> DataRequest:
        """A request from a request, a dataset name or ``None`` (the model's default)."""
        if isinstance(data, DataRequest):
            return dataclasses.replace(data, **changes) if changes else data
        if data is not None and not isinstance(data, str | Path):
            raise InputError(f"data={data!r} must be a dataset name, a file path or a "
                             "DataRequest")
        return cls(name=None if data is None else str(data), **changes)


@dataclass(frozen=True)
class LoadedData:
    """A request's dataset with its tensors on ``device``: ``train (N, D)``, ``test (M, D)``."""

    request: DataRequest
    dataset: datasets.Dataset
    train: torch.Tensor
    test: torch.Tensor
    device: torch.device
    chunk_rows: int | None = None  # streamed: train/test map the file (CPU), chunks go to device

    @property
    def streamed(self) -> bool:
        return self.chunk_rows is not None


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU; asking for CUDA without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise InputError(f"--device {name}: no CUDA device is available here; use --device cpu "
                         "or auto")
    return torch.device(name)


def load(request: DataRequest, spec: ModelSpec) -> LoadedData:
    """Load ``request`` (``spec`` gives the default dataset) and move it to its device once;
    a streamed request (``chunk_rows``, or a ``.npy`` too large for memory) maps the file and
    leaves its rows where they are (:mod:`zoo.datasets.mapped`)."""
    target = distributed.local_device(choose_device(request.device), distributed.current())
    name = request.name or spec.default_data
    chunk_rows = request.chunk_rows
    if chunk_rows is None and Path(name).suffix.lower() == ".npy" and \
            mapped.too_large_for_memory(name):
        chunk_rows = mapped.default_chunk_rows(1, DTYPES[request.dtype])  # set below by width
        print(f"lvm-zoo: {name} is larger than half the memory available; streaming it in "
              "chunks of 64 MiB (--chunk-rows sets the size)", file=sys.stderr)
    if chunk_rows is not None:
        if request.standardize or request.binarize or request.dequantize:
            raise InputError("--standardize, --binarize and --dequantize need the rows in "
                             "memory; streamed rows (--chunk-rows) are used as they are in "
                             "the file")
        dataset = mapped.map_npy(name, dtype=DTYPES[request.dtype],
                                 test_fraction=request.test_fraction,
                                 chunk_rows=request.chunk_rows)
        if request.chunk_rows is None:
            chunk_rows = mapped.default_chunk_rows(dataset.dim, DTYPES[request.dtype])
        return LoadedData(request, dataset, dataset.train, dataset.test, target, chunk_rows)
    group = distributed.current()
    dataset = datasets.load_dataset(
        request.name or spec.default_data, root=request.root,
        test_fraction=request.test_fraction, seed=request.seed, dtype=DTYPES[request.dtype],
        binarize=request.binarize, download=request.download, standardize=request.standardize,
        dequantize=request.dequantize,
        gather=None if group is None else SharedGather(group))  # one copy per machine
    return LoadedData(request, dataset, dataset.train.to(target), dataset.test.to(target),
                      target)


def too_large(x: torch.Tensor) -> str | None:
    """Why rows ``x`` cannot be fitted as they are, when their values are too large for their
    dtype's arithmetic (squares and products of values beyond the fourth root of the largest
    float overflow: 1.3e9 in float32), with the fix; ``None`` otherwise."""
    if not x.is_floating_point() or not x.numel():
        return None
    largest = float(x.detach().abs().max())
    if largest < torch.finfo(x.dtype).max ** 0.25:
        return None
    return (f"the data reach {largest:.3g}, too large for "
            f"{str(x.dtype).removeprefix('torch.')} arithmetic (their squares and products "
            "overflow); rescale them with --standardize")


def random_streams(device: torch.device) -> dict:
    """The torch random streams a draw on ``device`` takes from (the CPU's, and the CUDA
    device's when it is one): what a fit owns, checkpoints and hands back."""
    state = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def set_random_streams(state: dict, device: torch.device) -> None:
    """Make ``state`` (of :func:`random_streams`) the process's current streams."""
    torch.set_rng_state(state["rng"])
    if device.type == "cuda" and "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)


class DynamicBinarization:
    """``--binarize dynamic`` on the training rows: a fresh Bernoulli draw of ``x : (N, D)``
    (grayscale in [0, 1]) every epoch of ``steps_per_epoch`` steps, from the current torch
    stream (a fit's own: :class:`inference.svi_step.SVIStep` swaps it in). The streams as they
    were before an epoch's draw are kept (:meth:`state`), so that a resume mid-epoch redraws the
    same rows (:meth:`restore`). ``binarize=None`` (or ``"static"``, already applied by the
    loader) leaves ``x`` as it is."""

    def __init__(self, x: torch.Tensor, steps_per_epoch: int, binarize: str | None = "dynamic"):
        self.x, self.steps_per_epoch = x, steps_per_epoch
        self.dynamic = binarize == "dynamic"
        self.streams = random_streams(x.device)
        self.data = self._draw()

    def _draw(self) -> torch.Tensor:
        return datasets.dynamic_binarize(self.x) if self.dynamic else self.x

    def before(self, step: int, first: int) -> torch.Tensor:
        """The rows step ``step`` fits (0-based; ``first``: this run's first step, which keeps
        the rows drawn at the start or on resume)."""
        if self.dynamic and step % self.steps_per_epoch == 0 and step > first:
            self.streams = random_streams(self.x.device)
            self.data = self._draw()
        return self.data

    def state(self) -> dict:
        return {"epoch_rng": self.streams} if self.dynamic else {}

    def restore(self, streams: dict) -> None:
        """Redraw the epoch of a checkpoint (``streams``: one rank's, with ``epoch_rng``), then
        continue from its streams."""
        if not self.dynamic:
            return
        self.streams = streams.get("epoch_rng", self.streams)
        set_random_streams(self.streams, self.x.device)
        self.data = self._draw()
        set_random_streams(streams, self.x.device)
