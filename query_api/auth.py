"""Bearer tokens, stored hashed, with scopes.

The tokens file (``KPROBE_API_TOKENS_FILE``) is JSON and holds only SHA-256 hashes::

    {"tokens": [{"name": "ci", "sha256": "9f86d0…", "scopes": ["read"]},
                {"name": "oncall", "sha256": "…", "scopes": ["read", "replay"]}]}

``kprobe serve --new-token NAME --scopes read,replay`` creates a token, prints it once and
appends its hash. The file is re-read when it changes, so tokens rotate without a restart.
Scopes: ``read`` (SQL, causal queries, timelines, the live stream, replay status),
``replay`` (launching replays) and ``payloads`` (with ``read``: the bytes programs exchanged
and their environments, ``syscall_data.data`` and ``processes.env``, in SQL, the live
stream and replay reports; query_api/payload_scope.py).

A token may also name ``nodes`` (``"nodes": ["node-a"]``, ``--nodes`` of ``--new-token``):
it then sees only what those nodes recorded. Only the routes that confine their answer to
nodes accept such a token (the transaction explanation, which reads and analyses only
windows of those nodes: query_api/ondemand.py); every other route refuses it with 403, so
a node-scoped token can never read another node's rows through a route that cannot filter.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kprobe.query_api.errors import Forbidden, ServiceUnavailable, Unauthorized
from kprobe.query_api.settings import SCOPES, Scope

_REALM = 'Bearer realm="kprobe"'
_NODE_OK = re.compile(r"^[A-Za-z0-9._-]{1,128}$")


@dataclass(frozen=True)
class Principal:
    name: str
    scopes: frozenset[str]
    nodes: frozenset[str] | None = None  # None: every node


def node_scope(principal: Principal) -> tuple[str, ...] | None:
    """The nodes a principal may see, sorted (None: all)."""
    return tuple(sorted(principal.nodes)) if principal.nodes is not None else None


# --no-auth: loopback only (kprobe serve refuses another bind) and read-only: launching a
# replay, or any other scope, always takes a token.
ANONYMOUS = Principal("anonymous", frozenset({"read"}))


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class TokenStore:
    """Hashes from the tokens file, re-read when the file's mtime or size changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._by_hash: dict[str, Principal] = {}

    def lookup(self, token: str) -> Principal | None:
        by_hash = self._current()
        digest = hash_token(token)
        for known, principal in by_hash.items():  # constant time per comparison
            if hmac.compare_digest(known, digest):
                return principal
        return None

    def _current(self) -> dict[str, Principal]:
        try:
            stat = self.path.stat()
        except OSError as err:
            raise ServiceUnavailable(f"cannot read the tokens file {self.path}: "
                                     f"{err.strerror or err}") from None
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._by_hash = parse_tokens(self.path.read_text("utf-8"), str(self.path))
                self._stamp = stamp
            return self._by_hash


def parse_tokens(text: str, where: str = "tokens file") -> dict[str, Principal]:
    try:
        data = json.loads(text) if text.strip() else {"tokens": []}
        entries = data["tokens"]
        out: dict[str, Principal] = {}
        for entry in entries:
            digest = str(entry["sha256"]).lower()
            scopes = frozenset(str(s) for s in entry.get("scopes", []))
            if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
                raise ValueError(f"token {entry.get('name')!r}: sha256 is not 64 hex digits")
            unknown = scopes - set(SCOPES)
            if unknown:
                raise ValueError(f"token {entry.get('name')!r}: unknown scope "
                                 f"{sorted(unknown)[0]!r} (known: {', '.join(SCOPES)})")
            nodes = entry.get("nodes")
            if nodes is not None:
                if not isinstance(nodes, list) or not nodes or not all(
                        isinstance(n, str) and _NODE_OK.match(n) for n in nodes):
                    raise ValueError(f"token {entry.get('name')!r}: nodes must be a non-empty "
                                     "list of node names ([A-Za-z0-9._-])")
                nodes = frozenset(nodes)
            out[digest] = Principal(str(entry.get("name") or digest[:8]), scopes, nodes)
        return out
    except (ValueError, KeyError, TypeError) as err:
        raise ServiceUnavailable(f"{where} is invalid: {err}") from None


def add_token(path: Path, name: str, scopes: list[str],
              nodes: list[str] | None = None) -> str:
    """Create a token with ``scopes`` (limited to ``nodes`` if given), append its hash to
    ``path``; returns the token."""
    unknown = set(scopes) - set(SCOPES)
    if unknown or not scopes:
        raise ValueError(f"scopes must be among {', '.join(SCOPES)}")
    if nodes is not None and (not nodes or not all(_NODE_OK.match(n) for n in nodes)):
        raise ValueError("nodes must be node names ([A-Za-z0-9._-])")
    token = "kp_" + secrets.token_urlsafe(32)
    data: dict[str, Any] = {"tokens": []}
    if path.exists():
        text = path.read_text("utf-8")
        parse_tokens(text, str(path))  # refuse to extend a broken file
        data = json.loads(text) if text.strip() else data
    data["tokens"].append({"name": name, "sha256": hash_token(token), "scopes": scopes,
                           **({"nodes": sorted(set(nodes))} if nodes is not None else {})})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        json.dump(data, out, indent=1)
        out.write("\n")
    os.replace(tmp, path)
    return token


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def authenticate(store: TokenStore | None, token: str | None, scope: Scope,
                 node_confined: bool = False) -> Principal:
    """The principal behind ``token`` if it has ``scope``; Unauthorized / Forbidden if not.

    ``store`` None means authentication is disabled (``--no-auth``). A node-scoped token is
    Forbidden unless the route confines its answer to nodes (``node_confined``).
    """
    if store is None:
        if scope not in ANONYMOUS.scopes:
            raise Forbidden(f"this server runs without tokens (--no-auth) and is read-only: "
                            f"the {scope!r} scope needs a token (kprobe serve --tokens-file)",
                            {"WWW-Authenticate": f'{_REALM}, error="insufficient_scope", '
                                                 f'scope="{scope}"'})
        return ANONYMOUS
    if token is None:
        raise Unauthorized("missing bearer token (Authorization: Bearer <token>)",
                           {"WWW-Authenticate": _REALM})
    principal = store.lookup(token)
    if principal is None:
        raise Unauthorized("unknown bearer token",
                           {"WWW-Authenticate": f'{_REALM}, error="invalid_token"'})
    if scope not in principal.scopes:
        raise Forbidden(f"token {principal.name!r} lacks the {scope!r} scope",
                        {"WWW-Authenticate":
                         f'{_REALM}, error="insufficient_scope", scope="{scope}"'})
    if principal.nodes is not None and not node_confined:
        raise Forbidden(f"token {principal.name!r} is limited to nodes "
                        f"{', '.join(sorted(principal.nodes))} and this route cannot confine "
                        "its answer to nodes")
    return principal
