"""Every code example in the README and the docs pages runs as written.

A page's Python examples run in order in one fresh interpreter, in an empty folder, as a reader
pasting them one after the other would run them; an example introduced with "Save this as
`FILE`" (or opening with a ``# FILE.py`` comment) is written to that file instead. Shell
examples that call ``lvm-zoo`` run too, after the page's files are written. What cannot run
here (the install line CI itself runs, a GPU, several machines, a signature) is listed in
``NOT_RUN`` with its reason, and a listed example that no longer exists fails the test, so the
list cannot rot.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SAVE_AS = re.compile(r"(?:[Ss]ave this as|^#)\s*`?([\w./-]+\.py)`?")

# (page, the example's first line) -> why it is not run here
NOT_RUN = {
    ("README.md", "python3 -m venv .venv && . .venv/bin/activate && pip install \".[dev]\" && "
                  "lvm-zoo compare gmm"): "the install line: CI runs it first, in a fresh venv",
    ("README.md", ". .venv/bin/activate && pytest"): "the test command: CI runs it",
    ("README.md", "# one machine, two processes on the CPU (gloo)"):
        "torchrun on big.npy, on 4 GPUs and on two machines (tests/inference/"
        "test_distributed_*.py run torchrun on the CPU)",
    ("README.md", "lvm-zoo list                       # models, guides, inference strategies "
                  "(with their options), datasets"): "a synopsis of the commands, not a call",
    ("docs/bench.md", "lvm-zoo bench --jobs 2 --out runs/bench"):
        "the whole suite, ~28 minutes with 2 jobs (the page's first example runs two cells; "
        "tests/inference/test_bench.py runs cells and the report)",
    ("docs/your-own-model.md", "declare(name, model=None, *, config=None, local_sites=(), "
                               "global_sites=(), guides=None,"): "a signature, not a call",
}


def _examples(page: Path):
    """(language, code, file it is saved as or None, first line) for each example of a page."""
    text = page.read_text()
    for match in BLOCK.finditer(text):
        language, code = match.group(1), match.group(2)
        before = text[:match.start()].rstrip().splitlines()[-1:] or [""]
        first = code.strip().splitlines()[0] if code.strip() else ""
        saved = SAVE_AS.search(before[0]) or (SAVE_AS.match(first) if first.startswith("#")
                                              else None)
        yield language, code, saved.group(1) if saved and language == "python" else None, first


def _key(page: Path, first: str) -> tuple[str, str]:
    return str(page.relative_to(ROOT)), first


def _shell_commands(code: str) -> list[str]:
    """The ``lvm-zoo`` calls of a shell example (continuations joined, comments dropped)."""
    joined = code.replace("\\\n", " ")
    lines = [line.split("  #")[0].strip() for line in joined.splitlines()]
    # a line with optional parts in brackets (`[--json]`) is a synopsis, not a call
    return [line for line in lines if line.startswith("lvm-zoo ") and " [" not in line]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_example_of_a_page_runs_as_written(page, tmp_path):
    examples = list(_examples(page))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MPLBACKEND": "Agg",
           "OMP_NUM_THREADS": "1", "LVM_ZOO_DATA": str(ROOT.parent / "shared" / "data")}
    script, commands = [], []
    for language, code, saved, first in examples:
        if _key(page, first) in NOT_RUN:
            continue
        if saved:
            (tmp_path / saved).write_text(code)
        elif language == "python":
            script.append(code)
        elif language in ("bash", "sh", "console", ""):
            commands += _shell_commands(code)
    if script:
        (tmp_path / "examples.py").write_text("\n".join(script))
        done = subprocess.run([sys.executable, "examples.py"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, f"{page.name}'s Python examples fail:\n{done.stderr[-3000:]}"
    for command in commands:
        argv = [sys.executable, "-m", "inference", *shlex.split(command)[1:]]
        done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, f"{page.name}: `{command}` fails:\n{done.stderr[-2000:]}"


def test_every_example_not_run_still_exists_and_says_why():
    present = {_key(page, first) for page in PAGES for *_, first in _examples(page)}
    assert set(NOT_RUN) <= present, set(NOT_RUN) - present
    assert all(reason for reason in NOT_RUN.values())
