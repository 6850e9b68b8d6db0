"""The agent's store of file contents (capture_agent/file_store.py) and blob sealing
(lake/sealing.py), on real files with synthetic ``syscall_data`` rows (no root, no kernel).

A read recorded by identity is a row with ``blob`` "" and a FILE_ID in ``data``, as the
family's converter makes them from the kernel's chunks; an open's row carries the FILE_ID
and the path the kernel resolved.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from kprobe.capture_agent.families.syscalls import (
    FILE_ID,
    NR_EXECVE,
    PAYLOAD_ARG_FD_PATH,
    PAYLOAD_ARG_FDS,
    PAYLOAD_ARG_OPENED,
)
from kprobe.capture_agent.file_store import CHANGED, GONE, TOO_BIG, FileStore, FileStoreConfig
from kprobe.lake import payload_keys
from kprobe.lake.errors import PayloadIntegrityError, PayloadKeyError
from kprobe.lake.schema import spec
from kprobe.lake.sealing import blob_name, open_blob, seal_blob

T0 = 1_767_225_600_000_000_000
PAN = b"4111111111111111"


def _file_id(path: Path, fd: int, pos: int = 0) -> bytes:
    st = os.stat(path)
    dev = (os.major(st.st_dev) << 20) | os.minor(st.st_dev)
    record = np.zeros(1, FILE_ID)
    record[0] = (dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, pos, fd,
                 st.st_mode, 0, 0xEF53)
    return record.tobytes()


def _rows(rows: list[dict[str, object]]) -> pa.Table:
    base = {"ts_ns": T0, "pid": 4242, "tid": 4242, "seq": 1, "nr": 0, "arg_index": 1,
            "offset": 0, "data": None, "total_len": 0, "truncated": False, "blob": None,
            "blob_offset": None}
    return pa.Table.from_pylist([{**base, **r} for r in rows],
                                schema=spec("syscall_data").payload_schema)


def _opened(path: Path, fd: int, seq: int, pid: int = 4242) -> dict[str, object]:
    return {"pid": pid, "tid": pid, "seq": seq, "nr": 257, "arg_index": PAYLOAD_ARG_OPENED,
            "data": _file_id(path, fd) + str(path).encode(), "total_len": 64}


def _read(path: Path, fd: int, seq: int, pos: int, n: int, pid: int = 4242
          ) -> dict[str, object]:
    return {"pid": pid, "tid": pid, "seq": seq, "nr": 0, "arg_index": 1,
            "data": _file_id(path, fd, pos), "total_len": n, "blob": "", "blob_offset": pos}


@pytest.fixture
def ledger(tmp_path: Path) -> Path:
    path = tmp_path / "ledger.csv"
    path.write_bytes(b"".join(b"PAY-%05d,%d,INR\n" % (i, i * 37 % 9973) for i in range(9000)))
    return path


def test_a_version_read_by_two_processes_is_stored_once_and_serves_each_read(
        ledger: Path) -> None:
    # GIVEN two processes that opened the file and read it in pieces
    size = ledger.stat().st_size
    rows = _rows([_opened(ledger, 3, 1), _read(ledger, 3, 2, 0, 65536),
                  _read(ledger, 3, 3, 65536, size - 65536),
                  _opened(ledger, 5, 1, pid=99), _read(ledger, 5, 2, 0, size, pid=99)])
    store = FileStore()
    # WHEN the flush stores what they read
    named, blobs, missing = store.process(rows, T0)
    # THEN one blob holds the whole version, named by its SHA-256, and every read names it
    assert missing == {} and blobs is not None and blobs.num_rows == 1
    content = ledger.read_bytes()
    name = hashlib.sha256(content).hexdigest()
    assert blobs.column("blob").to_pylist() == [name]
    assert blobs.column("data")[0].as_py() == content and blobs.column("seal")[0].as_py() is None
    reads = named.filter(pa.compute.is_valid(named.column("blob")))
    assert reads.column("blob").to_pylist() == [name] * 3
    assert reads.column("blob_offset").to_pylist() == [0, 65536, 0]
    assert not any(reads.column("truncated").to_pylist())
    # AND a later flush in the same hour stores nothing again (another process, same file)
    again, blobs_again, _ = store.process(_rows([_read(ledger, 7, 9, 0, 100, pid=7)]), T0 + 1)
    assert blobs_again is None and again.column("blob").to_pylist() == [name]


def test_another_node_holding_the_version_this_hour_is_not_stored_again(ledger: Path) -> None:
    asked: list[tuple[str, list[str]]] = []

    def present(hour: str, names: list[str]) -> set[str]:
        asked.append((hour, names))
        return set(names)  # the lake's hour has them (another node stored them)

    store = FileStore(present=present)
    named, blobs, _ = store.process(_rows([_opened(ledger, 3, 1),
                                           _read(ledger, 3, 2, 0, ledger.stat().st_size)]), T0)
    assert blobs is None and asked and asked[0][0] == "2026-01-01T00"
    assert named.column("blob").to_pylist()[1] == hashlib.sha256(ledger.read_bytes()).hexdigest()


def test_a_new_hour_stores_the_version_again(ledger: Path) -> None:
    # rows of an hour may only name content that hour (or a later one) holds: retention
    # drops whole hours
    store = FileStore()
    rows = _rows([_opened(ledger, 3, 1), _read(ledger, 3, 2, 0, ledger.stat().st_size)])
    _, first, _ = store.process(rows, T0)
    _, second, _ = store.process(_rows([_read(ledger, 3, 3, 10, 10)]), T0 + 3_600 * 10**9)
    assert first is not None and second is not None
    assert first.column("blob").to_pylist() == second.column("blob").to_pylist()


def test_a_file_changed_since_the_read_is_counted_never_stored_as_that_version(
        ledger: Path) -> None:
    # GIVEN the identity the kernel saw at the read, then the file rewritten in place
    rows = _rows([_opened(ledger, 3, 1), _read(ledger, 3, 2, 0, 100)])
    with open(ledger, "r+b") as f:
        f.write(b"XXXX")
    os.utime(ledger, ns=(T0, T0))  # even with its old mtime: ctime moved
    # WHEN stored
    named, blobs, missing = FileStore().process(rows, T0)
    # THEN nothing is stored under the old identity; the read is counted and marked
    assert blobs is None and missing == {CHANGED: 1}
    assert named.column("blob").to_pylist()[1] == "" and named.column("truncated")[1].as_py()


def test_a_deleted_file_is_gone_and_an_open_descriptor_still_finds_it(ledger: Path) -> None:
    rows = _rows([_opened(ledger, 3, 1), _read(ledger, 3, 2, 0, 100)])
    held = os.open(ledger, os.O_RDONLY)
    try:
        ledger.unlink()
        # the reader's descriptor: this process stands in for it (pid, fd)
        rows_held = _rows([_read(Path(f"/proc/self/fd/{held}"), held, 2, 0, 100,
                                 pid=os.getpid())])
        _, found, missing_found = FileStore().process(rows_held, T0)
        assert found is not None and missing_found == {}
    finally:
        os.close(held)
    _, blobs, missing = FileStore().process(rows, T0)
    assert blobs is None and missing == {GONE: 1}


def test_big_versions_are_refused_and_a_small_read_of_a_big_file_is_stored_alone(
        tmp_path: Path) -> None:
    big = tmp_path / "libbig.so"
    big.write_bytes(b"\x7fELF" + os.urandom(300_000))
    # a loader reads 832 bytes of a library it then maps: those bytes, not the library
    _, blobs, _ = FileStore().process(_rows([_opened(big, 3, 1), _read(big, 3, 2, 0, 832)]), T0)
    assert blobs is not None and blobs.column("size").to_pylist() == [832]
    assert blobs.column("data")[0].as_py() == big.read_bytes()[:832]
    named, none, missing = FileStore(FileStoreConfig(max_file_bytes=1000)).process(
        _rows([_opened(big, 3, 1), _read(big, 3, 2, 0, 300_004)]), T0)
    assert none is None and missing == {TOO_BIG: 1}


def test_card_numbers_are_masked_and_the_name_is_of_what_is_stored(tmp_path: Path) -> None:
    cards = tmp_path / "cards.txt"
    cards.write_bytes(b"card " + PAN + b" amount 50000\n")
    _, blobs, _ = FileStore().process(
        _rows([_opened(cards, 3, 1), _read(cards, 3, 2, 0, cards.stat().st_size)]), T0)
    assert blobs is not None
    stored = blobs.column("data")[0].as_py()
    assert PAN not in stored and b"411111******1111" in stored and len(stored) == 35
    assert blobs.column("blob")[0].as_py() == hashlib.sha256(stored).hexdigest()


def test_with_a_payload_key_blobs_are_sealed_and_named_by_a_keyed_hash(
        tmp_path: Path, ledger: Path) -> None:
    readers, agents = tmp_path / "readers.json", tmp_path / "agents.json"
    payload_keys.new_key(readers, agents)
    store = FileStore(keys=payload_keys.load(agents))
    _, blobs, _ = store.process(_rows([_opened(ledger, 3, 1),
                                       _read(ledger, 3, 2, 0, ledger.stat().st_size)]), T0)
    assert blobs is not None
    name, data, seal = (blobs.column(c)[0].as_py() for c in ("blob", "data", "seal"))
    content = ledger.read_bytes()
    # the name confirms nothing to a reader without the key file; the data is ciphertext
    assert name != hashlib.sha256(content).hexdigest() and b"PAY-00001" not in data
    assert open_blob(data, seal, name, payload_keys.load(readers)) == content
    with pytest.raises(PayloadKeyError, match="only the public half"):
        open_blob(data, seal, name, payload_keys.load(agents))
    with pytest.raises(PayloadKeyError):
        open_blob(data, seal, name, None)


def test_a_sealed_blob_cannot_move_under_another_name_or_be_altered(tmp_path: Path) -> None:
    readers, agents = tmp_path / "readers.json", tmp_path / "agents.json"
    payload_keys.new_key(readers, agents)
    keys = payload_keys.load(readers)
    public = keys.active.public_bytes
    first, second = b"ledger v1\n", b"ledger v2\n"
    n1, n2 = blob_name(first, public), blob_name(second, public)
    data1, seal1 = seal_blob(first, n1, payload_keys.load(agents))
    with pytest.raises(PayloadIntegrityError):
        open_blob(data1, seal1, n2, keys)
    flipped = bytes([data1[0] ^ 1]) + data1[1:]
    with pytest.raises(PayloadIntegrityError):
        open_blob(flipped, seal1, n1, keys)
    # and in the clear, content that does not hash to its name is refused
    with pytest.raises(PayloadIntegrityError):
        open_blob(first, None, hashlib.sha256(second).hexdigest(), None)


def test_descriptors_an_exec_started_with_give_paths(ledger: Path) -> None:
    # GIVEN an exec whose stdin is the ledger (no open of it in the recording)
    fds = _file_id(ledger, 0)
    rows = _rows([
        {"nr": NR_EXECVE, "arg_index": PAYLOAD_ARG_FDS, "data": fds, "seq": 1},
        {"nr": NR_EXECVE, "arg_index": PAYLOAD_ARG_FD_PATH + 0, "data": str(ledger).encode(),
         "seq": 1},
        _read(ledger, 0, 2, 0, 100)])
    # WHEN its reads of fd 0 are stored
    named, blobs, missing = FileStore().process(rows, T0)
    # THEN the exec's descriptor table led to the file
    assert missing == {} and blobs is not None
    assert named.column("blob").to_pylist()[2] == blobs.column("blob")[0].as_py()
