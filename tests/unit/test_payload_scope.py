"""The ``payloads`` scope's pieces that need no server (the attacks on a real `kprobe serve`
are in tests/security/test_payload_protection.py)."""

from __future__ import annotations

import pyarrow as pa

from kprobe.query_api.auth import Principal, parse_tokens
from kprobe.query_api.payload_scope import (
    REMOVED,
    may_read_payloads,
    refused,
    strip_report,
    strip_rows,
)


def test_the_scope_is_known_to_token_files() -> None:
    tokens = parse_tokens('{"tokens": [{"name": "p", "sha256": "' + "a" * 64 +
                          '", "scopes": ["read", "payloads"]}]}')
    (principal,) = tokens.values()
    assert may_read_payloads(principal)
    assert not may_read_payloads(Principal("r", frozenset({"read", "replay"})))


def test_naming_a_hidden_column_is_refused_with_the_scope_to_ask_for() -> None:
    missing = 'Binder Error: Referenced column "data" not found in FROM clause!'
    err = refused(missing, ["syscall_data"])
    assert err is not None and err.status == 403 and "'payloads' scope" in str(err)
    aliased = 'Binder Error: Table "p" does not have a column named "env"'
    assert refused(aliased, ["processes"]) is not None
    # controls: another table's missing column, another error
    assert refused(missing, ["spans"]) is None
    assert refused('Binder Error: Referenced column "nope" not found', ["syscall_data"]) is None
    assert refused("Parser Error: syntax error", ["syscall_data"]) is None


def test_live_rows_lose_their_sensitive_columns() -> None:
    rows = pa.table({"pid": [1], "data": [b"secret"], "seal": [None], "seal_pos": [None]})
    assert strip_rows("syscall_data", rows).column_names == ["pid"]
    assert strip_rows("processes", pa.table({"pid": [1], "env": [["A=1"]]})).column_names == [
        "pid"]
    assert strip_rows("spans", pa.table({"data": [1]})).column_names == ["data"]


def test_replay_reports_lose_the_programs_bytes_and_keep_the_verdict() -> None:
    report = {
        "status": "completed", "outputs_match": True, "exit_code": 0,
        "outputs": [{"fd": 1, "match": True, "recorded": "'card 4111...'",
                     "replayed": "'card 4111...'", "recorded_bytes": 12}],
        "divergence": {"reason": "r", "expected": {"name": "write", "args": [1, 2, 3],
                                                   "data": {"1": "'sk_live'"}}},
        "replayed_text": {"1": "card 4111111111111111"}, "notes": ["a note"]}
    stripped = strip_report(report)
    text = repr(stripped)
    assert "4111" not in text and "sk_live" not in text
    assert stripped["replayed_text"] == REMOVED
    assert stripped["outputs"][0]["match"] and stripped["outputs"][0]["recorded_bytes"] == 12
    assert stripped["divergence"]["expected"]["args"] == [1, 2, 3]
    assert stripped["status"] == "completed" and stripped["notes"] == ["a note"]
