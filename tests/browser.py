"""Debian's Chromium driven by Playwright (Python), for the console's browser tests and bench.

Playwright's own browser download cannot work here: it is pointed at ``/usr/bin/chromium``
(the host-packages script installs Debian's ``chromium``), headless, with everything that
would reach the network at start-up turned off, and a fresh empty profile each time.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CONSOLE = REPO / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
AXE = CONSOLE / "node_modules" / "axe-core" / "axe.min.js"


def missing() -> str | None:
    """What the browser tests lack here (None: nothing)."""
    if not Path(CHROMIUM).exists():
        return f"{CHROMIUM} (Debian's chromium: make setup)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package (pip install -e .[dev])"
    if not (CONSOLE / "dist" / "index.html").is_file():
        return "the built console (make setup: npm ci && npm run build in console/)"
    return None


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian Chromium (a Playwright ``Browser``); Playwright gives each launch
    a new empty profile directory of its own (``--user-data-dir`` in a temporary
    directory) and removes it on close."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def build_console(mode: str | None = None) -> None:
    """``npm run build`` (or ``build:bench``) in console/; raises with npm's output."""
    script = "build" if mode is None else f"build:{mode}"
    proc = subprocess.run(["npm", "run", "--silent", script], cwd=CONSOLE,
                          capture_output=True, text=True, timeout=600, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"npm run {script} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
