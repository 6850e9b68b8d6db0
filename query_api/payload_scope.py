"""The ``payloads`` scope: who may see what programs exchanged.

Payload bytes (``syscall_data.data``) and environments (``processes.env``) are readable only
by tokens with the ``payloads`` scope (on top of ``read``), on every route:

- SQL: a statement of a token without it runs on tables registered without those columns
  (lake/access.py), so no spelling of a statement reaches them; naming one is answered
  403 with the scope to ask for (``refused``) instead of the binder's "column not found";
- the live stream sends rows without those columns (``strip_rows``);
- a replay report's bytes (what the replay wrote, previews of recorded and replayed
  outputs) are the payloads' echo: without the scope they are removed (``strip_report``);
- timelines, explanations and graphs never read them (argv, which they do show, is
  redacted at capture: capture_agent/redaction.py).

Replays themselves (``replay`` scope) read payloads server-side: a replay needs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import pyarrow as pa

from kprobe.lake.schema import SENSITIVE_COLUMNS
from kprobe.query_api.auth import Principal
from kprobe.query_api.errors import Forbidden

PAYLOADS = "payloads"
_MISSING_COLUMN = re.compile(r'column (?:named )?"([^"]+)"')
REMOVED = "[removed: needs the payloads scope]"


def may_read_payloads(principal: Principal) -> bool:
    return PAYLOADS in principal.scopes


def refused(error_text: str, tables: Iterable[str]) -> Forbidden | None:
    """A 403 naming the scope when a statement failed for naming a column the token's
    session does not have because it is sensitive."""
    if "Binder Error" not in error_text:
        return None
    named = set(_MISSING_COLUMN.findall(error_text))
    for table in tables:
        for column in SENSITIVE_COLUMNS.get(table, ()):
            if column in named:
                return Forbidden(f"{table}.{column} holds what programs exchanged (payload "
                                 f"bytes, environments): it is readable only with the "
                                 f"{PAYLOADS!r} scope")
    return None


def strip_rows(table: str, rows: pa.Table) -> pa.Table:
    """``rows`` of ``table`` without its sensitive columns."""
    hidden = [c for c in SENSITIVE_COLUMNS.get(table, ()) if c in rows.column_names]
    return rows.drop_columns(hidden) if hidden else rows


# report keys holding bytes of the program's inputs or outputs (replay_sandbox/report.py):
# the text it wrote, the previews of recorded and replayed outputs, a diverging call's data
_BYTES_KEYS = frozenset({"replayed_text", "recorded", "replayed", "data"})


def strip_report(report: Any) -> Any:
    """A replay report (JSON) with every value that shows program bytes replaced."""
    if isinstance(report, dict):
        return {k: (REMOVED if k in _BYTES_KEYS and v is not None else strip_report(v))
                for k, v in report.items()}
    if isinstance(report, list):
        return [strip_report(v) for v in report]
    return report
