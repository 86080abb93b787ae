"""A real headless browser for the tests that open pages (the report, the docs site):
Debian's chromium, with the flags this closed network needs."""

import shutil
import subprocess

import pytest


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail("this test needs a real browser: install Debian's chromium with "
                "`apt-get update && apt-get install -y chromium` (CI does it in .ci/run)")


def headless(browser: str, profile, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", *args],
        capture_output=True, text=True, timeout=180, check=False)
