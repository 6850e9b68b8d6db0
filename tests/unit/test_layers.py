"""The layers' import contract of ARCHITECTURE.md ("Layers and their contracts"): which of
our packages each package may import. Arrows point one way; the CLI is imported by none."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support import REPO

MAY_IMPORT = {
    "lake": {"lake"},
    "capture_agent": {"capture_agent", "lake"},
    "compute": {"compute", "lake"},
    "replay_sandbox": {"replay_sandbox", "lake"},
    "query_api": {"query_api", "lake", "compute", "replay_sandbox"},
}


def imported_packages(source: str) -> set[str]:
    """The ``kprobe.<name>`` each import of ``source`` names."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "kprobe":  # from kprobe import lake
                names = [f"kprobe.{a.name}" for a in node.names]
        found |= {n.split(".")[1] for n in names if n.startswith("kprobe.")}
    return found


def test_each_package_imports_only_what_its_layer_may() -> None:
    broken = []
    for package, allowed in MAY_IMPORT.items():
        for path in sorted((REPO / package).rglob("*.py")):
            extra = imported_packages(path.read_text()) - allowed
            if extra:
                broken.append(f"{path.relative_to(REPO)} imports {sorted(extra)}")
    assert not broken, "\n".join(broken)


def test_the_check_sees_a_forbidden_import() -> None:  # control
    assert imported_packages("from kprobe.compute.window import x\nfrom kprobe import cli\n"
                             "import kprobe.lake.schema as s\n") == {"compute", "cli", "lake"}
    assert not imported_packages("from kprobe_other import x\nimport lake_tools\n")


def test_every_package_is_in_the_contract() -> None:
    packages = {p.parent.name for p in REPO.glob("*/__init__.py")} - {"kprobe", "tests"}
    assert packages == set(MAY_IMPORT), packages
    assert all(Path(REPO / name).is_dir() for name in MAY_IMPORT)
