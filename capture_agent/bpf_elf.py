"""What a compiled BPF object holds, read from its ELF file alone (no kernel, no root).

For every program: its instructions, the BPF-to-BPF calls and callback references it
makes (``call`` to a subprogram, ``ld_imm64`` of a function for ``bpf_loop``), the stack
each function uses, and the deepest chain of frames, counted as the kernel's verifier
counts them (``check_max_stack_depth``): each frame rounded up to 32 bytes, callbacks as
frames of the function that passes them. The verifier refuses a chain over 512 bytes;
kernels differ in what they round and how clang lays out a frame differs between
versions, so ``tests/unit/test_bpf_budget.py`` keeps every chain under a budget with
margin. Also: the compiler that built the object (``.kprobe.build``, from common.h).

A frame's depth is the lowest stack address the function's code touches, through r10 or a
pointer derived from it (``rX = r10; rX += -N``): what the verifier records as it
walks the function (it marks the slots a helper writes through such a pointer, too).
"""

from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field
from pathlib import Path

from kprobe.capture_agent.errors import BpfObjectError

# The verifier's limits (include/linux/bpf.h, kernel/bpf/verifier.c); the same in every
# kernel since 5.2.
MAX_STACK = 512
STACK_FRAME_ROUND = 32          # round_up(max(depth, 1), 32) per frame (older kernels;
                                # newer ones round JIT'd frames to 16: 32 is the worst case)
MAX_PROCESSED_INSNS = 1_000_000  # BPF_COMPLEXITY_LIMIT_INSNS (privileged loader)
MAX_CALL_FRAMES = 8              # MAX_CALL_FRAMES

HELPER_BPF_LOOP = 181
BPF_LOOP_INLINE_STACK = 24  # slots the verifier adds to a frame when it inlines bpf_loop
                            # (after its stack check; its reported depth includes them)
_INSN = 8
_SHT_SYMTAB, _SHT_REL = 2, 9
_SHF_EXECINSTR = 0x4
_STT_FUNC, _STT_SECTION = 2, 3
_R_BPF_64_64, _R_BPF_64_32 = 1, 10
_BUILD_SECTION = ".kprobe.build"


@dataclass(frozen=True)
class Function:
    """One function of the object: a program (its own section) or a subprogram (.text)."""

    name: str
    section: str
    start: int            # first instruction, in the section
    insns: int
    stack: int            # bytes of stack its code touches
    calls: tuple[str, ...] = ()      # subprograms it calls
    callbacks: tuple[str, ...] = ()  # subprograms it passes as callbacks (bpf_loop)
    refs: tuple[str, ...] = ()       # both, in the order its instructions name them
    helpers: frozenset[int] = frozenset()

    @property
    def frame(self) -> int:
        """Its frame as the verifier counts it."""
        return frame_size(self.stack)


def frame_size(depth: int) -> int:
    """A frame of ``depth`` bytes as the verifier counts it toward a chain."""
    return -(-max(depth, 1) // STACK_FRAME_ROUND) * STACK_FRAME_ROUND


@dataclass(frozen=True)
class Chain:
    """The frames of a call chain, from the program down; ``size`` is their sum."""

    frames: tuple[Function, ...]

    @property
    def size(self) -> int:
        return sum(f.frame for f in self.frames)

    def describe(self) -> str:
        return " -> ".join(f"{f.name} ({f.stack}, frame {f.frame})" for f in self.frames) + (
            f" = {self.size} bytes")


@dataclass(frozen=True)
class BpfElf:
    path: Path
    functions: dict[str, Function] = field(default_factory=dict)
    build: str = ""  # the compiler that built it, e.g. "clang 19.1.7"

    @property
    def programs(self) -> list[Function]:
        """The entry points (each in its own section: tp_btf/..., uprobe, ...)."""
        return [f for f in self.functions.values() if f.section != ".text"]

    def reachable(self, program: str) -> list[Function]:
        """The program and every subprogram it reaches (what libbpf loads with it)."""
        seen: dict[str, Function] = {}
        stack = [program]
        while stack:
            name = stack.pop()
            if name in seen:
                continue
            fn = self.functions[name]
            seen[name] = fn
            stack.extend(fn.calls + fn.callbacks)
        return list(seen.values())

    def load_order(self, program: str) -> list[str]:
        """The program and its subprograms in the order libbpf lays them out (each appended
        where first referenced, depth first), which is the order of the verifier's
        per-subprogram figures."""
        order: list[str] = []

        def visit(name: str) -> None:
            order.append(name)
            for ref in self.functions[name].refs:
                if ref not in order:
                    visit(ref)

        visit(program)
        return order

    def insn_count(self, program: str) -> int:
        """Instructions the program loads with (its own and its subprograms')."""
        return sum(f.insns for f in self.reachable(program))

    def deepest_chain(self, program: str) -> Chain:
        """The chain of frames with the largest combined stack, from ``program`` down."""
        return self._deepest(program, ())

    def _deepest(self, name: str, path: tuple[str, ...]) -> Chain:
        fn = self.functions[name]
        if name in path:  # recursion: the verifier refuses it; report the cycle as is
            return Chain((fn,))
        best = Chain((fn,))
        for callee in fn.calls + fn.callbacks:
            below = self._deepest(callee, (*path, name))
            if fn.frame + below.size > best.size:
                best = Chain((fn, *below.frames))
        return best


def read(path: Path | str) -> BpfElf:
    """Parse a BPF object; BpfObjectError if it is not one."""
    return _read_cached(str(Path(path).resolve()), Path(path).stat().st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read_cached(path: str, _mtime_ns: int) -> BpfElf:
    data = Path(path).read_bytes()
    try:
        return _parse(Path(path), data)
    except (struct.error, IndexError, KeyError, ValueError) as e:
        raise BpfObjectError(f"{path}: not a BPF object this reader understands ({e})") from None


# -- ELF ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Section:
    name: str
    type: int
    flags: int
    offset: int
    size: int
    link: int
    info: int


@dataclass(frozen=True)
class _Symbol:
    name: str
    info: int
    shndx: int
    value: int
    size: int


def _parse(path: Path, data: bytes) -> BpfElf:
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    machine = struct.unpack_from("<H", data, 18)[0]
    if machine != 247:  # EM_BPF
        raise ValueError(f"machine {machine}, not BPF")
    shoff, = struct.unpack_from("<Q", data, 40)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 58)
    raw = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names_off = raw[shstrndx][4]
    sections = [_Section(_cstr(data, names_off + r[0]), r[1], r[2], r[4], r[5], r[6], r[7])
                for r in raw]
    symbols: list[_Symbol] = []
    for s in sections:
        if s.type == _SHT_SYMTAB:
            strtab = sections[s.link].offset
            for off in range(s.offset, s.offset + s.size, 24):
                name, info, _other, shndx, value, size = struct.unpack_from("<IBBHQQ", data, off)
                symbols.append(_Symbol(_cstr(data, strtab + name), info, shndx, value, size))
    # relocations per executable section: insn index -> symbol
    relocs: dict[int, dict[int, tuple[int, _Symbol]]] = {}
    for s in sections:
        if s.type == _SHT_REL and sections[s.info].flags & _SHF_EXECINSTR:
            table = relocs.setdefault(s.info, {})
            for off in range(s.offset, s.offset + s.size, 16):
                r_offset, r_info = struct.unpack_from("<QQ", data, off)
                table[r_offset // _INSN] = (r_info & 0xFFFFFFFF, symbols[r_info >> 32])
    funcs = sorted((sym for sym in symbols if sym.info & 0xF == _STT_FUNC),
                   key=lambda sym: (sym.shndx, sym.value))
    by_start = {(sym.shndx, sym.value // _INSN): sym.name for sym in funcs}
    functions: dict[str, Function] = {}
    for sym in funcs:
        sec = sections[sym.shndx]
        first = sym.value // _INSN
        count = sym.size // _INSN
        code = data[sec.offset + sym.value: sec.offset + sym.value + sym.size]
        functions[sym.name] = _function(sym.name, sec.name, first, count, code,
                                        relocs.get(sym.shndx, {}), sym.shndx, by_start)
    build = ""
    for s in sections:
        if s.name == _BUILD_SECTION:
            build = data[s.offset: s.offset + s.size].split(b"\0", 1)[0].decode("ascii",
                                                                                 "replace")
    return BpfElf(path, functions, build)


def _cstr(data: bytes, off: int) -> str:
    end = data.index(b"\0", off)
    return data[off:end].decode("ascii", "replace")


def _function(name: str, section: str, first: int, count: int, code: bytes,
              relocs: dict[int, tuple[int, _Symbol]], shndx: int,
              by_start: dict[tuple[int, int], str]) -> Function:
    calls: list[str] = []
    callbacks: list[str] = []
    refs: list[str] = []
    helpers: set[int] = set()
    depth = 0
    fp_regs: dict[int, int] = {}  # register -> offset from r10 it holds
    i = 0
    while i < count:
        op, regs, off, imm = struct.unpack_from("<BBhi", code, i * _INSN)
        dst, src = regs & 0xF, regs >> 4
        at = first + i
        cls = op & 0x7
        if op == 0x18:  # ld_imm64: a callback when it loads a function's address
            reloc = relocs.get(at)
            if reloc is not None and reloc[0] == _R_BPF_64_64:
                sym = reloc[1]
                target = by_start.get((sym.shndx, (sym.value + imm) // _INSN))
                if target is not None and sym.info & 0xF in (_STT_SECTION, _STT_FUNC):
                    callbacks.append(target)
                    refs.append(target)
            fp_regs.pop(dst, None)
            i += 2
            continue
        if op == 0x85:  # call
            if src == 1:  # BPF_PSEUDO_CALL
                reloc = relocs.get(at)
                if reloc is not None:
                    sym = reloc[1]
                    target = by_start.get((sym.shndx, sym.value // _INSN + imm + 1))
                else:
                    target = by_start.get((shndx, at + imm + 1))
                if target is None:
                    raise ValueError(f"{name}: call at insn {at} to an unknown function")
                calls.append(target)
                refs.append(target)
            elif src == 0:
                helpers.add(imm)
            for r in range(0, 6):  # caller-saved registers are clobbered
                fp_regs.pop(r, None)
        elif cls == 0x1 and src == 10:            # LDX from the stack
            depth = max(depth, -off)
            fp_regs.pop(dst, None)
        elif cls in (0x2, 0x3) and dst == 10:     # ST / STX to the stack
            depth = max(depth, -off)
        elif cls in (0x3,) and dst in fp_regs:    # STX through a derived pointer
            depth = max(depth, -(fp_regs[dst] + off))
        elif cls == 0x1:                          # LDX through a derived pointer (or not)
            if src in fp_regs:
                depth = max(depth, -(fp_regs[src] + off))
            fp_regs.pop(dst, None)
        elif cls == 0x7:                          # ALU64
            alu = op & 0xF0
            if op == 0xBF and src == 10:          # rX = r10
                fp_regs[dst] = 0
            elif op == 0xBF and src in fp_regs:   # rX = rY (a derived pointer)
                fp_regs[dst] = fp_regs[src]
            elif alu == 0x00 and op & 0x08 == 0 and dst in fp_regs:  # rX += imm
                fp_regs[dst] += imm
                depth = max(depth, -fp_regs[dst])
            elif alu == 0x10 and op & 0x08 == 0 and dst in fp_regs:  # rX -= imm
                fp_regs[dst] -= imm
                depth = max(depth, -fp_regs[dst])
            else:
                fp_regs.pop(dst, None)
        elif cls == 0x4:                          # ALU32 writes the register
            fp_regs.pop(dst, None)
        i += 1
    depth = -(-max(depth, 0) // 8) * 8  # the verifier allocates whole 8-byte slots
    return Function(name, section, first, count, depth, tuple(dict.fromkeys(calls)),
                    tuple(dict.fromkeys(callbacks)), tuple(dict.fromkeys(refs)),
                    frozenset(helpers))
