"""The guest's initramfs: a static busybox, the modules its root needs, and an ``/init``
that mounts this machine's root read-only (virtiofs) under a writable overlay held in
guest memory, then hands over to ``guest_init.sh`` from the repository.

Debian's cloud kernels build virtio-pci (6.1), fuse/virtiofs (6.1), overlayfs and
virtio-blk as modules, and have no 9p: hence an initramfs, and virtiofs.
"""

from __future__ import annotations

import gzip
import lzma
import shlex
import shutil
import stat
import struct
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.vmtest.errors import NoQemuError, VmtestError
from tests.vmtest.kernels import UnpackedKernel

# What the guest needs before its root is mounted; modprobe orders their dependencies.
BOOT_MODULES: tuple[str, ...] = ("virtio_pci", "virtiofs", "overlay", "virtio_blk")
ROOT_TAG = "hostroot"  # the virtiofs tag of the shared root

_INIT = """#!/bin/busybox sh
# PID 1 of the initramfs (written by tests/vmtest/initramfs.py).
B=/bin/busybox
fail() {{
  $B echo "vmtest initramfs: $*"
  $B printf '@@vmtest {{"step": "boot", "ok": false, "seconds": 0, "reason": "%s"}}\\n' "$*" \\
    > /dev/ttyS1
  $B poweroff -f
}}
$B mkdir -p /proc /sys /dev /lower /rw /newroot
$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
for m in {modules}; do $B insmod "/modules/$m" || fail "insmod $m"; done
tries=0
until $B mount -t virtiofs -o ro {tag} /lower 2>/dev/null; do
  tries=$((tries + 1))
  [ $tries -lt 200 ] || fail "mount -t virtiofs {tag}: the host root did not appear"
  $B usleep 50000
done
$B mount -t tmpfs -o mode=0755 overlay-rw /rw
$B mkdir /rw/upper /rw/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot \\
  || fail "mount -t overlay over the host root"
$B mount --move /dev /newroot/dev
$B umount /proc /sys
exec $B switch_root /newroot {command}
"""


def find_static_busybox() -> Path:
    """Debian's ``busybox-static`` (a dynamic busybox would not run in the initramfs)."""
    for candidate in (shutil.which("busybox"), "/bin/busybox", "/usr/bin/busybox"):
        if candidate and Path(candidate).exists() and is_static_elf(Path(candidate)):
            return Path(candidate)
    raise NoQemuError("no static busybox (apt-get install busybox-static): the guest's "
                      "initramfs needs one")


def is_static_elf(path: Path) -> bool:
    """True when the ELF file has no program interpreter (PT_INTERP): it runs alone."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:  # 64-bit only
        return False
    phoff, = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    types = [struct.unpack_from("<I", data, phoff + i * phentsize)[0] for i in range(phnum)]
    return 3 not in types  # PT_INTERP


def module_load_order(kernel: UnpackedKernel, names: Sequence[str] = BOOT_MODULES
                      ) -> list[Path]:
    """The module files to insmod, dependencies first (built-in ones left out)."""
    ordered: list[Path] = []
    for name in names:
        out = subprocess.run(["modprobe", "--show-depends", "-d", str(kernel.root),
                              "-S", kernel.release, name],
                             capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise VmtestError(f"modprobe --show-depends {name} for {kernel.release}: "
                              f"{out.stderr.strip()}")
        for line in out.stdout.splitlines():
            words = line.split()
            if words[:1] == ["insmod"] and Path(words[1]) not in ordered:
                ordered.append(Path(words[1]))
    return ordered


def module_bytes(path: Path) -> bytes:
    """A module file's ELF bytes (busybox insmod does not decompress)."""
    data = path.read_bytes()
    if path.suffix == ".xz":
        return lzma.decompress(data)
    if path.suffix == ".gz":
        return gzip.decompress(data)
    if path.suffix == ".zst":
        return subprocess.run(["zstd", "-dc"], input=data, capture_output=True,
                              check=True).stdout
    return data


def _base_name(path: Path) -> str:
    name = path.name
    for suffix in (".xz", ".gz", ".zst"):
        name = name.removesuffix(suffix)
    return name


def build(kernel: UnpackedKernel, command: Sequence[str], out: Path) -> Path:
    """Write the initramfs to ``out``: ``/init`` ends in ``switch_root`` to ``command``."""
    modules = module_load_order(kernel)
    init = _INIT.format(modules=" ".join(_base_name(m) for m in modules), tag=ROOT_TAG,
                        command=shlex.join(command))
    archive = CpioWriter()
    for directory in ("bin", "dev", "modules", "proc", "sys"):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", find_static_busybox().read_bytes(), mode=0o755)
    archive.file("init", init.encode(), mode=0o755)
    for module in modules:
        archive.file(f"modules/{_base_name(module)}", module_bytes(module), mode=0o644)
    out.write_bytes(archive.finish())
    return out


class CpioWriter:
    """The "newc" cpio format the kernel unpacks as an initramfs."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._ino = 1

    def directory(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755, b"", nlink=2)

    def file(self, name: str, data: bytes, mode: int) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def device(self, name: str, major: int, minor: int) -> None:
        self._entry(name, stat.S_IFCHR | 0o600, b"", rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0, b"", ino=0)
        return b"".join(self._parts)

    def _entry(self, name: str, mode: int, data: bytes, nlink: int = 1,
               rdev: tuple[int, int] = (0, 0), ino: int | None = None) -> None:
        encoded = name.encode() + b"\0"
        fields = (self._next_ino() if ino is None else ino, mode, 0, 0, nlink, 0, len(data),
                  0, 0, rdev[0], rdev[1], len(encoded), 0)
        header = b"070701" + b"".join(f"{v:08x}".encode() for v in fields)
        self._parts += [header, encoded, _pad(len(header) + len(encoded)), data,
                        _pad(len(data))]

    def _next_ino(self) -> int:
        self._ino += 1
        return self._ino


def _pad(size: int) -> bytes:
    return b"\0" * (-size % 4)


PROBE_MARK = "@@vmtest-probe-ok"


def build_probe(out: Path) -> Path:
    """An initramfs whose ``/init`` only says it ran and powers off: does a guest boot?"""
    archive = CpioWriter()
    for directory in ("bin", "dev"):
        archive.directory(directory)
    archive.device("dev/console", major=5, minor=1)
    archive.file("bin/busybox", find_static_busybox().read_bytes(), mode=0o755)
    archive.file("init", (f"#!/bin/busybox sh\n/bin/busybox echo {PROBE_MARK}\n"
                          "/bin/busybox poweroff -f\n").encode(), mode=0o755)
    out.write_bytes(archive.finish())
    return out
