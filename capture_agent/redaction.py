"""Secrets in environments and command lines, replaced before anything reaches the lake.

**Environment** (``NAME=value`` entries): the value of a variable whose name matches a
secret glob (default ``SECRET_NAMES``, case-insensitive, plus ``--redact-env``) becomes
``lake.schema.REDACTED``; the name stays, so a replay can say which variables it lacks
(``kprobe replay --env NAME=value`` gives them back). In every other value, the password of
a connection string (``postgres://user:pw@host``, ``user:pw@tcp(host)``) and the value of a
``password=`` / ``secret=`` / ``token=`` / ``api_key=`` parameter in a query string or a
keyword DSN become the marker. Names matching a ``--keep-env`` glob are left as they are.

**Command lines** get the same treatment, because a secret there is as exposed as in the
environment (``/proc/PID/cmdline`` is world-readable, and tools take ``--password=...``):
``--name=value``, ``-name=value`` and ``NAME=value`` arguments whose name matches a glob
(``-`` and ``.`` read as ``_``; so ``--token-file=PATH`` is redacted too: over-redacting a
path costs a ``--set-arg`` on replay, under-redacting leaks a secret); the argument after
an option whose name *ends* with a secret word (``--password VALUE``, ``--api-key VALUE``,
but not the command after ``--no-password-prompt``); connection-string passwords and
``Authorization:`` header values anywhere. Short flags glued to their value
(``mysql -psecret``) are not recognised: the ``payloads`` scope and encryption at rest
protect what the rules cannot know.

Everything is vectorised with Arrow compute (RE2) over all the entries of a batch: no
Python per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lake.schema import REDACTED

# Names whose values are secrets, as globs over the upper-cased name.
SECRET_NAMES: tuple[str, ...] = ("*KEY*", "*SECRET*", "*TOKEN*", "*PASSWORD*", "*PASSWD*",
                                 "*CREDENTIAL*", "*PRIVATE*")

# Secrets inside a value (any variable, any argument): group 1 is kept, the rest replaced.
_VALUE_SECRETS: tuple[str, ...] = (
    # scheme://user:PASSWORD@host (RFC 3986: an '@' or '/' in a password is %-encoded)
    r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@",
    # Go's MySQL DSN: user:PASSWORD@tcp(host) / @unix(path)
    r"(?i)((?:^|[\s=])[\w.-]+:)[^@/\s]+@((?:tcp|unix)\()",
    # ?password=... &token=... ;pwd=... and libpq's keyword form "host=h password=pw"
    r"(?i)((?:^|[?&;\s])(?:password|passwd|pwd|secret|token|api_?key|access_?key)\s*=\s*)"
    r"(?:'[^']*'|[^&;\s]+)",
    # an HTTP credential header given on a command line (curl -H "Authorization: Bearer x")
    r"(?i)((?:proxy-)?authorization:\s*(?:[a-z]+\s+)?)\S+",
)
_VALUE_REPLACEMENTS: tuple[str, ...] = (rf"\1{REDACTED}@", rf"\1{REDACTED}@\2", rf"\1{REDACTED}",
                                        rf"\1{REDACTED}")

_ENTRY = r"(?s)^(?P<name>[^=]*)=(?P<value>.*)$"
_ASSIGNMENT = r"(?s)^(?P<dashes>-{0,2})(?P<name>[A-Za-z_][A-Za-z0-9_.-]*)=(?P<value>.*)$"
_OPTION = r"^--?[A-Za-z][A-Za-z0-9_.-]*$"


def _glob_regex(globs: tuple[str, ...]) -> str | None:
    """One case-insensitive RE2 pattern matching a whole name against any of ``globs``
    (``*`` any run, ``?`` one character)."""
    if not globs:
        return None
    parts = []
    for glob in globs:
        out = []
        for ch in glob.upper():
            if ch == "*":
                out.append(".*")
            elif ch == "?":
                out.append(".")
            elif ch.isalnum() or ch == "_":
                out.append(ch)
            else:
                out.append("\\" + ch if ch in r".^$|+()[]{}\-/" else ch)
        parts.append("".join(out))
    return "(?is)^(?:" + "|".join(parts) + ")$"


@dataclass(frozen=True)
class RedactionRules:
    """Which names hold secrets (``redact`` globs, on top of ``SECRET_NAMES`` unless
    ``defaults`` is off) and which are always kept as they are (``keep`` globs)."""

    redact: tuple[str, ...] = ()
    keep: tuple[str, ...] = ()
    defaults: bool = True

    @cached_property
    def names(self) -> tuple[str, ...]:
        return (SECRET_NAMES if self.defaults else ()) + tuple(self.redact)

    @cached_property
    def _secret(self) -> str | None:
        return _glob_regex(self.names)

    @cached_property
    def _secret_suffix(self) -> str | None:
        # an option taking its value as the next argument: its name ends with a secret word
        return _glob_regex(tuple(g[:-1] if g.endswith("*") else g for g in self.names))

    @cached_property
    def _kept(self) -> str | None:
        return _glob_regex(tuple(self.keep))

    # -- the two shapes of entries ------------------------------------------------------
    def environment(self, entries: pa.Array) -> pa.Array:
        """``NAME=value`` entries (binary or string) with secret values replaced."""
        binary = _as_binary(entries)
        parts = pc.extract_regex(binary, _ENTRY)
        name, value = parts.field("name"), parts.field("value")
        assigned = _true(pc.is_valid(parts))
        kept = assigned & self._is(name, self._kept)
        secret = assigned & self._is(name, self._secret) & ~kept & _true(
            pc.greater(pc.binary_length(value), 0))
        cleaned = pc.if_else(pa.array(assigned), pc.binary_join_element_wise(
            name, _in_values(value), pa.scalar(b"=")), _in_values(binary))
        out = pc.if_else(pa.array(kept), binary, cleaned)
        out = pc.if_else(pa.array(secret), pc.binary_join_element_wise(
            name, pa.scalar(REDACTED.encode()), pa.scalar(b"=")), out)
        return _like(out, entries)

    def command_line(self, argv: pa.Array) -> pa.Array:
        """A list<string> (or list<binary>) of command lines with secret values replaced."""
        values, offsets, validity = flatten_lists(argv)
        binary = _as_binary(values)
        parts = pc.extract_regex(binary, _ASSIGNMENT)
        name = pc.replace_substring_regex(parts.field("name"), r"[-.]", "_")
        assigned = _true(pc.is_valid(parts))
        kept = assigned & self._is(name, self._kept)
        secret = assigned & self._is(name, self._secret) & ~kept
        # "--password VALUE": the argument after such an option
        option = _true(pc.match_substring_regex(binary, _OPTION))
        option_name = pc.replace_substring_regex(
            pc.replace_substring_regex(binary, r"^-+", ""), r"[-.]", "_")
        takes_secret = option & self._is(option_name, self._secret_suffix) & ~self._is(
            option_name, self._kept)
        n = len(binary)
        first = np.zeros(n, bool)
        starts = offsets[:-1][np.diff(offsets) > 0]
        first[starts] = True
        after = np.zeros(n, bool)
        after[1:] = takes_secret[:-1] & ~first[1:]
        flag_like = _true(pc.match_substring_regex(binary, r"^-."))
        after &= ~flag_like
        cleaned = pc.if_else(pa.array(kept), binary, _in_values(binary))
        cleaned = pc.if_else(pa.array(secret), pc.binary_join_element_wise(
            pc.binary_join_element_wise(parts.field("dashes"), parts.field("name"),
                                        pa.scalar(b"")),
            pa.scalar(REDACTED.encode()), pa.scalar(b"=")), cleaned)
        cleaned = pc.if_else(pa.array(after), pa.scalar(REDACTED.encode()), cleaned)
        return rebuild_lists(_like(cleaned, values), offsets, validity, argv.type)

    def _is(self, names: pa.Array, pattern: str | None) -> np.ndarray:
        if pattern is None or len(names) == 0:
            return np.zeros(len(names), bool)
        return _true(pc.match_substring_regex(names, pattern))


def _in_values(values: pa.Array) -> pa.Array:
    """Connection-string passwords and secret parameters inside values replaced."""
    for pattern, replacement in zip(_VALUE_SECRETS, _VALUE_REPLACEMENTS, strict=True):
        values = pc.replace_substring_regex(values, pattern, replacement)
    return values


def _true(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), bool)


def _as_binary(values: pa.Array) -> pa.Array:
    return values if pa.types.is_binary(values.type) else values.cast(pa.binary())


def _like(values: pa.Array, original: pa.Array) -> pa.Array:
    """``values`` in ``original``'s type. The replacements are ASCII and cut only at ASCII
    characters, so a valid UTF-8 string stays valid."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    return values if values.type == original.type else values.cast(original.type)


def flatten_lists(lists: pa.Array) -> tuple[pa.Array, np.ndarray, pa.Buffer | None]:
    """(values, offsets from 0, validity) of a list array."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    if lists.offset:
        lists = pa.concat_arrays([lists])
    offsets = np.frombuffer(lists.buffers()[1], np.int32, len(lists) + 1).astype(np.int64)
    values = lists.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    return values, offsets - offsets[0], lists.buffers()[0]


def rebuild_lists(values: pa.Array, offsets: np.ndarray, validity: pa.Buffer | None,
               typ: pa.DataType) -> pa.Array:
    return pa.Array.from_buffers(typ, len(offsets) - 1,
                                 [validity, pa.py_buffer(offsets.astype(np.int32))],
                                 children=[values])
