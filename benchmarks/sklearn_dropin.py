"""The drop-in GaussianMixture estimator against scikit-learn's, at both one's defaults.

What a scikit-learn user gets by changing one import: ``GaussianMixture(K,
random_state=seed).fit(X)`` from ``inference.estimators_sklearn`` against the same call of
``sklearn.mixture.GaussianMixture``: EM at scikit-learn's defaults (``init_params="kmeans"``,
``tol=1e-3``, ``max_iter=100``, ``n_init=1``, full covariances), the k-means start and the
input checks inside the timed call. The same ``random_state`` gives both the same start, so
they must end with the same ``n_iter_``, ``converged_`` and ``lower_bound_`` (to 1e-6 nats
per datapoint on float64 data, 1e-5 on float32, where scikit-learn computes in float32; the
script exits 1 otherwise). Data: ``gmm_em.make_data``, N draws from a
random K-component mixture with well-spread means (float64; ``--dtype float32`` fits float32
data, computed in float64 by ours on the CPU, in float32 by scikit-learn).

Both run in one process on the same number of CPU threads (``--threads``: the OpenMP/BLAS
pools and ``torch.set_num_threads``), alternating, ``--repeats`` times (at most 3); the table
gives each one's fastest and median. ``--device cuda`` fits ours on the GPU (scikit-learn stays
on the CPU). Run it under the team's lock:

    python benchmarks/sklearn_dropin.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import sys


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=200_000, help="N rows")
    parser.add_argument("--dim", type=int, default=16, help="D features")
    parser.add_argument("--components", type=int, default=8, help="K components")
    parser.add_argument("--random-state", type=int, default=0,
                        help="random_state of both estimators")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data")
    parser.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="our estimator's device (scikit-learn runs on the CPU)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both")
    parser.add_argument("--repeats", type=int, default=1, choices=(1, 2, 3),
                        help="alternating timed fits of each (at most 3)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread pools read these when numpy and torch load
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [os.path.dirname(here), here]

import statistics  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402


def timed_fit(estimator, X: np.ndarray, device: str) -> float:
    """Seconds of ``estimator.fit(X)`` (the GPU synchronized before and after)."""
    if device == "cuda":
        torch.cuda.synchronize()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        estimator.fit(X)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - began


def main(args) -> int:
    from gmm_em import make_data  # the GMM EM benchmark's data
    from sklearn import mixture as sk_mixture

    from inference.estimators_sklearn import GaussianMixture

    torch.set_num_threads(args.threads)
    x, _ = make_data(argparse.Namespace(**vars(args), covariance_type="full", spread=2.5),
                     torch.device("cpu"))
    X = x.numpy().astype(args.dtype)
    k, seed = args.components, args.random_state
    where = (f"ours on {torch.cuda.get_device_name()}, scikit-learn on the CPU"
             if args.device == "cuda" else "CPU")
    print(f"GaussianMixture({k}, random_state={seed}).fit(X) at the defaults on N={X.shape[0]}, "
          f"D={X.shape[1]}, {X.dtype}; {where}, {args.threads} threads, {args.repeats} "
          "alternating repeat(s)")
    times: dict[str, list[float]] = {"lvm-zoo": [], "scikit-learn": []}
    fitted = {}
    with threadpool_limits(args.threads):
        for _ in range(args.repeats):
            ours = GaussianMixture(k, random_state=seed, device=args.device)
            times["lvm-zoo"].append(timed_fit(ours, X, args.device))
            theirs = sk_mixture.GaussianMixture(k, random_state=seed)
            times["scikit-learn"].append(timed_fit(theirs, X, "cpu"))
            fitted = {"lvm-zoo": ours, "scikit-learn": theirs}
    print(f"{'':13s} {'fastest':>9s} {'median':>9s} {'n_iter_':>8s} {'converged_':>10s} "
          f"{'lower_bound_':>16s}")
    for name, estimator in fitted.items():
        print(f"{name:13s} {min(times[name]):8.3f}s {statistics.median(times[name]):8.3f}s "
              f"{estimator.n_iter_:8d} {estimator.converged_!s:>10s} "
              f"{estimator.lower_bound_:16.10f}")
    ours, theirs = fitted["lvm-zoo"], fitted["scikit-learn"]
    print(f"speed-up (fastest / fastest): "
          f"{min(times['scikit-learn']) / min(times['lvm-zoo']):.2f}x; all times: "
          + ", ".join(f"{n} " + " ".join(f"{t:.3f}" for t in ts) for n, ts in times.items()))
    gap = abs(ours.lower_bound_ - theirs.lower_bound_)
    same = (ours.n_iter_ == theirs.n_iter_ and ours.converged_ == theirs.converged_
            and gap <= (1e-6 if args.dtype == "float64" else 1e-5))
    print(f"same fit: {same} (|lower_bound_ difference| = {gap:.1e} nats per datapoint)")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
