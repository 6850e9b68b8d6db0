"""One real ``kprobe demo`` run for the whole session, shared by the demo's tests and the
console's (each demo run takes ~25 s of staging plus its analysis and replays; the suite
ran it twice before)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kprobe.demo import host
from tests.support import require, require_root


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    """``python -m kprobe demo --lake DIR --format json`` into a fresh lake: its report
    and the lake. Tests that write into a lake take a copy (``shutil.copytree``)."""
    require_root()
    require(host.zram_support() is None, host.zram_support() or "zram")
    require(host.memory_cgroup_support() is None, host.memory_cgroup_support() or "memcg")
    require(host.cpu_controller(8) is not None, "a cgroup cpu controller")
    tmp = tmp_path_factory.mktemp("demo")
    lake = tmp / "lake"
    proc = subprocess.run(
        [sys.executable, "-m", "kprobe", "demo", "--lake", str(lake), "--format", "json"],
        cwd=tmp, capture_output=True, text=True, timeout=400, check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("OTEL_")})
    assert proc.returncode == 0, f"kprobe demo failed ({proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads(proc.stdout), lake
