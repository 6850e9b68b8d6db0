"""Packaging: the agent and the CLI need neither Ray nor the API's packages (extras ray and api),
and the wheel carries the BPF objects with their sources."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from tests.support import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())

# Python run with the extras' top-level modules made unimportable, as in an install without them
BLOCKED = """
import sys
BLOCKED = %r
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Block())
"""


def run_without(blocked: set[str], code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", BLOCKED % (blocked,) + code], cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def test_extras_split_ray_and_the_api_from_the_agent() -> None:
    core = " ".join(PYPROJECT["project"]["dependencies"])
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert "ray" not in core and "fastapi" not in core and "swagger-ui" not in core
    assert any(d.startswith("ray[default]") for d in extras["ray"])
    assert any(d.startswith("fastapi") for d in extras["api"])
    assert "kprobe[api,ray]" in extras["dev"]


def test_agent_and_cli_import_without_ray_or_the_api() -> None:
    code = """
import kprobe.capture_agent.agent, kprobe.capture_agent.otlp.server, kprobe.commands.record
import kprobe.commands.otlp, kprobe.commands.lake, kprobe.commands.analyze
from kprobe.cli import build_parser
parser = build_parser()
print(sorted(parser._subparsers._group_actions[0].choices))
"""
    result = run_without({"ray", "fastapi", "swagger_ui"}, code)
    assert result.returncode == 0, result.stderr[-2000:]
    for command in ("record", "otlp", "lake", "analyze", "serve", "replay"):
        assert f"'{command}'" in result.stdout, command
    # control: the block does block (an eager import of Ray would fail like this)
    result = run_without({"ray"}, "import ray")
    assert result.returncode != 0 and "No module named 'ray'" in result.stderr


def test_wheel_carries_the_bpf_objects_and_their_sources(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp_path), str(REPO)], check=True, timeout=600, capture_output=True)
    (wheel,) = tmp_path.glob("kprobe-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    sources = sorted(p.name for p in (REPO / "capture_agent/bpf").glob("*.bpf.c"))
    assert len(sources) >= 6
    for source in sources:
        assert f"kprobe/capture_agent/bpf/{source}" in names, source
        assert f"kprobe/capture_agent/bpf/{source[:-2]}.o" in names, source
    assert "kprobe/capture_agent/bpf/common.h" in names
    # one top-level package: no generic names (lake, compute, ...) in site-packages
    tops = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(
        ".dist-info")}
    assert tops == {"kprobe"}, tops
    for package in ("capture_agent", "lake", "compute", "query_api", "replay_sandbox"):
        assert f"kprobe/{package}/__init__.py" in names, package
