"""Peak memory of a large spherical GMM fit by EM: memory that does not grow with N x K.

A K=1024, D=128 spherical mixture fitted by ``inference.em.fit_em`` to N=1,000,000 float32
rows (issue 26's target: peak memory under 1 GB beyond the data). The E-step streams the rows
in cache-sized blocks and reduces each block's responsibilities to the K x F sufficient
statistics at once, so no N x K matrix exists (one would be 4 GB here).

Peak memory is the process's peak resident set size during the fit, measured by the kernel:
the peak (VmHWM) is reset through ``/proc/self/clear_refs`` after the data are made, and the
resident size before the fit (data, torch, the start) is subtracted from the peak after it.
Then the fit's final mean log-likelihood (float32) is checked against a float64 reference at
the same parameters, computed independently (|x|² - 2 x·μ + |μ|² in float64, a logsumexp).

    python benchmarks/gmm_memory.py                         # N=1e6, D=128, K=1024, 2 EM steps
    python benchmarks/gmm_memory.py --num-data 20000 --components 64   # a smoke size
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
import warnings

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from inference.em import fit_em  # noqa: E402
from zoo import gmm_em  # noqa: E402
from zoo.gmm import SPEC, GMMConfig  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--components", type=int, default=1024)
    parser.add_argument("--max-iter", type=int, default=2, help="EM updates (M-steps)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def kib(field: str) -> int:
    """A ``/proc/self/status`` field (VmRSS, VmHWM) in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return 1024 * int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def make_data(n, d, k, seed):
    """float32 rows from K spherical clusters (unit variance; means N(0, 0.5 I), so about 11
    standard deviations apart at D = 128), written block by block into one (N, D) tensor.
    (With the means wider apart the E-step's rounding bound exceeds its 1e-3 nats once the
    variances shrink to 1, and it whitens instead: minutes per E-step at this size.)"""
    generator = torch.Generator().manual_seed(seed)
    means = math.sqrt(0.5) * torch.randn(k, d, generator=generator)
    x = torch.empty(n, d)
    for start in range(0, n, 65536):
        rows = x[start:start + 65536]
        labels = torch.randint(k, (rows.shape[0],), generator=generator)
        torch.randn(rows.shape, generator=generator, out=rows)
        rows += means[labels]
    return x


def reference_log_likelihood(params, x) -> float:
    """Mean log p(x) in float64, from the spherical densities directly (block by block)."""
    weights, means = params["weights"].double(), params["means"].double()
    variance = params["scale"].double().square()
    d = x.shape[1]
    const = torch.log(weights) - 0.5 * d * torch.log(2 * math.pi * variance)
    means_squared = means.square().sum(1)
    total = 0.0
    for start in range(0, x.shape[0], 8192):
        rows = x[start:start + 8192].double()
        distance = (rows.square().sum(1, keepdim=True) - 2 * rows @ means.T + means_squared)
        total += float(torch.logsumexp(const - 0.5 * distance / variance, 1).sum())
    return total / x.shape[0]


def main(args) -> int:
    torch.set_num_threads(args.threads)
    n, d, k = args.num_data, args.dim, args.components
    x = make_data(n, d, k, args.seed)
    generator = torch.Generator().manual_seed(args.seed + 1)
    # a start from K random rows: the k-means start's cost is not what is measured here
    start = {"weights": torch.full((k,), 1.0 / k),
             "means": x[torch.randperm(n, generator=generator)[:k]].clone(),
             "scale": torch.full((k,), float(x[:65536].var(0).mean().sqrt()))}
    config = GMMConfig(dim=d, components=k, covariance_type="spherical")
    data_bytes = x.numel() * x.element_size()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak resident set size to the current one
    before = kib("VmRSS")
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # max_iter stops it before tol: not converged
        result = fit_em(SPEC, config, x, init=start, max_iter=args.max_iter)
    seconds = time.perf_counter() - began
    peak = kib("VmHWM")
    ours = result.history["log_likelihood"][-1]
    reference = reference_log_likelihood(result.params, x)
    features = gmm_em._quadratic_features(config, x)
    bound = gmm_em._quadratic_weights(config, result.params, features)[1]
    route = "quadratic features" if bound <= gmm_em.QUADRATIC_ERROR else "whitened blocks"
    beyond = peak - before
    dense = n * k * x.element_size()
    print(f"spherical GMM, N={n}, D={d}, K={k}, float32, {args.max_iter} EM updates "
          f"({len(result.history['log_likelihood'])} E-steps), {args.threads} thread(s): "
          f"{seconds:.1f} s; final E-step route: {route} (rounding bound {bound:.1e} nats)")
    print(f"data {data_bytes / 2**20:.0f} MiB; resident before the fit {before / 2**20:.0f} MiB; "
          f"peak during it {peak / 2**20:.0f} MiB; beyond the data and the start "
          f"{beyond / 2**20:.1f} MiB (an N x K float32 matrix: {dense / 2**20:.0f} MiB)")
    print(f"mean log p(x): fit (float32) {ours:.8f}, float64 reference {reference:.8f}, "
          f"|diff| {abs(ours - reference):.2e} nats per datapoint")
    ok = beyond < 2**30 and abs(ours - reference) <= 1e-5
    print("OK" if ok else "FAILED: over 1 GiB beyond the data, or off the float64 reference")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(parse_args()))
