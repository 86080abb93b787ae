"""The GMM's fused E-step as a small C kernel (``zoo/em_kernel.c``), compiled on first use.

Why: on a CPU the torch form of the quadratic E-step (:func:`zoo.gmm_em._quadratic_share`) is
two small GEMMs a row block, with K = 8 rows on one side, which MKL runs at about 60% of this
CPU's peak, plus the features written to memory and read back twice. The kernel makes each
row tile's features in registers, and keeps K log joints, then K responsibilities, in
registers across them: at N = 100,000, D = 16, K = 8 on one thread, 7.9 ms against 15.4 ms
with AVX-512, 10.8 ms with AVX2 (``benchmarks/gmm_em.py``; RESULTS.md).

How: the C source ships with the package; on first use the system C compiler (``$CC``, else
``cc``) builds it into a shared library in the user's cache (``$LVM_ZOO_CACHE``, else
``$XDG_CACHE_HOME/lvm-zoo``, else ``~/.cache/lvm-zoo``; where that cannot be made, a folder
of the user's under the temporary directory), named by the hash of the source and
the command, written to a temporary name and renamed, so that processes starting at once (the
ranks of ``torchrun``) never load half a file. The library holds three builds of one body
(AVX-512, AVX2 with FMA, the compiler's baseline) and picks by the CPU. It is called through
``ctypes``, which releases the GIL, so the E-step's threads run it in parallel.

Where no compiler is found, the build fails, the CPU has neither AVX2 nor AVX-512 (the
baseline build is slower than torch), or ``LVM_ZOO_NATIVE=0`` is set, :func:`kernel` is
``None`` and the E-step runs its torch form: the same numbers to float32 rounding.
:func:`status` says which and why.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import NamedTuple

import torch

SOURCE = Path(__file__).with_name("em_kernel.c")
FLAGS = ("-O3", "-fno-math-errno", "-fno-trapping-math", "-fPIC", "-shared", "-pthread")
VARIANTS = {2: "AVX-512", 1: "AVX2", 0: "baseline"}
BEST = -1  # em_variant's "the best this CPU runs"
FASTEST_USED = 1  # the baseline build is slower than torch's GEMMs: used only when asked

_LOCK = threading.Lock()
_STATE: dict = {}  # "library", "variant", "reason": once per process


def cache_dir() -> Path:
    """Where the compiled kernel is kept: ``$LVM_ZOO_CACHE``, ``$XDG_CACHE_HOME/lvm-zoo``, or
    ``~/.cache/lvm-zoo``."""
    if os.environ.get("LVM_ZOO_CACHE"):
        return Path(os.environ["LVM_ZOO_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lvm-zoo"


def _compiler() -> str | None:
    name = os.environ.get("CC") or "cc"
    return shutil.which(name)


def _build() -> tuple[ctypes.CDLL | None, str]:
    """The loaded library, or ``None`` and why not."""
    if os.environ.get("LVM_ZOO_NATIVE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "LVM_ZOO_NATIVE=0"
    compiler = _compiler()
    if compiler is None:
        return None, f"no C compiler ({os.environ.get('CC') or 'cc'}) on PATH"
    try:
        source = SOURCE.read_bytes()
    except OSError as error:
        return None, f"the kernel's source is missing ({error})"
    command = [compiler, *FLAGS]
    key = hashlib.sha256(source + "\0".join(command + [sys.platform]).encode()).hexdigest()
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:  # a read-only home: this user's folder under the temporary directory
        user = os.getuid() if hasattr(os, "getuid") else 0
        folder = Path(tempfile.gettempdir()) / f"lvm-zoo-{user}"
    library = folder / f"em_kernel-{key[:20]}.so"
    if not library.is_file():
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                built = Path(scratch) / library.name
                done = subprocess.run([*command, str(SOURCE), "-o", str(built), "-lm"],
                                      capture_output=True, text=True, timeout=120)
                if done.returncode != 0:
                    first = (done.stderr.strip().splitlines() or ["no message"])[0]
                    return None, f"the C compiler failed: {first[:200]}"
                os.replace(built, library)  # whole or absent, for every process
        except (OSError, subprocess.SubprocessError) as error:
            return None, f"the kernel could not be built in {folder} ({error})"
    try:
        lib = ctypes.CDLL(str(library))
    except OSError as error:
        return None, f"the built kernel did not load ({error})"
    lib.em_variant.argtypes = [ctypes.c_int]
    lib.em_variant.restype = ctypes.c_int
    pointer = ctypes.c_void_p
    lib.em_share.argtypes = [ctypes.c_int, pointer, ctypes.c_long, ctypes.c_int, pointer,
                             pointer, ctypes.c_int, ctypes.c_int, ctypes.c_int, pointer, pointer,
                             ctypes.c_int, ctypes.c_float, ctypes.c_int, pointer, pointer,
                             pointer]
    lib.em_share.restype = ctypes.c_int
    lib.lloyd_share.argtypes = [ctypes.c_int, pointer, ctypes.c_long, ctypes.c_int, pointer,
                                ctypes.c_int, pointer, pointer, pointer, pointer, pointer]
    lib.lloyd_share.restype = ctypes.c_int
    lib.lloyd_loop.argtypes = [ctypes.c_int, pointer, ctypes.c_int, pointer, ctypes.c_int,
                               pointer, pointer, pointer, pointer, ctypes.c_int, ctypes.c_int,
                               ctypes.c_double, pointer, pointer, pointer, ctypes.c_long]
    lib.lloyd_loop.restype = ctypes.c_int
    lib.full_weights.argtypes = [ctypes.c_int, ctypes.c_int, pointer, pointer, pointer, pointer,
                                 pointer, pointer]
    lib.full_weights.restype = ctypes.c_int
    return lib, "built"


def _state() -> dict:
    with _LOCK:
        if not _STATE:
            library, reason = _build()
            variant = library.em_variant(BEST) if library is not None else -1
            if library is not None and variant < FASTEST_USED:
                reason = ("this CPU has neither AVX2 nor AVX-512; the baseline build is slower "
                          "than torch's form")
            _STATE.update(library=library, variant=variant, reason=reason)
        return _STATE


def kernel() -> ctypes.CDLL | None:
    """The library where the E-step should use it (a fast build runs on this CPU), else
    ``None``."""
    state = _state()
    return state["library"] if state["variant"] >= FASTEST_USED else None


def status() -> dict:
    """``{"used": bool, "variant": "AVX-512" | "AVX2" | "baseline" | None, "reason": str}``."""
    state = _state()
    used = state["variant"] >= FASTEST_USED
    return {"used": used, "variant": VARIANTS.get(state["variant"]),
            "reason": "used" if used else state["reason"]}


def forget() -> None:
    """Build (or find) and load the library again on next use (tests of the environment)."""
    with _LOCK:
        _STATE.clear()


def variants() -> list[int]:
    """The builds this CPU runs (2 AVX-512, 1 AVX2, 0 baseline), for tests that check each."""
    library = _state()["library"]
    if library is None:
        return []
    return [v for v in (2, 1, 0) if library.em_variant(v) == v]


def _check(code: int, what: str) -> None:
    """A kernel's status: 0 is done; 1 is memory that ran out; anything else, arguments that
    the build refused."""
    if code == 1:
        raise MemoryError(f"{what} could not allocate its buffers")
    if code != 0:
        raise RuntimeError(f"{what} refused its arguments (code {code})")


def share(x: torch.Tensor, weights: torch.Tensor, center: torch.Tensor, first: torch.Tensor,
          second: torch.Tensor, begin: int, end: int, floor: float, statistics: bool,
          variant: int = BEST, rows: torch.Tensor | None = None
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """The quadratic E-step's ``K x F`` sums (float64) and total log p(x) (float64) over rows
    ``begin..end`` of ``x`` (float32, contiguous, on the CPU), as
    :func:`zoo.gmm_em._quadratic_share` gives them: ``weights : (K, F)`` over the features
    ``[c_a c_b for (a, b) in zip(first, second), c, 1]`` of ``c = x - center``. Where ``rows``
    (float64, contiguous, one value per row of ``x``) is given, each row's log p(x) is written
    into ``rows[begin:end]``."""
    library = _state()["library"]
    k, size = weights.shape
    d = x.shape[1]
    padded = -(-k // 8) * 8
    table = weights.new_zeros(size, padded)
    table[:, :k] = weights.t()
    first = first.to(torch.int32).contiguous()
    second = second.to(torch.int32).contiguous()
    center = center.to(x.dtype).contiguous()
    sums = torch.zeros(padded, size, dtype=torch.float64)
    total = torch.zeros(1, dtype=torch.float64)
    start = x.data_ptr() + begin * d * x.element_size()  # rows begin..end, not a view of them
    if rows is not None and not (rows.dtype == torch.float64 and rows.is_contiguous()
                                 and rows.device.type == "cpu" and rows.numel() >= end):
        raise ValueError("rows must be a contiguous float64 CPU tensor of one value per row")
    row_out = None if rows is None else rows.data_ptr() + begin * rows.element_size()
    code = library.em_share(variant, start, end - begin, d, center.data_ptr(),
                            table.data_ptr(), k, padded, size, first.data_ptr(),
                            second.data_ptr(), first.numel(), floor, int(statistics),
                            sums.data_ptr(), total.data_ptr(), row_out)
    _check(code, "the E-step kernel")
    return sums[:k], total[0]


def lloyd_share(x: torch.Tensor, centers: torch.Tensor, labels: torch.Tensor,
                previous: torch.Tensor | None, begin: int, end: int, variant: int = BEST
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One Lloyd pass over rows ``begin..end`` of ``x`` (float32, contiguous, on the CPU), as
    :func:`zoo.gmm_init._lloyd_share` makes it: each row's nearest centre written into
    ``labels`` (int64; the first of equals), and the clusters' sums (float64), counts and the
    number of labels that differ from ``previous`` (where given)."""
    library = _state()["library"]
    k, d = centers.shape
    centers = centers.to(torch.float32).contiguous()
    sums = torch.zeros(k, d, dtype=torch.float64)
    counts = torch.zeros(k, dtype=torch.int64)
    changed = torch.zeros(1, dtype=torch.int64)
    step = labels.element_size()
    code = library.lloyd_share(
        variant, x.data_ptr() + begin * d * x.element_size(), end - begin, d,
        centers.data_ptr(), k, labels.data_ptr() + begin * step,
        None if previous is None else previous.data_ptr() + begin * step, sums.data_ptr(),
        counts.data_ptr(), changed.data_ptr())
    _check(code, "the Lloyd kernel")
    return sums, counts, changed[0]


# The most bytes of rows :func:`lloyd_loop` keeps transposed for a call (a copy of them, freed
# when it returns): below it every pass after the first reads them as the kernel lays them out
# (on the start's 19,037 rows, D = 16, K = 8, Lloyd's 159 passes took 12 ms against 22 ms);
# above it each pass transposes each block again.
LLOYD_TRANSPOSED_BYTES = 64 * 2**20


class LoopResult(NamedTuple):
    centers: torch.Tensor  # (K, D) float32, the last means
    labels: torch.Tensor  # (N,) int64, the last pass's labels
    n_iter: int
    strict: bool  # stopped because no label changed
    converged: bool  # stopped on no change or on the shift


def lloyd_loop(x: torch.Tensor, centers: torch.Tensor, bounds: list[int], max_iter: int,
               tol: float, prior: torch.Tensor | None = None,
               variant: int = BEST) -> LoopResult | None:
    """Lloyd's algorithm on the rows of ``x`` (float32, contiguous, on the CPU) from
    ``centers``, whole in the kernel, as :func:`zoo.gmm_init.lloyd_rows` runs it on one
    process: each pass over the shares ``bounds[i]..bounds[i + 1]`` of the rows, one thread a
    share (without the GIL), the shares' sums added in order, the centres moved to the means;
    it stops where no label changed, where the squared shift is at most ``tol``, or after
    ``max_iter`` passes. ``prior`` (int64, one per row) are the labels of the pass before,
    from an earlier call: the first pass counts its changes against them (its sums are taken
    afresh). Each thread transposes its share once, on the first pass, where all rows take
    at most :data:`LLOYD_TRANSPOSED_BYTES` (a copy freed on return). ``None`` where a cluster
    emptied: the caller's loop, which refills it, runs instead."""
    library = _state()["library"]
    k, d = centers.shape
    moved = centers.to(torch.float32).contiguous().clone()
    labels = torch.empty(x.shape[0], dtype=torch.int64)
    scratch = torch.empty(x.shape[0], dtype=torch.int64)
    limits = (ctypes.c_long * len(bounds))(*bounds)
    n_iter, strict, converged = ctypes.c_int(0), ctypes.c_int(0), ctypes.c_int(0)
    if prior is not None and not (prior.dtype == torch.int64 and prior.is_contiguous()
                                  and prior.numel() == x.shape[0]):
        raise ValueError("prior must be a contiguous int64 tensor of one label per row")
    code = library.lloyd_loop(variant, x.data_ptr(), d, moved.data_ptr(), k, labels.data_ptr(),
                              scratch.data_ptr(), None if prior is None else prior.data_ptr(),
                              limits, len(bounds) - 1, max_iter, tol,
                              ctypes.byref(n_iter), ctypes.byref(strict),
                              ctypes.byref(converged), LLOYD_TRANSPOSED_BYTES)
    if code == 3:
        return None
    _check(code, "the Lloyd kernel")
    return LoopResult(moved, labels, n_iter.value, bool(strict.value), bool(converged.value))


def full_weights(scale_tril: torch.Tensor, means: torch.Tensor, weights: torch.Tensor,
                 center: torch.Tensor) -> tuple[torch.Tensor, float, float] | None:
    """The quadratic E-step's weights ``W : (K, F)`` of full covariances (as
    :func:`zoo.gmm_em._quadratic_weights` makes them) in the kernel's library, in double, with
    the largest ``|Λ_k|_F`` and ``|μ_k - m|²`` for the rounding bound; ``None`` where a
    Cholesky factor has a diagonal that is not positive and finite (a singular covariance)."""
    library = _state()["library"]
    k, d = means.shape
    tril, mu, lam, m = (t.detach().to("cpu", torch.float64).contiguous()
                        for t in (scale_tril, means, weights, center))
    table = torch.empty(k, d * (d + 1) // 2 + d + 1, dtype=torch.float64)
    extremes = (ctypes.c_double * 2)()
    code = library.full_weights(k, d, tril.data_ptr(), mu.data_ptr(), lam.data_ptr(),
                                m.data_ptr(), table.data_ptr(), extremes)
    if code == 4:
        return None
    _check(code, "the weights' kernel")
    return table, extremes[0], extremes[1]
