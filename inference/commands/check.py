"""``lvm-zoo check``: exit status 2 and one line per problem (site, what, fix) when
something would break a fit; 0 and one "ok" line otherwise."""

from __future__ import annotations

import argparse
import json
import sys

from inference.commands import parser as flags
from inference.commands.runs import single_process


def main(args: argparse.Namespace) -> int:
    single_process("check")
    from inference.check import check

    spec = args.spec
    report = check(spec, data=flags.data_request(args, spec), rows=args.rows, seed=args.seed,
                   guides=args.guides, **flags.model_options(args, spec))
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        for problem in report.problems:
            print(problem.line())
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 2
