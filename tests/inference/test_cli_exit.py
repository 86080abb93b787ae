"""The command ends without Python's teardown of every module (0.35-0.45 s of each command),
and still does what a normal exit does that matters: the status, the flushed output, the
atexit functions, and the threads that are still working."""

import subprocess
import sys


def command(*arguments: str, before: str = "") -> subprocess.CompletedProcess:
    """``lvm-zoo ARGUMENTS`` through :func:`inference.cli.run`, with ``before`` run just
    before it (after the imports)."""
    code = ("import sys; sys.argv = ['lvm-zoo', *sys.argv[1:]]; from inference.cli import run; "
            + before + "run()")
    return subprocess.run([sys.executable, "-c", code, *arguments],
                          capture_output=True, text=True, timeout=300)


def test_the_status_and_the_whole_output_arrive_through_a_pipe():
    done = command("list")
    assert done.returncode == 0, done.stderr[-2000:]
    listed = subprocess.run([sys.executable, "-m", "inference", "list"], capture_output=True,
                            text=True, timeout=300)
    assert listed.returncode == 0
    assert done.stdout == listed.stdout  # python -m inference takes the same exit
    assert done.stdout.startswith("Models") and done.stdout.endswith("\n")
    assert "gmm" in done.stdout


def test_bad_input_still_exits_2_with_one_line():
    done = command("fit", "gmm", "--inference", "em", "--components", "0", "--no-figures")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "components=0" in done.stderr
    assert "Traceback" not in done.stderr


def test_atexit_functions_still_run():
    done = command("list", before="import atexit; atexit.register(print, 'atexit ran'); ")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.endswith("atexit ran\n")


def test_a_working_thread_is_waited_for():
    """Another non-daemon thread still running: the exit is Python's own, which waits."""
    before = ("import threading, time; threading.Thread(target=lambda: (time.sleep(3.0), "
              "print('thread done', flush=True))).start(); ")
    done = command("list", before=before)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.rstrip().endswith("thread done")
