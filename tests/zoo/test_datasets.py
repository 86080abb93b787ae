"""Tests for zoo.datasets: the real files in ../shared/data, bundled data, and users' files.

Nothing here touches the network. The shared data are checked against their MD5SUMS first, so a
wrong or damaged file fails loudly instead of making the numbers below look wrong.
"""

import gzip
import hashlib
import io
import os
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.io
import torch

from zoo.datasets import (
    DATASETS,
    Dataset,
    default_data_root,
    dynamic_binarize,
    load_dataset,
)
from zoo.errors import InputError

# The repository sits beside `shared/` (here /work/main and /work/shared; in CI, ../shared).
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"

# Published per-class counts of the MNIST training and test sets.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def shared_data() -> Path:
    """The shared data folder, after checking every file in its MD5SUMS (fails if missing).

    It shadows the session fixture of the same name in tests/conftest.py to add the MD5 check.
    """
    sums = SHARED_DATA / "MD5SUMS"
    if not sums.is_file():
        pytest.fail(f"{sums} is missing; the tests need the shared data beside the repository")
    for line in sums.read_text().splitlines():
        expected, relative = line.split()
        path = SHARED_DATA / relative
        if not path.is_file():
            pytest.fail(f"shared data file {path} is missing")
        actual = hashlib.md5(path.read_bytes()).hexdigest()
        assert actual == expected, f"{path} has MD5 {actual}, MD5SUMS says {expected}"
    return SHARED_DATA


@pytest.fixture(scope="module")
def mnist(shared_data: Path) -> Dataset:
    return load_dataset("mnist", root=shared_data)


@pytest.fixture(scope="module")
def fashion_mnist(shared_data: Path) -> Dataset:
    return load_dataset("fashion-mnist", root=shared_data)


def read_idx_reference(path: Path, header_size: int) -> np.ndarray:
    """An independent, minimal IDX reader: skip the header, keep the bytes."""
    with gzip.open(path, "rb") as stream:
        return np.frombuffer(stream.read()[header_size:], dtype=np.uint8)


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as a gzipped IDX file, as the MNIST files are written."""
    header = bytes((0, 0, 0x08, array.ndim)) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(folder: Path, num_train: int = 5, num_test: int = 3) -> dict:
    """Four small IDX files with known contents, in ``folder``."""
    generator = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": generator.integers(0, 256, (num_train, 28, 28)),
        "train-labels-idx1-ubyte": generator.integers(0, 10, num_train),
        "t10k-images-idx3-ubyte": generator.integers(0, 256, (num_test, 28, 28)),
        "t10k-labels-idx1-ubyte": generator.integers(0, 10, num_test),
    }
    folder.mkdir(parents=True)
    for stem, array in arrays.items():
        write_idx(folder / f"{stem}.gz", array)
    return arrays


# --- MNIST and Fashion-MNIST -----------------------------------------------------------------


def test_mnist_shapes_range_and_metadata(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.train.shape == (60000, 784) and mnist.test.shape == (10000, 784)
    assert mnist.dim == 784 and mnist.obs_shape == (28, 28) and mnist.is_image
    assert mnist.train.dtype == torch.float32 and mnist.test.dtype == torch.float32
    assert mnist.train.device.type == "cpu"
    assert mnist.train.min() == 0.0 and mnist.train.max() == 1.0
    assert mnist.test.min() == 0.0 and mnist.test.max() == 1.0
    assert mnist.binarize is None and mnist.true_params is None
    assert "60000 train + 10000 test" in mnist.describe()


def test_mnist_labels_match_the_idx_files(mnist: Dataset, shared_data: Path) -> None:
    train_reference = read_idx_reference(shared_data / "mnist/train-labels-idx1-ubyte.gz", 8)
    assert mnist.train_labels.dtype == torch.int64
    train_counts = torch.bincount(mnist.train_labels, minlength=10).tolist()
    assert train_counts == np.bincount(train_reference, minlength=10).tolist()
    assert train_counts == MNIST_TRAIN_COUNTS  # 5923 zeros, as published
    assert torch.bincount(mnist.test_labels, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert sum(train_counts) == 60000


def test_mnist_pixels_match_the_idx_file(mnist: Dataset, shared_data: Path) -> None:
    pixels = read_idx_reference(shared_data / "mnist/t10k-images-idx3-ubyte.gz", 16)
    reference = torch.from_numpy(pixels.reshape(10000, 784).astype(np.float32) / 255)
    assert torch.equal(mnist.test, reference)
    # An image is stored row by row: row 0 of every MNIST digit is blank, the centre is not.
    first_image = mnist.train[0].reshape(mnist.obs_shape)
    assert first_image[0].sum() == 0 and first_image[10:18, 10:18].sum() > 0


def test_fashion_mnist_has_6000_training_images_per_class(fashion_mnist: Dataset) -> None:
    assert fashion_mnist.train.shape == (60000, 784) and fashion_mnist.test.shape == (10000, 784)
    assert torch.bincount(fashion_mnist.train_labels).tolist() == [6000] * 10
    assert torch.bincount(fashion_mnist.test_labels).tolist() == [1000] * 10
    assert fashion_mnist.train.min() == 0.0 and fashion_mnist.train.max() == 1.0
    assert fashion_mnist.obs_shape == (28, 28) and fashion_mnist.is_image


def test_torchvision_layout_is_read_too(tmp_path: Path) -> None:
    arrays = write_tiny_mnist(tmp_path / "MNIST" / "raw")
    dataset = load_dataset("mnist", root=tmp_path)
    expected = arrays["train-images-idx3-ubyte"].reshape(5, 784) / 255
    torch.testing.assert_close(dataset.train, torch.from_numpy(expected).float())
    assert dataset.train_labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert dataset.test.shape == (3, 784) and dataset.test_labels.shape == (3,)


def test_data_root_comes_from_the_environment(tmp_path: Path, monkeypatch) -> None:
    write_tiny_mnist(tmp_path / "fashion-mnist")
    monkeypatch.setenv("LVM_ZOO_DATA", str(tmp_path))
    assert default_data_root() == tmp_path
    assert load_dataset("fashion-mnist").train.shape == (5, 784)
    monkeypatch.delenv("LVM_ZOO_DATA")
    assert default_data_root() == Path.home() / ".cache" / "lvm-zoo"


def test_missing_mnist_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="mnist was not found") as error:
        load_dataset("mnist", root=tmp_path)
    message = str(error.value)
    assert str(tmp_path / "mnist") in message and str(tmp_path / "MNIST" / "raw") in message
    assert "--data-root" in message and "LVM_ZOO_DATA" in message and "--download" in message
    assert list(tmp_path.iterdir()) == []  # nothing was written


def test_a_damaged_idx_file_is_refused(tmp_path: Path) -> None:
    write_tiny_mnist(tmp_path / "mnist")
    (tmp_path / "mnist" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08"))
    with pytest.raises(InputError, match="train-labels-idx1-ubyte.gz' is not an IDX file"):
        load_dataset("mnist", root=tmp_path)


# --- Frey face, Old Faithful, iris, digits ---------------------------------------------------


def test_frey_face(shared_data: Path) -> None:
    dataset = load_dataset("frey-face", root=shared_data, test_fraction=0)
    assert dataset.train.shape == (1965, 560) and dataset.test.shape == (0, 560)
    assert dataset.obs_shape == (28, 20) and dataset.is_image and dataset.train_labels is None
    assert dataset.train.min() == pytest.approx(8 / 255)
    assert dataset.train.max() == pytest.approx(238 / 255)
    faces = scipy.io.loadmat(shared_data / "frey-face" / "frey_rawface.mat")["ff"]
    first = torch.from_numpy(faces[:, 0].astype(np.float32) / 255)
    assert torch.equal(dataset.train[0], first)
    split = load_dataset("frey-face", root=shared_data)
    assert split.train.shape[0] + split.test.shape[0] == 1965


def test_frey_face_file_directly_under_the_root(shared_data: Path, tmp_path: Path) -> None:
    (tmp_path / "frey_rawface.mat").symlink_to(shared_data / "frey-face" / "frey_rawface.mat")
    assert load_dataset("frey-face", root=tmp_path).dim == 560
    with pytest.raises(InputError, match=r"frey-face was not found.*--data-root"):
        load_dataset("frey-face", root=tmp_path / "elsewhere")


def test_old_faithful_is_bundled_byte_for_byte(shared_data: Path) -> None:
    bundled = Path(__file__).resolve().parents[2] / "zoo" / "data" / "faithful.csv"
    assert bundled.read_bytes() == (shared_data / "old-faithful" / "faithful.csv").read_bytes()
    dataset = load_dataset("old-faithful", test_fraction=0, dtype=torch.float64)
    assert dataset.train.shape == (272, 2) and dataset.test.shape == (0, 2)
    assert dataset.train[0].tolist() == [3.6, 79.0]
    assert dataset.feature_names == ("eruptions", "waiting")
    assert dataset.obs_shape == (2,) and not dataset.is_image
    assert dataset.train.dtype == torch.float64


def test_iris_and_digits() -> None:
    iris = load_dataset("iris", test_fraction=0)
    assert iris.train.shape == (150, 4) and len(iris.feature_names) == 4
    assert torch.bincount(iris.train_labels).tolist() == [50, 50, 50]
    digits = load_dataset("digits", test_fraction=0)
    assert digits.train.shape == (1797, 64) and digits.obs_shape == (8, 8) and digits.is_image
    # Raw pixel counts are kept, not scaled to [0, 1].
    assert digits.train.min() == 0 and digits.train.max() == 16
    assert set(digits.train_labels.unique().tolist()) == set(range(10))


def test_named_datasets_are_listed() -> None:
    assert DATASETS == ("old-faithful", "iris", "digits", "mnist", "fashion-mnist", "frey-face")


# --- the seeded split ------------------------------------------------------------------------


@pytest.fixture
def numbered_rows(tmp_path: Path) -> Path:
    """50 rows whose first column is the row number, so every row can be traced."""
    path = tmp_path / "numbered.npy"
    np.save(path, np.stack([np.arange(50.0), np.linspace(0, 1, 50)], axis=1))
    return path


def test_split_is_disjoint_covers_all_rows_and_is_reproducible(numbered_rows: Path) -> None:
    first = load_dataset(str(numbered_rows), test_fraction=0.2, seed=3)
    again = load_dataset(str(numbered_rows), test_fraction=0.2, seed=3)
    other = load_dataset(str(numbered_rows), test_fraction=0.2, seed=4)
    train_ids = set(first.train[:, 0].tolist())
    test_ids = set(first.test[:, 0].tolist())
    assert len(train_ids) == 40 and len(test_ids) == 10
    assert train_ids.isdisjoint(test_ids) and train_ids | test_ids == set(range(50))
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    assert set(other.test[:, 0].tolist()) != test_ids


def test_split_keeps_labels_with_their_rows() -> None:
    full = load_dataset("iris", test_fraction=0)
    split = load_dataset("iris", test_fraction=0.3, seed=1)
    assert split.test.shape == (45, 4)
    # Each test row, found in the full table, carries the same label.
    matches = (split.test[:, None, :] == full.train[None, :, :]).all(dim=2)
    labels_of_match = full.train_labels[matches.float().argmax(dim=1)]
    assert torch.equal(labels_of_match, split.test_labels)


def test_test_fraction_zero_gives_an_empty_test_set(numbered_rows: Path) -> None:
    dataset = load_dataset(str(numbered_rows), test_fraction=0)
    assert dataset.test.shape == (0, 2) and dataset.train.shape == (50, 2)
    assert dataset.train[:, 0].tolist() == list(range(50))  # file order is kept


# --- users' files ----------------------------------------------------------------------------


def test_csv_with_header(tmp_path: Path) -> None:
    path = tmp_path / "my.csv"
    path.write_text("height,weight\n1.5,60\n1.8,80\n1.7,75\n")
    dataset = load_dataset(str(path), test_fraction=0)
    assert dataset.name == str(path) and dataset.feature_names == ("height", "weight")
    expected = torch.tensor([[1.5, 60], [1.8, 80], [1.7, 75]])
    torch.testing.assert_close(dataset.train, expected)
    assert dataset.obs_shape == (2,) and not dataset.is_image and dataset.train_labels is None


def test_csv_without_header_given_as_a_path(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv"
    path.write_text("# a comment\n1,2,3\n\n4,5,6\n")
    dataset = load_dataset(path, test_fraction=0, dtype=torch.float64)
    assert dataset.name == str(path) and dataset.train.dtype == torch.float64
    assert dataset.feature_names is None
    assert dataset.train.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_csv_separated_by_semicolons_with_decimal_commas_or_by_tabs(tmp_path: Path) -> None:
    """What Excel writes where the decimal mark is a comma, and a tab-separated table, read as
    pandas.read_csv(sep=";", decimal=",") and sep="\\t" would read them."""
    pandas = pytest.importorskip("pandas")
    semicolons = tmp_path / "european.csv"
    semicolons.write_text("höhe;gewicht\n1,5;60\n1,8;80,25\n1,7;75\n")
    tabs = tmp_path / "tabs.csv"
    tabs.write_text("1.5\t60\n1.8\t80.25\n")
    for path, options in ((semicolons, {"sep": ";", "decimal": ","}),
                          (tabs, {"sep": "\t", "header": None})):
        dataset = load_dataset(path, test_fraction=0, dtype=torch.float64)
        expected = pandas.read_csv(path, **options).to_numpy(dtype=np.float64)
        np.testing.assert_array_equal(dataset.train.numpy(), expected)
    assert load_dataset(semicolons, test_fraction=0).feature_names == ("höhe", "gewicht")


def test_csv_with_a_stray_separator_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "mixed.csv"
    path.write_text("a;b\n1;2\n3,4;5;6\n")
    with pytest.raises(InputError, match="semicolon-separated"):
        load_dataset(path, test_fraction=0)


def test_npy_and_npz(tmp_path: Path) -> None:
    data = np.arange(12.0).reshape(6, 2)
    np.save(tmp_path / "a.npy", data)
    np.savez(tmp_path / "one.npz", anything=data)
    np.savez(tmp_path / "keyed.npz", x=data, y=np.arange(6), mean=data.mean(0))
    for name in ("a.npy", "one.npz", "keyed.npz"):
        dataset = load_dataset(str(tmp_path / name), test_fraction=0)
        assert dataset.train.tolist() == data.tolist(), name
    labelled = load_dataset(str(tmp_path / "keyed.npz"), test_fraction=0)
    assert labelled.train_labels.tolist() == list(range(6))


@pytest.mark.parametrize("layout", ["C", "F", "big-endian", "float64", "images"])
def test_a_large_npy_is_mapped_and_split_as_one_read(tmp_path: Path, monkeypatch,
                                                     layout: str) -> None:
    """A ``.npy`` past ``MAP_BYTES`` is memory-mapped (not read into memory, then copied) and
    gives the split that reading it gives, bit for bit, in C or Fortran order, in another
    byte order or dtype (converted) and as images; the parts are writeable tensors of their
    own, and a NaN in the mapped rows is still the one-line error naming its row."""
    from zoo.datasets import files

    generator = np.random.default_rng(4)
    data = generator.normal(size=(1000, 6)).astype(np.float32)
    if layout == "F":
        data = np.asfortranarray(data)
    elif layout == "big-endian":
        data = data.astype(">f4")
    elif layout == "float64":
        data = data.astype(np.float64)
    elif layout == "images":
        data = data.reshape(1000, 2, 3)
    np.save(tmp_path / "rows.npy", data)
    read = load_dataset(str(tmp_path / "rows.npy"), test_fraction=0.25, seed=3)
    maps = []
    original = files.mmap.mmap
    monkeypatch.setattr(files.mmap, "mmap", lambda *a, **k: maps.append(1) or original(*a, **k))
    monkeypatch.setattr(files, "MAP_BYTES", 1024)
    mapped = load_dataset(str(tmp_path / "rows.npy"), test_fraction=0.25, seed=3)
    assert maps == [1]
    assert torch.equal(mapped.train, read.train) and torch.equal(mapped.test, read.test)
    assert mapped.train.dtype == torch.float32 and mapped.obs_shape == read.obs_shape
    mapped.train[0, 0] = 7.0  # its own memory: the file is untouched
    assert float(np.load(tmp_path / "rows.npy").reshape(1000, -1)[0, 0]) != 7.0
    bad = np.load(tmp_path / "rows.npy")
    bad.reshape(1000, -1)[417, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(InputError, match=r"1 NaN or infinite values \(the first in row 417"):
        load_dataset(str(tmp_path / "bad.npy"))


def test_three_dimensional_arrays_are_images(tmp_path: Path) -> None:
    np.save(tmp_path / "images.npy", np.full((4, 3, 5), 0.5))
    dataset = load_dataset(str(tmp_path / "images.npy"), test_fraction=0)
    assert dataset.train.shape == (4, 15) and dataset.obs_shape == (3, 5) and dataset.is_image


def test_synthetic_data_come_from_the_model_spec(monkeypatch) -> None:
    import zoo.registry

    def synthetic(num_data, generator, dtype):
        x = torch.randn(num_data, 3, generator=generator, dtype=dtype)
        return x, torch.arange(num_data) % 2, {"loc": torch.zeros(3, dtype=dtype)}

    def get_model(name):
        if name != "fake":
            raise InputError(f"unknown model '{name}'")
        return SimpleNamespace(synthetic=synthetic)

    # A stand-in registry entry: the real models' synthetic data are tested with the models.
    monkeypatch.setattr(zoo.registry, "get_model", get_model)
    dataset = load_dataset("synthetic-fake", seed=7, dtype=torch.float64)
    assert dataset.train.shape == (800, 3) and dataset.test.shape == (200, 3)
    assert dataset.train.dtype == torch.float64 and dataset.train_labels.dtype == torch.int64
    assert torch.equal(dataset.true_params["loc"], torch.zeros(3, dtype=torch.float64))
    assert "drawn from the prior of fake" in dataset.source
    again = load_dataset("synthetic-fake", seed=7, dtype=torch.float64)
    assert torch.equal(dataset.train, again.train)
    with pytest.raises(InputError, match="synthetic-other.*unknown model 'other'"):
        load_dataset("synthetic-other")


@pytest.fixture
def bad_files(tmp_path: Path) -> Path:
    """A folder of malformed data files, one per way a user's file can be wrong."""
    (tmp_path / "words.csv").write_text("a,b\n1,2\n3,oops\n")
    (tmp_path / "ragged.csv").write_text("1,2\n3\n")
    (tmp_path / "header_only.csv").write_text("a,b\n")
    (tmp_path / "blank.csv").write_text("\n\n")
    (tmp_path / "data.txt").write_text("1,2\n")
    np.save(tmp_path / "nan.npy", np.array([[1.0, 2.0], [np.nan, 1.0], [np.inf, 0.0]]))
    np.save(tmp_path / "flat.npy", np.arange(5.0))
    np.save(tmp_path / "empty.npy", np.zeros((0, 3)))
    np.save(tmp_path / "text.npy", np.array([["a", "b"]]))
    np.save(tmp_path / "objects.npy", np.array([[{}], [{}]], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "two.npz", first=np.ones((2, 2)), second=np.ones((2, 2)))
    np.save(tmp_path / "one_row.npy", np.ones((1, 2)))
    # A header promising 2**40 x 8 float64 (64 TiB) over 16 bytes: must be refused, not allocated.
    (tmp_path / "huge.npy").write_bytes(npy_header((2**40, 8)) + bytes(16))
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("x.npy", npy_header((2**40, 8)) + bytes(16))
        archive.writestr("y.npy", npy_header((2**40,), "<i8") + bytes(8))
    with zipfile.ZipFile(tmp_path / "raw_member.npz", "w") as archive:
        archive.writestr("x", b"not an array")
    np.savez(tmp_path / "objects.npz", x=np.array([[{}], [{}]], dtype=object))
    np.save(tmp_path / "truncated.npy", np.ones((10, 3)))
    whole = (tmp_path / "truncated.npy").read_bytes()
    (tmp_path / "truncated.npy").write_bytes(whole[:-8])
    (tmp_path / "zero_bytes.npy").write_bytes(b"")
    (tmp_path / "zero_bytes.csv").write_bytes(b"")
    (tmp_path / "zero_bytes.npz").write_bytes(b"")
    (tmp_path / "csv_as.npy").write_text("1,2\n3,4\n")  # a CSV saved under the wrong suffix
    (tmp_path / "latin1.csv").write_bytes("caf\xe9,x\n1,2\n".encode("latin-1"))
    (tmp_path / "nan.csv").write_text("a,b\n1,2\n3,nan\n-inf,4\n")
    (tmp_path / "overflow.csv").write_text("a,b\n1,2\n1e300,4\n-3e39,5\n")
    (tmp_path / "folder.npy").mkdir()
    return tmp_path


def npy_header(shape: tuple, descr: str = "<f8") -> bytes:
    """The magic string and version 1.0 header of an .npy file claiming ``shape``."""
    stream = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        stream, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return stream.getvalue()


# (arguments of load_dataset with "{tmp}" for the bad_files folder, a regex the error matches)
BAD_INPUTS = [
    pytest.param({"name": "{tmp}/missing.csv"}, r"missing\.csv' does not exist; check the path",
                 id="missing-file"),
    pytest.param({"name": "foo"}, r"unknown dataset 'foo'; choose one of: old-faithful, .*\.csv",
                 id="unknown-name"),
    pytest.param({"name": "{tmp}/words.csv"}, r"words\.csv'.*row 2.*column 2 \('b'\).*'oops'",
                 id="non-numeric-cell"),
    pytest.param({"name": "{tmp}/ragged.csv"}, r"ragged\.csv' is not a rectangular table",
                 id="ragged-csv"),
    pytest.param({"name": "{tmp}/header_only.csv"}, r"header_only\.csv' is empty",
                 id="header-only-csv"),
    pytest.param({"name": "{tmp}/blank.csv"}, r"blank\.csv' is empty", id="blank-csv"),
    pytest.param({"name": "{tmp}/nan.npy"}, r"nan\.npy' holds 2 NaN or infinite.*row 1",
                 id="nan-and-inf"),
    pytest.param({"name": "{tmp}/flat.npy"}, r"flat\.npy' needs a 2-D.*\(5,\).*to \(5, 1\)",
                 id="one-dimensional"),
    pytest.param({"name": "{tmp}/empty.npy"}, r"empty\.npy' is empty", id="empty-array"),
    pytest.param({"name": "{tmp}/text.npy"}, r"text\.npy' holds values of type <U1",
                 id="strings"),
    pytest.param({"name": "{tmp}/objects.npy"},
                 r"objects\.npy' cannot be read safely: it holds Python objects \(dtype object\)",
                 id="pickled-objects"),
    pytest.param({"name": "{tmp}/objects.npz"},
                 r"objects\.npz' \(array 'x'\) cannot be read safely: it holds Python objects",
                 id="pickled-objects-in-npz"),
    pytest.param({"name": "{tmp}/huge.npy"},
                 r"huge\.npy' is truncated or damaged: its header promises a float64 array of "
                 r"shape \(1099511627776, 8\) \(70,368,744,177,664 bytes\), but only 16 bytes "
                 r"follow the header; save it again with numpy\.save",
                 id="npy-header-claims-64-TiB"),
    pytest.param({"name": "{tmp}/huge.npz"},
                 r"huge\.npz' \(array 'x'\) is truncated or damaged: .* shape "
                 r"\(1099511627776, 8\).* only 16 bytes .*numpy\.savez",
                 id="npz-member-header-claims-64-TiB"),
    pytest.param({"name": "{tmp}/truncated.npy"},
                 r"truncated\.npy' is truncated or damaged: .* shape \(10, 3\) \(240 bytes\), "
                 r"but only 232 bytes",
                 id="truncated-npy"),
    pytest.param({"name": "{tmp}/raw_member.npz"},
                 r"raw_member\.npz' \(array 'x'\) is not a \.npy array .*magic string",
                 id="npz-member-not-an-array"),
    pytest.param({"name": "{tmp}/csv_as.npy"}, r"csv_as\.npy' is not a \.npy array.*numpy\.save",
                 id="npy-without-magic"),
    pytest.param({"name": "{tmp}/zero_bytes.npy"},
                 r"zero_bytes\.npy' is empty \(0 bytes\).*numpy\.save\(path, data\)",
                 id="empty-npy-file"),
    pytest.param({"name": "{tmp}/zero_bytes.npz"}, r"zero_bytes\.npz' is empty \(0 bytes\)",
                 id="empty-npz-file"),
    pytest.param({"name": "{tmp}/zero_bytes.csv"}, r"zero_bytes\.csv' is empty \(0 bytes\)",
                 id="empty-csv-file"),
    pytest.param({"name": "{tmp}/folder.npy"}, r"folder\.npy' is a folder; check the path",
                 id="folder-not-file"),
    pytest.param({"name": "{tmp}/words.csv/inner.npy"},
                 r"inner\.npy' does not exist: '.*words\.csv' is a file, not a folder",
                 id="parent-is-a-file"),
    pytest.param({"name": "{tmp}/latin1.csv"},
                 r"latin1\.csv' is not UTF-8 text: byte 0xe9 on line 1, column 4 .*save it as "
                 r"UTF-8",
                 id="csv-not-utf8"),
    pytest.param({"name": "{tmp}/nan.csv"},
                 r"nan\.csv' holds 2 NaN or infinite values \(the first in row 1",
                 id="csv-nan-and-inf"),
    pytest.param({"name": "{tmp}/overflow.csv"},
                 r"overflow\.csv' holds 2 values whose magnitude exceeds float32's range "
                 r"\(±3\.403e\+38; the largest is 1e\+300, the first in row 1.*--dtype float64",
                 id="beyond-float32"),
    pytest.param({"name": "{tmp}/two.npz"}, r"two\.npz' holds the arrays 'first', 'second'",
                 id="ambiguous-npz"),
    pytest.param({"name": "{tmp}/data.txt"}, r"data\.txt' has an unsupported type.*\.csv/\.npy",
                 id="unsupported-suffix"),
    pytest.param({"name": "iris", "test_fraction": -0.1}, r"--test-fraction=-0\.1 is outside",
                 id="negative-test-fraction"),
    pytest.param({"name": "iris", "test_fraction": 1.0}, r"--test-fraction=1\.0 is outside",
                 id="test-fraction-one"),
    pytest.param({"name": "iris", "test_fraction": float("nan")}, r"--test-fraction=nan is",
                 id="nan-test-fraction"),
    pytest.param({"name": "{tmp}/one_row.npy", "test_fraction": 0.5},
                 r"leaves no training rows out of the 1 rows", id="no-training-rows"),
    pytest.param({"name": "old-faithful", "binarize": "static"},
                 r"--binarize=static needs image data, but 'old-faithful'", id="binarize-tabular"),
    pytest.param({"name": "digits", "binarize": "static"},
                 r"needs pixel values in \[0, 1\], but 'digits'.*\[0, 16\]",
                 id="binarize-static-beyond-one"),
    pytest.param({"name": "digits", "binarize": "dynamic"}, r"needs pixel values in \[0, 1\]",
                 id="binarize-dynamic-beyond-one"),
    pytest.param({"name": "digits", "binarize": "sometimes"}, r"--binarize='sometimes' is not",
                 id="unknown-binarize"),
    pytest.param({"name": "digits", "binarize": "static", "standardize": True},
                 r"cannot be combined", id="binarize-and-standardize"),
    pytest.param({"name": "iris", "dtype": torch.int64}, r"dtype=torch\.int64 is not supported",
                 id="integer-dtype"),
    pytest.param({"name": "synthetic-nosuchmodel"}, r"synthetic-nosuchmodel",
                 id="unknown-synthetic-model"),
]


@pytest.mark.parametrize("arguments, message", BAD_INPUTS)
def test_bad_input_raises_an_input_error_naming_it(
    bad_files: Path, arguments: dict, message: str
) -> None:
    arguments = dict(arguments, name=arguments["name"].format(tmp=bad_files))
    with pytest.raises(InputError, match=message):
        load_dataset(**arguments)


def test_values_beyond_float32_load_as_float64(bad_files: Path) -> None:
    dataset = load_dataset(bad_files / "overflow.csv", test_fraction=0, dtype=torch.float64)
    assert dataset.train[:, 0].tolist() == [1.0, 1e300, -3e39]


def test_an_unreadable_file_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "locked.npy"
    np.save(path, np.ones((3, 2)))
    path.chmod(0)
    if os.geteuid() == 0:
        # Root reads a mode-000 file anyway; make open() fail as it does for anyone else.
        import zoo.datasets.files

        def refuse(file, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(file))

        monkeypatch.setattr(zoo.datasets.files, "open", refuse, raising=False)
    with pytest.raises(InputError, match=r"locked\.npy' cannot be opened \(Permission denied\); "
                                         r"check that it is a file you may read"):
        load_dataset(path)


def test_arrays_of_images_keep_their_shape_in_the_metadata(tmp_path: Path) -> None:
    np.save(tmp_path / "rgb.npy", np.zeros((2, 4, 3, 3), dtype=np.uint8))
    dataset = load_dataset(tmp_path / "rgb.npy", test_fraction=0)
    assert dataset.train.shape == (2, 36) and dataset.obs_shape == (4, 3, 3) and dataset.is_image
    assert "4x3x3 images" in dataset.describe()


# --- binarization and standardization --------------------------------------------------------


def test_static_binarization_is_binary_and_reproducible(shared_data: Path) -> None:
    grey = load_dataset("frey-face", root=shared_data)
    first = load_dataset("frey-face", root=shared_data, binarize="static", seed=5)
    again = load_dataset("frey-face", root=shared_data, binarize="static", seed=5)
    other = load_dataset("frey-face", root=shared_data, binarize="static", seed=6)
    assert first.binarize == "static"
    assert set(first.train.unique().tolist()) == {0.0, 1.0}
    assert set(first.test.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(first.train, again.train) and torch.equal(first.test, again.test)
    assert not torch.equal(first.train, other.train)
    # A Bernoulli draw has the grey image's mean (about 0.6 here), up to sampling noise.
    assert first.train.mean().item() == pytest.approx(grey.train.mean().item(), abs=0.005)


def test_dynamic_binarization_keeps_grey_values(shared_data: Path) -> None:
    grey = load_dataset("frey-face", root=shared_data)
    dynamic = load_dataset("frey-face", root=shared_data, binarize="dynamic")
    assert dynamic.binarize == "dynamic" and torch.equal(dynamic.train, grey.train)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dynamic_binarize_samples_bernoulli(dtype: torch.dtype) -> None:
    probabilities = torch.linspace(0, 1, 784, dtype=dtype).expand(2000, 784)
    sample = dynamic_binarize(probabilities, torch.Generator().manual_seed(0))
    assert sample.shape == probabilities.shape and sample.dtype == dtype
    assert set(sample.unique().tolist()) == {0.0, 1.0}
    # Per-pixel frequencies follow the probabilities (standard error <= 0.011 per pixel).
    torch.testing.assert_close(sample.mean(0), probabilities[0], atol=0.05, rtol=0)
    assert sample.mean().item() == pytest.approx(0.5, abs=0.002)
    repeat = dynamic_binarize(probabilities, torch.Generator().manual_seed(0))
    assert torch.equal(sample, repeat)


def test_standardize_uses_training_statistics() -> None:
    raw = load_dataset("old-faithful", seed=2, dtype=torch.float64)
    standard = load_dataset("old-faithful", seed=2, dtype=torch.float64, standardize=True)
    torch.testing.assert_close(standard.train.mean(0), torch.zeros(2, dtype=torch.float64))
    torch.testing.assert_close(standard.train.std(0, correction=0), torch.ones(2).double())
    mean, std = raw.train.mean(0), raw.train.std(0, correction=0)
    torch.testing.assert_close(standard.test, (raw.test - mean) / std)
