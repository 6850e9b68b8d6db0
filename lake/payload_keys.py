"""Key files for payloads sealed at rest (lake/sealing.py): X25519 key pairs with ids.

A key file is JSON::

    {"kprobe_payload_keys": 1, "active": "3f2a9c0d1e2b4a5c",
     "keys": [{"id": "3f2a9c0d1e2b4a5c", "public": "<base64>", "private": "<base64>"}]}

Writers (the capture agents) need only the *active* key's public half: they seal each
segment for it and can open nothing they wrote. Readers (replays, the API's ``payloads``
scope, ``kprobe sql``) need the private halves of every key still used by data in the lake.
``kprobe lake new-key --key-file READERS.json --public-out AGENTS.json`` makes a key, adds it
to the readers' file as the active one and writes the agents' file without private halves.

A key's id is the first 8 bytes of the SHA-256 of its public half (hex): stored with every
sealed segment, it names the key that opens it. Rotation: make a new key (it becomes active;
new data is sealed for it), give the agents the new public file, keep the old private key in
the readers' file until payload retention (``kprobe lake retain --keep-payloads``) has
dropped the last hour sealed for it, then remove it.

A file holding private keys must not be readable by group or others (one-line error).
Files are re-read when they change (mtime or size), so a rotation needs no restart.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from kprobe.lake.errors import PayloadKeyError

FORMAT_VERSION = 1
_RAW = (Encoding.Raw, PublicFormat.Raw)


def key_id(public: bytes) -> str:
    """The id of a public key: the first 8 bytes of its SHA-256, as 16 hex digits."""
    return hashlib.sha256(public).hexdigest()[:16]


@dataclass(frozen=True)
class PayloadKey:
    id: str
    public: X25519PublicKey
    private: X25519PrivateKey | None  # None in a writer's (public) file

    @property
    def public_bytes(self) -> bytes:
        return self.public.public_bytes(*_RAW)


@dataclass(frozen=True)
class PayloadKeys:
    """The keys of one key file; ``active`` seals new data."""

    path: str
    active: PayloadKey
    by_id: dict[str, PayloadKey]

    def private(self, kid: str) -> X25519PrivateKey:
        """The private key ``kid``; PayloadKeyError (one line) when this file cannot open
        data sealed for it."""
        key = self.by_id.get(kid)
        if key is None:
            have = ", ".join(sorted(self.by_id)) or "none"
            raise PayloadKeyError(f"payloads sealed for key {kid}, which the key file "
                                  f"{self.path} does not have (it has: {have}): wrong key file")
        if key.private is None:
            raise PayloadKeyError(f"the key file {self.path} holds only the public half of key "
                                  f"{kid} (an agent's file): it cannot open payloads")
        return key.private


def _b64(value: Any, what: str, path: str) -> bytes:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise PayloadKeyError(f"key file {path}: {what} is not base64") from None
    if len(raw) != 32:
        raise PayloadKeyError(f"key file {path}: {what} is {len(raw)} bytes, not 32")
    return raw


def parse(text: str, path: str) -> PayloadKeys:
    """A key file's keys; PayloadKeyError names what is wrong with it."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise PayloadKeyError(f"key file {path} is not JSON: {err.msg} (line {err.lineno})"
                              ) from None
    if not isinstance(data, dict) or data.get("kprobe_payload_keys") != FORMAT_VERSION:
        raise PayloadKeyError(f"key file {path} is not a kprobe payload key file (version "
                              f"{FORMAT_VERSION}); make one with `kprobe lake new-key`")
    entries = data.get("keys")
    if not isinstance(entries, list) or not entries:
        raise PayloadKeyError(f"key file {path} has no keys")
    by_id: dict[str, PayloadKey] = {}
    for entry in entries:
        if not isinstance(entry, dict):
            raise PayloadKeyError(f"key file {path}: each key is an object")
        public = _b64(entry.get("public"), "a public key", path)
        kid = key_id(public)
        if entry.get("id") != kid:
            raise PayloadKeyError(f"key file {path}: key {entry.get('id')!r} has id {kid} by "
                                  "its public half")
        private = None
        if entry.get("private") is not None:
            private = X25519PrivateKey.from_private_bytes(
                _b64(entry["private"], f"the private half of key {kid}", path))
            if private.public_key().public_bytes(*_RAW) != public:
                raise PayloadKeyError(f"key file {path}: the private half of key {kid} does "
                                      "not match its public half")
        by_id[kid] = PayloadKey(kid, X25519PublicKey.from_public_bytes(public), private)
    active = by_id.get(str(data.get("active")))
    if active is None:
        raise PayloadKeyError(f"key file {path}: the active key {data.get('active')!r} is not "
                              "among its keys")
    return PayloadKeys(path, active, by_id)


_cache: dict[str, tuple[tuple[int, int], PayloadKeys]] = {}
_cache_lock = threading.Lock()


def load(path: str | os.PathLike[str]) -> PayloadKeys:
    """The keys of ``path``, re-read when the file changed."""
    name = str(path)
    try:
        st = os.stat(name)
    except OSError as err:
        raise PayloadKeyError(f"cannot read the payload key file {name}: "
                              f"{err.strerror or err}") from None
    stamp = (st.st_mtime_ns, st.st_size)
    with _cache_lock:
        cached = _cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
    try:
        text = Path(name).read_text("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PayloadKeyError(f"cannot read the payload key file {name}: {err}") from None
    keys = parse(text, name)
    if any(k.private is not None for k in keys.by_id.values()) and (
            stat.S_IMODE(st.st_mode) & 0o077):
        raise PayloadKeyError(f"the payload key file {name} holds private keys and is "
                              f"readable by others (mode {stat.S_IMODE(st.st_mode):04o}): "
                              f"chmod 600 {name}")
    with _cache_lock:
        _cache[name] = (stamp, keys)
    return keys


def _entry(key: PayloadKey, with_private: bool) -> dict[str, str]:
    entry = {"id": key.id, "public": base64.b64encode(key.public_bytes).decode()}
    if with_private and key.private is not None:
        entry["private"] = base64.b64encode(key.private.private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption())).decode()
    return entry


def _write(path: Path, keys: list[PayloadKey], active: str, with_private: bool) -> None:
    document = {"kprobe_payload_keys": FORMAT_VERSION, "active": active,
                "keys": [_entry(k, with_private) for k in keys]}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(document, out, indent=1)
        out.write("\n")
    os.replace(tmp, path)


def new_key(key_file: Path, public_out: Path | None = None) -> str:
    """Make a key pair, add it to ``key_file`` (created if absent) as the active key, and
    write ``public_out`` (the agents' file: public halves only). Returns the new key's id."""
    keys: list[PayloadKey] = []
    if key_file.exists():
        keys = list(load(key_file).by_id.values())
    private = X25519PrivateKey.generate()
    public = private.public_key()
    key = PayloadKey(key_id(public.public_bytes(*_RAW)), public, private)
    keys.append(key)
    _write(key_file, keys, key.id, with_private=True)
    if public_out is not None:
        _write(public_out, [key], key.id, with_private=False)
    return key.id
