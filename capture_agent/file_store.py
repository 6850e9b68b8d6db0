"""The contents of the regular files targets read, stored once per version (table ``blobs``).

The kernel records a read of a regular file opened read-only, that nobody has open for
writing, as the file's identity (device, inode, size, mtime, ctime) and the offset read
(a ``syscall_data`` row with ``blob`` "" pending, its ``data`` a FILE_ID: see
bpf/syscalls.bpf.c). Here, at each flush, each *version* of a file among those rows is
read once, named by its hash (``lake.sealing.blob_name``) and stored as one ``blobs`` row,
unless this hour of the lake holds that name already (from this agent, another process's
read, or another node); the rows get the name. A replay serves each read's bytes from its
version's content, however large the file: the payload cap bounds only the other
payloads.

How a version is read: by the path the kernel resolved when the file was opened (an
``OPENED`` row: FILE_ID + path) or that an exec's descriptor had (``FDS`` and ``FD_PATH``
rows), through the process's root while it lives (``/proc/PID/root``: a container's files),
or else through the reader's descriptor (``/proc/PID/fd/N``) while it is open. The file
must still be that version: its identity is checked on the opened descriptor before and
after reading it (``fstat``: device, inode, size, mtime and ctime; all but the device on an
overlay, whose ``stat`` names the device of the layer holding the file), so a file changed,
replaced or deleted meanwhile is never stored under the old identity; those reads are
counted (table ``lost``, source ``blobs``, by reason) and their rows keep ``blob`` "" with
``truncated`` set, so a replay names the call. A file changed moments before the read (a
temporary file just written) also had its bytes captured by the kernel (``ALSO_FILE``
chunks), which a replay uses when the content could not be stored here.

Protection follows the payloads' policy: card numbers are masked in the content before it
is named (capture_agent/cards.py; lengths do not change, so offsets hold), and with a
payload key each blob is sealed on its own with its name as associated data, and named by
a keyed hash (lake/sealing.py), so the name does not confirm guesses of the content to a
reader without the key file.

Python runs once per file *version* and flush (a file read and hashed), never per read:
rows are matched to their version with numpy.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent.cards import mask_pans
from kprobe.capture_agent.families.syscalls import (
    FD_TABLE_MAX,
    FILE_ID,
    NR_EXECVE,
    PAYLOAD_ARG_FD_PATH,
    PAYLOAD_ARG_FDS,
    PAYLOAD_ARG_OPENED,
)
from kprobe.lake import hour_partition
from kprobe.lake.payload_keys import PayloadKeys
from kprobe.lake.schema import spec as table_spec
from kprobe.lake.sealing import blob_name, seal_blob

log = logging.getLogger(__name__)

_ID_BYTES = FILE_ID.itemsize
_IDENTITY = ("dev", "ino", "size", "mtime_ns", "ctime_ns")
_O_NOATIME = getattr(os, "O_NOATIME", 0)

# Why a version could not be stored (the ``lost`` table's reasons)
CHANGED = "file_changed"  # its identity differed when the agent opened it (or while reading)
GONE = "file_gone"  # no path found it, and the reader had closed it
TOO_BIG = "file_too_big"  # over FileStoreConfig.max_file_bytes


@dataclass(frozen=True)
class FileStoreConfig:
    max_file_bytes: int = 64 << 20  # a bigger version is not stored (counted TOO_BIG)
    # A version is stored whole if it is this small, or if the reads of a flush cover at
    # least half of it; otherwise each read's bytes are a blob of their own (the dynamic
    # loader reads 832 bytes of each shared library it then maps: the rest is never read)
    whole_file_min: int = 64 << 10
    mask_pans: bool = True  # card numbers masked in contents, as in payloads
    known_paths: int = 1 << 16  # (dev, ino) -> path entries kept between flushes
    known_versions: int = 1 << 16  # identity -> name entries kept (no re-read, no re-hash)


@dataclass
class FileStoreStats:
    versions_stored: int = 0  # blobs written
    bytes_stored: int = 0
    versions_present: int = 0  # already in the lake's hour (another process or node)
    reads_by_identity: int = 0
    missing: dict[str, int] = field(default_factory=dict)  # reason -> reads left without


@dataclass(frozen=True)
class Version:
    """One version of a file, as the kernel saw it at a read."""

    dev: int  # kernel encoding (major << 20 | minor)
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @property
    def st_dev(self) -> int:
        return os.makedev(self.dev >> 20, self.dev & 0xFFFFF)

    def matches(self, st: os.stat_result, stacked: bool = False) -> bool:
        """``st`` is this version. ``stacked``: the kernel's device is an overlay's, whose
        ``stat`` reports the device of the layer that holds the file instead (the inode
        number, size and times are the file's in both): the device is not compared."""
        return ((stacked or st.st_dev == self.st_dev) and st.st_ino == self.ino
                and st.st_size == self.size and st.st_mtime_ns == self.mtime_ns
                and st.st_ctime_ns == self.ctime_ns)


class FileStore:
    """The agent's store of file contents (one per agent; called from its flush thread).

    ``present(hour, names)``: which names the lake's hour holds already (lake.blobs.present
    bound to the agent's lake). ``keys``: the payload key file's keys, if blobs are sealed.
    """

    def __init__(self, config: FileStoreConfig | None = None,
                 present: Callable[[str, list[str]], set[str]] | None = None,
                 keys: PayloadKeys | None = None) -> None:
        self.config = config or FileStoreConfig()
        self.stats = FileStoreStats()
        self._present = present
        self._keys = keys
        self._paths = pa.table({"dev": pa.array([], pa.int64()), "ino": pa.array([], pa.int64()),
                                "path": pa.array([], pa.binary())})
        self._versions: OrderedDict[Version, str] = OrderedDict()  # -> name
        self._hour = ""
        self._stored_this_hour: set[str] = set()

    # -- the flush step ----------------------------------------------------------------------
    def process(self, rows: pa.Table, now_ns: int | None = None
                ) -> tuple[pa.Table, pa.Table | None, dict[str, int]]:
        """``syscall_data`` rows with their pending reads named (or marked missing), the
        ``blobs`` rows to write before them (None: none), and the reads left without
        content by reason."""
        now = time.time_ns() if now_ns is None else now_ns
        hour = hour_partition(now)
        if hour != self._hour:  # a row may only name content of its hour or a later one
            self._hour, self._stored_this_hour = hour, set()
        self._learn_paths(rows)
        blob = rows.column("blob")
        pending = np.asarray(pc.fill_null(pc.equal(blob, ""), False).to_numpy(
            zero_copy_only=False), bool)
        if not pending.any():
            return rows, None, {}
        at = np.flatnonzero(pending)
        ids = _file_ids(rows.column("data").take(pa.array(at)))
        pids = np.asarray(rows.column("pid").take(pa.array(at)).to_numpy(zero_copy_only=False),
                          np.int64)
        self.stats.reads_by_identity += len(at)
        lengths = np.asarray(pc.fill_null(rows.column("total_len").take(pa.array(at)), 0)
                             .to_numpy(), np.int64)
        keys = np.stack([ids[k].astype(np.int64) for k in _IDENTITY], axis=1)
        unique, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        covered = np.bincount(inverse, weights=lengths, minlength=len(unique))
        names = np.full(len(at), "", dtype=object)
        offsets = ids["pos"].astype(np.int64)
        new: dict[str, bytes] = {}
        missing: dict[str, int] = {}
        paths = self._paths_of(unique)
        for i, key in enumerate(unique):  # once per file version, not per read
            version = Version(*(int(v) for v in key))
            reads = np.flatnonzero(inverse == i)
            j = int(first[i])
            where = (paths.get((version.dev, version.ino)), int(pids[j]), int(ids["fd"][j]))
            whole = (version.size <= self.config.whole_file_min
                     or covered[i] * 2 >= version.size or version in self._versions)
            if whole:
                name, why = self._whole(version, where, new)
                names[reads] = name
            else:  # a small part of a big file (a library's ELF header): what was read
                why = self._ranges(version, where, offsets[reads], lengths[reads], names,
                                   reads, new)
                offsets[reads] = np.where(names[reads] != "", 0, offsets[reads])
            if why is not None:
                lost_reads = int(np.count_nonzero(names[reads] == ""))
                missing[why] = missing.get(why, 0) + lost_reads
        blobs = self._blobs(list(new.items()), now)
        named = pa.array(names, pa.string())
        full = pc.replace_with_mask(blob, pa.array(pending), named)
        offset_column = pc.replace_with_mask(rows.column("blob_offset").combine_chunks(),
                                             pa.array(pending), pa.array(offsets, pa.int64()))
        lost = pc.and_(pa.array(pending), pc.equal(full, ""))
        truncated = pc.or_(pc.fill_null(rows.column("truncated"), False), lost)
        rows = rows.set_column(rows.schema.get_field_index("blob"), "blob", full)
        rows = rows.set_column(rows.schema.get_field_index("blob_offset"), "blob_offset",
                               offset_column)
        rows = rows.set_column(rows.schema.get_field_index("truncated"), "truncated", truncated)
        for why, count in missing.items():
            self.stats.missing[why] = self.stats.missing.get(why, 0) + count
        return rows, blobs, missing

    # -- one version -----------------------------------------------------------------------
    def _whole(self, version: Version, where: tuple[bytes | None, int, int],
               new: dict[str, bytes]) -> tuple[str, str | None]:
        """The name of the version's whole content (read and kept in ``new`` unless this
        hour has it), or ("", why it is missing)."""
        known = self._versions.get(version)
        if known is not None:
            self._versions.move_to_end(version)
            if known in self._stored_this_hour or known in new:
                return known, None
        if version.size > self.config.max_file_bytes:
            return "", TOO_BIG
        stacked = _stacked(version.dev, where[1])
        opened, why = _open_version(version, *where, stacked)
        if opened is None:
            # stored in an earlier hour (the lake keeps it at least as long as that hour)
            return (known, None) if known is not None else ("", why)
        try:
            content = _read_range(opened, 0, version.size)
            if content is None or not _still(opened, version, stacked):
                return (known, None) if known is not None else ("", CHANGED)
        finally:
            os.close(opened)
        name = self._keep(content, new)
        self._versions[version] = name
        while len(self._versions) > self.config.known_versions:
            self._versions.popitem(last=False)
        return name, None

    def _ranges(self, version: Version, where: tuple[bytes | None, int, int],
                starts: np.ndarray, lengths: np.ndarray, names: np.ndarray,
                reads: np.ndarray, new: dict[str, bytes]) -> str | None:
        """Each read's bytes as a blob of its own (``names[reads]``, offset 0 in it); why
        some are missing, or None."""
        stacked = _stacked(version.dev, where[1])
        opened, why = _open_version(version, *where, stacked)
        if opened is None:
            return why
        try:
            contents = [_read_range(opened, int(p), int(n)) for p, n in zip(starts, lengths,
                                                                              strict=True)]
            if not _still(opened, version, stacked):
                return CHANGED
        finally:
            os.close(opened)
        for k, content in zip(reads, contents, strict=True):
            if content is not None:
                names[k] = self._keep(content, new)
        return None if all(c is not None for c in contents) else CHANGED

    def _keep(self, content: bytes, new: dict[str, bytes]) -> str:
        """Its name (masked as payloads are first); kept in ``new`` to store if this hour
        does not hold it."""
        if self.config.mask_pans:
            masked, found = mask_pans(pa.array([content], pa.binary()))
            if found:
                content = masked[0].as_py()
        name = blob_name(content, self._keys.active.public_bytes if self._keys else None)
        if name not in self._stored_this_hour:
            new[name] = content
        return name

    def _blobs(self, new: list[tuple[str, bytes]], now: int) -> pa.Table | None:
        if not new:
            return None
        unique = dict(new)
        if self._present is not None:
            held = self._present(self._hour, sorted(set(unique) - self._stored_this_hour))
            self.stats.versions_present += len(held)
            self._stored_this_hour |= held
            unique = {n: c for n, c in unique.items() if n not in held}
        if not unique:
            return None
        names = sorted(unique)
        datas: list[bytes] = []
        seals: list[bytes | None] = []
        for name in names:
            content = unique[name]
            if self._keys is not None:
                sealed, seal = seal_blob(content, name, self._keys)
                datas.append(sealed)
                seals.append(seal)
            else:
                datas.append(content)
                seals.append(None)
        self._stored_this_hour |= set(names)
        self.stats.versions_stored += len(names)
        self.stats.bytes_stored += sum(len(unique[n]) for n in names)
        return pa.table({
            "ts_ns": pa.array(np.full(len(names), now, np.int64)),
            "blob": pa.array(names, pa.string()),
            "size": pa.array([len(unique[n]) for n in names], pa.int64()),
            # a chunk per version: a flush's contents may pass 2 GiB, one binary array's limit
            "data": pa.chunked_array([pa.array([d], pa.binary()) for d in datas], pa.binary()),
            "seal": pa.array(seals, pa.binary()),
        }, schema=table_spec("blobs").payload_schema)

    # -- paths -------------------------------------------------------------------------------
    def _learn_paths(self, rows: pa.Table) -> None:
        """(dev, ino) -> path, from the opens and execs in ``rows`` (vectorised)."""
        arg = np.asarray(pc.fill_null(rows.column("arg_index"), -1).to_numpy(), np.int64)
        nr = np.asarray(pc.fill_null(rows.column("nr"), -1).to_numpy(), np.int64)
        parts = []
        opened = np.flatnonzero(arg == PAYLOAD_ARG_OPENED)
        if len(opened):
            data = rows.column("data").take(pa.array(opened)).combine_chunks()
            long_enough = np.asarray(pc.greater(pc.binary_length(data), _ID_BYTES).to_numpy(
                zero_copy_only=False), bool)
            data = data.filter(pa.array(long_enough))
            if len(data):
                ids = _file_ids(pc.binary_slice(data, 0, _ID_BYTES))
                parts.append(pa.table({"dev": ids["dev"].astype(np.int64),
                                       "ino": ids["ino"].astype(np.int64),
                                       "path": pc.binary_slice(data, _ID_BYTES, 1 << 30)}))
        fds = np.flatnonzero((nr == NR_EXECVE) & (arg == PAYLOAD_ARG_FDS))
        fd_paths = np.flatnonzero((nr == NR_EXECVE) & (arg >= PAYLOAD_ARG_FD_PATH)
                                  & (arg < PAYLOAD_ARG_FD_PATH + FD_TABLE_MAX))
        if len(fds) and len(fd_paths):
            parts.append(_exec_paths(rows, fds, fd_paths))
        if not parts:
            return
        paths = pa.concat_tables([self._paths, *parts])
        if paths.num_rows > self.config.known_paths:
            paths = paths.slice(paths.num_rows - self.config.known_paths)
        self._paths = paths

    def _paths_of(self, versions: np.ndarray) -> dict[tuple[int, int], bytes]:
        """The latest known path of each (dev, ino) among ``versions`` (rows of keys)."""
        if not len(versions) or not self._paths.num_rows:
            return {}
        wanted = pa.table({"dev": pa.array(versions[:, 0], pa.int64()),
                           "ino": pa.array(versions[:, 1], pa.int64())})
        latest = self._paths.group_by(["dev", "ino"], use_threads=False).aggregate(
            [("path", "last")])
        found = wanted.join(latest, ["dev", "ino"], join_type="inner")
        return {(d, i): p for d, i, p in zip(found.column("dev").to_pylist(),
                                             found.column("ino").to_pylist(),
                                             found.column("path_last").to_pylist(),
                                             strict=True)}


def _file_ids(values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """FILE_ID records from binary values of its size (others read as zeros)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not len(values):
        return np.zeros(0, FILE_ID)
    lengths = np.asarray(pc.fill_null(pc.binary_length(values), 0).to_numpy(), np.int64)
    if np.any(lengths != _ID_BYTES):
        ok = lengths == _ID_BYTES
        values = pc.if_else(pa.array(ok), values, pa.scalar(b"\0" * _ID_BYTES, pa.binary()))
    return np.frombuffer(_concat_values(values, np.full(len(values), _ID_BYTES)),
                         FILE_ID).copy()


def _concat_values(values: pa.Array | pa.ChunkedArray, take: np.ndarray) -> bytes:
    """The first ``take[i]`` bytes of each value, concatenated (no loop per value: the
    values' buffer, sliced by numpy)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = pa.concat_arrays([pa.array([], values.type), values])  # offset 0
    if values.type != pa.binary():
        values = values.cast(pa.binary())
    offsets = np.frombuffer(values.buffers()[1], np.int32, len(values) + 1).astype(np.int64)
    lengths = np.minimum(np.diff(offsets), take)
    buffer = values.buffers()[2]
    raw = np.frombuffer(buffer, np.uint8) if buffer is not None else np.zeros(0, np.uint8)
    if not lengths.sum():
        return b""
    owner = np.repeat(np.arange(len(lengths)), lengths)
    within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return bytes(raw[offsets[:-1][owner] + within].tobytes())


def _exec_paths(rows: pa.Table, fds: np.ndarray, fd_paths: np.ndarray) -> pa.Table:
    """(dev, ino, path) of the descriptors execs started with: each exec's FDS array
    joined with its FD_PATH rows on (pid, seq, fd)."""
    tables = rows.take(pa.array(fds))
    counts = np.asarray(pc.binary_length(tables.column("data")).to_numpy(), np.int64) // _ID_BYTES
    entries = _entries(tables.column("data"), counts)
    owner = np.repeat(np.arange(len(fds)), counts)
    table = pa.table({
        "pid": pa.array(np.asarray(tables.column("pid").to_numpy(), np.int64)[owner]),
        "seq": pa.array(np.asarray(tables.column("seq").to_numpy(), np.int64)[owner]),
        "fd": pa.array(entries["fd"].astype(np.int64)),
        "dev": pa.array(entries["dev"].astype(np.int64)),
        "ino": pa.array(entries["ino"].astype(np.int64)),
    })
    named = rows.take(pa.array(fd_paths))
    paths = pa.table({
        "pid": pc.cast(named.column("pid"), pa.int64()),
        "seq": named.column("seq"),
        "fd": pc.subtract(pc.cast(named.column("arg_index"), pa.int64()), PAYLOAD_ARG_FD_PATH),
        "path": named.column("data"),
    })
    joined = table.join(paths, ["pid", "seq", "fd"], join_type="inner")
    return joined.select(["dev", "ino", "path"])


def _entries(column: pa.ChunkedArray, counts: np.ndarray) -> np.ndarray:
    """Every FILE_ID of FDS arrays (``counts[i]`` whole records in row i)."""
    return np.frombuffer(_concat_values(column, counts * _ID_BYTES), FILE_ID)


def _open_version(version: Version, path: bytes | None, pid: int, fd: int, stacked: bool
                  ) -> tuple[int | None, str | None]:
    """A descriptor on ``version``, opened where the kernel said it was (through the
    process's root, the path, or the reader's own descriptor) and checked to be that very
    version; else (None, why)."""
    candidates: list[bytes] = []
    if path is not None:
        candidates.append(f"/proc/{pid}/root".encode() + path)
        candidates.append(path)
    candidates.append(f"/proc/{pid}/fd/{fd}".encode())
    why = GONE
    for candidate in candidates:
        try:
            opened = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | _O_NOATIME)
        except PermissionError:
            if not _O_NOATIME:
                continue
            try:  # O_NOATIME is refused on a file the opener does not own
                opened = os.open(candidate, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue
        except OSError:
            continue
        try:
            st = os.fstat(opened)
        except OSError:
            os.close(opened)
            continue
        if stat.S_ISREG(st.st_mode) and version.matches(st, stacked):
            return opened, None
        if (stacked or st.st_dev == version.st_dev) and st.st_ino == version.ino:
            why = CHANGED  # the same file, another version by now
        os.close(opened)
    return None, why


def _read_range(fd: int, start: int, length: int) -> bytes | None:
    """``length`` bytes at ``start`` (None if the file is shorter now)."""
    chunks = []
    left = length
    try:
        while left > 0:
            chunk = os.pread(fd, min(left, 8 << 20), start + length - left)
            if not chunk:
                return None
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as err:
        log.debug("file store: pread: %s", err)
        return None
    return b"".join(chunks)


def _still(fd: int, version: Version, stacked: bool) -> bool:
    """The file did not change while it was read."""
    try:
        return version.matches(os.fstat(fd), stacked)
    except OSError:
        return False


# File systems whose files ``stat`` with another device than their superblock's (the one the
# kernel records): overlayfs reports the device of the layer holding the file. Every
# container's root is one, as is the kprobe vmtest guests' root.
_STACKED_TYPES = frozenset({"overlay"})


def _stacked(dev: int, pid: int) -> bool:
    """The kernel device ``dev`` (major << 20 | minor) is a stacked file system's superblock,
    as the reader's mount namespace shows it (``/proc/PID/mountinfo``; the agent's own when
    the reader is gone). Read once per file version stored, not per read."""
    wanted = f"{dev >> 20}:{dev & 0xFFFFF}".encode()
    for source in (f"/proc/{pid}/mountinfo", "/proc/self/mountinfo"):
        try:
            with open(source, "rb") as f:
                text = f.read()
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split(b" ")
            if len(fields) < 3 or fields[2] != wanted:
                continue
            try:  # "... - FSTYPE SOURCE OPTIONS" after the optional fields
                fstype = fields[fields.index(b"-") + 1].decode(errors="replace")
            except (ValueError, IndexError):
                return False
            return fstype in _STACKED_TYPES
        return False
    return False


__all__ = ["CHANGED", "GONE", "TOO_BIG", "FileStore", "FileStoreConfig", "FileStoreStats",
           "Version"]
