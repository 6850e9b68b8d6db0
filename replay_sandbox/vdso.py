"""Make vDSO clock reads trap: rewrite each entry point as ``mov eax, NR; syscall; ret``.

Clock reads go through the vDSO and never enter the kernel, so neither seccomp nor a
recorder sees them. At each exec the tracer finds ``[vdso]`` in /proc/pid/maps, reads its
ELF dynamic symbols and overwrites the entry points through /proc/pid/mem (which writes
read-only pages). The ``syscall`` instruction of each stub is at a known address, so the
tracer can tell a vDSO clock read from a direct syscall by the stopped thread's ``rip``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from kprobe.replay_sandbox.errors import TracerError
from kprobe.replay_sandbox.ptrace_ffi import TraceeMemory
from kprobe.replay_sandbox.syscall_table import VDSO_SYSCALLS

_SHT_DYNSYM = 11
_PT_LOAD = 1
_STUB_LEN = 8


def stub(nr: int) -> bytes:
    """``mov eax, nr`` (b8 imm32); ``syscall`` (0f 05); ``ret`` (c3)."""
    return b"\xb8" + struct.pack("<I", nr) + b"\x0f\x05\xc3"


@dataclass(frozen=True)
class VdsoPatch:
    base: int
    entries: dict[str, int]  # symbol -> absolute address patched
    # rip after the stub's ``syscall`` -> syscall number: identifies vDSO-origin calls
    return_points: dict[int, int]


def find_vdso(pid: int) -> tuple[int, int] | None:
    """``(start, end)`` of the tracee's [vdso] mapping, or None (vdso=0 kernels)."""
    try:
        with open(f"/proc/{pid}/maps", encoding="ascii") as maps:
            for line in maps:
                if line.rstrip().endswith("[vdso]"):
                    start, end = line.split(None, 1)[0].split("-")
                    return int(start, 16), int(end, 16)
    except OSError as err:
        raise TracerError(f"cannot read maps of {pid}: {err.strerror}") from err
    return None


def dynamic_symbols(image: bytes) -> dict[str, tuple[int, int]]:
    """Symbol name -> (offset from the image start, size) from the ELF's .dynsym."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        raise TracerError("vDSO is not a 64-bit ELF image")
    (e_phoff, e_shoff) = struct.unpack_from("<QQ", image, 0x20)
    (e_phentsize, e_phnum, e_shentsize, e_shnum) = struct.unpack_from("<HHHH", image, 0x36)
    # the image is linked at some base; symbols are relative to the first PT_LOAD's vaddr
    load_vaddr = 0
    for i in range(e_phnum):
        p_type, _flags, p_offset, p_vaddr = struct.unpack_from("<IIQQ", image,
                                                               e_phoff + i * e_phentsize)
        if p_type == _PT_LOAD:
            load_vaddr = p_vaddr - p_offset
            break
    sections = [struct.unpack_from("<IIQQQQIIQQ", image, e_shoff + i * e_shentsize)
                for i in range(e_shnum)]
    symbols: dict[str, tuple[int, int]] = {}
    for _name, sh_type, _f, _addr, sh_offset, sh_size, sh_link, _info, _al, sh_entsize in sections:
        if sh_type != _SHT_DYNSYM:
            continue
        str_offset = sections[sh_link][4]
        for j in range(sh_size // (sh_entsize or 24)):
            st_name, _st_info, _other, _shndx, st_value, st_size = struct.unpack_from(
                "<IBBHQQ", image, sh_offset + j * (sh_entsize or 24))
            if not st_value:
                continue
            end = image.index(b"\0", str_offset + st_name)
            name = image[str_offset + st_name:end].decode("ascii", "replace")
            symbols[name] = (st_value - load_vaddr, st_size)
    return symbols


def patch(pid: int, mem: TraceeMemory) -> VdsoPatch | None:
    """Rewrite the clock/getcpu/getrandom entry points of ``pid``'s vDSO (stopped tracee)."""
    found = find_vdso(pid)
    if found is None:
        return None
    start, end = found
    image = mem.read(start, end - start)
    symbols = dynamic_symbols(image)
    entries: dict[str, int] = {}
    return_points: dict[int, int] = {}
    for name, nr in VDSO_SYSCALLS.items():
        if name not in symbols:
            continue  # e.g. __vdso_getrandom before Linux 6.11
        offset, size = symbols[name]
        if size and size < _STUB_LEN:
            raise TracerError(f"vDSO {name} is too short to patch ({size} bytes)")
        address = start + offset
        mem.write(address, stub(nr))
        entries[name] = address
        return_points[address + 7] = nr
    return VdsoPatch(start, entries, return_points)
