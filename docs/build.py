"""Build the documentation site with one command, warnings as errors.

    python docs/build.py                  # smoke mode (LVM_ZOO_SMOKE=1), what CI builds: ~2 min
    python docs/build.py --full           # the release build: every tutorial in full mode
    python docs/build.py --site-dir DIR   # somewhere else than site/
    python docs/build.py --serve          # mkdocs serve: rebuilds (and re-executes) on change

Needs the docs extra (``pip install ".[docs]"``). Every build executes the six tutorials as
notebooks (docs/hooks.py), into temporary folders: nothing in the repository changes except
``site/``. Other arguments go to mkdocs unchanged.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true",
                        help="execute the tutorials in full mode (the release build)")
    parser.add_argument("--site-dir", help="where the site goes (default: site/)")
    parser.add_argument("--serve", action="store_true", help="mkdocs serve instead of build")
    args, rest = parser.parse_known_args(argv)

    environment = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # Material's banner, not ours
    if args.full:
        environment.pop("LVM_ZOO_SMOKE", None)
    else:
        environment["LVM_ZOO_SMOKE"] = "1"
    command = [sys.executable, "-m", "mkdocs", "serve" if args.serve else "build", "--strict",
               "--config-file", str(ROOT / "mkdocs.yml")]
    if args.site_dir and not args.serve:
        command += ["--site-dir", str(Path(args.site_dir).resolve())]
    command += rest
    mode = "full" if args.full else "smoke"
    print(f"::: docs ({mode} mode): {' '.join(command[2:])}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=environment, check=False)
    print(f"::: docs ({mode} mode) {'built' if done.returncode == 0 else 'FAILED'} in "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
