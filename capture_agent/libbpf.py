"""Thin ctypes bindings to the system libbpf (libbpf1 >= 1.0: NULL/negative errno returns).

Only what the sensors need: open an object, size its maps, set its ``const volatile``
configuration (the ``.rodata`` map's initial value, at offsets read from the object's
BTF), load, attach, map access, and BTF struct layouts for the layout test. Failures raise
``OSError(errno, message)`` here; ``capture_agent.sensor`` translates them into the
package's typed errors, naming the program or map.

libbpf's own log lines (the verifier log included) are collected in ``LOG`` so an error
can carry them; nothing is printed.
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import errno as errno_mod
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass

_LIB_NAMES = ("libbpf.so.1", "libbpf.so")


def _load_library() -> ctypes.CDLL:
    found = ctypes.util.find_library("bpf")
    for name in ([found] if found else []) + list(_LIB_NAMES):
        try:
            return ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
    raise OSError(errno_mod.ENOENT, "libbpf shared library not found (apt install libbpf1)")


_lib = _load_library()
_libc = ctypes.CDLL(None, use_errno=True)

_p = ctypes.c_void_p
_sz = ctypes.c_size_t


def _sig(name: str, restype: object, *argtypes: object) -> None:
    fn = getattr(_lib, name)
    fn.restype = restype
    fn.argtypes = list(argtypes)


# objects and programs
_sig("bpf_object__open_file", _p, ctypes.c_char_p, _p)
_sig("bpf_object__load", ctypes.c_int, _p)
_sig("bpf_object__close", None, _p)
_sig("bpf_object__name", ctypes.c_char_p, _p)
_sig("bpf_object__btf", _p, _p)
_sig("bpf_object__next_program", _p, _p, _p)
_sig("bpf_object__next_map", _p, _p, _p)
_sig("bpf_object__find_map_by_name", _p, _p, ctypes.c_char_p)
_sig("bpf_object__find_program_by_name", _p, _p, ctypes.c_char_p)
_sig("bpf_program__name", ctypes.c_char_p, _p)
_sig("bpf_program__section_name", ctypes.c_char_p, _p)
_sig("bpf_program__autoload", ctypes.c_bool, _p)
_sig("bpf_program__set_autoload", ctypes.c_int, _p, ctypes.c_bool)
_sig("bpf_program__fd", ctypes.c_int, _p)
_sig("bpf_program__attach", _p, _p)
_sig("bpf_program__set_log_level", ctypes.c_int, _p, ctypes.c_uint32)
_sig("bpf_program__set_log_buf", ctypes.c_int, _p, _p, _sz)


class _UprobeOpts(ctypes.Structure):
    """struct bpf_uprobe_opts as libbpf 1.1 declares it (sz says how much we know)."""

    _fields_ = [("sz", ctypes.c_size_t), ("ref_ctr_offset", ctypes.c_size_t),
                ("bpf_cookie", ctypes.c_uint64), ("retprobe", ctypes.c_bool),
                ("func_name", ctypes.c_char_p)]


_sig("bpf_program__attach_uprobe_opts", _p, _p, ctypes.c_int, ctypes.c_char_p, _sz,
     ctypes.POINTER(_UprobeOpts))
_sig("bpf_link__destroy", ctypes.c_int, _p)
# maps
_sig("bpf_map__name", ctypes.c_char_p, _p)
_sig("bpf_map__fd", ctypes.c_int, _p)
_sig("bpf_map__type", ctypes.c_int, _p)
_sig("bpf_map__max_entries", ctypes.c_uint32, _p)
_sig("bpf_map__set_max_entries", ctypes.c_int, _p, ctypes.c_uint32)
_sig("bpf_map__key_size", ctypes.c_uint32, _p)
_sig("bpf_map__value_size", ctypes.c_uint32, _p)
_sig("bpf_map__initial_value", _p, _p, ctypes.POINTER(_sz))
_sig("bpf_map__reuse_fd", ctypes.c_int, _p, ctypes.c_int)
_sig("bpf_map_update_elem", ctypes.c_int, ctypes.c_int, _p, _p, ctypes.c_uint64)
_sig("bpf_map_lookup_elem", ctypes.c_int, ctypes.c_int, _p, _p)
_sig("bpf_map_delete_elem", ctypes.c_int, ctypes.c_int, _p)
_sig("bpf_map_get_next_key", ctypes.c_int, ctypes.c_int, _p, _p)
_sig("bpf_map_lookup_and_delete_batch", ctypes.c_int, ctypes.c_int, _p, _p, _p, _p,
     ctypes.POINTER(ctypes.c_uint32), _p)
_sig("bpf_map_lookup_batch", ctypes.c_int, ctypes.c_int, _p, _p, _p, _p,
     ctypes.POINTER(ctypes.c_uint32), _p)
_sig("bpf_obj_get_info_by_fd", ctypes.c_int, ctypes.c_int, _p, ctypes.POINTER(ctypes.c_uint32))
_sig("bpf_map_create", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32,
     ctypes.c_uint32, ctypes.c_uint32, _p)
_sig("bpf_prog_load", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, _p, _sz, _p)
# BTF
_sig("btf__parse", _p, ctypes.c_char_p, _p)
_sig("btf__free", None, _p)
_sig("btf__find_by_name_kind", ctypes.c_int32, _p, ctypes.c_char_p, ctypes.c_uint32)
_sig("btf__type_by_id", _p, _p, ctypes.c_uint32)
_sig("btf__name_by_offset", ctypes.c_char_p, _p, ctypes.c_uint32)
_sig("btf__resolve_size", ctypes.c_int64, _p, ctypes.c_uint32)
_sig("btf__resolve_type", ctypes.c_int, _p, ctypes.c_uint32)
_sig("libbpf_major_version", ctypes.c_uint32)
_sig("libbpf_num_possible_cpus", ctypes.c_int)
_sig("libbpf_minor_version", ctypes.c_uint32)

_libc.vsnprintf.restype = ctypes.c_int
_libc.vsnprintf.argtypes = [ctypes.c_char_p, _sz, ctypes.c_char_p, _p]

# enum bpf_map_type / bpf_prog_type values used here (uapi, stable)
BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_ARRAY = 2
BPF_MAP_TYPE_RINGBUF = 27
BPF_PROG_TYPE_SOCKET_FILTER = 1
BPF_ANY = 0
BPF_LOG_STATS = 4  # the verifier's summary only: stack depth per subprogram, insns processed

# BTF kinds (uapi/linux/btf.h)
BTF_KIND_INT = 1
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_PTR = 2
BTF_KIND_TYPEDEF = 8
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15

# ---- libbpf's log ------------------------------------------------------------------------

LIBBPF_WARN, LIBBPF_INFO, LIBBPF_DEBUG = 0, 1, 2
LOG: collections.deque[str] = collections.deque(maxlen=2000)
"""Recent libbpf warnings (the verifier log of a failed load included), newest last."""
_log_total = 0  # lines ever appended to LOG

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, _p)


def _collect_print(level: int, fmt: bytes, args: int) -> int:
    global _log_total
    if level > LIBBPF_WARN:  # info/debug lines are chatty and never explain a failure
        return 0
    buf = ctypes.create_string_buffer(8192)
    n = _libc.vsnprintf(buf, len(buf), fmt, args)
    for line in buf.value.decode(errors="replace").splitlines():
        LOG.append(line)
        _log_total += 1
    return int(n)


_collect_print_cb = _PRINT_FN(_collect_print)  # kept referenced: libbpf holds the pointer
_sig("libbpf_set_print", _p, _p)
_lib.libbpf_set_print(ctypes.cast(_collect_print_cb, _p))


def log_mark() -> int:
    """A position in the log; ``log_since(mark)`` returns what libbpf said after it."""
    return _log_total


def log_since(mark: int) -> list[str]:
    new = min(_log_total - mark, len(LOG))
    return list(LOG)[len(LOG) - new:] if new > 0 else []


def version() -> str:
    return f"{_lib.libbpf_major_version()}.{_lib.libbpf_minor_version()}"


def _errno_error(what: str, err: int | None = None) -> OSError:
    code = ctypes.get_errno() if err is None else err
    code = abs(code) or errno_mod.EINVAL
    return OSError(code, f"{what}: {os.strerror(code)}")


def _check(rc: int, what: str) -> int:
    if rc < 0:
        raise _errno_error(what, rc)
    return rc


# ---- objects, programs, maps ----------------------------------------------------------


class Program:
    """A program of an opened object (borrowed; owned by its BpfObject)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    @property
    def name(self) -> str:
        return (_lib.bpf_program__name(self.ptr) or b"").decode()

    @property
    def section(self) -> str:
        return (_lib.bpf_program__section_name(self.ptr) or b"").decode()

    @property
    def autoload(self) -> bool:
        return bool(_lib.bpf_program__autoload(self.ptr))

    @autoload.setter
    def autoload(self, value: bool) -> None:
        _check(_lib.bpf_program__set_autoload(self.ptr, value), f"set_autoload {self.name}")

    @property
    def fd(self) -> int:
        return int(_lib.bpf_program__fd(self.ptr))

    def attach(self) -> Link:
        """Attach by section name (tp_btf/..., tracepoint/...); OSError on failure."""
        ctypes.set_errno(0)
        link = _lib.bpf_program__attach(self.ptr)
        if not link:
            raise _errno_error(f"attach {self.name}")
        return Link(link)

    def attach_uprobe(self, binary: str, offset: int, retprobe: bool, pid: int = -1) -> Link:
        """A uprobe (or uretprobe) at file ``offset`` of ``binary``: in process ``pid`` only
        (the kernel then plants its breakpoint in that process's memory alone), or in every
        process mapping ``binary`` for -1."""
        opts = _UprobeOpts(sz=ctypes.sizeof(_UprobeOpts), retprobe=retprobe)
        ctypes.set_errno(0)
        link = _lib.bpf_program__attach_uprobe_opts(self.ptr, pid, binary.encode(), offset,
                                                    ctypes.byref(opts))
        if not link:
            where = f"{binary}+{offset:#x}" + ("" if pid < 0 else f" in pid {pid}")
            raise _errno_error(f"attach {self.name} to {where}")
        return Link(link)


class Link:
    def __init__(self, ptr: int) -> None:
        self.ptr: int | None = ptr

    def destroy(self) -> None:
        if self.ptr:
            _lib.bpf_link__destroy(self.ptr)
            self.ptr = None


class Map:
    """A map of an opened object (borrowed; owned by its BpfObject)."""

    def __init__(self, ptr: int) -> None:
        self.ptr = ptr

    @property
    def name(self) -> str:
        return (_lib.bpf_map__name(self.ptr) or b"").decode()

    @property
    def fd(self) -> int:
        return int(_lib.bpf_map__fd(self.ptr))

    @property
    def type(self) -> int:
        return int(_lib.bpf_map__type(self.ptr))

    @property
    def max_entries(self) -> int:
        return int(_lib.bpf_map__max_entries(self.ptr))

    @max_entries.setter
    def max_entries(self, value: int) -> None:
        _check(_lib.bpf_map__set_max_entries(self.ptr, value), f"set_max_entries {self.name}")

    @property
    def key_size(self) -> int:
        return int(_lib.bpf_map__key_size(self.ptr))

    @property
    def value_size(self) -> int:
        return int(_lib.bpf_map__value_size(self.ptr))

    def reuse_fd(self, fd: int) -> None:
        """Use an existing map (another sensor's) instead of creating one at load."""
        _check(_lib.bpf_map__reuse_fd(self.ptr, fd), f"reuse_fd {self.name}")

    def initial_value(self) -> tuple[int, int]:
        """(address, size) of the map's initial contents; writable until load."""
        size = _sz(0)
        addr = _lib.bpf_map__initial_value(self.ptr, ctypes.byref(size))
        if not addr:
            raise OSError(errno_mod.EINVAL, f"map {self.name} has no initial value")
        return int(addr), int(size.value)


class BpfObject:
    """An opened (then loaded) BPF object file; close() frees everything it owns."""

    def __init__(self, path: str) -> None:
        ctypes.set_errno(0)
        ptr = _lib.bpf_object__open_file(os.fsencode(path), None)
        if not ptr:
            raise _errno_error(f"open {path}")
        self.ptr: int | None = ptr
        self.path = path
        self._log_bufs: dict[str, ctypes.Array[ctypes.c_char]] = {}

    def _live(self) -> int:
        if not self.ptr:
            raise OSError(errno_mod.EBADF, f"BPF object {self.path} is closed")
        return self.ptr

    @property
    def name(self) -> str:
        return (_lib.bpf_object__name(self._live()) or b"").decode()

    def programs(self) -> Iterator[Program]:
        prog = _lib.bpf_object__next_program(self._live(), None)
        while prog:
            yield Program(prog)
            prog = _lib.bpf_object__next_program(self._live(), prog)

    def maps(self) -> Iterator[Map]:
        m = _lib.bpf_object__next_map(self._live(), None)
        while m:
            yield Map(m)
            m = _lib.bpf_object__next_map(self._live(), m)

    def map(self, name: str) -> Map:
        ptr = _lib.bpf_object__find_map_by_name(self._live(), name.encode())
        if not ptr:
            raise OSError(errno_mod.ENOENT, f"no map {name!r} in {self.path}")
        return Map(ptr)

    def program(self, name: str) -> Program:
        ptr = _lib.bpf_object__find_program_by_name(self._live(), name.encode())
        if not ptr:
            raise OSError(errno_mod.ENOENT, f"no program {name!r} in {self.path}")
        return Program(ptr)

    def rodata_map(self) -> Map:
        for m in self.maps():
            if m.name.endswith(".rodata"):
                return m
        raise OSError(errno_mod.ENOENT, f"{self.path} has no .rodata (no const volatile)")

    def rodata_variables(self) -> dict[str, tuple[int, int]]:
        """``const volatile`` globals: name -> (offset in .rodata, size), from BTF."""
        btf = _lib.bpf_object__btf(self._live())
        if not btf:
            raise OSError(errno_mod.ENOENT, f"{self.path} has no BTF (compile with -g)")
        return datasec_variables(btf, ".rodata")

    def set_rodata(self, values: dict[str, int]) -> None:
        """Write ``const volatile`` globals before load (little-endian integers)."""
        if not values:
            return
        variables = self.rodata_variables()
        addr, size = self.rodata_map().initial_value()
        for name, value in values.items():
            if name not in variables:
                raise OSError(errno_mod.ENOENT, f"no const volatile {name!r} in {self.path}")
            offset, width = variables[name]
            if offset + width > size:
                raise OSError(errno_mod.EINVAL, f"{name!r} lies outside .rodata")
            raw = int(value).to_bytes(width, "little", signed=int(value) < 0)
            ctypes.memmove(addr + offset, raw, width)

    def get_rodata(self, name: str) -> bytes:
        offset, width = self.rodata_variables()[name]
        addr, _ = self.rodata_map().initial_value()
        return ctypes.string_at(addr + offset, width)

    def request_verifier_stats(self, size: int = 16 << 10) -> None:
        """Before load: keep the verifier's summary of each program that loads (its
        errors are written there too, instead of libbpf's log, if a load fails)."""
        for prog in self.programs():
            if prog.autoload:
                buf = ctypes.create_string_buffer(size)
                _check(_lib.bpf_program__set_log_buf(prog.ptr, ctypes.addressof(buf), size),
                       f"set_log_buf {prog.name}")
                _check(_lib.bpf_program__set_log_level(prog.ptr, BPF_LOG_STATS),
                       f"set_log_level {prog.name}")
                self._log_bufs[prog.name] = buf

    def verifier_logs(self) -> dict[str, str]:
        """After load: program name -> what the verifier wrote (request_verifier_stats)."""
        return {name: buf.value.decode("utf-8", "replace")
                for name, buf in self._log_bufs.items()}

    def load(self) -> None:
        _check(_lib.bpf_object__load(self._live()), f"load {self.path}")

    def close(self) -> None:
        if self.ptr:
            _lib.bpf_object__close(self.ptr)
            self.ptr = None


# ---- raw map access by fd ---------------------------------------------------------------


def map_update(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _check(_lib.bpf_map_update_elem(fd, k, v, flags), "map update")


def map_lookup(fd: int, key: bytes, value_size: int) -> bytes | None:
    """The value under ``key``, or None when absent."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value_size)
    rc = _lib.bpf_map_lookup_elem(fd, k, v)
    if rc == -errno_mod.ENOENT:
        return None
    _check(rc, "map lookup")
    return v.raw


def array_values(fd: int, entries: int, value_size: int) -> bytes:
    """Every value of an array map (``entries`` of ``value_size`` bytes, packed in index
    order), in one batch syscall rather than one lookup per index."""
    keys = ctypes.create_string_buffer(max(1, entries * 4))
    values = ctypes.create_string_buffer(max(1, entries * value_size))
    token = ctypes.create_string_buffer(8)
    count = ctypes.c_uint32(entries)
    rc = _lib.bpf_map_lookup_batch(fd, None, token, keys, values, ctypes.byref(count), None)
    # an array's traversal ends with ENOENT once its last index is read
    if rc != -errno_mod.ENOENT:
        _check(rc, "map lookup_batch")
    if count.value != entries:
        raise OSError(errno_mod.EIO, f"map lookup_batch: {count.value} of {entries} entries")
    return values.raw


def possible_cpus() -> int:
    """CPUs a per-CPU map holds a value for (the kernel's possible CPUs)."""
    return _check(_lib.libbpf_num_possible_cpus(), "possible CPUs")


def map_delete(fd: int, key: bytes) -> bool:
    """Delete ``key``; False when it was absent."""
    rc = _lib.bpf_map_delete_elem(fd, ctypes.create_string_buffer(key, len(key)))
    if rc == -errno_mod.ENOENT:
        return False
    _check(rc, "map delete")
    return True


def map_keys(fd: int, key_size: int) -> list[bytes]:
    keys: list[bytes] = []
    nxt = ctypes.create_string_buffer(key_size)
    prev: ctypes.Array[ctypes.c_char] | None = None
    while True:
        rc = _lib.bpf_map_get_next_key(fd, prev, nxt)
        if rc == -errno_mod.ENOENT:
            return keys
        _check(rc, "map get_next_key")
        keys.append(nxt.raw)
        prev = ctypes.create_string_buffer(nxt.raw, key_size)


def map_lookup_and_delete_batch(fd: int, key_size: int, value_size: int,
                                max_count: int) -> tuple[bytes, bytes, int]:
    """Read and delete up to ``max_count`` entries of a hash map in a few syscalls.

    Returns (keys, values, count): ``count`` keys of ``key_size`` bytes and values of
    ``value_size`` bytes, packed. Entries the kernel adds meanwhile may stay for the next
    call. The batch token is the kernel's bucket index (a u32); 8 bytes leave room.
    """
    keys = ctypes.create_string_buffer(max(1, max_count * key_size))
    values = ctypes.create_string_buffer(max(1, max_count * value_size))
    token_in, token_out = ctypes.create_string_buffer(8), ctypes.create_string_buffer(8)
    total, first = 0, True
    while total < max_count:
        count = ctypes.c_uint32(max_count - total)
        rc = _lib.bpf_map_lookup_and_delete_batch(
            fd, None if first else token_in, token_out,
            ctypes.addressof(keys) + total * key_size,
            ctypes.addressof(values) + total * value_size, ctypes.byref(count), None)
        total += int(count.value)
        if rc == -errno_mod.ENOENT:  # traversal complete
            break
        if rc == -errno_mod.ENOSPC:  # one bucket holds more than is left: next call
            break
        _check(rc, "map lookup_and_delete_batch")
        ctypes.memmove(token_in, token_out, 8)
        first = False
    return keys.raw[: total * key_size], values.raw[: total * value_size], total


@dataclass(frozen=True)
class MapInfo:
    type: int
    key_size: int
    value_size: int
    max_entries: int


def map_info(fd: int) -> MapInfo:
    """Type and sizes of a map by fd (the head of the kernel's struct bpf_map_info)."""
    buf = ctypes.create_string_buffer(256)  # larger than the kernel's struct: tail stays 0
    length = ctypes.c_uint32(len(buf))
    _check(_lib.bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(length)), "map info")
    map_type, _id, key_size, value_size, max_entries = struct.unpack_from("<5I", buf.raw)
    return MapInfo(map_type, key_size, value_size, max_entries)


def map_create(map_type: int, name: str, key_size: int, value_size: int, max_entries: int) -> int:
    """A new map fd (the caller closes it)."""
    fd = _lib.bpf_map_create(map_type, name.encode(), key_size, value_size, max_entries, None)
    return _check(fd, f"map_create {name}")


def prog_load_trivial() -> int:
    """Load ``r0 = 0; exit`` as a socket filter: the cheapest proof of BPF permission."""
    insns = (ctypes.c_uint64 * 2)(0x00000000000000B7, 0x0000000000000095)
    fd = _lib.bpf_prog_load(BPF_PROG_TYPE_SOCKET_FILTER, b"kprobe_doctor", b"GPL",
                            insns, 2, None)
    return _check(fd, "prog_load")


# ---- BTF ---------------------------------------------------------------------------------


class _BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size_or_type", ctypes.c_uint32)]


class _BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


class _BtfArray(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("index_type", ctypes.c_uint32),
                ("nelems", ctypes.c_uint32)]


class _BtfVarSecinfo(ctypes.Structure):
    _fields_ = [("type", ctypes.c_uint32), ("offset", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


class _BtfEnum(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("val", ctypes.c_int32)]


def _type(btf: int, type_id: int) -> _BtfType:
    ptr = _lib.btf__type_by_id(btf, type_id)
    if not ptr:
        raise OSError(errno_mod.ENOENT, f"no BTF type {type_id}")
    return _BtfType.from_address(ptr)


def _kind(t: _BtfType) -> int:
    return int(t.info >> 24) & 0x1F


def _vlen(t: _BtfType) -> int:
    return int(t.info) & 0xFFFF


def _name(btf: int, off: int) -> str:
    return (_lib.btf__name_by_offset(btf, off) or b"").decode()


def _tail(t: _BtfType, item: type[ctypes.Structure], n: int) -> list[ctypes.Structure]:
    base = ctypes.addressof(t) + ctypes.sizeof(_BtfType)
    return [item.from_address(base + i * ctypes.sizeof(item)) for i in range(n)]


def datasec_variables(btf: int, section: str) -> dict[str, tuple[int, int]]:
    sec_id = _lib.btf__find_by_name_kind(btf, section.encode(), BTF_KIND_DATASEC)
    if sec_id < 0:
        raise OSError(errno_mod.ENOENT, f"no BTF datasec {section}")
    sec = _type(btf, sec_id)
    out: dict[str, tuple[int, int]] = {}
    for info in _tail(sec, _BtfVarSecinfo, _vlen(sec)):
        var = _type(btf, info.type)
        out[_name(btf, var.name_off)] = (info.offset, info.size)
    return out


@dataclass(frozen=True)
class Field:
    """One leaf field of a struct layout: dotted name, byte offset, byte size, C kind."""

    name: str
    offset: int
    size: int
    kind: str  # "int" (integers and enums) | "char_array" | "array"


class Btf:
    """BTF parsed from a file (an ELF object or raw BTF), for layout checks."""

    def __init__(self, path: str) -> None:
        ctypes.set_errno(0)
        ptr = _lib.btf__parse(os.fsencode(path), None)
        if not ptr:
            raise _errno_error(f"parse BTF of {path}")
        self.ptr: int | None = ptr
        self.path = path

    def close(self) -> None:
        if self.ptr:
            _lib.btf__free(self.ptr)
            self.ptr = None

    def __enter__(self) -> Btf:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _find(self, name: str, kind: int) -> int:
        assert self.ptr
        type_id = int(_lib.btf__find_by_name_kind(self.ptr, name.encode(), kind))
        if type_id < 0:
            raise OSError(errno_mod.ENOENT, f"no BTF type {name!r} (kind {kind}) in {self.path}")
        return type_id

    def has(self, name: str, kind: int) -> bool:
        assert self.ptr
        return int(_lib.btf__find_by_name_kind(self.ptr, name.encode(), kind)) >= 0

    def typedef_func_params(self, name: str) -> int | None:
        """Parameters of the function pointer typedef ``name`` (a tracepoint's
        ``btf_trace_<tp>``: its context pointer, then the tracepoint's arguments)."""
        assert self.ptr
        type_id = int(_lib.btf__find_by_name_kind(self.ptr, name.encode(), BTF_KIND_TYPEDEF))
        if type_id < 0:
            return None
        t = _type(self.ptr, self._strip(type_id))
        if _kind(t) == BTF_KIND_PTR:
            t = _type(self.ptr, t.size_or_type)
        return _vlen(t) if _kind(t) == BTF_KIND_FUNC_PROTO else None

    def struct_size(self, name: str) -> int:
        assert self.ptr
        return int(_lib.btf__resolve_size(self.ptr, self._find(name, BTF_KIND_STRUCT)))

    def struct_fields(self, name: str) -> list[Field]:
        """Leaf fields of ``struct name``, nested structs flattened as ``outer.inner``."""
        return self._fields(self._find(name, BTF_KIND_STRUCT), "", 0)

    def enum_values(self, name: str) -> dict[str, int]:
        assert self.ptr
        t = _type(self.ptr, self._find(name, BTF_KIND_ENUM))
        return {_name(self.ptr, e.name_off): e.val
                for e in _tail(t, _BtfEnum, _vlen(t))}

    def _strip(self, type_id: int) -> int:
        assert self.ptr
        while _kind(_type(self.ptr, type_id)) in (BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE,
                                                  BTF_KIND_CONST):
            type_id = _type(self.ptr, type_id).size_or_type
        return type_id

    def _fields(self, type_id: int, prefix: str, base: int) -> list[Field]:
        assert self.ptr
        t = _type(self.ptr, type_id)
        out: list[Field] = []
        for m in _tail(t, _BtfMember, _vlen(t)):
            if m.offset & 0x7 or (t.info >> 31):
                raise OSError(errno_mod.EINVAL, f"bitfield in {prefix or 'struct'}: not mirrored")
            name = prefix + _name(self.ptr, m.name_off)
            offset = base + m.offset // 8
            mid = self._strip(m.type)
            mt = _type(self.ptr, mid)
            size = int(_lib.btf__resolve_size(self.ptr, mid))
            kind = _kind(mt)
            if kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                out.extend(self._fields(mid, name + ".", offset))
            elif kind == BTF_KIND_ARRAY:
                arr = _tail(mt, _BtfArray, 1)[0]
                elem = _type(self.ptr, self._strip(arr.type))
                # char[] (text, numpy "S") vs __u8[] (bytes/padding, numpy ("u1", n))
                is_char = _kind(elem) == BTF_KIND_INT and _name(self.ptr, elem.name_off) == "char"
                out.append(Field(name, offset, size, "char_array" if is_char else "array"))
            else:
                out.append(Field(name, offset, size, "int"))  # INT or ENUM
        return out
