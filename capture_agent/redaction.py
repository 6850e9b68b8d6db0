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

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.lake.schema import REDACTED

# Names whose values are secrets, as globs over the upper-cased name.
SECRET_NAMES: tuple[str, ...] = ("*KEY*", "*SECRET*", "*TOKEN*", "*PASSWORD*", "*PASSWD*",
                                 "*CREDENTIAL*", "*PRIVATE*")

# Secrets inside a value (any variable, any argument): group 1 is kept, the rest replaced.
_VALUE_SECRETS: tuple[str, ...] = (
    # scheme://user:PASSWORD@host (RFC 3986: an '@' or '/' in a password is %-encoded)
    r"(?i)([a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@/\s]+@",
    # Go's MySQL DSN: user:PASSWORD@tcp(host) / @unix(path)
    r"(?i)((?:^|[\s=])[\w.-]+:)[^@/\s]+@((?:tcp|unix)\()",
    # ?password=... &token=... ;pwd=... and libpq's keyword form "host=h password=pw" (not
    # at the start of an entry: there it is the variable's own name, ruled by the globs)
    r"(?i)([?&;\s=](?:password|passwd|pwd|secret|token|api_?key|access_?key)\s*=\s*)"
    r"(?:'[^']*'|[^&;\s]+)",
    # an HTTP credential header given on a command line (curl -H "Authorization: Bearer x")
    r"(?i)((?:proxy-)?authorization:\s*(?:[a-z]+\s+)?)\S+",
)
_VALUE_REPLACEMENTS: tuple[str, ...] = (rf"\1{REDACTED}@", rf"\1{REDACTED}@\2", rf"\1{REDACTED}",
                                        rf"\1{REDACTED}")
# a superset of the entries any of _VALUE_SECRETS changes: the replacements run on those only
_VALUE_PREFILTER = (r"(?i)://[^@/\s]*@|@(?:tcp|unix)\(|"
                    r"[?&;\s=](?:password|passwd|pwd|secret|token|api_?key|access_?key)\s*=|"
                    r"authorization:")
_OPTION = r"^--?[A-Za-z][A-Za-z0-9_.-]*$"
_FLAG_LIKE = r"^-."


def _glob_body(glob: str, *, name_chars: str) -> str:
    """A glob as RE2 (``*`` any run of ``name_chars``, ``?`` one; in command lines ``_``
    also matches ``-`` and ``.``)."""
    out = []
    for ch in glob.upper():
        if ch == "*":
            out.append(f"{name_chars}*")
        elif ch == "?":
            out.append(name_chars)
        elif ch == "_" and name_chars != "[^=]":
            out.append("[-._]")
        elif ch.isalnum() or ch == "_":
            out.append(ch)
        else:
            out.append("\\" + ch if ch in r".^$|+()[]{}\-/" else ch)
    return "".join(out)


def _entry_regex(globs: tuple[str, ...], *, dashes: bool, end: str) -> str | None:
    """Case-insensitive RE2 matching an entry whose name (before ``=``, after up to two
    dashes when ``dashes``) matches one of ``globs``, followed by ``end``."""
    if not globs:
        return None
    chars = "[A-Za-z0-9_.-]" if dashes else "[^=]"
    body = "|".join(_glob_body(g, name_chars=chars) for g in globs)
    return f"(?is)^{'-{0,2}' if dashes else ''}(?:{body}){end}"


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
    def _patterns(self) -> dict[str, str | None]:
        suffixes = tuple(g[:-1] if g.endswith("*") else g for g in self.names)
        return {
            # NAME=value with a value (an empty one hides nothing)
            "env_secret": _entry_regex(self.names, dashes=False, end="=."),
            "env_kept": _entry_regex(tuple(self.keep), dashes=False, end="="),
            "arg_secret": _entry_regex(self.names, dashes=True, end="=."),
            "arg_kept": _entry_regex(tuple(self.keep), dashes=True, end="="),
            # an option taking its value as the next argument: its name ends with a
            # secret word (--password VALUE, not --no-password-prompt VALUE)
            "option_secret": _entry_regex(suffixes, dashes=True, end="$"),
            "option_kept": _entry_regex(tuple(self.keep), dashes=True, end="$"),
        }

    # -- the two shapes of entries ------------------------------------------------------
    def environment(self, entries: pa.Array) -> pa.Array:
        """``NAME=value`` entries (binary or string) with secret values replaced."""
        binary = _as_binary(entries)
        kept = self._is(binary, "env_kept")
        secret = self._is(binary, "env_secret") & ~kept
        out = _replace_rows(binary, secret, lambda v: pc.replace_substring_regex(
            v, r"(?s)^([^=]*)=.*$", rf"\1={REDACTED}"))
        out = _replace_rows(out, ~kept & ~secret & _matches(binary, _VALUE_PREFILTER),
                            _in_values)
        return _like(out, entries)

    def command_line(self, argv: pa.Array) -> pa.Array:
        """A list<string> (or list<binary>) of command lines with secret values replaced."""
        values, offsets, validity = flatten_lists(argv)
        binary = _as_binary(values)
        kept = self._is(binary, "arg_kept")
        secret = self._is(binary, "arg_secret") & ~kept
        # "--password VALUE": the argument after such an option, in the same command line
        takes_secret = self._is(binary, "option_secret") & ~self._is(binary, "option_kept")
        n = len(binary)
        first = np.zeros(n, bool)
        first[offsets[:-1][np.diff(offsets) > 0]] = True
        after = np.zeros(n, bool)
        after[1:] = takes_secret[:-1] & ~first[1:]
        after &= ~_matches(binary, _FLAG_LIKE)
        out = _replace_rows(binary, secret, lambda v: pc.replace_substring_regex(
            v, r"(?s)^(-{0,2}[^=]*)=.*$", rf"\1={REDACTED}"))
        out = _replace_rows(out, after, lambda v: pa.array([REDACTED.encode()] * len(v),
                                                           pa.binary()))
        out = _replace_rows(out, ~kept & ~secret & ~after & _matches(binary, _VALUE_PREFILTER),
                            _in_values)
        return rebuild_lists(_like(out, values), offsets, validity, argv.type)

    def _is(self, values: pa.Array, which: str) -> np.ndarray:
        return _matches(values, self._patterns[which])


def _matches(values: pa.Array, pattern: str | None) -> np.ndarray:
    if pattern is None or len(values) == 0:
        return np.zeros(len(values), bool)
    return np.asarray(pc.fill_null(pc.match_substring_regex(values, pattern), False)
                      .to_numpy(zero_copy_only=False), bool)


def _replace_rows(values: pa.Array, rows: np.ndarray,
                  change: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``values`` with the rows where ``rows`` is true replaced by ``change`` of them (run
    on those rows only; one concatenation and one take put them back)."""
    picked = np.flatnonzero(rows)
    if not len(picked):
        return values
    changed = change(values.take(pa.array(picked)))
    index = np.arange(len(values), dtype=np.int64)
    index[picked] = len(values) + np.arange(len(picked))
    return pa.concat_arrays([values, changed.cast(values.type)]).take(pa.array(index))


def _in_values(values: pa.Array) -> pa.Array:
    """Connection-string passwords and secret parameters inside values replaced."""
    for pattern, replacement in zip(_VALUE_SECRETS, _VALUE_REPLACEMENTS, strict=True):
        values = pc.replace_substring_regex(values, pattern, replacement)
    return values


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
