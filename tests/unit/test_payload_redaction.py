"""What the agent removes before the lake: secrets in environments and command lines
(capture_agent/redaction.py), card numbers in payloads (capture_agent/cards.py), and the
stage that applies both to the agent's tables (capture_agent/protection.py)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from kprobe.capture_agent.cards import luhn, mask_bytes, mask_pans
from kprobe.capture_agent.protection import CHUNK, PayloadProtection, ProtectionConfig
from kprobe.capture_agent.redaction import SECRET_NAMES, RedactionRules
from kprobe.lake.schema import REDACTED, spec

R = REDACTED


def _env(*entries: str, rules: RedactionRules | None = None) -> list[str]:
    out: list[str] = (rules or RedactionRules()).environment(
        pa.array(list(entries), pa.string())).to_pylist()
    return out


def _argv(*args: str, rules: RedactionRules | None = None) -> list[str]:
    lists = pa.array([list(args)], pa.list_(pa.string()))
    out: list[str] = (rules or RedactionRules()).command_line(lists).to_pylist()[0]
    return out


# -- environments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["API_KEY", "aws_secret_access_key", "GITHUB_TOKEN",
                                  "DB_PASSWORD", "MYSQL_PASSWD", "GOOGLE_CREDENTIALS",
                                  "SSH_PRIVATE_KEY", "Stripe_Secret"])
def test_every_default_secret_name_is_redacted_whatever_its_case(name: str) -> None:
    assert _env(f"{name}=s3cr3t-value") == [f"{name}={R}"]


def test_the_default_globs_are_the_documented_ones() -> None:
    assert SECRET_NAMES == ("*KEY*", "*SECRET*", "*TOKEN*", "*PASSWORD*", "*PASSWD*",
                            "*CREDENTIAL*", "*PRIVATE*")


def test_ordinary_variables_stay_and_so_do_empty_secrets() -> None:
    entries = ("HOME=/root", "PATH=/usr/bin:/bin", "PWD=/srv", "LANG=fr_FR.UTF-8",
               "GREETING=héllo wörld", "NO_EQUALS_SIGN", "EMPTY_TOKEN=")
    assert _env(*entries) == list(entries)


def test_connection_strings_lose_only_their_password() -> None:
    assert _env("DATABASE_URL=postgres://app:pw999@db.internal:5432/ledger",
                "REDIS=redis://:only-pw@cache:6379/0",
                "MYSQL_DSN=app:pw3@tcp(10.0.0.7:3306)/ledger",
                "JDBC=jdbc:postgresql://db/ledger?user=app&password=p2&ssl=true",
                "PG=host=db user=app password='p 4' dbname=x",
                "PLAIN_URL=https://example.com/path") == [
        f"DATABASE_URL=postgres://app:{R}@db.internal:5432/ledger",
        f"REDIS=redis://:{R}@cache:6379/0",
        f"MYSQL_DSN=app:{R}@tcp(10.0.0.7:3306)/ledger",
        f"JDBC=jdbc:postgresql://db/ledger?user=app&password={R}&ssl=true",
        f"PG=host=db user=app password={R} dbname=x",
        "PLAIN_URL=https://example.com/path"]


def test_configured_names_are_redacted_and_kept_names_are_left_alone() -> None:
    rules = RedactionRules(redact=("STRIPE_*", "CARD_VAULT"), keep=("PUBLIC_KEY_ID",))
    assert _env("STRIPE_SK=sk_live_1", "card_vault=v", "PUBLIC_KEY_ID=k1", "API_KEY=a",
                rules=rules) == [f"STRIPE_SK={R}", f"card_vault={R}", "PUBLIC_KEY_ID=k1",
                                 f"API_KEY={R}"]
    # control: without the rule, STRIPE_SK is no secret by name
    assert _env("STRIPE_SK=sk_live_1") == ["STRIPE_SK=sk_live_1"]


def test_binary_entries_that_are_not_utf8_are_redacted_too() -> None:
    out = RedactionRules().environment(pa.array([b"API_KEY=\xff\xfe", b"X=\xff"]))
    assert out.to_pylist() == [f"API_KEY={R}".encode(), b"X=\xff"]


# -- command lines ---------------------------------------------------------------------------------


def test_secret_options_and_assignments_on_a_command_line() -> None:
    assert _argv("psql", "--password=pw1", "--db-password", "pw2", "-token=t1", "API_KEY=k",
                 "--api.key", "k2", "postgres://u:pw3@h/db", "--verbose", "file.txt") == [
        "psql", f"--password={R}", "--db-password", R, f"-token={R}", f"API_KEY={R}",
        "--api.key", R, f"postgres://u:{R}@h/db", "--verbose", "file.txt"]


def test_what_follows_a_flag_that_only_mentions_a_secret_stays() -> None:
    assert _argv("tool", "--no-password-prompt", "run", "--token", "--verbose") == [
        "tool", "--no-password-prompt", "run", "--token", "--verbose"]
    # the option is the last argument of one command line, not of the next one
    lists = pa.array([["a", "--password"], ["pw-lookalike"]], pa.list_(pa.string()))
    assert RedactionRules().command_line(lists).to_pylist() == [["a", "--password"],
                                                                ["pw-lookalike"]]


def test_http_credentials_on_a_command_line() -> None:
    assert _argv("curl", "-H", "Authorization: Bearer eyJhbGciOi", "https://api/x") == [
        "curl", "-H", f"Authorization: Bearer {R}", "https://api/x"]


def test_null_and_empty_command_lines_survive() -> None:
    lists = pa.array([None, [], ["x"]], pa.list_(pa.string()))
    assert RedactionRules().command_line(lists).to_pylist() == [None, [], ["x"]]


# -- card numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "masked"), [
    (b'{"pan":"4111111111111111"}', b'{"pan":"411111******1111"}'),
    (b"4111 1111 1111 1111", b"4111 11** **** 1111"),
    (b"4111-1111-1111-1111", b"4111-11**-****-1111"),
    (b"5500005555555559", b"550000******5559"),
    (b"3782 822463 10005", b"3782 82**** *0005"),  # American Express 4-6-5
    (b"378282246310005", b"378282*****0005"),
    (b"6011000990139424", b"601100******9424"),
    (b"4111111111111111110", b"411111*********1110"),  # 19 digits
    (b"4222222222222", b"422222***2222"),  # 13 digits
    (b"8111111111111112", b"811111******1112"),  # RuPay's 8 series
    (b"x4111111111111111y", b"x411111******1111y"),  # letters are boundaries
    (b"%B4111111111111111^DOE/J^2612", b"%B411111******1111^DOE/J^2612"),  # track 1 data
    # a hex word, but shorter than any hash: a PAN between hex letters still counts
    (b"abc4111111111111111def", b"abc411111******1111def"),
    (b"4111111111111111", b"411111******1111"),  # the whole value
    (b"4111111111111111 2024-01-02", b"411111******1111 2024-01-02"),
])
def test_luhn_valid_pans_are_masked_keeping_bin_and_last_four(text: bytes,
                                                              masked: bytes) -> None:
    out, found = mask_bytes(text)
    assert (out, found) == (masked, 1) and len(out) == len(text)


@pytest.mark.parametrize("decoy", [
    b"order 4111111111111112 refused",  # Luhn fails
    b"id 12345678901234567890123",  # a longer run of digits
    b"ts=1717171717171717171717",
    b"ns 1767225600000000009",  # an epoch in nanoseconds that passes the Luhn check
    b"7111111111111114",  # Luhn-valid, but no card issuer starts with 7
    b"4111 1111-1111 1111",  # mixed separators
    b"4111  1111 1111 1111",  # a double space
    b"411 1111 1111 11111",  # not a card's grouping
    b"phone +33 6 12 34 56 78",
    b"amount 50000.00 INR",
    # a git object's path (CI: its masked name no longer matched the program's openat in a
    # replay), a SHA-256 and a trace id, each holding a Luhn-valid run of a card's shape
    b".git/objects/58/5b9907bee39765385016483cc6c10036bd1e14",
    b"sha256:0d4111111111111111e0aa6e1e4ee2d3b4f0a5c1b2d3e4f5a6b7c8d9e0f1a2b3",
    b'"trace_id":"4111111111111111abcdef0123456789"',
])
def test_decoys_are_left_alone(decoy: bytes) -> None:
    assert mask_bytes(decoy) == (decoy, 0)


def test_luhn() -> None:
    assert luhn(b"79927398713") and not luhn(b"79927398710")


def test_mask_pans_touches_only_rows_with_a_pan_and_keeps_every_length() -> None:
    values = [b"no digits", None, b"", b"pan 4111111111111111 and 5500005555555559",
              b"decoy 4111111111111112", b"\xff\xfe binary 4111111111111111"]
    out, found = mask_pans(pa.array(values, pa.binary()))
    assert found == 3
    got = out.to_pylist()
    assert got[:3] == values[:3] and got[4] == values[4]
    assert got[3] == b"pan 411111******1111 and 550000******5559"
    assert got[5] == b"\xff\xfe binary 411111******1111"
    assert [None if v is None else len(v) for v in got] == [
        None if v is None else len(v) for v in values]


# -- the agent's stage -----------------------------------------------------------------------------


def _data_rows(rows: list[tuple[int, int, int, int, bytes, int]]) -> pa.Table:
    """(seq, nr, arg_index, offset, data, total_len) of pid 9 -> syscall_data rows."""
    return pa.Table.from_pylist([
        {"ts_ns": 1, "pid": 9, "tid": 9, "seq": seq, "nr": nr, "arg_index": arg,
         "offset": offset, "data": data, "total_len": total, "truncated": False}
        for seq, nr, arg, offset, data, total in rows], schema=spec("syscall_data").payload_schema)


def _region(table: pa.Table, seq: int, arg: int) -> bytes:
    rows = sorted((r["offset"], r["data"]) for r in table.to_pylist()
                  if r["seq"] == seq and r["arg_index"] == arg)
    return b"".join(d for _, d in rows)


def test_an_exec_environment_cut_mid_secret_between_chunks_is_redacted_whole() -> None:
    # GIVEN an exec's environment whose secret straddles the 4 KiB chunk boundary
    env = b"A=" + b"x" * (CHUNK - 12) + b"\0API_KEY=sk_live_0123456789\0HOME=/root\0"
    cut = CHUNK
    first, second = env[:cut], env[cut:]
    assert b"sk_live" not in first and b"sk_live" not in second  # really split
    stage = PayloadProtection(ProtectionConfig())
    # WHEN the first chunk arrives in one flush and the second in the next
    out1 = stage.apply("syscall_data", _data_rows([
        (5, 59, 2, 0, first, len(env)), (6, 0, 1, 0, b"read 4111111111111111", 21)]))
    # THEN the incomplete region is held back, other rows pass (card masked)
    assert [r["seq"] for r in out1.to_pylist()] == [6]
    assert out1.column("data")[0].as_py() == b"read 411111******1111"
    out2 = stage.apply("syscall_data", _data_rows([(5, 59, 2, cut, second, len(env))]))
    region = _region(out2, 5, 2)
    assert b"sk_live" not in region
    assert region == b"A=" + b"x" * (CHUNK - 12) + f"\0API_KEY={R}\0HOME=/root\0".encode()
    assert out2.column("total_len")[0].as_py() == len(region)
    assert stage.release() is None


def test_an_exec_argv_with_a_password_option_is_redacted() -> None:
    argv = b"/bin/tool\0--db-password\0pw-in-argv\0postgres://u:pw2@h/x\0"
    out = PayloadProtection().apply("syscall_data", _data_rows([(3, 59, 1, 0, argv, len(argv))]))
    assert _region(out, 3, 1) == f"/bin/tool\0--db-password\0{R}\0postgres://u:{R}@h/x\0".encode()


def test_a_region_that_never_completes_is_released_cut_at_the_gap() -> None:
    env = b"OK=1\0" + b"y" * (CHUNK - 5) + b"API_KEY=lost\0"
    stage = PayloadProtection(ProtectionConfig(hold_flushes=2))
    # only the second chunk ever arrives (the first was lost in a full ring)
    second = _data_rows([(7, 59, 2, CHUNK, env[CHUNK:], len(env))])
    assert stage.apply("syscall_data", second).num_rows == 0
    out = stage.apply("syscall_data", second.slice(0, 0))
    assert out.num_rows == 1 and out.column("data")[0].as_py() == b""
    assert out.column("truncated")[0].as_py()


def test_held_rows_are_released_redacted_at_stop() -> None:
    env = b"DB_PASSWORD=hunter2\0" + b"z" * CHUNK
    stage = PayloadProtection()
    assert stage.apply("syscall_data", _data_rows([(8, 59, 2, 0, env[:CHUNK], len(env))])
                       ).num_rows == 0
    released = stage.release()
    assert released is not None and b"hunter2" not in _region(released, 8, 2)
    assert _region(released, 8, 2).startswith(f"DB_PASSWORD={R}\0".encode())


def test_processes_keep_environments_only_with_payloads() -> None:
    rows = pa.table({"ts_ns": [1], "pid": [2], "kind": ["exec"],
                     "argv": pa.array([["app", "--token", "t0k"]], pa.list_(pa.string())),
                     "env": pa.array([["API_KEY=k", "PAN=4111111111111111", "HOME=/"]],
                                     pa.list_(pa.string()))})
    kept = PayloadProtection(ProtectionConfig(keep_env=True)).apply("processes", rows)
    assert kept.column("env").to_pylist() == [[f"API_KEY={R}", "PAN=411111******1111",
                                               "HOME=/"]]
    assert kept.column("argv").to_pylist() == [["app", "--token", R]]
    dropped = PayloadProtection(ProtectionConfig(keep_env=False)).apply("processes", rows)
    assert dropped.column("env").to_pylist() == [None]


def test_masking_can_be_turned_off() -> None:
    rows = _data_rows([(1, 0, 1, 0, b"4111111111111111", 16)])
    out = PayloadProtection(ProtectionConfig(mask_pans=False)).apply("syscall_data", rows)
    assert out.column("data")[0].as_py() == b"4111111111111111"


def test_a_replay_names_what_the_recording_holds_redacted() -> None:
    from kprobe.replay_sandbox.recording import redaction_notes

    notes = redaction_notes([f"API_KEY={R}", "HOME=/", f"DSN=pg://u:{R}@h"],
                            ["prog", "--password", R])
    assert len(notes) == 2
    assert "API_KEY, DSN" in notes[0] and "--env NAME=value" in notes[0]
    assert "argument(s) 2" in notes[1] and "--set-arg" in notes[1]
    # once given (replay --env/--set-arg), nothing is left to say
    assert redaction_notes(["API_KEY=real"], ["prog", "--password", "pw"]) == []


def test_the_batch_masker_agrees_with_the_reference_on_random_payloads() -> None:
    """mask_pans (numpy over the batch, Python for grouped shapes) against mask_bytes (one
    value at a time) on values made of PANs, decoys, digit runs, separators and noise."""
    import numpy as np

    rng = np.random.default_rng(11)
    pieces = [b"4111111111111111", b"4111 1111 1111 1111", b"3782-822463-10005",
              b"1767225600000000009", b"8111111111111112",
              b"4111111111111112", b"5500005555555559", b"1767225600000000000", b" ", b"-",
              b"x", b"\xff", b"12", b"0000", b'{"pan":"', b'"}', b"4222222222222",
              b"cc6c10036bd1e14", b"bee397653"]  # hex words, long ones around PANs
    values = [b"".join(pieces[i] for i in rng.integers(0, len(pieces), rng.integers(0, 12)))
              for _ in range(3000)]
    batch, found = mask_pans(pa.array(values, pa.binary()))
    reference = [mask_bytes(v) for v in values]
    assert batch.to_pylist() == [r[0] for r in reference]
    assert found == sum(r[1] for r in reference) and found > 500
