"""Payload bytes encrypted at rest: one sealed segment per batch and hour, opened by readers
that hold the key.

**What is sealed.** The ``data`` column of ``syscall_data`` (what programs read and wrote,
their environments at exec), when the lake location names a payload key file
(``KPROBE_PAYLOAD_KEY_FILE``, lake/payload_keys.py). Everything else stays in the clear, so
the causal engine, timelines and SQL over metadata work without any key.

**How (envelope encryption, a few crypto calls per batch, none per row).** The writer
seals each (batch, hour) — exactly the rows of one Parquet file, which compaction and
retention keep together — as one *segment*:

1. A fresh X25519 key pair is made for the segment; its agreement with the recipient's
   public key (the key file's active key), through HKDF-SHA256, gives a fresh 256-bit data
   key. This is the sealed-box construction (ECIES/HPKE base mode): the data key is never
   stored, only the ephemeral public key that re-derives it with the recipient's *private*
   key. Agents therefore hold public keys only: a compromised capture node cannot open the
   payloads it wrote, nor anyone else's.
2. The segment's bytes are already one buffer in Arrow (the binary column's value buffer);
   one AES-256-GCM call encrypts it. GCM is a counter mode, so every row keeps its length
   and its ciphertext is its slice of the buffer: the offsets buffer is reused as is and the
   column is rebuilt from the ciphertext buffer without touching rows.
3. Each row stores the envelope (``seal``: format, key id, ephemeral public key, nonce,
   segment length, row count, GCM tag; Parquet dictionary-encodes it to one value per file)
   and its byte position in the segment (``seal_pos``). The GCM associated data binds the
   envelope and a SHA-256 of the rows' identities (pid, tid, seq, nr, arg_index, offset,
   position, length): moving bytes to another syscall, reordering, dropping or adding a row,
   or flipping a bit all fail the tag.

**Opening.** A reader cannot verify a row alone: GCM's tag covers the segment. So the first
time a query needs a row of a segment, the opener reads that batch's rows (the Delta file
statistics on ``batch_id`` prune to its file), verifies and decrypts each segment of it in
one call, and keeps the plaintext in a bounded cache; every row is then a slice of it,
gathered as Arrow binary views (no loop per row). A reader without the key sees only
ciphertext; a wrong key or key file is a one-line ``PayloadKeyError``; an altered segment a
``PayloadIntegrityError``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from kprobe.lake.errors import LakeError, PayloadIntegrityError, PayloadKeyError, PayloadSealError
from kprobe.lake.payload_keys import PayloadKeys

MAGIC = b"KPS1"
_TAG = 16
_NONCE = 12
_HEAD = struct.Struct("<QQ")  # segment length, rows
_INFO = b"kprobe payload seal v1"
# the row identity bound to the ciphertext (with its position and length)
IDENTITY_COLUMNS = ("pid", "tid", "seq", "nr", "arg_index", "offset")
SEGMENT_COLUMNS = ("data", "seal", "seal_pos", "hour", *IDENTITY_COLUMNS)


@dataclass(frozen=True)
class Envelope:
    """A parsed ``seal`` value."""

    key_id: str
    ephemeral: bytes  # X25519 public key, 32 bytes
    nonce: bytes
    length: int  # bytes in the segment
    rows: int
    tag: bytes
    header: bytes  # everything before the tag: part of the associated data

    @classmethod
    def parse(cls, seal: bytes, magic: bytes = MAGIC) -> Envelope:
        try:
            if seal[:4] != magic:
                raise ValueError("not a kprobe seal")
            n = seal[4]
            kid = seal[5:5 + n].decode("ascii")
            at = 5 + n
            ephemeral, nonce = seal[at:at + 32], seal[at + 32:at + 32 + _NONCE]
            at += 32 + _NONCE
            length, rows = _HEAD.unpack_from(seal, at)
            at += _HEAD.size
            tag = seal[at:at + _TAG]
            if len(tag) != _TAG or len(seal) != at + _TAG or len(ephemeral) != 32:
                raise ValueError("wrong length")
        except (ValueError, IndexError, struct.error, UnicodeDecodeError) as err:
            raise PayloadIntegrityError(f"a payload seal is malformed ({err})") from None
        return cls(kid, ephemeral, nonce, length, rows, tag, seal[:at])


def _data_key(shared: bytes, ephemeral: bytes, recipient: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _INFO + ephemeral + recipient).derive(shared)


def _raw(public: X25519PublicKey) -> bytes:
    return public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _identity_digest(columns: dict[str, np.ndarray], positions: np.ndarray,
                     lengths: np.ndarray) -> bytes:
    """SHA-256 of every row's identity, position and length, in a canonical order (so it
    does not depend on the order rows come back in)."""
    keys = [columns[c] for c in reversed(IDENTITY_COLUMNS)]
    order = np.lexsort((*keys, lengths, positions))
    stacked = np.stack([positions, lengths, *(columns[c] for c in IDENTITY_COLUMNS)])
    return hashlib.sha256(np.ascontiguousarray(stacked[:, order]).tobytes()).digest()


def _identities(table: pa.Table) -> dict[str, np.ndarray]:
    return {c: np.asarray(pc.fill_null(table.column(c), -1).to_numpy(), np.int64)
            for c in IDENTITY_COLUMNS}


def _binary(column: pa.ChunkedArray | pa.Array) -> pa.BinaryArray:
    """One binary chunk with offset 0 (its buffers can be used as they are)."""
    array = _chunk(column)
    if array.offset:
        array = pa.concat_arrays([pa.array([], array.type), array])
    return array


def _chunk(column: pa.ChunkedArray | pa.Array) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column


def _offsets(array: pa.BinaryArray) -> np.ndarray:
    return np.frombuffer(array.buffers()[1], np.int32, len(array) + 1).astype(np.int64)


# -- writing -------------------------------------------------------------------------------------


def seal_table(table: pa.Table, keys: PayloadKeys, column: str = "data") -> pa.Table:
    """``table`` (a conformed batch) with ``column`` encrypted, one segment per hour, and
    its ``seal``/``seal_pos`` filled."""
    if table.num_rows == 0:
        return table
    hours = pc.unique(table.column("hour"))
    if len(hours) > 1:  # rare: a flush across an hour boundary
        return pa.concat_tables(
            [_seal_segment(table.filter(pc.equal(table.column("hour"), hour)), keys, column)
             for hour in hours])
    return _seal_segment(table, keys, column)


def _seal_segment(table: pa.Table, keys: PayloadKeys, column: str) -> pa.Table:
    data = _binary(table.column(column))
    n = len(data)
    offsets = _offsets(data)
    lo, hi = int(offsets[0]), int(offsets[-1])
    values = data.buffers()[2]
    plain = b"" if values is None else values.slice(lo, hi - lo).to_pybytes()
    positions = offsets[:-1] - lo
    lengths = np.diff(offsets)

    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = _raw(ephemeral.public_key())
    recipient = keys.active
    dek = _data_key(ephemeral.exchange(recipient.public), ephemeral_pub,
                    recipient.public_bytes)
    nonce = os.urandom(_NONCE)
    kid = recipient.id.encode("ascii")
    header = (MAGIC + bytes([len(kid)]) + kid + ephemeral_pub + nonce
              + _HEAD.pack(hi - lo, n))
    aad = header + _identity_digest(_identities(table), positions, lengths)
    sealed = AESGCM(dek).encrypt(nonce, plain, aad)
    ciphertext, tag = sealed[:-_TAG], sealed[-_TAG:]

    rebased = (offsets - lo).astype(np.int32)
    encrypted = pa.Array.from_buffers(pa.binary(), n, [data.buffers()[0], pa.py_buffer(rebased),
                                                        pa.py_buffer(ciphertext)],
                                      null_count=data.null_count)
    seal = header + tag
    seal_column = pa.Array.from_buffers(
        pa.binary(), n, [None, pa.py_buffer(np.arange(n + 1, dtype=np.int32) * len(seal)),
                         pa.py_buffer(seal * n)])
    table = table.set_column(table.schema.get_field_index(column), column, encrypted)
    table = table.set_column(table.schema.get_field_index("seal"), "seal", seal_column)
    return table.set_column(table.schema.get_field_index("seal_pos"), "seal_pos",
                            pa.array(positions, pa.int64()))


# -- reading -------------------------------------------------------------------------------------


def open_segment(rows: pa.Table, seal: bytes, keys: PayloadKeys) -> bytes:
    """The plaintext of the segment ``seal``, from all of its ``rows`` (SEGMENT_COLUMNS)."""
    envelope = Envelope.parse(seal)
    private = keys.private(envelope.key_id)
    recipient = _raw(private.public_key())
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(envelope.ephemeral))
    except ValueError:
        raise PayloadIntegrityError("a payload seal holds an invalid key agreement") from None
    dek = _data_key(shared, envelope.ephemeral, recipient)
    data = _binary(rows.column("data"))
    offsets = _offsets(data)
    lengths = np.diff(offsets)
    positions = np.asarray(pc.fill_null(rows.column("seal_pos"), -1).to_numpy(), np.int64)
    order = np.lexsort((lengths, positions))
    where = _where(rows)
    if (len(rows) != envelope.rows or int(lengths.sum()) != envelope.length
            or np.any(positions[order] != np.concatenate([[0], np.cumsum(lengths[order])[:-1]]))):
        raise PayloadIntegrityError(f"sealed payload segment {where} is incomplete or "
                                    f"rearranged: {len(rows)} of {envelope.rows} rows found")
    ordered = _binary(data.take(pa.array(order)))
    value_buffer = ordered.buffers()[2]
    ciphertext = b"" if value_buffer is None else value_buffer.slice(
        int(_offsets(ordered)[0]), envelope.length).to_pybytes()
    aad = envelope.header + _identity_digest(_identities(rows), positions, lengths)
    try:
        return AESGCM(dek).decrypt(envelope.nonce, ciphertext + envelope.tag, aad)
    except InvalidTag:
        raise PayloadIntegrityError(f"sealed payload segment {where} failed authentication: "
                                    "altered or corrupt") from None


def _where(rows: pa.Table) -> str:
    batch = rows.column("batch_id")[0].as_py() if "batch_id" in rows.column_names else "?"
    hour = rows.column("hour")[0].as_py() if "hour" in rows.column_names else "?"
    return f"of batch {batch} (hour {hour})"


class SegmentOpener:
    """Opens sealed rows for a reader that has the key: verified segment plaintexts in a
    bounded cache, filled a batch at a time by ``fetch_batch(batch_id)`` (that batch's rows,
    SEGMENT_COLUMNS and batch_id). Thread-safe (DuckDB calls UDFs from its threads)."""

    def __init__(self, keys: PayloadKeys, fetch_batch: Callable[[str], pa.Table],
                 cache_bytes: int = 256 << 20) -> None:
        self.keys = keys
        self.fetch_batch = fetch_batch
        self.cache_bytes = cache_bytes
        self._plain: OrderedDict[bytes, pa.Buffer] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()
        self.batches_read = 0

    def open(self, data: pa.Array, seal: pa.Array, seal_pos: pa.Array,
             batch_id: pa.Array) -> pa.Array:
        """The plaintext of each row (rows without a seal are returned as they are)."""
        data = _binary(data)
        seal, seal_pos, batch_id = (_chunk(a) for a in (seal, seal_pos, batch_id))
        sealed = np.asarray(pc.is_valid(seal).to_numpy(zero_copy_only=False), bool)
        if not sealed.any():
            return data
        encoded = pc.dictionary_encode(seal)
        segments = encoded.dictionary.to_pylist()
        index = np.asarray(pc.fill_null(encoded.indices, 0).to_numpy(), np.int64)
        needed = {s for s in (segments[i] for i in np.unique(index[sealed]))}
        wanted_batches = pc.unique(pc.filter(batch_id, pa.array(sealed))).to_pylist()
        plains = self._segments(needed, wanted_batches)
        buffers = [plains[s] if s in plains else pa.py_buffer(b"") for s in segments]
        offsets = _offsets(data)
        lengths = np.diff(offsets)
        positions = np.asarray(pc.fill_null(seal_pos, 0).to_numpy(), np.int64)
        # unsealed rows come from the column's own buffer, placed after the segments
        own = len(buffers)
        buffers.append(data.buffers()[2] or pa.py_buffer(b""))
        which = np.where(sealed, index, own)
        starts = np.where(sealed, positions, offsets[:-1])
        sizes = np.array([b.size for b in buffers], np.int64)
        if np.any(starts + lengths > sizes[which]):
            raise PayloadIntegrityError("a sealed row lies outside its segment")
        return binary_slices(buffers, which, starts, lengths, data.buffers()[0],
                             data.null_count)

    def _segments(self, needed: set[bytes], batches: Iterable[str]) -> dict[bytes, pa.Buffer]:
        with self._lock:
            found = {s: self._plain[s] for s in needed if s in self._plain}
            for s in found:
                self._plain.move_to_end(s)
            missing = needed - set(found)
            for batch in batches if missing else ():
                rows = self.fetch_batch(batch)
                self.batches_read += 1
                for segment, plain in self._open_batch(rows).items():
                    if segment in missing:
                        found[segment] = plain
                    self._keep(segment, plain)
                missing -= set(found)
                if not missing:
                    break
            if missing:
                raise PayloadIntegrityError(f"{len(missing)} sealed payload segment(s) not "
                                            "found in their batch: incomplete lake")
            return found

    def _open_batch(self, rows: pa.Table) -> dict[bytes, pa.Buffer]:
        rows = rows.filter(pc.is_valid(rows.column("seal")))
        encoded = pc.dictionary_encode(rows.column("seal").combine_chunks())
        index = np.asarray(encoded.indices.to_numpy(), np.int64)
        out = {}
        for i, segment in enumerate(encoded.dictionary.to_pylist()):  # one per file
            part = rows.filter(pa.array(index == i))
            out[segment] = pa.py_buffer(open_segment(part, segment, self.keys))
        return out

    def _keep(self, segment: bytes, plain: pa.Buffer) -> None:
        if segment in self._plain:
            return
        self._plain[segment] = plain
        self._held += plain.size
        while self._held > self.cache_bytes and len(self._plain) > 1:
            _, dropped = self._plain.popitem(last=False)
            self._held -= dropped.size


# -- blobs: one file version's content, sealed on its own ------------------------------------------
#
# A blob (table ``blobs``: capture_agent/file_store.py) is sealed alone, with the same
# construction as a segment (a fresh X25519 agreement with the active public key, HKDF,
# AES-256-GCM), its name as the associated data: a blob cannot be moved under another
# name. Its name is the SHA-256 of its content in the clear; when sealed, an HMAC-SHA256
# keyed from the active public key (HKDF), so a lake reader without the key file cannot
# confirm a guess of a small file's content from its name, while every agent writing for
# that key still names the same content the same (deduplication across nodes). A reader
# checks the name of what it opened.

BLOB_MAGIC = b"KPB1"
_BLOB_INFO = b"kprobe blob seal v1"
_NAME_INFO = b"kprobe blob name v1"


def _name_key(public: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, None, _NAME_INFO).derive(public)


def blob_name(content: bytes, public: bytes | None = None) -> str:
    """The name ``content`` is stored under: its hex SHA-256, or with the active payload
    key's ``public`` bytes, the HMAC-SHA256 keyed from it."""
    if public is None:
        return hashlib.sha256(content).hexdigest()
    return hmac.new(_name_key(public), content, hashlib.sha256).hexdigest()


def seal_blob(content: bytes, name: str, keys: PayloadKeys) -> tuple[bytes, bytes]:
    """(ciphertext, seal) of a blob for the active key of ``keys``."""
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = _raw(ephemeral.public_key())
    recipient = keys.active
    dek = HKDF(hashes.SHA256(), 32, None,
               _BLOB_INFO + ephemeral_pub + recipient.public_bytes).derive(
        ephemeral.exchange(recipient.public))
    nonce = os.urandom(_NONCE)
    kid = recipient.id.encode("ascii")
    header = (BLOB_MAGIC + bytes([len(kid)]) + kid + ephemeral_pub + nonce
              + _HEAD.pack(len(content), 1))
    sealed = AESGCM(dek).encrypt(nonce, content, header + name.encode("ascii"))
    return sealed[:-_TAG], header + sealed[-_TAG:]


def open_blob(data: bytes, seal: bytes | None, name: str, keys: PayloadKeys | None) -> bytes:
    """The content of blob ``name`` (``seal`` None: stored in the clear), checked against
    its name; PayloadKeyError without the key, PayloadIntegrityError if altered."""
    if seal is None:
        if hashlib.sha256(data).hexdigest() != name:
            raise PayloadIntegrityError(f"blob {name[:16]}: its content does not match its "
                                        f"name: altered or corrupt")
        return data
    envelope = Envelope.parse(seal, BLOB_MAGIC)
    if keys is None:
        raise PayloadKeyError(f"blob {name[:16]} is sealed for key {envelope.key_id}: give "
                              f"the lake's payload key file (KPROBE_PAYLOAD_KEY_FILE)")
    private = keys.private(envelope.key_id)
    recipient = _raw(private.public_key())
    try:
        shared = private.exchange(X25519PublicKey.from_public_bytes(envelope.ephemeral))
        dek = HKDF(hashes.SHA256(), 32, None,
                   _BLOB_INFO + envelope.ephemeral + recipient).derive(shared)
        plain = AESGCM(dek).decrypt(envelope.nonce, data + envelope.tag,
                                    envelope.header + name.encode("ascii"))
    except (ValueError, InvalidTag):
        raise PayloadIntegrityError(f"sealed blob {name[:16]} failed authentication: altered "
                                    f"or corrupt") from None
    if blob_name(plain, recipient) != name:
        raise PayloadIntegrityError(f"sealed blob {name[:16]}: its content does not match "
                                    f"its name")
    return plain


# -- binary slices without a loop per row --------------------------------------------------------

_VIEW = np.dtype([("len", "<i4"), ("prefix", "u1", (4,)), ("buffer", "<i4"), ("offset", "<i4")])
_INLINE = 12


def binary_slices(buffers: list[pa.Buffer], which: np.ndarray, starts: np.ndarray,
                  lengths: np.ndarray, validity: pa.Buffer | None = None,
                  null_count: int = 0) -> pa.Array:
    """Row i = ``buffers[which[i]][starts[i]:starts[i] + lengths[i]]``, as a binary array:
    Arrow binary views into the buffers, then one C++ cast that copies the bytes out."""
    n = len(which)
    views = np.zeros(n, _VIEW)
    views["len"] = lengths
    views["buffer"] = which
    views["offset"] = starts
    head = np.zeros((n, _INLINE), np.uint8)  # the first bytes: prefix, or the whole value
    span = np.minimum(lengths, _INLINE)
    for b, buffer in enumerate(buffers):  # a loop per buffer (segment), not per row
        rows = np.flatnonzero((which == b) & (span > 0))
        if not len(rows):
            continue
        source = np.frombuffer(buffer, np.uint8)
        take = starts[rows, None] + np.arange(_INLINE)[None, :]
        valid = np.arange(_INLINE)[None, :] < span[rows, None]
        head[rows] = np.where(valid, source[np.minimum(take, len(source) - 1)], 0)
    raw = views.view(np.uint8).reshape(n, 16)
    raw[:, 4:8] = head[:, :4]
    short = lengths <= _INLINE
    raw[short, 4:16] = head[short]
    array = pa.Array.from_buffers(pa.binary_view(), n,
                                  [validity, pa.py_buffer(views), *buffers],
                                  null_count=null_count)
    return array.cast(pa.binary())


# -- errors through DuckDB -----------------------------------------------------------------------

_IN_UDF = re.compile(r"(PayloadKeyError|PayloadIntegrityError|PayloadSealError): (.*)", re.S)


def sealing_error(err: BaseException) -> LakeError | None:
    """Our error, when a DuckDB error is one raised inside the opener's UDF."""
    found = _IN_UDF.search(str(err))
    if found is None:
        return None
    kind = {"PayloadKeyError": PayloadKeyError,
            "PayloadIntegrityError": PayloadIntegrityError}.get(found.group(1), PayloadSealError)
    return kind(" ".join(found.group(2).split()))
