"""``--dequantize``: 8-bit pixels k/255 spread over their bins as (k + u)/256, and bits per
dimension in the fit record (Theis et al., 2016), checked against independent computations."""

import json
import math
import re

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from inference import api
from inference.cli import main
from inference.data import DataRequest, load
from inference.fitting import make_config
from zoo.datasets import load_dataset
from zoo.errors import InputError

BIN = 1 / 256
FLOOR = 1 / (256 * math.sqrt(12))  # the spread of U[0, 1/256): the σ floor on dequantized data


def run(capsys, *argv):
    code = main([str(arg) for arg in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dequantized_pixels_lie_in_their_8bit_bins_drawn_from_the_seed(shared_data):
    # test_fraction=0: every seed keeps the rows in file order, so only the noise differs
    plain = load_dataset("frey-face", root=shared_data, test_fraction=0.0)
    noisy = load_dataset("frey-face", root=shared_data, test_fraction=0.0, dequantize=True)
    levels = torch.round(plain.train * 255)
    assert torch.equal(levels / 255, plain.train)  # the plain load is k/255, k = 0..255
    assert torch.equal(torch.floor(noisy.train * 256), levels)  # x̃ in [k/256, (k+1)/256)
    assert noisy.bin_width == BIN and plain.bin_width is None
    assert "dequantized" in noisy.describe() and "dequantized" not in plain.describe()
    # the noise: u ~ U[0, 1) from one generator seeded by the seed, train first
    expected = (levels + torch.rand(levels.shape, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(noisy.train, expected / 256, rtol=0, atol=1e-6)
    again = load_dataset("frey-face", root=shared_data, test_fraction=0.0, dequantize=True)
    other = load_dataset("frey-face", root=shared_data, test_fraction=0.0, dequantize=True,
                         seed=1)
    assert torch.equal(again.train, noisy.train)
    assert not torch.equal(other.train, noisy.train)
    assert torch.equal(torch.floor(other.train * 256), levels)
    # with a test set: both parts in their bins, in float64 too
    split = load_dataset("frey-face", root=shared_data, dequantize=True, dtype=torch.float64)
    reference = load_dataset("frey-face", root=shared_data, dtype=torch.float64)
    for part in ("train", "test"):
        assert torch.equal(torch.floor(getattr(split, part) * 256),
                           torch.round(getattr(reference, part) * 255))


@pytest.fixture
def npy_images(tmp_path):
    path = tmp_path / "images.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (20, 4)).astype(np.float32) / 255)
    return path


REFUSALS = {  # id: (CLI arguments after `fit`, the same as Python keywords, what both say)
    "tabular": (["ppca", "--data", "old-faithful"], {"name": "old-faithful"},
                "--dequantize is for 8-bit images"),
    "not-8-bit": (["ppca", "--data", "digits"], {"name": "digits"}, "values k/255"),
    "binarize": (["dglvm", "--data", "frey-face", "--binarize", "static"],
                 {"name": "frey-face", "binarize": "static"},
                 "--dequantize and --binarize=static cannot be combined"),
    "standardize": (["ppca", "--data", "frey-face", "--standardize"],
                    {"name": "frey-face", "standardize": True},
                    "--dequantize and --standardize cannot be combined"),
    "streamed": (["ppca", "--data", "NPY", "--chunk-rows", "10"],
                 {"name": "NPY", "chunk_rows": 10}, "--dequantize need the rows in memory"),
    "bernoulli": (["dglvm", "--data", "frey-face", "--likelihood", "bernoulli"],
                  {"name": "frey-face", "likelihood": "bernoulli"},
                  "use --binarize instead of --dequantize"),
}


@pytest.mark.parametrize(("argv", "keywords", "says"), REFUSALS.values(), ids=REFUSALS)
def test_refusals_exit_2_with_one_line_and_raise_input_error(argv, keywords, says, capsys,
                                                             tmp_path, shared_data, npy_images):
    argv = [str(npy_images) if arg == "NPY" else arg for arg in argv]
    code, out, err = run(capsys, "fit", *argv, "--dequantize", "--data-root", shared_data,
                         "--out", tmp_path / "run")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and says in err, err
    assert not (tmp_path / "run").exists()
    # the Python face raises the same InputError
    keywords = {k: str(npy_images) if v == "NPY" else v for k, v in keywords.items()}
    options = {"likelihood": keywords.pop("likelihood")} if "likelihood" in keywords else {}
    request = DataRequest(root=str(shared_data), dequantize=True, **keywords)
    with pytest.raises(InputError, match=re.escape(says)):
        api.fit(argv[0], data=request, **options)


def test_bits_per_dim_of_ppca_against_sklearn_and_the_evaluate_command(capsys, tmp_path,
                                                                       shared_data):
    q, run_dir = 5, tmp_path / "ppca"
    code, out, err = run(capsys, "fit", "ppca", "--data", "frey-face", "--data-root",
                         shared_data, "--dequantize", "--latent-dim", q, "--dtype", "float64",
                         "--out", run_dir, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["bin_width"] == BIN and record["inference"] == "closed-form"
    # the same dequantized arrays, loaded here; PPCA's exact log-likelihood (Tipping & Bishop)
    # by scikit-learn, whose covariance divides by N - 1: rescaled to maximum likelihood's N
    data = load_dataset("frey-face", root=shared_data, dequantize=True, dtype=torch.float64)
    train, test = data.train.numpy(), data.test.numpy()
    pca = PCA(n_components=q).fit(train)
    shrink = (len(train) - 1) / len(train)
    pca.explained_variance_ *= shrink
    pca.noise_variance_ *= shrink
    assert record["train_log_likelihood"] == pytest.approx(pca.score(train), abs=1e-3)
    assert record["test_log_likelihood"] == pytest.approx(pca.score(test), abs=1e-3)
    dim = train.shape[1]
    for split in ("train", "test"):
        nats = record[f"{split}_log_likelihood"]
        assert record[f"{split}_bits_per_dim"] == pytest.approx(
            -(nats + dim * math.log(BIN)) / (dim * math.log(2)), rel=1e-12)
    assert record["elbo"] is None and record["elbo_bits_per_dim"] is None
    # `lvm-zoo evaluate` rebuilds the same dequantized data from the run folder alone
    code, out, err = run(capsys, "evaluate", run_dir, "--json")
    assert code == 0, err
    again = json.loads(out)
    assert again["bin_width"] == BIN
    for key in ("train_bits_per_dim", "test_bits_per_dim", "test_log_likelihood"):
        assert again[key] == pytest.approx(record[key], abs=1e-9)
    # the data found under another --data-root: the run's dataset, dequantized again
    code, out, err = run(capsys, "evaluate", run_dir, "--data-root", shared_data, "--json")
    assert code == 0, err
    assert json.loads(out)["test_bits_per_dim"] == pytest.approx(record["test_bits_per_dim"],
                                                                 abs=1e-9)


def test_plain_data_record_no_bits_per_dim(shared_data):
    fitted = api.fit("ppca", data=DataRequest("frey-face", root=str(shared_data)), latent_dim=2)
    assert fitted.record["bin_width"] is None
    assert not [key for key in fitted.record if "bits" in key]


def test_dglvm_min_scale_defaults_to_one_bins_spread_on_dequantized_data(capsys, tmp_path,
                                                                          shared_data):
    run_dir = tmp_path / "dglvm"
    code, out, err = run(capsys, "fit", "dglvm", "--data", "frey-face", "--data-root",
                         shared_data, "--dequantize", "--latent-dim", 2, "--hidden", 8,
                         "--epochs", 1, "--batch-size", 1024, "--iwae-samples", 2,
                         "--out", run_dir, "--json")
    assert code == 0, err
    record = json.loads(out)
    assert record["test_bits_per_dim"] is not None and record["elbo_bits_per_dim"] is not None
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert config["min_scale"] == pytest.approx(FLOOR)
    # an explicit --min-scale wins; plain data keep the model's own default
    spec = api.get_model("dglvm")
    dequantized = load(DataRequest("frey-face", root=str(shared_data), dequantize=True), spec)
    plain = load(DataRequest("frey-face", root=str(shared_data)), spec)
    assert make_config(spec, dequantized, {"min_scale": 0.05}).min_scale == 0.05
    assert make_config(spec, dequantized, {"min_scale": None}).min_scale == pytest.approx(FLOOR)
    assert make_config(spec, plain, {}).min_scale == 0.01
