"""Read-only filter for user Cypher (``POST /v1/graph/cypher``).

Snapshots are opened read-only, so the engine itself refuses CREATE, SET, MERGE, DELETE.
It does not refuse everything that reaches outside the graph: measured on LadybugDB 0.22,
``COPY (MATCH …) TO '/tmp/x.csv'`` writes a file from a read-only database, ``LOAD FROM
'/etc/passwd'`` reads one, ``INSTALL`` downloads an extension. So a statement is checked
here first: one statement; no clause that writes, copies, loads, exports, imports,
attaches or installs; ``CALL`` only for the catalogue functions. String literals, comments
and `quoted` names are blanked out before the keywords are looked at, and names after
``.``, ``:`` or ``$`` (properties, labels, parameters) are not keywords.
"""

from __future__ import annotations

import re

from query_api.errors import CypherRefused

_REFUSED = {
    "CREATE": "writes", "MERGE": "writes", "SET": "writes", "DELETE": "writes",
    "DETACH": "writes", "REMOVE": "writes", "DROP": "writes", "ALTER": "writes",
    "COPY": "copies data to or from files", "LOAD": "reads files or extensions",
    "INSTALL": "installs extensions", "UNINSTALL": "removes extensions",
    "ATTACH": "attaches databases", "USE": "switches databases",
    "EXPORT": "writes files", "IMPORT": "reads files", "CHECKPOINT": "writes",
    "BEGIN": "controls transactions", "COMMIT": "controls transactions",
    "ROLLBACK": "controls transactions", "TRANSACTION": "controls transactions",
}
_CALLABLE = {"show_tables", "table_info", "show_connection", "db_version",
             "show_functions", "current_setting"}

_LITERALS = re.compile(
    r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*"|`[^`]*`|//[^\n]*|/\*.*?\*/""", re.DOTALL)
_WORD = re.compile(r"(?<![.:$\w])([A-Za-z_][A-Za-z0-9_]*)")
_CALL = re.compile(r"(?<![.:$\w])CALL\s+([A-Za-z_][A-Za-z0-9_]*)\s*(\()?", re.IGNORECASE)
_UNTERMINATED = re.compile(r"['\"`]|/\*")


def check_read_only(cypher: str) -> str:
    """Return the statement (trailing ``;`` removed) if it only reads the graph; else raise."""
    text = cypher.strip()
    blank = _LITERALS.sub(lambda m: " " * len(m.group(0)), text)
    if _UNTERMINATED.search(blank):
        raise CypherRefused("unterminated string, quoted name or comment")
    stripped = blank.rstrip().rstrip(";").rstrip()
    if not stripped:
        raise CypherRefused("empty statement")
    if ";" in stripped:
        raise CypherRefused("exactly one statement allowed")
    for match in _WORD.finditer(stripped):
        word = match.group(1).upper()
        if word in _REFUSED:
            raise CypherRefused(f"{word} is not allowed: it {_REFUSED[word]}; graph snapshots "
                                "are read-only here (MATCH … RETURN)")
    for match in _CALL.finditer(stripped):
        name = match.group(1).lower()
        if name not in _CALLABLE or not match.group(2):
            raise CypherRefused(f"CALL {match.group(1)} is not allowed; CALL is limited to "
                                f"{', '.join(sorted(_CALLABLE))}")
    return text[: len(stripped)]
