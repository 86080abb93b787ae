"""The steps of ``benchmarks/gpu.sh`` (issue 26): each measures one GPU figure and appends it,
one JSON object a line, to ``--results``.

``gmm``: EM per iteration for each ``--case COVARIANCE:D:K`` on N rows (float32, on
``--device``), lvm-zoo's ``fit_em`` against scikit-learn's array-API ``GaussianMixture``
(``array_api_dispatch=True``, the same torch tensors on the same device), both from the same
start (uniform weights, K data rows as means, unit covariances) for the same iterations with
``tol=0``, after one warm-up iteration each; both final mean log p(x) are recorded (they run the
same EM, so they should agree to float32 rounding).

``vae``: one epoch of the 784-400-20 Bernoulli VAE on grayscale MNIST (batch 128, Adam 1e-3),
``lvm-zoo fit dglvm`` as a subprocess (its training ``seconds`` and its wall time) against the
hand-written PyTorch loop of ``benchmarks/vae_end_to_end.py`` on the same device; then
``lvm-zoo evaluate RUN --iwae-samples K`` of that run (IWAE-K on the test set), timed.
``--rows R`` fits the first R training and R test images instead (written as a ``.npy``: the
smoke size of ``gpu.sh --cpu``).

    python benchmarks/gpu_steps.py gmm --device cuda --num-data 1000000 \
        --case full:64:64 --case spherical:128:1024 --results out/figures.jsonl
    python benchmarks/gpu_steps.py vae --device cuda --iwae-samples 5000 --results ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    steps = parser.add_subparsers(dest="step", required=True)
    gmm = steps.add_parser("gmm", help="EM per iteration, lvm-zoo and scikit-learn")
    gmm.add_argument("--num-data", type=int, default=1_000_000)
    gmm.add_argument("--case", action="append", default=None,
                     help="COVARIANCE:D:K, e.g. full:64:64 (repeatable; default full:64:64 "
                          "and spherical:128:1024)")
    gmm.add_argument("--iterations", type=int, default=10)
    gmm.add_argument("--no-sklearn", action="store_true")
    vae = steps.add_parser("vae", help="one VAE epoch: lvm-zoo fit and a hand-written loop")
    vae.add_argument("--epochs", type=int, default=1)
    vae.add_argument("--latent-dim", type=int, default=20)
    vae.add_argument("--rows", type=int, default=None,
                     help="only the first ROWS training and test images (smoke size)")
    vae.add_argument("--iwae-samples", type=int, default=5000, help="K of the evaluate step")
    vae.add_argument("--fit-iwae-samples", type=int, default=100, help="K of the fit's record")
    vae.add_argument("--data-root", default=str(ROOT.parent / "shared" / "data"))
    for step in (gmm, vae):
        step.add_argument("--device", default="cuda")
        step.add_argument("--threads", type=int, default=2)
        step.add_argument("--seed", type=int, default=0)
        step.add_argument("--results", default=None, help="append the figures here (JSONL)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:
    os.environ["OMP_NUM_THREADS"] = str(ARGS.threads)
    os.environ.setdefault("SCIPY_ARRAY_API", "1")  # scikit-learn's array API needs it set early
    sys.path[:0] = [str(ROOT), str(HERE)]

import torch  # noqa: E402


def record(args, figure: dict) -> None:
    where = (torch.cuda.get_device_name(args.device) if str(args.device).startswith("cuda")
             else f"cpu, {args.threads} threads")
    figure = {"device": where, "torch": torch.__version__, **figure}
    print(json.dumps(figure))
    if args.results:
        with open(args.results, "a") as file:
            file.write(json.dumps(figure) + "\n")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def mixture_rows(num_data: int, dim: int, components: int, device, seed: int) -> torch.Tensor:
    """float32 rows of a seeded spherical mixture, drawn on ``device``."""
    generator = torch.Generator(device=device).manual_seed(seed)
    means = 3.0 * torch.randn(components, dim, generator=generator, device=device)
    labels = torch.randint(components, (num_data,), generator=generator, device=device)
    return torch.randn(num_data, dim, generator=generator, device=device) + means[labels]


def gmm_start(x: torch.Tensor, covariance: str, components: int, seed: int) -> dict:
    """Uniform weights, K seeded data rows as means, unit covariances (lvm-zoo's params)."""
    generator = torch.Generator(device=x.device).manual_seed(seed + 1)
    rows = torch.randperm(x.shape[0], generator=generator, device=x.device)[:components]
    start = {"weights": torch.full((components,), 1.0 / components, device=x.device),
             "means": x[rows].clone()}
    if covariance == "full":
        start["scale_tril"] = torch.eye(x.shape[1], device=x.device).expand(
            components, -1, -1).clone()
    elif covariance == "diag":
        start["scale"] = torch.ones(components, x.shape[1], device=x.device)
    else:
        start["scale"] = torch.ones(components, device=x.device)
    return start


def time_ours(config, x, start, iterations) -> tuple[float, float]:
    from inference.em import fit_em
    from zoo.gmm import SPEC

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never "converges"
        fit_em(SPEC, config, x, init=start, tol=0.0, max_iter=1, accelerate=False)
        synchronize(x.device)
        began = time.perf_counter()
        result = fit_em(SPEC, config, x, init=start, tol=0.0, max_iter=iterations,
                        accelerate=False)
        synchronize(x.device)
    return time.perf_counter() - began, result.history["log_likelihood"][-1]


def time_sklearn(covariance, x, start, iterations) -> tuple[float, float]:
    import sklearn
    from sklearn.mixture import GaussianMixture

    if covariance == "full":
        precisions = torch.eye(x.shape[1], device=x.device).expand(
            start["means"].shape[0], -1, -1).clone()
    else:
        precisions = 1.0 / start["scale"] ** 2

    def model(max_iter):
        return GaussianMixture(start["means"].shape[0], covariance_type=covariance, tol=0.0,
                               max_iter=max_iter, init_params="random_from_data",
                               weights_init=start["weights"], means_init=start["means"],
                               precisions_init=precisions)

    with sklearn.config_context(array_api_dispatch=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model(1).fit(x)
        synchronize(x.device)
        began = time.perf_counter()
        fitted = model(iterations).fit(x)
        synchronize(x.device)
        seconds = time.perf_counter() - began
        return seconds, float(fitted.score(x))


def gmm(args) -> None:
    from zoo.gmm import GMMConfig

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    for case in args.case or ["full:64:64", "spherical:128:1024"]:
        covariance, dim, components = case.split(":")
        dim, components = int(dim), int(components)
        x = mixture_rows(args.num_data, dim, components, device, args.seed)
        start = gmm_start(x, covariance, components, args.seed)
        config = GMMConfig(dim=dim, components=components, covariance_type=covariance)
        seconds, final = time_ours(config, x, start, args.iterations)
        figure = {"figure": "gmm-em", "num_data": args.num_data, "dim": dim,
                  "components": components, "covariance": covariance,
                  "iterations": args.iterations, "dtype": "float32",
                  "lvm_zoo_ms_per_iteration": 1e3 * seconds / args.iterations,
                  "lvm_zoo_log_likelihood": final}
        if not args.no_sklearn:
            sk_seconds, sk_final = time_sklearn(covariance, x, start, args.iterations)
            figure.update(sklearn_array_api_ms_per_iteration=1e3 * sk_seconds / args.iterations,
                          sklearn_log_likelihood=sk_final,
                          speed_up=sk_seconds / seconds)
        record(args, figure)
        del x
        if device.type == "cuda":
            torch.cuda.empty_cache()


def vae(args) -> None:
    import numpy as np
    from command_wall import environment, lvm_zoo_command, time_command
    from vae_end_to_end import hand_written

    from zoo.datasets import load_dataset

    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist", root=args.data_root)
    train, test = dataset.train, dataset.test
    env = environment(args.threads)
    with tempfile.TemporaryDirectory() as scratch:
        if args.rows:
            train, test = train[:args.rows], test[:args.rows]
            data = Path(scratch) / "mnist-rows.npy"
            np.save(data, torch.cat([train, test]).numpy())
            data_flags = ["--data", str(data), "--test-fraction", "0.5"]
        else:
            data_flags = ["--data", "mnist", "--data-root", args.data_root]
        run = Path(scratch) / "run"
        fit = [*lvm_zoo_command(), "fit", "dglvm", *data_flags, "--device", args.device,
               "--likelihood", "bernoulli", "--latent-dim", str(args.latent_dim), "--hidden",
               "400", "--epochs", str(args.epochs), "--batch-size", "128", "--lr", "1e-3",
               "--validation", "0",  # every training row, as the hand-written loop
               "--iwae-samples", str(args.fit_iwae_samples), "--iwae-rows", "all",
               "--out", str(run), "--json"]
        wall, fitted = time_command(fit, env)
        hand = hand_written(train.to(device), test.to(device), args.epochs, args.latent_dim)
        record(args, {"figure": "vae-epoch", "epochs": args.epochs, "rows": len(train),
                      "lvm_zoo_fit_training_seconds": fitted["seconds"],
                      "lvm_zoo_fit_wall_seconds": wall,
                      "hand_written_training_seconds": hand[0],
                      "training_ratio": fitted["seconds"] / hand[0],
                      "lvm_zoo_test_iwae": fitted.get("test_log_likelihood"),
                      "hand_written_test_iwae_100": hand[2]})
        evaluate = [*lvm_zoo_command(), "evaluate", str(run), "--device", args.device,
                    "--iwae-samples", str(args.iwae_samples), "--iwae-rows", "all", "--json"]
        wall, judged = time_command(evaluate, env)
        record(args, {"figure": "iwae-evaluate", "iwae_samples": args.iwae_samples,
                      "test_rows": judged.get("n_test"), "wall_seconds": wall,
                      "test_log_likelihood": judged.get("test_log_likelihood"),
                      "method": judged.get("log_likelihood_method")})


if __name__ == "__main__":
    {"gmm": gmm, "vae": vae}[ARGS.step](ARGS)
