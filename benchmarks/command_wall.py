"""What the user waits for: the whole ``lvm-zoo fit gmm --inference em`` command, timed from
the shell, beside the fit's own ``seconds`` (issue 26).

Each case runs the command a user types as a subprocess (start-up, imports, data loading, the
start, EM, the yardstick, the run folder and its figures), takes its wall time, and reads the
fit's ``seconds`` from the record it prints (``--json``; the same number as the run folder's
``metrics.json``). The issue's target is

    wall <= 2 s + 1.2 x the fit's seconds

and the ratio ``wall / target`` is reported (at most 1 meets it). Cases: Old Faithful at the
command's defaults, and ``--num-data`` rows x ``--dim`` (a seeded K-component mixture, float32,
written as a ``.npy`` in a temporary folder) with ``--components`` and ``--max-iter``; with
``--no-figures-too`` each case once more with ``--no-figures``. ``import torch`` alone is timed
as the floor every command pays. Times are the fastest of ``--repeats``; on a machine shared
with other work they are noisy, so say so when you quote them.

    python benchmarks/command_wall.py                        # Old Faithful; 1e6 x 16, K=8
    python benchmarks/command_wall.py --num-data 20000 --dim 4 --components 3   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXED_SECONDS, FIT_FACTOR = 2.0, 1.2  # the target: wall <= 2 s + 1.2 x fit seconds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-data", type=int, default=1_000_000, help="rows of the file case")
    parser.add_argument("--dim", type=int, default=16, help="columns of the file case")
    parser.add_argument("--components", type=int, default=8, help="K of the file case")
    parser.add_argument("--max-iter", type=int, default=15, help="EM iterations at most (file)")
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the command")
    parser.add_argument("--repeats", type=int, default=1, help="runs per case; fastest counts")
    parser.add_argument("--skip-faithful", action="store_true", help="only the file case")
    parser.add_argument("--skip-file", action="store_true", help="only Old Faithful")
    parser.add_argument("--no-figures-too", action="store_true",
                        help="also time each case with --no-figures")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def lvm_zoo_command() -> list[str]:
    """The installed ``lvm-zoo`` script beside this interpreter, else ``python -m inference``."""
    script = Path(sys.executable).with_name("lvm-zoo")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "inference"]


def environment(threads: int) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def write_mixture(path: Path, num_data: int, dim: int, components: int, seed: int,
                  spread: float = 3.0) -> Path:
    """``num_data`` float32 rows from a seeded ``components``-component spherical mixture of
    unit variances whose means have sd ``spread`` per coordinate (3: well separated; below 1
    the components overlap, and EM takes many iterations)."""
    generator = np.random.default_rng(seed)
    means = spread * generator.standard_normal((components, dim))
    labels = generator.integers(components, size=num_data)
    rows = generator.standard_normal((num_data, dim), dtype=np.float32)
    rows += means[labels].astype(np.float32)
    np.save(path, rows)
    return path


def time_command(command: list[str], env: dict) -> tuple[float, dict]:
    """Wall seconds of ``command`` (which prints one JSON record) and that record."""
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env)
    wall = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(command)}\n"
                         f"{done.stderr[-2000:]}")
    return wall, json.loads(done.stdout)


def measure(name: str, flags: list[str], args, folder: Path, env: dict) -> dict:
    """The fastest of ``args.repeats`` runs of ``lvm-zoo fit gmm --inference em FLAGS``."""
    best = None
    for repeat in range(args.repeats):
        out = folder / f"{name.replace(' ', '').replace('--', '-')}-{repeat}"
        command = [*lvm_zoo_command(), "fit", "gmm", "--inference", "em", *flags,
                   "--out", str(out), "--json"]
        wall, record = time_command(command, env)
        metrics = json.loads((out / "metrics.json").read_text())
        figures = sorted(p.name for p in out.glob("*.png"))
        shutil.rmtree(out)
        if best is None or wall < best["wall_seconds"]:
            typed = ["lvm-zoo", *command[len(lvm_zoo_command()):]]
            typed[typed.index(str(out))] = "RUN_DIR"
            best = {"case": name, "command": " ".join(typed),
                    "wall_seconds": wall, "fit_seconds": float(metrics["seconds"]),
                    "printed_seconds": float(record["seconds"]), "steps": record.get("steps"),
                    "figures": figures}
    target = FIXED_SECONDS + FIT_FACTOR * best["fit_seconds"]
    best.update(target_seconds=target, ratio=best["wall_seconds"] / target,
                beyond_fit_seconds=best["wall_seconds"] - best["fit_seconds"])
    return best


def import_torch_seconds(env: dict, repeats: int) -> float:
    walls = []
    for _ in range(repeats):
        began = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True, env=env)
        walls.append(time.perf_counter() - began)
    return min(walls)


HEADER = (f"{'case':<28} {'fit s':>7} {'wall s':>7} {'target s':>8} {'wall/target':>11} "
          f"{'wall - fit':>10}  verdict")


def line(row: dict) -> str:
    verdict = "meets" if row["ratio"] <= 1.0 else "misses"
    return (f"{row['case']:<28} {row['fit_seconds']:>7.2f} {row['wall_seconds']:>7.2f} "
            f"{row['target_seconds']:>8.2f} {row['ratio']:>11.2f} "
            f"{row['beyond_fit_seconds']:>10.2f}  {verdict}")


def main(args) -> dict:
    env = environment(args.threads)
    report = {"threads": args.threads, "repeats": args.repeats,
              "import_torch_seconds": import_torch_seconds(env, args.repeats), "cases": []}
    if not args.json:  # each case's line as soon as it is measured
        print(f"lvm-zoo fit gmm --inference em, wall time from the shell, {args.threads} "
              f"thread(s), fastest of {args.repeats}; `import torch` alone: "
              f"{report['import_torch_seconds']:.2f} s")
        print(f"target: wall <= {FIXED_SECONDS:g} s + {FIT_FACTOR:g} x fit seconds")
        print(HEADER)
        print("-" * len(HEADER), flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        cases = []
        if not args.skip_faithful:
            cases.append(("old-faithful", []))
        if not args.skip_file:
            data = write_mixture(folder / "mixture.npy", args.num_data, args.dim,
                                 args.components, args.seed)
            cases.append((f"{args.num_data}x{args.dim}", [
                "--data", str(data), "--components", str(args.components),
                "--max-iter", str(args.max_iter)]))
        runs = [(name, flags) for name, flags in cases] + (
            [(f"{name} --no-figures", [*flags, "--no-figures"]) for name, flags in cases]
            if args.no_figures_too else [])
        for name, flags in sorted(runs, key=lambda run: [c[0] for c in cases].index(
                run[0].split(" ")[0])):
            row = measure(name, flags, args, folder, env)
            report["cases"].append(row)
            if not args.json:
                print(line(row), flush=True)
    if args.json:
        print(json.dumps(report, indent=2))
        return report
    for row in report["cases"]:
        print(f"  {row['case']}: {row['command']}")
    return report


if __name__ == "__main__":
    main(parse_args())
