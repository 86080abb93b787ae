"""Users' data files: a ``.csv`` table, a ``.npy`` array or an ``.npz`` archive, rows being
observations.

Nothing here trusts the file: it is opened once (an unreadable file is an :class:`InputError`,
not an ``OSError``), an empty file is refused, CSV text must be UTF-8, and a ``.npy`` header (also
inside an ``.npz``) is checked against the bytes that follow it *before* any array is allocated,
so a damaged or hostile header cannot ask for terabytes. Pickled objects are never loaded.
"""

from __future__ import annotations

import codecs
import csv
import io
import math
import mmap
import os
import pathlib
import warnings
import zipfile
import zlib
from typing import BinaryIO

import numpy as np
import torch

from zoo.datasets.base import _Loaded, _Request, _to_observations
from zoo.errors import InputError

# Keys an .npz file may use for its data array and (optionally) its labels, in order of preference.
_NPZ_DATA_KEYS = ("x", "data", "X")
_NPZ_LABEL_KEYS = ("y", "labels")

# How to write each kind of file correctly, for the messages.
_SAVE_HINT = {
    ".csv": "one row of comma-separated numbers per observation",
    ".npy": "numpy.save(path, data)",
    ".npz": "numpy.savez(path, x=data)",
}

# Deflate expands at most about 1032-fold; a zip entry claiming more is damaged or hostile.
_MAX_EXPANSION = {zipfile.ZIP_STORED: 1, zipfile.ZIP_DEFLATED: 1032}


def _load_user_file(path: pathlib.Path, suffix: str, request: _Request) -> _Loaded:
    _check_is_file(path)
    labels = None
    feature_names = None
    with _open(path) as stream:
        size = os.fstat(stream.fileno()).st_size
        if size == 0:
            raise InputError(
                f"data file '{path}' is empty (0 bytes); it needs at least one row of numbers: "
                f"write it with {_SAVE_HINT[suffix]}"
            )
        if suffix == ".csv":
            array, feature_names = _read_csv(path, _read_all(path, stream))
        elif suffix == ".npy":
            array = _read_npy(path, stream, size)
        else:
            array, labels = _read_npz(path, stream, size)
    # borrowed: a mapped .npy's rows are not copied here, as load_dataset's split copies
    # every user file's rows into the train and test tensors
    x, obs_shape, is_image = _to_observations(
        array, what=f"data file '{path}'", dtype=request.dtype, borrow=True
    )
    if feature_names is not None and len(feature_names) != x.shape[1]:
        raise InputError(
            f"data file '{path}' has {len(feature_names)} header names but {x.shape[1]} columns; "
            "give every column a name, or drop the header"
        )
    if labels is not None and labels.shape != (x.shape[0],):
        raise InputError(
            f"data file '{path}' has labels of shape {labels.shape} for {x.shape[0]} rows; "
            f"save one integer label per row, shape ({x.shape[0]},)"
        )
    return _Loaded(
        x=x,
        labels=labels,
        obs_shape=obs_shape,
        is_image=is_image,
        source=str(path.resolve()),
        feature_names=feature_names,
    )


# --- opening ---------------------------------------------------------------------------------


def _check_is_file(path: pathlib.Path) -> None:
    if path.is_file():
        return
    if path.is_dir():
        raise InputError(f"data file '{path}' is a folder; check the path")
    not_a_folder = next((parent for parent in path.parents if parent.is_file()), None)
    if not_a_folder is not None:
        raise InputError(
            f"data file '{path}' does not exist: '{not_a_folder}' is a file, not a folder; "
            "check the path"
        )
    raise InputError(f"data file '{path}' does not exist; check the path")


def _open(path: pathlib.Path) -> BinaryIO:
    try:
        return open(path, "rb")  # closed by the caller's `with`
    except OSError as error:
        raise InputError(
            f"data file '{path}' cannot be opened ({error.strerror or error}); check that it is "
            "a file you may read (its permissions) and the path"
        ) from None


def _read_all(path: pathlib.Path, stream: BinaryIO) -> bytes:
    try:
        return stream.read()
    except OSError as error:
        raise InputError(
            f"data file '{path}' cannot be read ({error.strerror or error}); copy it to a local "
            "disk, or check the device"
        ) from None


# --- CSV -------------------------------------------------------------------------------------


def _parses_as_float(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _decode_utf8(path: pathlib.Path, raw: bytes) -> str:
    raw = raw.removeprefix(codecs.BOM_UTF8)  # Excel writes one
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - raw.rfind(b"\n", 0, error.start)
        raise InputError(
            f"data file '{path}' is not UTF-8 text: byte 0x{raw[error.start]:02x} on line {line}, "
            f"column {column} is not valid UTF-8 (the file may be Latin-1 or Windows-1252); save "
            "it as UTF-8 (e.g. Excel's 'CSV UTF-8' format, or `iconv -f latin1 -t utf-8`)"
        ) from None


_SEPARATED = {",": "comma-separated", ";": "semicolon-separated", "\t": "tab-separated"}


def _delimiter(line: str) -> str:
    """The cell separator a table's first line uses: ``;`` or a tab where the line has one and
    no comma outside a decimal number, else ``,``."""
    if ";" in line:
        return ";"
    if "\t" in line and "," not in line:
        return "\t"
    return ","


def _read_csv(path: pathlib.Path, raw: bytes) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """A comma-separated table of numbers with an optional header row.

    The first row is a header when one of its cells is not a number; its cells become the
    feature names. Blank lines and lines starting with ``#`` are skipped. A table separated by
    semicolons (what Excel writes where the decimal mark is a comma) is read with ``;`` between
    cells and a decimal comma accepted; one separated by tabs, with tabs.
    """
    lines = _decode_utf8(path, raw).splitlines(keepends=True)
    # Only the lines before the first data line are visited in Python; numpy parses the rest.
    start = next(
        (i for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")),
        None,
    )
    if start is None:
        raise InputError(f"data file '{path}' is empty; it needs at least one row of numbers")
    delimiter = _delimiter(lines[start])
    first_row = next(csv.reader([lines[start]], delimiter=delimiter))
    if delimiter == ";":
        first_row = [cell.replace(",", ".") if _parses_as_float(cell.replace(",", ".")) else cell
                     for cell in first_row]
    has_header = not all(_parses_as_float(cell) for cell in first_row)
    feature_names = tuple(cell.strip() for cell in first_row) if has_header else None
    body = "".join(lines[start + int(has_header):])
    if delimiter == ";":
        body = body.replace(",", ".")  # the decimal comma of a semicolon-separated table
    separated = _SEPARATED[delimiter]

    def parse(dtype: type) -> np.ndarray:
        with warnings.catch_warnings():
            # A header-only file is reported as empty by `_to_observations`, not as a warning.
            warnings.filterwarnings("ignore", message=".*input contained no data")
            return np.loadtxt(
                io.StringIO(body), dtype=dtype, delimiter=delimiter, ndmin=2, quotechar='"'
            )

    try:
        return parse(np.float64), feature_names
    except ValueError:
        pass  # find the offending cell below; this slow path runs only for a bad file
    try:
        cells = parse(str)
    except ValueError as error:
        reason = str(error).split(";")[0]  # numpy's advice after ';' is about its own API
        raise InputError(
            f"data file '{path}' is not a rectangular table ({reason}); every row needs the "
            f"same number of {separated} values"
        ) from None
    numeric = np.frompyfunc(_parses_as_float, 1, 1)(cells).astype(bool)
    row, column = (int(index) for index in np.argwhere(~numeric)[0])
    column_name = f" ({feature_names[column]!r})" if feature_names and \
        column < len(feature_names) else ""
    cell = str(cells[row, column])
    raise InputError(
        f"data file '{path}': data row {row + 1}{' after the header' if has_header else ''}, "
        f"column {column + 1}{column_name} holds {cell!r}, which is not a number; "
        "every cell must be numeric (only the first row may be a header)"
    )


# --- .npy and .npz ---------------------------------------------------------------------------

# Version 3.0 differs from 2.0 only in encoding the header as UTF-8 instead of Latin-1, which
# matters only for non-ASCII field names of structured dtypes, and those are refused anyway.
_NPY_HEADER_READERS = {
    (1, 0): np.lib.format.read_array_header_1_0,
    (2, 0): np.lib.format.read_array_header_2_0,
    (3, 0): np.lib.format.read_array_header_2_0,
}


def _check_npy_header(stream: BinaryIO, *, size: int, what: str,
                      fix: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """Read a .npy header from ``stream`` (``size`` bytes in all) and refuse what cannot load.

    Refused: a missing magic string, an unknown format version, a damaged header, Python
    objects (they would need pickle, which can run code), and a header that promises more
    bytes than follow it (a truncated file, or one crafted to make numpy allocate terabytes).
    Returns the header's shape, Fortran order and dtype; the stream is left at the data.
    """
    try:
        version = np.lib.format.read_magic(stream)
    except ValueError:
        raise InputError(
            f"{what} is not a .npy array (it does not start with numpy's magic string "
            f"\\x93NUMPY); save it with {fix}"
        ) from None
    reader = _NPY_HEADER_READERS.get(version)
    if reader is None:
        raise InputError(
            f"{what} has .npy format version {version[0]}.{version[1]}, which is not read here "
            f"(1.0, 2.0 and 3.0 are); save a numeric array with {fix}"
        )
    try:
        shape, fortran_order, dtype = reader(stream)
    except ValueError as error:
        raise InputError(
            f"{what} has a damaged .npy header ({str(error).splitlines()[0]}); save it again "
            f"with {fix}"
        ) from None
    if dtype.hasobject:
        raise InputError(
            f"{what} cannot be read safely: it holds Python objects (dtype {dtype}), and "
            f"unpickling them could run arbitrary code; save a numeric array with {fix}"
        )
    if any(length < 0 for length in shape):
        raise InputError(f"{what} has a damaged .npy header (shape {shape}); save it with {fix}")
    promised = math.prod(shape) * dtype.itemsize
    available = size - stream.tell()
    if promised > available:
        raise InputError(
            f"{what} is truncated or damaged: its header promises a {dtype} array of shape "
            f"{shape} ({promised:,} bytes), but only {available:,} bytes follow the header; "
            f"save it again with {fix}"
        )
    return shape, fortran_order, dtype


# an .npy whose data take this many bytes or more is mapped, not read into memory: the split
# copies its rows once (read, then split, the rows of 10^7 x 16 float32 values took two
# copies, 1.2 s and 1.3 GB at the peak, against 0.6 s and 0.64 GB mapped)
MAP_BYTES = 64 * 2**20


def _read_npy(path: pathlib.Path, stream: BinaryIO, size: int) -> np.ndarray:
    """The array of an ``.npy`` file, its header checked first."""
    what = f"data file '{path}'"
    try:
        shape, fortran_order, dtype = _check_npy_header(stream, size=size, what=what,
                                                        fix=_SAVE_HINT[".npy"])
        count = math.prod(shape)
        if count * dtype.itemsize >= MAP_BYTES:  # read-only, the pages read when touched
            view = mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ)
            return np.frombuffer(view, dtype=dtype, count=count, offset=stream.tell()).reshape(
                shape, order="F" if fortran_order else "C")
        stream.seek(0)
        return np.lib.format.read_array(stream, allow_pickle=False)
    except InputError:
        raise
    except (ValueError, OSError, EOFError) as error:
        raise InputError(
            f"{what} cannot be read as a numeric .npy array ({error}); save it with "
            f"{_SAVE_HINT['.npy']} from a numeric array"
        ) from None


def _read_npz(
    path: pathlib.Path, stream: BinaryIO, size: int
) -> tuple[np.ndarray, torch.Tensor | None]:
    """The data array of an ``.npz`` file, plus its optional labels.

    An ``.npz`` file may hold one array, or name its data ``x``/``data``/``X`` and optionally
    its labels ``y``/``labels``. Only the arrays used are read, each header checked first.
    """
    try:
        with zipfile.ZipFile(stream) as archive:
            # Keys as numpy.load names them: the member name without its ".npy".
            members = {info.filename.removesuffix(".npy"): info for info in archive.infolist()}
            keys = list(members)
            if not keys:
                raise InputError(
                    f"data file '{path}' holds no arrays; save the data with {_SAVE_HINT['.npz']}"
                )
            if len(keys) == 1:
                return _read_member(path, archive, members[keys[0]], keys[0], size), None
            data_keys = [key for key in _NPZ_DATA_KEYS if key in members]
            label_keys = [key for key in _NPZ_LABEL_KEYS if key in members]
            if len(data_keys) != 1 or len(label_keys) > 1:
                raise InputError(
                    f"data file '{path}' holds the arrays {', '.join(map(repr, keys))} and it is "
                    f"not clear which are the data; save the data as 'x' (and optionally the "
                    f"labels as 'y'), e.g. numpy.savez(path, x=data, y=labels)"
                )
            data = _read_member(path, archive, members[data_keys[0]], data_keys[0], size)
            if not label_keys:
                return data, None
            labels = _read_member(path, archive, members[label_keys[0]], label_keys[0], size)
    except InputError:
        raise
    # zipfile raises RuntimeError for an encrypted member, NotImplementedError for an unknown
    # compression, BadZipFile/zlib.error/EOFError for damaged data.
    except (ValueError, OSError, EOFError, RuntimeError, NotImplementedError,
            zipfile.BadZipFile, zlib.error) as error:
        raise InputError(
            f"data file '{path}' cannot be read as a numeric .npz array ({error}); save it "
            f"with {_SAVE_HINT['.npz']} from a numeric array"
        ) from None
    if labels.dtype.kind not in "iu":
        raise InputError(
            f"data file '{path}' has labels {label_keys[0]!r} of type {labels.dtype}; "
            "labels must be integers 0..K-1"
        )
    return data, torch.from_numpy(labels.astype(np.int64))


def _read_member(
    path: pathlib.Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, key: str, size: int
) -> np.ndarray:
    """One array of an ``.npz`` archive of ``size`` bytes, its sizes and header checked first."""
    what = f"data file '{path}' (array {key!r})"
    fix = _SAVE_HINT[".npz"]
    expansion = _MAX_EXPANSION.get(info.compress_type)
    if info.compress_size > size or (
        expansion is not None and info.file_size > expansion * info.compress_size + 1024
    ):
        raise InputError(
            f"{what} is damaged: its zip entry claims {info.file_size:,} bytes from "
            f"{info.compress_size:,} stored bytes, which the {size:,}-byte archive cannot hold; "
            f"save it again with {fix}"
        )
    with archive.open(info) as member:
        _check_npy_header(member, size=info.file_size, what=what, fix=fix)
    with archive.open(info) as member:
        return np.lib.format.read_array(member, allow_pickle=False)
