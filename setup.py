"""Builds the BPF objects into the wheel: ``build_py`` runs ``make -C capture_agent/bpf`` when
an object is missing or older than its source or a header (the metadata is pyproject.toml's).

The objects need Debian's clang/LLVM and bpftool (infra/scripts/install-host-packages.sh);
the Makefile refuses any other compiler and says which one it wants.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BPF_DIR = Path(__file__).resolve().parent / "capture_agent" / "bpf"


def bpf_objects_stale() -> bool:
    """Whether some <family>.bpf.o is missing or older than its source or any header."""
    sources = sorted(BPF_DIR.glob("*.bpf.c"))
    newest_header = max((h.stat().st_mtime for h in BPF_DIR.glob("*.h")), default=0.0)
    for source in sources:
        obj = source.with_suffix(".o")
        if not obj.exists():
            return True
        if obj.stat().st_mtime < max(source.stat().st_mtime, newest_header):
            return True
    return False


class BuildPyWithBpf(build_py):  # type: ignore[misc]
    def run(self) -> None:
        if bpf_objects_stale():
            subprocess.run(["make", "--no-print-directory", "-C", str(BPF_DIR)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildPyWithBpf})
