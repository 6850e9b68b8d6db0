"""The documentation site: generated references that follow the code, and a --strict
mkdocs build (what `make docs` runs) that fails on a broken link."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kprobe.commands import COMMAND_MODULES
from tests.support import REPO

MKDOCS = Path(sys.executable).parent / "mkdocs"
ENV = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def _build(config: Path, site: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(MKDOCS), "build", "--strict", "-f", str(config), "-d",
                           str(site)], cwd=config.parent, capture_output=True, text=True,
                          env=ENV, timeout=600)


def test_strict_build_with_generated_references(tmp_path: Path) -> None:
    generated = subprocess.run([sys.executable, "docs/_gen/generate.py"], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert generated.returncode == 0, generated.stderr
    cli = (REPO / "docs" / "reference" / "cli.md").read_text()
    for command in COMMAND_MODULES:  # every command, from the parser itself
        assert f"## kprobe {command}" in cli, command
    assert "`--follow`" in cli and "`--export-otlp` `ENDPOINT`" in cli
    api = (REPO / "docs" / "reference" / "api.md").read_text()
    from kprobe.query_api.app import create_app

    for path in create_app().openapi()["paths"]:
        assert f" {path}`" in api, path
    settings = (REPO / "docs" / "reference" / "settings.md").read_text()
    assert "`KPROBE_COMPUTE_WINDOW_NS`" in settings and "`KPROBE_API_" in settings
    assert (REPO / "docs" / "architecture.md").read_text() == \
        (REPO / "ARCHITECTURE.md").read_text()

    site = tmp_path / "site"
    built = _build(REPO / "mkdocs.yml", site)
    assert built.returncode == 0, built.stderr
    for page in ("index.html", "quickstart/index.html", "reference/cli/index.html",
                 "reference/api/index.html", "deploying/index.html", "compare/index.html"):
        assert (site / page).is_file(), page

    # control: the same build with one broken link fails
    copy = tmp_path / "copy"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    faq = copy / "docs" / "faq.md"
    faq.write_text(faq.read_text() + "\nSee [the missing page](missing.md).\n")
    broken = _build(copy / "mkdocs.yml", tmp_path / "site2")
    assert broken.returncode != 0
    assert "missing.md" in broken.stderr
