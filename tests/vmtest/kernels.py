"""Debian's cloud kernels for the matrix: the newest package of each supported line, fetched
with ``apt-get download`` and unpacked with ``dpkg-deb -x`` into a cache (never installed).

The cloud flavour is the kernel cloud images boot; ``-unsigned`` is the same image without
the Secure Boot signature, so its package holds the plain ``vmlinuz`` and modules.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.vmtest.errors import VmtestError

# Debian 12's own line and the 6.12 line Debian 12 carries as its newer kernel.
LINES: tuple[str, ...] = ("6.1", "6.12")

_PACKAGE = re.compile(
    r"^linux-image-(?P<release>(?P<version>\d+\.\d+\.\d+(?:-\d+)?(?:\+deb\d+)?)-cloud-amd64)"
    r"-unsigned$")


@dataclass(frozen=True)
class KernelPackage:
    """One Debian kernel image package: ``linux-image-<release>-unsigned``."""

    name: str
    release: str  # what `uname -r` prints in the guest
    line: str  # "6.1", "6.12"
    order: tuple[int, ...]  # the version's numbers: newest is largest


def parse_package(name: str) -> KernelPackage | None:
    """The package ``name`` describes, or None when it is not a cloud amd64 unsigned image."""
    match = _PACKAGE.match(name.strip())
    if match is None:
        return None
    numbers = tuple(int(n) for n in re.findall(r"\d+", match["version"]))
    return KernelPackage(name=name.strip(), release=match["release"],
                         line=f"{numbers[0]}.{numbers[1]}", order=numbers)


def newest_per_line(names: Iterable[str], lines: Sequence[str] = LINES
                    ) -> dict[str, KernelPackage]:
    """For each line ("6.1"), the package with the highest version among ``names``."""
    newest: dict[str, KernelPackage] = {}
    for name in names:
        package = parse_package(name)
        if package is None or package.line not in lines:
            continue
        if package.line not in newest or package.order > newest[package.line].order:
            newest[package.line] = package
    missing = [line for line in lines if line not in newest]
    if missing:
        raise VmtestError(f"no linux-image-*-cloud-amd64-unsigned package of line "
                          f"{', '.join(missing)} in the apt lists (apt-get update?)")
    return {line: newest[line] for line in lines}


def available_packages() -> list[str]:
    """Names of the cloud kernel image packages apt knows (``apt-cache search``)."""
    out = subprocess.run(["apt-cache", "search", "--names-only",
                          r"^linux-image-.*-cloud-amd64-unsigned$"],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise VmtestError(f"apt-cache search failed: {out.stderr.strip()}")
    return [line.split(" - ", 1)[0].strip() for line in out.stdout.splitlines() if line]


def select_packages(lines: Sequence[str] = LINES) -> dict[str, KernelPackage]:
    """The newest package of each line, after an ``apt-get update`` if the lists lack one."""
    try:
        return newest_per_line(available_packages(), lines)
    except VmtestError:
        _apt_update()
        return newest_per_line(available_packages(), lines)


@dataclass(frozen=True)
class UnpackedKernel:
    """A kernel package unpacked in the cache: its image and its modules (depmod run)."""

    package: KernelPackage
    root: Path

    @property
    def release(self) -> str:
        return self.package.release

    @property
    def vmlinuz(self) -> Path:
        return self.root / "boot" / f"vmlinuz-{self.release}"

    @property
    def modules(self) -> Path:
        return self.root / "lib" / "modules" / self.release


def ensure_unpacked(package: KernelPackage, cache: Path) -> UnpackedKernel:
    """The package unpacked under ``cache/kernels/<release>``: downloaded and unpacked the
    first time, reused after (a half-done unpack is redone)."""
    dest = cache / "kernels" / package.release
    kernel = UnpackedKernel(package, dest)
    if (dest / ".complete").exists():
        return kernel
    deb = _download(package, cache / "debs")
    partial = dest.with_name(f".{package.release}.partial")
    for leftover in (partial, dest):
        if leftover.exists():
            shutil.rmtree(leftover)
    partial.mkdir(parents=True)
    _run(["dpkg-deb", "-x", str(deb), str(partial)], f"unpack {deb.name}")
    # modules.dep, so modprobe finds modules (the initramfs's and the guest's own)
    _run(["depmod", "-b", str(partial), package.release], f"depmod {package.release}")
    (partial / ".complete").write_text(f"{package.name}\n")
    partial.rename(dest)
    if not kernel.vmlinuz.exists():
        raise VmtestError(f"{package.name} has no {kernel.vmlinuz.name}")
    return kernel


def _download(package: KernelPackage, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    found = sorted(debs.glob(f"{package.name}_*.deb"))
    if found:
        return found[-1]
    # the download runs as root into our cache: apt's _apt user could not write there
    command = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package.name]
    if subprocess.run(command, cwd=debs, capture_output=True, check=False).returncode != 0:
        _apt_update()  # a stale list names a version the mirror no longer has
        _run(command, f"apt-get download {package.name}", cwd=debs)
    found = sorted(debs.glob(f"{package.name}_*.deb"))
    if not found:
        raise VmtestError(f"apt-get download {package.name} left no .deb in {debs}")
    return found[-1]


def _apt_update() -> None:
    _run(["apt-get", "update", "-qq"], "apt-get update")


def _run(command: list[str], what: str, cwd: Path | None = None) -> None:
    out = subprocess.run(command, capture_output=True, text=True, cwd=cwd, check=False)
    if out.returncode != 0:
        last = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise VmtestError(f"{what} failed (exit {out.returncode}): {last[0]}")
