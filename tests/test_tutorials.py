"""Every tutorial runs in smoke mode and shows the numbers it promises.

Each file in ``tutorials/`` is a jupytext percent script. Here each runs as a student would
run it (``python tutorials/NAME.py``) in a subprocess with ``LVM_ZOO_SMOKE=1`` (smaller
problems) and ``LVM_ZOO_TUTORIAL_OUT`` set to a temporary folder; the tutorial writes every
number its text promises to ``numbers.json`` there, and its figures beside it. The tests assert
those numbers (where they are stable in smoke mode) and that every promised figure is a
non-empty PNG. A tutorial missing from :data:`TUTORIALS`, or listed but absent, fails
:func:`test_every_tutorial_is_listed`.

The scripts run two at a time (the tutorials are single-threaded: one torch thread each, which
is also the fastest setting for their small models on a shared machine), started when the first
of their tests asks for them, and only those selected by ``-k``/node ids are started.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS_DIR = ROOT / "tutorials"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKERS = 2  # tutorials run at once; each uses one thread
TIMEOUT = 600  # seconds for one tutorial in smoke mode (they take 15-60 s)


# --- what each tutorial promises ---------------------------------------------------------------


def check_mixtures_and_em(n: dict) -> None:
    assert n["gaussian_logpdf_max_error"] < 1e-10  # the zoo's Gaussian is scipy's
    assert n["sampling_weight_max_error"] < 0.01  # U ~ Uniform(0, 1) picks the component
    assert n["sampling_ks_distance"] < 0.01
    assert abs(n["kl_minimizer_mean"] - n["maximum_likelihood_mean"]) < 0.1  # ML = min KL
    assert n["kl_at_maximum_likelihood"] > 0.05  # no single Gaussian is a mixture
    assert n["em_smallest_step"] >= -1e-9  # EM's log-likelihood never decreases
    assert n["em_final_log_likelihood"] == pytest.approx(-1.41713, abs=1e-4)
    assert n["em_final_log_likelihood"] == pytest.approx(n["sklearn_log_likelihood"], abs=1e-6)
    assert n["em_loop_matches_fit_em"] < 1e-9  # the hand-written loop is fit_em
    entropies = n["responsibility_entropy_by_sigma"]  # σ = 1, 0.5, 0.2, 0.01
    assert all(a > b for a, b in zip(entropies, entropies[1:], strict=False))
    assert entropies[-1] < 1e-6  # hard assignments
    assert n["kmeans_center_error_at_small_sigma"] < 1e-9  # the σ → 0 limit is K-means


def check_em_to_variational_inference(n: dict) -> None:
    assert n["elbo_identity_max_error"] < 1e-10  # log p(x) = ELBO + KL
    assert n["coordinate_ascent_smallest_step"] >= -1e-12  # EM: coordinate ascent on the ELBO
    assert n["gap_after_e_step"] < 1e-10  # the E-step closes the gap
    assert n["lifting_objective_largest_increase"] <= 1e-9  # the lifted objective never rises
    assert n["lifting_relative_gap_to_lp"] < 1e-6  # ... and L1 regression reaches the LP optimum
    guides = n["guides"]
    em = guides["EM"]["log_likelihood"]
    assert em == pytest.approx(-1.41713, abs=1e-4)
    assert guides["exact"]["kl"] < 1e-6  # the exact guide has no gap
    assert abs(guides["exact"]["log_likelihood"] - em) < 0.01
    assert guides["enumerate"]["kl"] == 0.0
    assert abs(guides["enumerate"]["log_likelihood"] - em) < 0.01
    assert guides["mean-field"]["kl"] > 0 and guides["amortized"]["kl"] > 0
    for row in guides.values():
        assert row["log_likelihood"] <= em + 1e-6  # nobody beats the EM optimum
    enumeration = n["enumeration"]
    assert enumeration["exact_guide_std"] < 1e-9  # zero-variance ELBO with q = p(z | x)
    assert enumeration["exact_guide_error"] < 1e-9
    assert enumeration["enumerated_error"] < 1e-9 and enumeration["enumerated_std"] < 1e-9
    assert enumeration["prior_std"] > 0.1  # sampling z from the prior is noisy ...
    assert enumeration["prior_mean"] < enumeration["log_likelihood"] - 1  # ... and loose
    collapse = n["collapse_total_log_likelihood"]
    assert all(b > a for a, b in zip(collapse, collapse[1:], strict=False))  # unbounded
    restarts = n["restarts"]
    assert restarts["worst_single"] < restarts["best_single"] - 0.1  # local optima exist
    assert restarts["n_init_10"] == pytest.approx(restarts["best_single"], abs=1e-6)
    cavi = n["cavi"]
    assert cavi["smallest_step"] >= -1e-12  # CAVI: coordinate ascent on the whole ELBO
    assert 0 <= cavi["last_iteration_below_optimum"] < 1e-8  # converged to its fixed point
    assert -1e-9 <= cavi["svi_gap"] < 0.01  # SVI on the same q: below the optimum, and close
    for k, row in cavi["by_k"].items():  # the Dirichlet process empties what it does not need
        assert row["holding_data"] == 2 and row["weight_holding_data"] > 0.99, k
        assert row["elbo_smallest_step"] >= -1e-9, k
    assert cavi["best_k"] == 2  # the whole ELBO compares K: two clusters
    assert cavi["sklearn"]["max_weight_difference"] < 1e-9  # the same start: scikit-learn's fit
    assert cavi["sklearn"]["offset_spread_over_iterations"] < 1e-6  # ELBO - lower_bound_: const


def check_ppca_and_linear_autoencoders(n: dict) -> None:
    held_out = [n["held_out_log_likelihood_by_q"][q] for q in ("1", "2", "5", "10", "20", "40")]
    assert all(b > a for a, b in zip(held_out, held_out[1:], strict=False))
    assert n["em_smallest_step"] >= -1e-9  # EM is monotone ...
    assert abs(n["em_minus_closed_form"]) < 1e-6  # ... and reaches the closed form
    assert n["posterior_covariance_error"] < 1e-10  # σ² (WᵀW + σ² I)⁻¹
    assert n["exact_guide_elbo_std"] < 1e-9  # the exact guide's ELBO has zero variance
    assert n["exact_guide_elbo_error"] < 1e-9
    axes, rotated = n["mean_field_gap"]["principal axes"], n["mean_field_gap"]["rotated 45°"]
    assert axes["measured"] < 1e-9 and axes["closed_form"] < 1e-9
    assert rotated["measured"] > 0.1  # the mean-field gap ...
    assert rotated["measured"] == pytest.approx(rotated["closed_form"], abs=1e-9)  # ... closed
    assert rotated["log_likelihood"] == pytest.approx(axes["log_likelihood"], abs=1e-9)
    assert n["autoencoder_largest_principal_angle"] < 0.05  # the linear AE spans PCA's subspace
    assert -1e-9 <= n["autoencoder_minus_pca_error"] < 1e-3


def check_deep_gaussian_lvm(n: dict) -> None:
    naive = n["naive_monte_carlo"]
    needed = [naive["samples_needed"][q] or math.inf for q in ("1", "2", "5", "10", "20")]
    assert needed[0] <= 10_000  # Q = 1: prior sampling works ...
    assert all(b >= a for a, b in zip(needed, needed[1:], strict=False))  # ... less so as Q grows
    assert naive["mean_abs_error"]["20"][-1] > 10  # Q = 20: hopeless at 10⁵ samples
    assert naive["exact_posterior_one_sample_error"] < 1e-9  # one draw of p(z | x) is exact
    iwae = n["iwae"]
    encoder = iwae["encoder"]
    assert encoder[0] == pytest.approx(iwae["elbo"], abs=1e-4)  # IWAE-1 is the ELBO
    assert all(b >= a - 1e-9 for a, b in zip(encoder, encoder[1:], strict=False))  # rises with K
    assert encoder[-1] > iwae["elbo"]
    assert encoder[1] > iwae["prior"][1] + 10  # K = 10: the encoder is the better proposal
    assert encoder[0] > iwae["prior"][0] + 100  # K = 1: the prior is hopeless
    assert n["score_over_reparameterized"] > 100  # the log-trick's variance
    assert n["kl_torch_error"] < 1e-5 and n["kl_monte_carlo_error"] < 0.1
    betas = [n["beta"][b] for b in ("0.001", "1.0", "10.0", "100.0")]
    assert all(a["kl"] > b["kl"] for a, b in zip(betas, betas[1:], strict=False))
    assert all(a["encoder_scale"] < b["encoder_scale"] for a, b in zip(betas, betas[1:],
                                                                        strict=False))
    assert betas[0]["encoder_scale"] < 0.05  # β → 0: a deterministic code, an autoencoder
    held_out = n["held_out"]
    assert held_out["dglvm"] > held_out["ppca"] + 5  # the deep model beats PPCA on digits
    assert held_out["dglvm_bits_per_dim"] < held_out["ppca_bits_per_dim"]
    assert math.isfinite(n["frey_face_final_elbo"])
    brightness = n["picture_mean_pixel"]  # the pictures are not near-black: the decoder trained
    assert abs(brightness["decoded"] - brightness["data"]) < 0.15 * brightness["data"]


def check_your_own_model(n: dict) -> None:
    assert n["check_ok"] is True
    assert n["check_buggy_ok"] is False
    assert {"kind": "constraint", "site": "scale"} in n["check_buggy_problems"]
    assert n["compare_status"] == 0
    compared = n["compare"]
    assert set(compared) == {"auto-normal", "amortized", "flow"}
    for guide, row in compared.items():
        assert math.isfinite(row["train_log_likelihood"]), guide
        assert row["gap"] > 0, guide  # IWAE above the ELBO
    assert compared["auto-normal"]["test_log_likelihood"] is None  # no q for new rows
    assert math.isfinite(compared["amortized"]["test_log_likelihood"])
    assert math.isfinite(n["fa_test_log_likelihood"])


def check_scaling_up(n: dict) -> None:
    subsampling = n["subsampling"]
    for mean, std in zip(subsampling["mean"], subsampling["std"], strict=True):
        assert abs(mean - subsampling["full"]) < 4 * std / math.sqrt(200)  # unbiased
    assert 5 < subsampling["std"][0] / subsampling["std"][-1] < 20  # ∝ 1/√B: 100× B, 10× less
    svi = n["svi"]
    assert svi["B = 1000"]["seconds_per_step"] < svi["full data"]["seconds_per_step"] / 3
    assert abs(svi["B = 1000"]["log_likelihood"] - n["em_log_likelihood"]) < 0.02
    times = n["em_seconds_per_iteration"]["cpu"]
    assert times[-1] > times[0]  # more data, more time


# name -> (figures it promises, relative to its output folder; its numbers check)
TUTORIALS = {
    "01_mixtures_and_em.py": (
        ("gaussians", "mixture_density", "mixture_sampling", "ml_is_min_kl", "em_old_faithful",
         "em_log_likelihood", "kmeans_limit"),
        check_mixtures_and_em),
    "02_em_to_variational_inference.py": (
        ("elbo_plus_kl", "em_coordinate_ascent", "l1_lifting", "svi_guides", "enumeration",
         "local_optima", "collapse_and_restarts", "cavi_vs_svi", "cavi_weights_by_k"),
        check_em_to_variational_inference),
    "03_ppca_and_linear_autoencoders.py": (
        ("spectrum", "loadings", "em_vs_closed_form", "latent_means", "mean_field_gap_by_angle",
         "posterior_ellipses", "linear_autoencoder"),
        check_ppca_and_linear_autoencoders),
    "04_deep_gaussian_lvm.py": (
        ("naive_monte_carlo", "vae_elbo", "vae_reconstructions", "vae_samples",
         "digits_manifold", "importance_sampling", "gradient_variance", "beta",
         "frey_face_manifold", "vae_vs_ppca"),
        check_deep_gaussian_lvm),
    "05_your_own_model.py": (
        ("compare/curves", "compare/yardstick"),
        check_your_own_model),
    "06_scaling_up.py": (
        ("em_time_by_n", "subsampling", "minibatch_svi"),
        check_scaling_up),
}
SLOWEST_FIRST = ("04_deep_gaussian_lvm.py", "05_your_own_model.py",
                 "02_em_to_variational_inference.py", "03_ppca_and_linear_autoencoders.py",
                 "06_scaling_up.py", "01_mixtures_and_em.py")


def test_every_tutorial_is_listed():
    on_disk = {path.name for path in TUTORIALS_DIR.glob("*.py")}
    assert on_disk - set(TUTORIALS) == set(), "tutorials missing from TUTORIALS in this test"
    assert set(TUTORIALS) - on_disk == set(), "tutorials listed in TUTORIALS but not on disk"
    assert set(SLOWEST_FIRST) == set(TUTORIALS)


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_is_a_jupytext_notebook_that_opens_with_what_it_shows(name):
    jupytext = pytest.importorskip("jupytext")
    notebook = jupytext.read(TUTORIALS_DIR / name)
    kinds = [cell.cell_type for cell in notebook.cells]
    assert kinds[0] == "markdown" and kinds.count("code") >= 3, kinds[:5]
    assert notebook.cells[0].source.lstrip().startswith("#"), "the first cell needs a title"


# --- running the scripts --------------------------------------------------------------------


def run_tutorial(name: str, out: Path, data_root: Path) -> tuple[subprocess.CompletedProcess,
                                                                 float]:
    """``python tutorials/NAME`` in smoke mode, writing into ``out``; (process, seconds)."""
    environment = {
        **os.environ,
        "LVM_ZOO_SMOKE": "1",
        "LVM_ZOO_TUTORIAL_OUT": str(out),
        "LVM_ZOO_DATA": str(data_root),
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    start = time.perf_counter()
    process = subprocess.run([sys.executable, str(TUTORIALS_DIR / name)], env=environment,
                             cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT)
    return process, time.perf_counter() - start


@pytest.fixture(scope="module")
def smoke_runs(request, tmp_path_factory, shared_data):
    """``{name: (future of run_tutorial, output folder)}`` for the selected tutorials, started
    together, slowest first, :data:`WORKERS` at a time."""
    selected = {item.callspec.params["name"] for item in request.session.items
                if getattr(item, "originalname", None) == "test_tutorial_keeps_its_promises"}
    pool = ThreadPoolExecutor(max_workers=WORKERS)
    runs: dict[str, tuple[Future, Path]] = {}
    for name in SLOWEST_FIRST:
        if name in selected:
            out = tmp_path_factory.mktemp(Path(name).stem)
            runs[name] = (pool.submit(run_tutorial, name, out, shared_data), out)
    yield runs
    pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_tutorial_keeps_its_promises(name, smoke_runs):
    future, out = smoke_runs[name]
    process, seconds = future.result()
    assert process.returncode == 0, (
        f"{name} failed after {seconds:.0f} s:\n{process.stdout[-2000:]}\n{process.stderr[-4000:]}")
    numbers = json.loads((out / "numbers.json").read_text())
    assert numbers["smoke"] is True
    figures, check = TUTORIALS[name]
    for figure in figures:
        path = out / f"{figure}.png"
        assert path.is_file(), f"{name} promised {figure}.png"
        with open(path, "rb") as stream:
            assert stream.read(8) == PNG_SIGNATURE, f"{path} is not a PNG"
        assert path.stat().st_size > 5_000, f"{path} is nearly empty"
    for path in out.rglob("*.png"):
        assert path.stat().st_size > 0, f"{path} is empty"
    check(numbers)
