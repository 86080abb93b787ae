"""EM for a Gaussian mixture: lvm-zoo against scikit-learn's GaussianMixture, in one run.

First, EM iterations alone: both start from the same parameters (lvm-zoo's default start,
handed to scikit-learn as weights_init / means_init / precisions_init), run the same number of
EM iterations with tol=0 (plus the final E-step both do) on the same data and the same number
of CPU threads, and must end at the same mean log-likelihood. The ratio of their wall times is
the speed-up. The same table then adds each one's own default start to its iterations:
lvm-zoo's k-means start (``initialize``) and scikit-learn's (its ``_initialize_parameters``
with ``init_params="kmeans"``: ``KMeans(n_init=1)`` and the M-step from its labels), each timed
on the same data, and gives the speed-up with the starts included.

Then (unless --no-defaults) what a user gets: the time to a converged fit at each one's
defaults, the start included, on a fresh copy of the data (nothing cached): lvm-zoo's
``fit_em`` (k-means start, tol 1e-6, max_iter 500) against ``GaussianMixture(K,
covariance_type=..., random_state=seed).fit`` (k-means start, tol 1e-3, max_iter 100). And the
cost of each of lvm-zoo's starts next to one EM iteration, and Lloyd's iterations.

    python benchmarks/gmm_em.py                     # N=200000, D=16, K=8, full, 30 iterations
    python benchmarks/gmm_em.py --spread 0.3        # the same on overlapping clusters
    python benchmarks/gmm_em.py --dtype float32 --no-defaults --over-seeds 8   # the converged
                                                    # fits from 8 seeds of each one's start
    python benchmarks/gmm_em.py --device cuda --num-data 1000000 --dim 64 --components 16 \
        --dtype float32 --no-sklearn                # the GPU target: ms per iteration
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
    parser.add_argument("--covariance-type", default="full", choices=("full", "diag", "spherical"))
    parser.add_argument("--iterations", type=int, default=30, help="EM iterations (tol=0)")
    parser.add_argument("--dtype", default="both", choices=("float32", "float64", "both"))
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for both")
    parser.add_argument("--repeats", type=int, default=1,
                        help="time each implementation this many times, alternating, and keep "
                             "each one's fastest (a fair ratio on a machine shared with others)")
    parser.add_argument("--no-sklearn", action="store_true",
                        help="skip scikit-learn (for sizes where it takes minutes)")
    parser.add_argument("--omp-wait-policy", default="passive",
                        choices=("passive", "active", "unset"),
                        help="OMP_WAIT_POLICY for both: passive (default) parks idle OpenMP "
                             "workers instead of spinning, which on a machine shared with other "
                             "jobs keeps them from stealing the cores the busy threads need; "
                             "unset leaves it as a user's shell has it (GNU OpenMP then spins "
                             "a while)")
    parser.add_argument("--no-defaults", action="store_true",
                        help="skip the time to a converged fit at each one's defaults")
    parser.add_argument("--spread", type=float, default=2.5,
                        help="the true means' sd per coordinate, against component sds about 1.1: "
                             "2.5 (default) gives well-separated clusters that EM fits in a few "
                             "iterations, 0.3 overlapping ones that take tens")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--over-seeds", type=int, default=0, metavar="S",
                        help="also the converged fits at defaults from S seeds of each one's "
                             "start (seed, seed + 1, ...), one run each: the medians (a start "
                             "that happens to be slow or fast does not decide the ratio)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None:  # thread pools read these when numpy and torch load
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(ARGS.threads)
    if ARGS.omp_wait_policy == "unset":
        os.environ.pop("OMP_WAIT_POLICY", None)
    else:
        os.environ["OMP_WAIT_POLICY"] = ARGS.omp_wait_policy.upper()
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from inference.em import MAX_ITER, TOL, fit_em  # noqa: E402
from zoo import em_native  # noqa: E402
from zoo.gmm import INIT_METHODS, SPEC, GMMConfig, initialize, sample  # noqa: E402
from zoo.gmm_init import kmeans_plus_plus, lloyd, lloyd_tolerance  # noqa: E402


def make_data(args, device) -> tuple[torch.Tensor, GMMConfig]:
    """N draws (float64) from a random K-component mixture whose means have sd ``--spread``."""
    generator = torch.Generator().manual_seed(args.seed)
    k, d = args.components, args.dim
    config = GMMConfig(dim=d, components=k, covariance_type="full")
    factors = torch.randn(k, d, d, generator=generator, dtype=torch.float64) / d**0.5
    covariance = factors @ factors.mT + 0.3 * torch.eye(d, dtype=torch.float64)
    truth = {"weights": torch.full((k,), 1.0 / k, dtype=torch.float64),
             "means": args.spread * torch.randn(k, d, generator=generator,
                                                dtype=torch.float64),
             "scale_tril": torch.linalg.cholesky(covariance)}
    x, _ = sample(config, truth, args.num_data, generator)
    return x.to(device), GMMConfig(dim=d, components=k, covariance_type=args.covariance_type)


def settle() -> None:
    """A pause before each timed run: the other library's idle pool workers (GNU OpenMP's,
    OpenBLAS's) spin for a while after its last parallel region, on the cores the next run
    needs; timed right after scikit-learn, lvm-zoo's converged fit took 97 ms against 67 ms
    alone. Both are timed after the pause."""
    time.sleep(0.25)


def synchronize(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_ours(config, x, start, iterations):
    """fit_em from ``start`` for ``iterations`` iterations; returns (seconds, result)."""
    synchronize(x.device)
    settle()
    began = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tol=0 never "converges"
        result = fit_em(SPEC, config, x, init=start, tol=0.0, max_iter=iterations)
    synchronize(x.device)
    return time.perf_counter() - began, result


def run_sklearn(config, x, start, iterations, threads):
    """scikit-learn's GaussianMixture from the same start; returns (seconds, mean log p(x))."""
    from sklearn.mixture import GaussianMixture

    data = x.cpu().numpy()
    dtype = data.dtype
    weights = start["weights"].cpu().double().numpy()
    means = start["means"].cpu().double().numpy()
    if config.covariance_type == "full":
        covariance = (start["scale_tril"] @ start["scale_tril"].mT).cpu().double().numpy()
        precisions = np.linalg.inv(covariance)
    else:
        precisions = 1.0 / start["scale"].cpu().double().numpy() ** 2
    model = GaussianMixture(
        config.components, covariance_type=config.covariance_type, tol=0.0,
        reg_covar=config.reg_covar, max_iter=iterations, init_params="random_from_data",
        weights_init=(weights / weights.sum()).astype(dtype), means_init=means.astype(dtype),
        precisions_init=precisions.astype(dtype))
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settle()
        began = time.perf_counter()
        model.fit(data)
        seconds = time.perf_counter() - began
        return seconds, float(model.score(data))


def time_our_start(config, x, seed):
    """Seconds of lvm-zoo's default start (k-means++ seeds, Lloyd, the M-step from labels)."""
    synchronize(x.device)
    settle()
    began = time.perf_counter()
    initialize(config, x, torch.Generator(device=x.device).manual_seed(seed))
    synchronize(x.device)
    return time.perf_counter() - began


def sklearn_at_defaults(config, x, seed, threads, call, **options):
    """``call(model, data)`` on ``GaussianMixture(K, covariance_type, random_state=seed)`` (its
    defaults, but for ``options``) and ``x`` as numpy, within ``threads`` threads: ``(seconds,
    model, data)``."""
    from sklearn.mixture import GaussianMixture

    data = x.cpu().numpy()
    model = GaussianMixture(config.components, covariance_type=config.covariance_type,
                            random_state=seed, **options)
    with threadpool_limits(threads), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settle()
        began = time.perf_counter()
        call(model, data)
        return time.perf_counter() - began, model, data


def time_sklearn_start(config, x, seed, threads):
    """Seconds of scikit-learn's default start: what ``GaussianMixture.fit`` runs before its
    first iteration (``_initialize_parameters``: ``KMeans(n_init=1, random_state)`` and the
    M-step from its labels)."""
    return sklearn_at_defaults(config, x, seed, threads, lambda model, data: (
        model._initialize_parameters(data, np.random.RandomState(seed))))[0]


def main(args) -> int:
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    dtypes = ([torch.float32, torch.float64] if args.dtype == "both"
              else [getattr(torch, args.dtype)])
    x64, config = make_data(args, device)
    start64 = initialize(config, x64, torch.Generator(device=device).manual_seed(args.seed))
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"cpu, {args.threads} threads")
    print(f"EM on N={args.num_data}, D={args.dim}, K={args.components}, "
          f"{args.covariance_type} covariance, means spread {args.spread:g}, {args.iterations} "
          f"iterations (+ final E-step), "
          f"{where}, OMP_WAIT_POLICY={args.omp_wait_policy}, torch {torch.__version__}, "
          f"best of {args.repeats}")
    kernel = em_native.status()
    print("float32 E-step on the CPU: " + (f"the compiled kernel ({kernel['variant']})"
                                           if kernel["used"] else
                                           f"torch's form ({kernel['reason']})"))
    header = (f"{'dtype':<8} {'lvm-zoo s':>10} {'ms/iter':>8} {'sklearn s':>10} "
              f"{'speed-up':>9} {'log p(x) lvm-zoo':>17} {'log p(x) sklearn':>17} {'|diff|':>9}")
    print(header)
    print("-" * len(header))
    failed = False
    with_starts = []
    for dtype in dtypes:
        x = x64.to(dtype)
        start = {name: value.to(dtype) for name, value in start64.items()}
        ours = theirs = None
        starts = [math.inf, math.inf]  # lvm-zoo's, scikit-learn's: the fastest of the repeats
        for _ in range(args.repeats):  # alternate, so that both see the same machine
            run = run_ours(config, x, start, args.iterations)
            ours = run if ours is None or run[0] < ours[0] else ours
            starts[0] = min(starts[0], time_our_start(config, x, args.seed))
            if not args.no_sklearn:
                run = run_sklearn(config, x, start, args.iterations, args.threads)
                theirs = run if theirs is None or run[0] < theirs[0] else theirs
                starts[1] = min(starts[1], time_sklearn_start(config, x, args.seed,
                                                              args.threads))
        with_starts.append((str(dtype).removeprefix("torch."), ours[0], theirs, starts))
        seconds, result = ours
        final = result.history["log_likelihood"][-1]
        per_iteration = 1e3 * seconds / args.iterations
        name = str(dtype).removeprefix("torch.")
        if theirs is None:
            print(f"{name:<8} {seconds:>10.3f} {per_iteration:>8.2f} {'-':>10} {'-':>9} "
                  f"{final:>17.8f} {'-':>17} {'-':>9}")
            continue
        sk_seconds, sk_final = theirs
        difference = abs(final - sk_final)
        tolerance = 1e-8 if dtype == torch.float64 else 1e-4
        agree = difference <= tolerance * max(1.0, abs(sk_final))
        failed |= not agree
        print(f"{name:<8} {seconds:>10.3f} {per_iteration:>8.2f} {sk_seconds:>10.3f} "
              f"{sk_seconds / seconds:>8.1f}x {final:>17.8f} {sk_final:>17.8f} "
              f"{difference:>9.2e}" + ("" if agree else "  DISAGREE"))
    if not args.no_sklearn:
        print(f"\nThe same {args.iterations} iterations with each one's default start added "
              "(k-means; timed on its own, the same repeats)")
        header = (f"{'dtype':<8} {'lvm-zoo start s':>16} {'+ iters s':>10} {'sklearn start s':>16}"
                  f" {'+ iters s':>10} {'speed-up':>9}")
        print(header)
        print("-" * len(header))
        for name, seconds, theirs, (our_start, their_start) in with_starts:
            ours_total, theirs_total = our_start + seconds, their_start + theirs[0]
            print(f"{name:<8} {our_start:>16.3f} {ours_total:>10.3f} {their_start:>16.3f} "
                  f"{theirs_total:>10.3f} {theirs_total / ours_total:>8.1f}x")
    if not args.no_defaults:
        failed |= defaults(args, config, x64, dtypes)
    if args.over_seeds:
        over_seeds(args, config, x64, dtypes)
    return 1 if failed else 0


def run_ours_at_defaults(config, x, seed):
    """``fit_em`` at its defaults on a fresh copy of ``x`` (no cached features): seconds and
    the result, the start included."""
    x = x.clone()
    synchronize(x.device)
    settle()
    began = time.perf_counter()
    result = fit_em(SPEC, config, x, seed=seed)
    synchronize(x.device)
    return time.perf_counter() - began, result


def run_sklearn_at_defaults(config, x, seed, threads, **options):
    """``GaussianMixture(K, covariance_type, random_state=seed, **options).fit`` (its defaults
    but for ``options``): seconds, iterations and mean log p(x)."""
    seconds, model, data = sklearn_at_defaults(config, x, seed, threads,
                                               lambda model, data: model.fit(data), **options)
    return seconds, model.n_iter_, float(model.score(data))


def defaults(args, config, x64, dtypes) -> bool:
    """The time to a converged fit at defaults, start included, and the cost of each start
    next to one EM iteration. Returns whether lvm-zoo ended below scikit-learn's optimum."""
    print(f"\nConverged fit at defaults, start included (lvm-zoo: init {INIT_METHODS[0]}, tol "
          f"1e-6, max_iter 500; scikit-learn: init kmeans, tol 1e-3, max_iter 100), seed "
          f"{args.seed}, best of {args.repeats}")
    header = (f"{'dtype':<8} {'lvm-zoo s':>10} {'iters':>6} {'sklearn s':>10} {'iters':>6} "
              f"{'speed-up':>9} {'log p(x) lvm-zoo':>17} {'log p(x) sklearn':>17}")
    print(header)
    print("-" * len(header))
    worse = False
    ours_by_dtype = {}
    for dtype in dtypes:
        x = x64.to(dtype)
        ours = theirs = None
        for _ in range(args.repeats):
            run = run_ours_at_defaults(config, x, args.seed)
            ours = run if ours is None or run[0] < ours[0] else ours
            if not args.no_sklearn:
                run = run_sklearn_at_defaults(config, x, args.seed, args.threads)
                theirs = run if theirs is None or run[0] < theirs[0] else theirs
        ours_by_dtype[dtype] = ours
        seconds, result = ours
        final = result.history["log_likelihood"][-1]
        name = str(dtype).removeprefix("torch.")
        if theirs is None:
            print(f"{name:<8} {seconds:>10.3f} {result.steps:>6} {'-':>10} {'-':>6} {'-':>9} "
                  f"{final:>17.8f} {'-':>17}")
            continue
        sk_seconds, sk_iterations, sk_final = theirs
        below = final < sk_final - 1e-6 * max(1.0, abs(sk_final))
        worse |= below
        print(f"{name:<8} {seconds:>10.3f} {result.steps:>6} {sk_seconds:>10.3f} "
              f"{sk_iterations:>6} {sk_seconds / seconds:>8.1f}x {final:>17.8f} "
              f"{sk_final:>17.8f}" + ("  BELOW" if below else ""))
    if not args.no_sklearn:
        # scikit-learn's tol 1e-3 stops EM on overlapping clusters well short of the optimum,
        # so the fits above can end at different log-likelihoods; here both stop by one rule
        print(f"\nConverged by one rule: scikit-learn at lvm-zoo's tol {TOL:g} and max_iter "
              f"{MAX_ITER} (the same stopping rule: the mean log p(x) gained by an iteration), "
              "each from its own default start; lvm-zoo's runs are the ones above")
        print(header)
        print("-" * len(header))
        for dtype in dtypes:
            x = x64.to(dtype)
            theirs = None
            for _ in range(args.repeats):
                run = run_sklearn_at_defaults(config, x, args.seed, args.threads, tol=TOL,
                                              max_iter=MAX_ITER)
                theirs = run if theirs is None or run[0] < theirs[0] else theirs
            seconds, result = ours_by_dtype[dtype]
            final = result.history["log_likelihood"][-1]
            sk_seconds, sk_iterations, sk_final = theirs
            print(f"{str(dtype).removeprefix('torch.'):<8} {seconds:>10.3f} {result.steps:>6} "
                  f"{sk_seconds:>10.3f} {sk_iterations:>6} {sk_seconds / seconds:>8.1f}x "
                  f"{final:>17.8f} {sk_final:>17.8f}")
    print(f"\nlvm-zoo's starts (best of {args.repeats}) against one EM iteration, and Lloyd's "
          "iterations from the k-means++ seeds (to scikit-learn's tolerance)")
    for dtype in dtypes:
        x = x64.to(dtype)
        times = {}
        for method in INIT_METHODS:
            best = math.inf
            for _ in range(args.repeats):
                generator = torch.Generator(device=x.device).manual_seed(args.seed)
                synchronize(x.device)
                began = time.perf_counter()
                initialize(config, x, generator, method)
                synchronize(x.device)
                best = min(best, time.perf_counter() - began)
            times[method] = best
        start = initialize(config, x, torch.Generator(device=x.device).manual_seed(args.seed))
        iteration = min(run_ours(config, x, start, 5)[0] for _ in range(args.repeats)) / 5
        seeds, _ = kmeans_plus_plus(x, config.components,
                                    generator=torch.Generator(device=x.device).manual_seed(0))
        lloyd_best, lloyd_run = math.inf, None
        for _ in range(args.repeats):
            synchronize(x.device)
            began = time.perf_counter()
            lloyd_run = lloyd(x, seeds, tol=lloyd_tolerance(x))
            synchronize(x.device)
            lloyd_best = min(lloyd_best, time.perf_counter() - began)
        print(f"{str(dtype).removeprefix('torch.'):<8} " + "  ".join(
            f"{method} {1e3 * value:.1f} ms" for method, value in times.items())
            + f"  |  EM iteration {1e3 * iteration:.1f} ms  |  Lloyd {lloyd_run.n_iter} "
            f"iterations {1e3 * lloyd_best / lloyd_run.n_iter:.2f} ms each")
    return worse


def over_seeds(args, config, x64, dtypes) -> None:
    """The converged fit at defaults from ``--over-seeds`` seeds of each one's start (the same
    data), one run each: each one's median seconds and EM iterations, their range, and the
    ratio of the medians; scikit-learn also at lvm-zoo's stopping rule."""
    seeds = range(args.seed, args.seed + args.over_seeds)
    print(f"\nConverged fit at defaults over {len(seeds)} seeds of each one's start "
          f"({seeds.start}..{seeds.stop - 1}), one run each: median (range)")
    header = (f"{'dtype':<8} {'lvm-zoo s':>20} {'iters':>12} {'sklearn s':>20} {'iters':>12} "
              f"{'ratio of medians':>17}")
    for dtype in dtypes:
        x = x64.to(dtype)
        ours = [run_ours_at_defaults(config, x, seed) for seed in seeds]
        columns = [[seconds for seconds, _ in ours], [result.steps for _, result in ours]]
        rows = [("sklearn, its defaults", {}), ("sklearn, lvm-zoo's rule",
                                               {"tol": TOL, "max_iter": MAX_ITER})]
        print(header)
        print("-" * len(header))
        for label, options in ([] if args.no_sklearn else rows):
            theirs = [run_sklearn_at_defaults(config, x, seed, args.threads, **options)
                      for seed in seeds]
            seconds = [run[0] for run in theirs]
            iterations = [run[1] for run in theirs]
            ratio = float(np.median(seconds)) / float(np.median(columns[0]))
            print(f"{str(dtype).removeprefix('torch.'):<8} {_spread(columns[0], 3):>20} "
                  f"{_spread(columns[1], 0):>12} {_spread(seconds, 3):>20} "
                  f"{_spread(iterations, 0):>12} {ratio:>16.1f}x  {label}")


def _spread(values, digits: int) -> str:
    """``median (low-high)`` of ``values``."""
    return (f"{float(np.median(values)):.{digits}f} ({min(values):.{digits}f}-"
            f"{max(values):.{digits}f})")


if __name__ == "__main__":
    sys.exit(main(ARGS))
