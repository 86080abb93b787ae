"""CAVI for the Bayesian Gaussian mixture: lvm-zoo against scikit-learn's
BayesianGaussianMixture, to the same bound, in one run.

Both estimators get the same data, the same priors (scikit-learn's defaults), the same start
(``init_params="random_from_data"`` with the same ``random_state``: lvm-zoo draws it exactly as
scikit-learn does), the same ``tol`` and ``max_iter``, and the same number of CPU threads. They
then take the same iterations and must end at the same ``lower_bound_`` (checked; the run
fails otherwise), so the ratio of their wall times is the speed-up to the same bound. lvm-zoo
also reports its whole ELBO (every constant kept) beside scikit-learn's bound.

    python benchmarks/cavi_gmm.py                       # N=200000, D=16, K=8, full, CPU
    python benchmarks/cavi_gmm.py --device cuda --no-sklearn   # lvm-zoo on a GPU
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
    parser.add_argument("--covariance-type", default="full",
                        choices=("full", "tied", "diag", "spherical"))
    parser.add_argument("--weight-prior", default="dirichlet_process",
                        choices=("dirichlet_process", "dirichlet_distribution"))
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="stop when lower_bound_ changes by less (scikit-learn's default)")
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for both")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each this many times, alternating; keep each one's fastest")
    parser.add_argument("--no-sklearn", action="store_true", help="skip scikit-learn")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread pools read these when numpy and torch load
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402


def make_data(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """K well-spread Gaussian clusters with random covariances, float64."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(k, d))
    labels = rng.integers(k, size=n)
    factors = rng.normal(size=(k, d, d)) / np.sqrt(d)
    noise = np.einsum("nd,nde->ne", rng.normal(size=(n, d)), factors[labels])
    return centres[labels] + noise


def timed(make, x):
    if ARGS.device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        estimator = make().fit(x)
    if ARGS.device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started, estimator


def main() -> None:
    from sklearn.mixture import BayesianGaussianMixture as Theirs

    from inference.estimators_sklearn import BayesianGaussianMixture as Ours

    torch.set_num_threads(ARGS.threads)
    x = make_data(ARGS.num_data, ARGS.dim, ARGS.components, ARGS.seed)
    options = dict(n_components=ARGS.components, covariance_type=ARGS.covariance_type,
                   weight_concentration_prior_type=ARGS.weight_prior, tol=ARGS.tol,
                   max_iter=ARGS.max_iter, init_params="random_from_data",
                   random_state=ARGS.seed)
    print(f"N={ARGS.num_data} D={ARGS.dim} K={ARGS.components} {ARGS.covariance_type} "
          f"{ARGS.weight_prior}, float64, {ARGS.threads} thread(s), tol={ARGS.tol}, "
          f"lvm-zoo on {ARGS.device}")
    ours_times, theirs_times = [], []
    ours = theirs = None
    for _ in range(ARGS.repeats):
        seconds, ours = timed(lambda: Ours(device=ARGS.device, **options), x)
        ours_times.append(seconds)
        if not ARGS.no_sklearn:
            seconds, theirs = timed(lambda: Theirs(**options), x)
            theirs_times.append(seconds)
    print(f"lvm-zoo : {min(ours_times):8.2f} s, {ours.n_iter_} iterations, lower_bound_ "
          f"{ours.lower_bound_:.6f}, whole ELBO {ours.elbo_:.6f} nats "
          f"({ours.elbo_ / ARGS.num_data:.6f} per row)")
    if theirs is None:
        return
    bound = float(np.ravel(theirs.lower_bound_)[0])
    print(f"sklearn : {min(theirs_times):8.2f} s, {theirs.n_iter_} iterations, lower_bound_ "
          f"{bound:.6f}")
    same = theirs.n_iter_ == ours.n_iter_ and abs(bound - ours.lower_bound_) < 1e-6 * max(
        1.0, abs(bound))
    print(f"same bound: {same}; speed-up {min(theirs_times) / min(ours_times):.2f}x "
          f"(per iteration {min(theirs_times) / theirs.n_iter_ * 1e3:.0f} ms against "
          f"{min(ours_times) / ours.n_iter_ * 1e3:.0f} ms)")
    if not same:
        raise SystemExit("the two fits did not reach the same bound: the timing compares "
                         "different work")


if __name__ == "__main__":
    main()
