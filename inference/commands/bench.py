"""``lvm-zoo bench``: every strategy on every posterior of the posteriordb suite
(:mod:`inference.bench`); ``--list`` prints the suite, one posterior a line. Writes one JSON
file per cell under ``--out`` (a rerun skips finished cells), results.csv, report.html,
summary.png and summary.json, and prints the summary table (one JSON object with ``--json``).

This module holds the command's flags too (:func:`add_command`, called by the CLI's parser
builder); it imports nothing heavy until :func:`main` runs."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

NAME = "bench"


def add_command(parser: argparse.ArgumentParser) -> None:
    """Add the ``bench`` sub-command and its flags to the CLI's parser."""
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if NAME in commands.choices:
        return
    bench = commands.add_parser(NAME, help="every strategy on posteriordb posteriors against "
                                "their reference draws: accuracy, k̂, cost; report and figure")
    bench.add_argument("--list", action="store_true", help="print the suite, one posterior a "
                       "line, and stop")
    bench.add_argument("--posteriors", type=_names,
                       help="comma-separated posteriors (default: the whole suite)")
    bench.add_argument("--strategies", type=_names, help="comma-separated, from auto-normal, "
                       "auto-lowrank, auto-mvn, flow, nuts (default: all)")
    bench.add_argument("--jobs", type=int, default=1,
                       help="processes, one thread each (default 1)")
    bench.add_argument("--out", default="runs/bench",
                       help="folder of the cells and the report (default runs/bench)")
    bench.add_argument("--report-only", action="store_true",
                       help="write the report of the cells already in --out and run none")
    bench.add_argument("--overwrite", action="store_true",
                       help="run every cell again (default: reuse the finished ones)")
    bench.add_argument("--steps", type=int, help="SVI steps at most per fit (default 3000; "
                       "the schedule stops a stationary fit sooner)")
    bench.add_argument("--lr", type=float, help="SVI learning rate (default 0.01)")
    bench.add_argument("--draws", type=int,
                       help="draws from each fitted guide (default 2000)")
    bench.add_argument("--nuts-warmup", type=int, help="NUTS warm-up per chain (default 400)")
    bench.add_argument("--nuts-samples", type=int, help="NUTS draws per chain (default 500)")
    bench.add_argument("--nuts-chains", type=int, help="NUTS chains (default 2)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--suite", help="the suite: module:function or FILE.py:function "
                       "returning {name: Posterior} (default zoo.posteriordb:suite)")
    bench.add_argument("--json", action="store_true", help="print one JSON object")


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


def main(args: argparse.Namespace) -> int:
    from inference.bench import report
    from inference.bench.fits import STRATEGIES, Budget
    from inference.bench.runner import DEFAULT_SUITE, load_suite, run_grid, written
    from zoo.errors import InputError

    suite_ref = args.suite or DEFAULT_SUITE
    suite = load_suite(suite_ref)
    if args.list:
        for name in suite:
            print(name)
        return 0
    names = args.posteriors or tuple(suite)
    unknown = [n for n in names if n not in suite]
    if unknown:
        raise InputError(f"--posteriors: no posterior {', '.join(unknown)} in the suite; "
                         "`lvm-zoo bench --list` prints them")
    strategies = args.strategies or STRATEGIES
    given = {"steps": args.steps, "lr": args.lr, "draws": args.draws,
             "nuts_warmup": args.nuts_warmup, "nuts_samples": args.nuts_samples,
             "nuts_chains": args.nuts_chains, "seed": args.seed}
    budget = Budget(**{k: v for k, v in given.items() if v is not None})
    tty = sys.stderr.isatty() and not args.json

    def progress(record: dict, done: int, total: int) -> None:
        if tty:
            state = "" if record["status"] == "ok" else " FAILED"
            print(f"[{done}/{total}] {record['posterior']} {record['strategy']}{state} "
                  f"({record['wall_seconds']:.0f} s)", file=sys.stderr, flush=True)

    if args.report_only:
        records = written(Path(args.out), names, strategies, budget)
        if not records:
            raise InputError(f"--report-only: {args.out} holds no cell of these posteriors "
                             "and settings; run the bench first")
        shown = [n for n in names if any(r["posterior"] == n for r in records)]
        totals = report.write_all(records, shown, strategies, args.out,
                                  command=f"lvm-zoo bench --report-only --out {args.out}")
        print(report.text_table(totals))
        return 0
    start = time.perf_counter()
    records = run_grid({n: suite[n] for n in names}, strategies, budget, args.out,
                       jobs=args.jobs, suite=suite_ref, overwrite=args.overwrite,
                       progress=progress)
    elapsed = time.perf_counter() - start
    command = "lvm-zoo " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == [NAME] else \
        f"lvm-zoo bench --out {args.out}"
    totals = report.write_all(records, names, strategies, args.out, command=command,
                              elapsed=elapsed)
    if args.json:
        print(json.dumps({**totals, "seconds": elapsed, "out": str(args.out)}))
    else:
        print(report.text_table(totals))
        print(f"{len(records)} cells in {elapsed:.0f} s; written: {args.out}/"
              f"{report.HTML_FILE}, {report.CSV_FILE}, {report.FIGURE_FILE}")
    return 0
