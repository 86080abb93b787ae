"""Closed-form PPCA: lvm-zoo against scikit-learn's PCA(q).fit in one run, plus EM's cost.

Both fit the same float32 data (N=1,000,000 x D=64, q=8 by default) with the same number of CPU
threads, alternating, and the fastest of ``--repeats`` runs of each is kept; the ratio of the
two is the speed-up. Both must give the same model: our maximum-likelihood log p(x) minus the
exact N/(N-1) correction equals PCA.score to float32 precision. EM then fits the same data from
a random start: seconds per iteration, and iterations until its log p(x) is within 1e-4 nats per
datapoint of the closed form.

    python benchmarks/ppca_closed_form.py                      # the CPU target
    python benchmarks/ppca_closed_form.py --device cuda        # milliseconds on a GPU
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=1_000_000, help="N rows")
    parser.add_argument("--dim", type=int, default=64, help="D features")
    parser.add_argument("--latent-dim", type=int, default=8, help="q latent dimensions")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both")
    parser.add_argument("--repeats", type=int, default=7, help="keep the fastest of this many")
    parser.add_argument("--em-tol", type=float, default=1e-7, help="EM tolerance, nats/point")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread pools read these when numpy and torch load
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from inference.catalog import get_model  # noqa: E402
from inference.em import fit_em  # noqa: E402
from zoo import ppca  # noqa: E402


def make_data(args) -> torch.Tensor:
    """float32 draws from a PPCA with principal scales 8 ... 2, sigma^2 = 1 and an offset of 5
    (like pixel data): the top q eigenvalues stand clear of the noise."""
    generator = torch.Generator().manual_seed(args.seed)
    basis, _ = torch.linalg.qr(torch.randn(args.dim, args.latent_dim, generator=generator))
    weight = basis * torch.linspace(8.0, 2.0, args.latent_dim)
    truth = {"loc": 5.0 + torch.randn(args.dim, generator=generator), "weight": weight,
             "noise": torch.tensor(1.0)}
    x, _ = ppca.sample(None, truth, args.num_data, generator)
    return x.contiguous()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> tuple[float, object]:
    synchronize(device)
    start = time.perf_counter()
    value = fn()
    synchronize(device)
    return time.perf_counter() - start, value


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    spec = get_model("ppca")
    x_cpu = make_data(args)
    x = x_cpu.to(device)
    num_data, dim = x.shape
    config = spec.make_config(dim, latent_dim=args.latent_dim)
    print(f"data: N={num_data} D={dim} q={args.latent_dim} float32, device {device}, "
          f"{args.threads} CPU threads, fastest of {args.repeats}")

    ours, theirs, params, pca = [], [], None, None
    with threadpool_limits(args.threads):
        from sklearn.decomposition import PCA

        timed(lambda: spec.closed_form(config, x), device)  # warm-up (kernels, allocator)
        for _ in range(args.repeats):
            seconds, params = timed(lambda: spec.closed_form(config, x), device)
            ours.append(seconds)
            if not args.no_sklearn:
                start = time.perf_counter()
                pca = PCA(args.latent_dim).fit(x_cpu.numpy())
                theirs.append(time.perf_counter() - start)
    print(f"closed form (lvm-zoo): {min(ours) * 1e3:.1f} ms "
          f"(median {sorted(ours)[len(ours) // 2] * 1e3:.1f} ms)")
    # judged in float64, so that the comparison shows the parameters, not float32 rounding
    as_double = {name: value.double() for name, value in params.items()}
    log_likelihood = spec.log_marginal(config, as_double, x.double()).mean().item()
    if pca is not None:
        k = num_data / (num_data - 1)
        reference = pca.score(x_cpu.double().numpy())
        corrected = log_likelihood - dim / 2 * (math.log(k) + 1 / k - 1)
        print(f"PCA({args.latent_dim}).fit (scikit-learn, {pca._fit_svd_solver}): "
              f"{min(theirs) * 1e3:.1f} ms (median {sorted(theirs)[len(theirs) // 2] * 1e3:.1f}"
              f" ms); speed-up x{min(theirs) / min(ours):.2f}")
        print(f"mean log p(x): lvm-zoo {log_likelihood:.6f}, scikit-learn {reference:.6f} "
              f"(after the N/(N-1) correction: difference {corrected - reference:.2e})")

    moments_seconds, _ = timed(lambda: ppca.moments(x), device)
    result = fit_em(spec, config, x, tol=args.em_tol, max_iter=2000, seed=args.seed)
    em_seconds = result.seconds - moments_seconds
    history = result.history["log_likelihood"]
    # the optimum as EM sees it: log p(x) from the same moments, in float64
    optimum = ppca.e_step(config, params, x)[1].item()
    reached = next((i for i, value in enumerate(history) if optimum - value < 1e-4), None)
    print(f"EM: {result.steps} iterations to tol={args.em_tol:g} in {result.seconds:.3f} s, of "
          f"which one O(N D^2) pass over the data {moments_seconds * 1e3:.1f} ms; then "
          f"{em_seconds / result.steps * 1e3:.3f} ms per iteration (O(D^2 q), N-free)")
    print(f"EM within 1e-4 nats per datapoint of the closed form after {reached} iterations "
          f"({moments_seconds + em_seconds / result.steps * (reached or 0):.3f} s); final gap "
          f"{optimum - history[-1]:.2e}")


if __name__ == "__main__":
    main(ARGS)
