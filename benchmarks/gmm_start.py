"""The GMM's default start on a sample: does EM from it reach the optimum as often as from
scikit-learn's start, and what does it cost (issue 26).

Past ``zoo.gmm_init.start_rows`` rows the k-means start runs its k-means++ seeds and Lloyd's
iterations on a seeded sample and labels every row by its nearest centre. Over ``--seeds``
datasets (a K-component mixture in D dimensions, means of sd ``--spread`` against unit
variances, N rows each) this script fits, at a tight tolerance:

- EM from lvm-zoo's start on a sample of ``--sample-rows`` rows;
- EM from lvm-zoo's start on every row (the start up to the limit: scikit-learn's, row for row);
- scikit-learn's ``GaussianMixture`` at its default start (``n_init=1``, k-means);

and counts how often each ends within ``--within`` nats a row of the best of scikit-learn's
``--best-of`` starts, the reference optimum. It prints the mean seconds of each start and the
mean number of EM iterations from it (to ``--tol``) beside the counts.

    python benchmarks/gmm_start.py                      # 8,000 rows, 2,000 sampled, 20 seeds
    python benchmarks/gmm_start.py --spread 3.0 --first-seed 20 --seeds 60

With ``--one-dataset`` the data are drawn once (from ``--first-seed``) and only the starts'
seeds vary: how often, and after how many EM iterations, each start reaches the optimum of one
dataset, at the default sample size for instance:

    python benchmarks/gmm_start.py --one-dataset --num-data 200000 --dim 16 --components 8 \
        --spread 0.6 --sample-rows 20000 --tol 1e-6 --seeds 24
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from inference.em import fit_em  # noqa: E402
from zoo.gmm import SPEC, GMMConfig, initialize  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=8000)
    parser.add_argument("--dim", type=int, default=3)
    parser.add_argument("--components", type=int, default=4)
    parser.add_argument("--spread", type=float, default=2.0,
                        help="the means' sd per coordinate against unit variances")
    parser.add_argument("--sample-rows", type=int, default=2000,
                        help="the sampled start's rows (below --num-data)")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--best-of", type=int, default=5,
                        help="scikit-learn's starts for the optimum")
    parser.add_argument("--tol", type=float, default=1e-7, help="every fit's tolerance")
    parser.add_argument("--within", type=float, default=1e-4,
                        help="nats a row below the optimum that still count as reaching it")
    parser.add_argument("--one-dataset", action="store_true",
                        help="one dataset (from --first-seed); only the starts' seeds vary")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser.parse_args(argv)


def mixture(args, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    means = args.spread * torch.randn(args.components, args.dim, generator=generator,
                                      dtype=torch.float64)
    labels = torch.randint(args.components, (args.num_data,), generator=generator)
    return means[labels] + torch.randn(args.num_data, args.dim, generator=generator,
                                       dtype=torch.float64)


def ours(config, x, seed: int, limit: int, tol: float) -> tuple[float, float, int]:
    """(seconds of the start, mean log p(x) where EM from it ends, EM's iterations)."""
    began = time.perf_counter()
    start = initialize(config, x, torch.Generator().manual_seed(seed), sample_rows=limit)
    seconds = time.perf_counter() - began
    fitted = fit_em(SPEC, config, x, init=start, tol=tol, max_iter=5000)
    return seconds, fitted.history["log_likelihood"][-1], fitted.steps


def main(argv=None) -> dict:
    args = parse_args(argv)
    if not args.components <= args.sample_rows < args.num_data:
        raise SystemExit("--sample-rows must lie between --components and --num-data")
    from sklearn.mixture import GaussianMixture

    names = ("sampled start", "every row", "scikit-learn")
    reached, seconds, iterations = np.zeros(3, dtype=int), np.zeros(3), np.zeros(3, dtype=int)
    most = np.zeros(3, dtype=int)
    config = GMMConfig(dim=args.dim, components=args.components)
    best = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fit at max_iter is counted as it ends
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            if best is None or not args.one_dataset:
                x = mixture(args, seed)
                data = x.numpy()
                best = GaussianMixture(args.components, n_init=args.best_of, tol=args.tol,
                                       max_iter=5000, random_state=seed).fit(data).score(data)
            ends, counts = [], []
            for i, limit in enumerate((args.sample_rows, args.num_data)):
                took, end, steps = ours(config, x, seed, limit, args.tol)
                seconds[i] += took
                counts.append(steps)
                ends.append(end)
            reference = GaussianMixture(args.components, tol=args.tol, max_iter=5000,
                                        random_state=seed)
            began = time.perf_counter()
            reference._initialize_parameters(data, np.random.RandomState(seed))
            seconds[2] += time.perf_counter() - began
            ends.append(reference.fit(data).score(data))
            counts.append(reference.n_iter_)
            iterations += counts
            most = np.maximum(most, counts)
            reached += [end > best - args.within for end in ends]
    result = {"reached": dict(zip(names, reached.tolist(), strict=True)),
              "start_seconds": dict(zip(names, (seconds / args.seeds).tolist(), strict=True)),
              "em_iterations": dict(zip(names, (iterations / args.seeds).tolist(), strict=True)),
              "most_em_iterations": dict(zip(names, most.tolist(), strict=True)),
              "seeds": args.seeds, "num_data": args.num_data, "sample_rows": args.sample_rows,
              "one_dataset": args.one_dataset}
    if args.json:
        print(json.dumps(result))
        return result
    what = (f"one dataset, {args.seeds} starts' seeds," if args.one_dataset
            else f"{args.seeds} datasets")
    print(f"{what} of {args.num_data} rows x {args.dim}, K = {args.components}, "
          f"means' sd {args.spread}; the sample: {args.sample_rows} rows; tol {args.tol}; "
          f"reaching = within {args.within} nats a row of scikit-learn's best of "
          f"{args.best_of} starts")
    print(f"{'start':<16}{'reached':>10}{'start ms':>10}{'EM iterations':>15}{'most':>6}")
    for i, name in enumerate(names):
        print(f"{name:<16}{reached[i]:>7}/{args.seeds:<2}{1e3 * seconds[i] / args.seeds:>10.1f}"
              f"{iterations[i] / args.seeds:>15.1f}{most[i]:>6}")
    return result


if __name__ == "__main__":
    main()
