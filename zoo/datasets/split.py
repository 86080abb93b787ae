"""Post-processing shared by every source: the seeded train/test split, binarization of images
in [0, 1] (once, or per minibatch with :func:`dynamic_binarize`), dequantization of 8-bit
images and standardization.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from zoo.errors import InputError

# how a part's rows are copied: ``gather(x, index)`` is ``torch.index_select(x, 0, index)``
Gather = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def dynamic_binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A fresh Bernoulli sample with success probabilities ``x`` (values in [0, 1]).

    Called by the trainer on every minibatch of a ``binarize="dynamic"`` dataset, so the model
    sees a new binary image each time it meets the same grayscale one; this regularizes better
    than one fixed binarization.

    Args:
        x: ``(..., D)`` probabilities in [0, 1], any floating dtype, any device.
        generator: optional generator on ``x``'s device, for reproducible draws.

    Returns:
        a tensor of 0s and 1s with the shape, dtype and device of ``x``.
    """
    return torch.bernoulli(x, generator=generator)


def _seeded_split(
    x: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    test_fraction: float,
    seed: int,
    name: str,
    gather: Gather | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Split ``x : (N, D)`` (and labels) into train/test by a permutation seeded by ``seed``.

    The test part has ``ceil(test_fraction * N)`` rows (as scikit-learn's ``train_test_split``),
    so any positive fraction holds out at least one row. Within each part rows keep their order
    in the source, which makes the parts easy to compare with the file; minibatching shuffles.
    ``gather(x, index)`` copies each part's rows (train, then test; default
    ``torch.index_select``): processes sharing the work pass their own.
    """
    num_rows = x.shape[0]
    num_test = math.ceil(test_fraction * num_rows)
    if num_rows - num_test < 1:
        raise InputError(
            f"--test-fraction={test_fraction} leaves no training rows out of the {num_rows} rows "
            f"of {name!r}; use a smaller fraction, e.g. 0"
        )
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(num_rows, generator=generator)
    # each part's rows in source order: a mask, O(N) (sorting the parts took 0.4 s at 10^6)
    held_out = torch.zeros(num_rows, dtype=torch.bool)
    held_out[permutation[:num_test]] = True
    test_index = held_out.nonzero()[:, 0]
    train_index = (~held_out).nonzero()[:, 0]

    def pick(values: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
        # whole rows at a time (``values[index]`` gathers element by element: 0.5 against
        # 0.15 s for the 8 million rows of 16 float32 values kept for training)
        return None if values is None else torch.index_select(values, 0, index)

    rows = gather or pick
    return (rows(x, train_index), rows(x, test_index), pick(labels, train_index),
            pick(labels, test_index))


def _check_binarizable(
    name: str, binarize: str, train: torch.Tensor, test: torch.Tensor, *, is_image: bool
) -> None:
    """Binarization treats values as Bernoulli probabilities: only images in [0, 1] qualify."""
    if not is_image:
        raise InputError(
            f"--binarize={binarize} needs image data, but {name!r} is tabular; "
            "leave --binarize out for this dataset"
        )
    # Per part, not on a concatenation: that would copy all of MNIST once more.
    low = min(part.min().item() for part in (train, test) if part.numel())
    high = max(part.max().item() for part in (train, test) if part.numel())
    if low < 0.0 or high > 1.0:
        raise InputError(
            f"--binarize={binarize} needs pixel values in [0, 1], but {name!r} has values in "
            f"[{low:g}, {high:g}]; leave --binarize out, or scale the images to [0, 1] first"
        )


def _bernoulli_sample(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``(N, D)`` probabilities -> one ``(N, D)`` draw of 0s and 1s in the same dtype."""
    return (torch.rand(x.shape, generator=generator, dtype=x.dtype) < x).to(x.dtype)


PIXEL_LEVELS = 255  # 8-bit images come scaled to k / 255, k = 0..255
DEQUANTIZED_BIN_WIDTH = 1 / 256  # k -> (k + u) / 256: 256 bins of equal width tile [0, 1)


def _pixel_levels(name: str, x: torch.Tensor, *, is_image: bool) -> torch.Tensor:
    """The 8-bit levels k of values k / 255 (as floats), or an InputError for anything else."""
    if not is_image:
        raise InputError(
            f"--dequantize is for 8-bit images (values k/255, as mnist, fashion-mnist and "
            f"frey-face), but {name!r} is tabular; leave --dequantize out for this dataset"
        )
    levels = torch.round(x * PIXEL_LEVELS)
    if x.numel() and (
        levels.min() < 0 or levels.max() > PIXEL_LEVELS
        or (x * PIXEL_LEVELS - levels).abs().max() > 1e-3
    ):
        raise InputError(
            f"--dequantize is for 8-bit images with values k/255 in [0, 1], but {name!r} has "
            f"values in [{x.min().item():g}, {x.max().item():g}] off that grid; leave "
            "--dequantize out, or scale the 8-bit pixels to k/255 first"
        )
    return levels


def _dequantize(levels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """8-bit levels k -> (k + u) / 256 with u ~ U[0, 1): each value spread over its bin
    [k/256, (k+1)/256) (Theis et al., 2016). k + u may round up to k + 1 in floating point,
    so it is held just below; dividing by 256 is exact."""
    spread = torch.rand(levels.shape, generator=generator, dtype=levels.dtype).add_(levels)
    below_next = torch.nextafter(levels + 1, torch.zeros((), dtype=levels.dtype))
    return torch.minimum(spread, below_next, out=spread).mul_(DEQUANTIZED_BIN_WIDTH)


def _standardize(train: torch.Tensor, test: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Z-score both parts with the *training* mean and standard deviation (no test leakage)."""
    mean = train.mean(dim=0)
    std = train.std(dim=0, correction=0)
    # A constant column (e.g. an always-black MNIST corner) is only centred, not divided by 0.
    std = torch.where(std > 0, std, torch.ones_like(std))
    return (train - mean) / std, (test - mean) / std
