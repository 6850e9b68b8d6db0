"""The console's own tests (vitest, jsdom: console/src/**/*.test.ts[x]) and its type check,
run by pytest so `make test` runs them. They need Node.js and the console's packages
(`make setup` runs `npm ci` in console/); with KPROBE_CI=1 a missing one fails."""

from __future__ import annotations

import os
import shutil
import subprocess

from tests.support import REPO, require

CONSOLE = REPO / "console"


def _npm(*args: str) -> subprocess.CompletedProcess[str]:
    require(shutil.which("node") is not None and shutil.which("npm") is not None,
            "Node.js and npm (the console's build and tests)")
    require((CONSOLE / "node_modules" / ".bin" / "vitest").exists(),
            "the console's packages (make setup: npm ci in console/)")
    return subprocess.run(["npm", "run", "--silent", *args], cwd=CONSOLE, capture_output=True,
                          text=True, timeout=600, check=False,
                          env={**os.environ, "CI": "1", "NO_COLOR": "1"})


def test_console_component_tests_pass() -> None:
    proc = _npm("test", "--", "--reporter=dot")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    # a run that found no test must not pass as green
    assert " passed" in proc.stdout and " failed" not in proc.stdout, proc.stdout[-2000:]


def test_console_type_checks() -> None:
    proc = _npm("typecheck")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
