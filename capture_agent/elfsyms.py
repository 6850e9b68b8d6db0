"""File offsets of exported functions in an ELF shared object, for uprobes.

libbpf 1.1 resolves a uprobe's function name itself, but refuses names with several
versioned entries (glibc exports ``clock_gettime`` as @GLIBC_2.2.5 and @@GLIBC_2.17, one
address): so the dynamic symbol table is read here, and aliases of one address are one
function. A uprobe is placed at a file offset: the symbol's address mapped through the
PT_LOAD segment that holds it.
"""

from __future__ import annotations

import struct
from pathlib import Path

from kprobe.capture_agent.errors import BpfAttachError

_SHT_DYNSYM = 11
_PT_LOAD = 1
_STT_FUNC, _STT_GNU_IFUNC = 2, 10


def function_offsets(path: str, names: list[str]) -> dict[str, int]:
    """name -> file offset of each of ``names`` (BpfAttachError if one is missing or
    ambiguous)."""
    found = dynamic_functions(Path(path).read_bytes(), names, path)
    missing = [n for n in names if n not in found]
    if missing:
        raise BpfAttachError(f"{path}: function {missing[0]}: not exported", 0)
    return found


def dynamic_functions(data: bytes, names: list[str], what: str) -> dict[str, int]:
    """name -> file offset of those of ``names`` that the ELF image ``data`` (a file, or a
    mapped vDSO) exports as functions; BpfAttachError, naming ``what``, if one is ambiguous
    or the image is no 64-bit little-endian ELF."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise BpfAttachError(f"{what}: not a 64-bit little-endian ELF file", 0)
    phoff, shoff = struct.unpack_from("<QQ", data, 0x20)
    phentsize, phnum, shentsize, shnum = struct.unpack_from("<HHHH", data, 0x36)
    loads = []
    for i in range(phnum):
        p_type, _flags, p_offset, p_vaddr, _paddr, p_filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == _PT_LOAD:
            loads.append((p_vaddr, p_filesz, p_offset))
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    found: dict[str, set[int]] = {n: set() for n in names}
    for _name, sh_type, _f, _a, sh_offset, sh_size, sh_link, _i, _al, sh_entsize in sections:
        if sh_type != _SHT_DYNSYM or not sh_entsize:
            continue
        strtab_offset = sections[sh_link][4]
        for off in range(sh_offset, sh_offset + sh_size, sh_entsize):
            st_name, st_info, _other, _shndx, st_value, _size = struct.unpack_from(
                "<IBBHQQ", data, off)
            if st_info & 0xF not in (_STT_FUNC, _STT_GNU_IFUNC) or not st_value:
                continue
            end = data.index(b"\0", strtab_offset + st_name)
            name = data[strtab_offset + st_name:end].decode(errors="replace")
            if name in found:
                found[name].add(st_value)
    out = {}
    for name, addresses in found.items():
        if not addresses:
            continue
        if len(addresses) != 1:
            raise BpfAttachError(f"{what}: function {name}: several addresses", 0)
        address = addresses.pop()
        segment = next(((v, s, o) for v, s, o in loads if v <= address < v + s), None)
        if segment is None:
            raise BpfAttachError(f"{what}: function {name} outside every segment", 0)
        out[name] = address - segment[0] + segment[2]
    return out


# x86-64 instructions that write only rax and the flags: a probe may be placed after them
# and still see the function's arguments (rdi, rsi, ...) and its return address at [rsp].
_ARGUMENT_PRESERVING = (
    (b"\xf3\x0f\x1e\xfa", 0),  # endbr64
    (b"\x48\x8b\x05", 4),  # mov disp32(%rip), %rax
    (b"\x48\x8b\x80", 4),  # mov disp32(%rax), %rax
    (b"\x48\x8b\x40", 1),  # mov disp8(%rax), %rax
    (b"\x48\x85\xc0", 0),  # test %rax, %rax
    (b"\x85\xc0", 0),  # test %eax, %eax
)
_SCAN_LIMIT = 32


def emulated_probe_offset(path: str, offset: int) -> int:
    """The offset of the first conditional jump at the start of the function at
    ``offset``, if only argument-preserving instructions come before it; else ``offset``.

    Why: the kernel runs most probed instructions by single-stepping a copy (a second
    trap) but emulates jumps; measured on this VM, a uprobe on glibc's ``clock_gettime``
    costs 15.7 us at its first instruction (a rip-relative mov) and 1.0 us at the ``je``
    two instructions later, where the arguments and the return address are untouched
    (so a uretprobe may go there too).
    """
    with open(path, "rb") as f:
        f.seek(offset)
        code = f.read(_SCAN_LIMIT)
    at = 0
    while at < len(code):
        op = code[at]
        if 0x70 <= op <= 0x7F or (op == 0x0F and at + 1 < len(code)
                                  and 0x80 <= code[at + 1] <= 0x8F):
            return offset + at  # jcc rel8 / jcc rel32: emulated, no single step
        for prefix, operand in _ARGUMENT_PRESERVING:
            if code.startswith(prefix, at):
                at += len(prefix) + operand
                break
        else:
            return offset  # something else first: the entry is the only safe place
    return offset
