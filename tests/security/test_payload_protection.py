"""Recorded secrets and card numbers (issue 14, item 4), attacked for real.

Module fixture (root): ``kprobe run --payloads`` records ``card_payment`` (tests/programs),
whose environment holds ``API_KEY`` and ``DB_PASSWORD``, whose command line holds a
``--db-password`` and a connection-string password, and which reads a card number from a
file, sends it over a socket to itself, receives it and writes it to a file. Twice: into a
lake in the clear, and into a lake sealed at rest (``--payload-key-file``, the agents'
public key). Then ``kprobe serve`` answers over each, with tokens made by ``kprobe serve
--new-token``: ``reader`` (read), ``payloads`` (read,payloads), ``full`` (read,replay).

Before this work, ``SELECT string_agg(decode(data, 'replace'), '|') FROM syscall_data``
with a read token returned the API key, the database password, the argv passwords and the
card number four times. The tests say what each reader gets now.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from websockets.sync.client import connect as ws_connect

from kprobe.lake import LakeSettings, LakeWriter, connect, payload_keys, resolve
from kprobe.lake.sealing import open_blob
from tests.support import REPO, free_port, require, require_root, wait_healthy

KPROBE = [sys.executable, "-P", "-m", "kprobe"]
pytestmark = pytest.mark.timeout(600)

API_KEY = "sk_live_4eC39HqLyjWDarjtT1zdp7dc"
DB_PASSWORD = "hunter2-db-pw"
ARGV_PASSWORD = "argv-pw-123"
URL_PASSWORD = "urlpw999"
PAN = "4111 1111 1111 1111"
SECRETS = (API_KEY, DB_PASSWORD, ARGV_PASSWORD, URL_PASSWORD, PAN, PAN.replace(" ", ""))
# text only payload bytes hold (the card request, the program's reply, its environment)
PAYLOAD_TEXT = ("AUTHORISED", "50000.00", "DB_PASSWORD=", "API_KEY=")
MASKED_PAN = "4111 11** **** 1111"


def _kprobe(*args: str, env: dict[str, str] | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*KPROBE, *args], capture_output=True, text=True, timeout=timeout,
                          check=False, cwd=REPO, env={**os.environ, **(env or {})})


@dataclass
class Recorded:
    lake: Path
    pid: int
    node: str


@dataclass
class Setup:
    tmp: Path
    plain: Recorded
    sealed: Recorded
    readers_key: Path
    agents_key: Path
    out_file: Path


def _record(tmp: Path, name: str, programs: Path, extra: list[str]) -> Recorded:
    lake = tmp / name
    card = tmp / "card.json"
    run = _kprobe("run", "--payloads", "--lake", str(lake), "--spool-dir",
                  str(tmp / f"spool-{name}"), *extra, "--",
                  str(programs / "card_payment"), str(card), str(tmp / f"out-{name}.txt"),
                  "--db-password", ARGV_PASSWORD, f"postgres://app:{URL_PASSWORD}@db/ledger",
                  env={"API_KEY": API_KEY, "DB_PASSWORD": DB_PASSWORD})
    assert run.returncode == 0, run.stderr
    assert "authorised card ending 1111, key set" in run.stdout
    found = _kprobe("sql", "--lake", str(lake), "--format", "json",
                    "SELECT pid, node FROM processes WHERE comm = 'card_payment' "
                    "AND kind = 'exec'")
    [row] = json.loads(found.stdout)
    return Recorded(lake, int(row["pid"]), row["node"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory, programs: Path) -> Setup:
    require_root()
    tmp = tmp_path_factory.mktemp("payload-protection")
    (tmp / "card.json").write_text(f'{{"pan":"{PAN}","amount":"50000.00","exp":"12/29"}}')
    readers, agents = tmp / "keys" / "readers.json", tmp / "keys" / "agents.json"
    made = _kprobe("lake", "new-key", "--key-file", str(readers), "--public-out", str(agents))
    assert made.returncode == 0, made.stderr
    plain = _record(tmp, "plain", programs, [])
    sealed = _record(tmp, "sealed", programs, ["--payload-key-file", str(agents)])
    return Setup(tmp, plain, sealed, readers, agents, tmp / "out-plain.txt")


def _every_byte(lake: Path) -> list[tuple[str, bytes]]:
    """Where a secret could sit in the lake's files, as stored and as values: each file's
    bytes, except that of a Parquet file only the parts that can hold text verbatim are
    taken as stored (its byte-array column chunks and its footer, which holds their
    statistics) beside its values decompressed. Integer columns are left to the values:
    their bit-packed bytes spell digits by chance (ciH found '4111111111111111' in the RLE
    dictionary indices of a ``sched.next_pid`` chunk), and a number stored as a number shows
    in the values."""
    found = []
    for path in sorted(p for p in lake.rglob("*") if p.is_file()):
        if path.suffix != ".parquet":
            found.append((str(path), path.read_bytes()))
            continue
        found.extend(_parquet_parts(path))
    return found


def _parquet_parts(path: Path) -> list[tuple[str, bytes]]:
    raw = path.read_bytes()
    meta = pq.ParquetFile(path).metadata
    parts = []
    for group in range(meta.num_row_groups):
        for index in range(meta.num_columns):
            chunk = meta.row_group(group).column(index)
            if chunk.physical_type not in ("BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"):
                continue
            start = chunk.dictionary_page_offset or chunk.data_page_offset
            parts.append((f"{path} (column {chunk.path_in_schema} as stored)",
                          raw[start:start + chunk.total_compressed_size]))
    footer_len = int.from_bytes(raw[-8:-4], "little")
    parts.append((f"{path} (footer)", raw[-8 - footer_len:]))
    parts.append((f"{path} (values)", repr(pq.read_table(path).to_pylist()).encode()))
    return parts


def test_the_scan_finds_a_card_number_wherever_parquet_keeps_it(tmp_path: Path) -> None:
    """The oracle's own control: a card number in a string column, stored plain (in its
    page and in the footer's statistics) or compressed, or as an integer, is found."""
    for codec in ("NONE", "ZSTD"):
        table = pa.table({"n": pa.array(range(1000), pa.int64()),
                          "text": pa.array(["x"] * 999 + [f"card {PAN.replace(' ', '')}"])})
        pq.write_table(table, tmp_path / f"text-{codec}.parquet", compression=codec)
    pq.write_table(pa.table({"n": pa.array([int(PAN.replace(" ", ""))], pa.int64())}),
                   tmp_path / "number.parquet")
    for name in ("text-NONE", "text-ZSTD", "number"):
        parts = _parquet_parts(tmp_path / f"{name}.parquet")
        assert any(PAN.replace(" ", "").encode() in content for _, content in parts), name
    # stored plain, the column chunk itself and the footer's max statistic hold it
    stored = dict(_parquet_parts(tmp_path / "text-NONE.parquet"))
    assert sum(PAN.replace(" ", "").encode() in content for name, content in stored.items()
               if not name.endswith("(values)")) == 2


# -- the lake --------------------------------------------------------------------------------------


def test_the_lake_never_holds_a_secret_or_a_card_number(setup: Setup) -> None:
    # control: the program really moved the card number through its syscalls
    assert PAN in setup.out_file.read_text()
    for recorded in (setup.plain, setup.sealed):
        files = _every_byte(recorded.lake)
        assert any("syscall_data" in name for name, _ in files)
        for name, content in files:
            for secret in SECRETS:
                assert secret.encode() not in content, f"{secret!r} in {name}"
    # control: the clear lake does hold the payloads (masked), so the scan had something
    # to find; the sealed lake holds not even those in the clear
    plain = b"".join(c for _, c in _every_byte(setup.plain.lake))
    assert MASKED_PAN.encode() in plain and b"AUTHORISED" in plain
    sealed = b"".join(c for _, c in _every_byte(setup.sealed.lake))
    assert b"AUTHORISED" not in sealed and b"4111 11" not in sealed


def test_replays_still_work_and_say_what_was_redacted(setup: Setup) -> None:
    require(shutil.which("bwrap") is not None, "the bwrap program")
    for recorded, env in ((setup.plain, {}),
                          (setup.sealed, {"KPROBE_PAYLOAD_KEY_FILE": str(setup.readers_key)})):
        replay = _kprobe("replay", "--lake", str(recorded.lake), "--process",
                         f"{recorded.pid}@{recorded.node}", "--format", "json", env=env)
        assert replay.returncode == 0, replay.stderr
        report = json.loads(replay.stdout)
        assert report["status"] == "completed" and report["outputs_match"], report
        notes = " ".join(report["notes"])
        assert "DB_PASSWORD, API_KEY" in notes or "API_KEY, DB_PASSWORD" in notes
        assert "argument(s) 4, 5" in notes and "--env NAME=value" in notes
        # the recorded (masked) card number came back as the program's output
        assert MASKED_PAN in report["replayed_text"]["1"] or MASKED_PAN in json.dumps(
            report["outputs"])
    # and secrets given back are used (the notes no longer list them)
    given = _kprobe("replay", "--lake", str(setup.plain.lake), "--process",
                    f"{setup.plain.pid}@{setup.plain.node}", "--format", "json",
                    "--env", "API_KEY=real", "--env", "DB_PASSWORD=real")
    assert given.returncode == 0, given.stderr
    # (other variables of the suite's environment that look secret, RAY_AUTH_TOKEN_PATH
    # among them, were redacted too and stay listed)
    notes = " ".join(json.loads(given.stdout)["notes"])
    assert "API_KEY" not in notes and "DB_PASSWORD" not in notes, notes


def test_sealed_payloads_need_the_right_key(setup: Setup) -> None:
    wrong = setup.tmp / "keys" / "wrong.json"
    _kprobe("lake", "new-key", "--key-file", str(wrong))
    replay = _kprobe("replay", "--lake", str(setup.sealed.lake), "--process",
                     f"{setup.sealed.pid}@{setup.sealed.node}",
                     env={"KPROBE_PAYLOAD_KEY_FILE": str(wrong)})
    assert replay.returncode == 2
    assert replay.stderr.count("\n") == 1 and "wrong key file" in replay.stderr
    assert "Traceback" not in replay.stderr
    # the agents' public file cannot open what they sealed
    sql = _kprobe("sql", "--lake", str(setup.sealed.lake),
                  "SELECT data FROM syscall_data LIMIT 1",
                  env={"KPROBE_PAYLOAD_KEY_FILE": str(setup.agents_key)})
    assert sql.returncode == 2 and "only the public half" in sql.stderr


def test_file_contents_stored_once_get_the_payload_policy(setup: Setup) -> None:
    """The card file the program read was recorded by identity and its content stored
    once (table blobs): masked as payloads are, and sealed, under a keyed name, when the
    agents have the key."""
    card = (setup.tmp / "card.json").read_bytes()
    masked = card.replace(PAN.encode(), MASKED_PAN.encode())

    def blobs_read_by(recorded: Recorded) -> list[tuple[str, bytes, bytes | None]]:
        con = connect(resolve(LakeSettings(lake=str(recorded.lake))))
        try:
            return [(n, bytes(d), None if s is None else bytes(s)) for n, d, s in con.execute(
                """SELECT blob, data, seal FROM blobs WHERE blob IN (SELECT blob FROM
                   syscall_data WHERE pid = ? AND blob <> '')""", [recorded.pid]).fetchall()]
        finally:
            con.close()

    plain = [b for b in blobs_read_by(setup.plain) if b[1] == masked]
    assert len(plain) == 1, "the card file is not stored by identity"
    name, _data, seal = plain[0]
    assert seal is None and name == hashlib.sha256(masked).hexdigest()
    sealed = blobs_read_by(setup.sealed)
    assert sealed and all(seal is not None for _n, _d, seal in sealed)
    assert all(b"50000.00" not in data and b"4111" not in data for _n, data, _s in sealed)
    assert hashlib.sha256(masked).hexdigest() not in {n for n, _d, _s in sealed}
    readers = payload_keys.load(setup.readers_key)
    opened = [open_blob(data, seal, n, readers) for n, data, seal in sealed]
    assert masked in opened


# -- through kprobe serve --------------------------------------------------------------------------


@dataclass
class Served:
    base: str
    tokens: dict[str, str]

    def client(self, token: str) -> httpx.Client:
        return httpx.Client(base_url=self.base, timeout=120,
                            headers={"Authorization": f"Bearer {self.tokens[token]}"})


def _serve(lake: Path, tokens_file: Path, log: Path,
           env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    out = open(log, "wb")  # noqa: SIM115 - the server's log, kept with the test's files
    proc = subprocess.Popen([*KPROBE, "serve", "--lake", str(lake), "--tokens-file",
                             str(tokens_file), "--port", str(port)], cwd=REPO,
                            stdout=out, stderr=subprocess.STDOUT,
                            env={**os.environ, "KPROBE_API_LIVE_POLL_INTERVAL_S": "0.1", **env})
    base = f"http://127.0.0.1:{port}"
    wait_healthy(proc, base, log, 60)
    return proc, base


@pytest.fixture(scope="module")
def servers(setup: Setup) -> Iterator[dict[str, Served]]:
    tokens_file = setup.tmp / "tokens.json"
    tokens = {}
    for name, scopes in (("reader", "read"), ("payloads", "read,payloads"),
                         ("full", "read,replay")):
        made = _kprobe("serve", "--tokens-file", str(tokens_file), "--new-token", name,
                       "--scopes", scopes)
        assert made.returncode == 0, made.stderr
        tokens[name] = made.stdout.strip()
    plain, plain_base = _serve(setup.plain.lake, tokens_file, setup.tmp / "serve-plain.log", {})
    sealed, sealed_base = _serve(setup.sealed.lake, tokens_file,
                                 setup.tmp / "serve-sealed.log",
                                 {"KPROBE_PAYLOAD_KEY_FILE": str(setup.readers_key)})
    try:
        yield {"plain": Served(plain_base, tokens), "sealed": Served(sealed_base, tokens)}
    finally:
        for proc in (plain, sealed):
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


BEFORE = "SELECT string_agg(decode(data, 'replace'), '|') AS s FROM syscall_data"
ATTACKS: tuple[str, ...] = (
    BEFORE,
    "SELECT data FROM syscall_data",
    'SELECT "data" FROM syscall_data',
    "SELECT s.data FROM syscall_data AS s",
    "SELECT syscall_data.data FROM syscall_data",
    "SELECT * FROM syscall_data",
    "SELECT COLUMNS('.*') FROM syscall_data",
    "SELECT to_json(s) FROM syscall_data AS s",
    "SELECT s FROM syscall_data AS s",
    "SELECT list(data) FROM syscall_data",
    "SELECT d.data FROM syscalls s JOIN syscall_data d USING (pid, tid, seq)",
    "SELECT * FROM syscalls s JOIN syscall_data d USING (pid, tid, seq)",
    "WITH x AS (SELECT * FROM syscall_data) SELECT * FROM x",
    "SELECT * FROM (SELECT data FROM syscall_data)",
    "SELECT * FROM query_table('syscall_data')",
    "SELECT decode(seal) FROM syscall_data",
    "SELECT * FROM syscall_data__sealed",
    "SELECT kprobe_open_payload(NULL::BLOB, NULL::BLOB, NULL::BIGINT, NULL::VARCHAR)",
    "DESCRIBE syscall_data",
    "SUMMARIZE syscall_data",
    "SHOW syscall_data",
    "EXPLAIN ANALYZE SELECT data FROM syscall_data",
    "SELECT env FROM processes",
    "SELECT * FROM processes",
    "SELECT array_to_string(env, ',') FROM processes",
    "SELECT p.env FROM processes p JOIN syscall_data d USING (pid)",
    "SELECT * FROM duckdb_tables()",
    "SELECT * FROM duckdb_views()",
)


def _read_parquet_attacks(lake: Path) -> tuple[str, ...]:
    table = lake / "v1" / "syscall_data"
    return (f"SELECT * FROM read_parquet('{table}/**/*.parquet')",
            f"SELECT * FROM parquet_scan('{table}/*/*/*.parquet')",
            f"SELECT * FROM read_blob('{table}/**/*.parquet')",
            f"SELECT * FROM '{table}/**/*.parquet'")


def _leaked(response: httpx.Response) -> list[str]:
    """Secrets and payload text in a response, also inside base64 values (JSON answers
    carry binary columns as base64) and in column names of sensitive columns."""
    texts = [response.text]
    if response.headers.get("content-type", "").startswith("application/json"):
        body = response.json()
        names = [c["name"] for c in body.get("columns", [])]
        texts += [f"SENSITIVE-COLUMN {n}" for n in names
                  if n in ("data", "env", "seal", "seal_pos")]

        def walk(value: Any) -> None:
            if isinstance(value, list):
                for v in value:
                    walk(v)
            elif isinstance(value, str) and len(value) >= 8:
                try:
                    texts.append(base64.b64decode(value, validate=True).decode("latin-1"))
                except (binascii.Error, ValueError):
                    pass

        walk(body.get("rows", []))
    marks = (*SECRETS, *PAYLOAD_TEXT, MASKED_PAN, "SENSITIVE-COLUMN")
    return [t for t in marks for text in texts if t in text]


def test_a_read_token_gets_no_payload_by_any_sql(setup: Setup,
                                                 servers: dict[str, Served]) -> None:
    for which, recorded in (("plain", setup.plain), ("sealed", setup.sealed)):
        with servers[which].client("reader") as client:
            for sql in (*ATTACKS, *_read_parquet_attacks(recorded.lake)):
                response = client.post("/v1/sql", json={"sql": sql, "max_rows": 10_000})
                body = response.text
                assert response.status_code in (200, 400, 403, 404), (sql, body)
                assert not _leaked(response), (which, sql, _leaked(response), body[:300])
                if "data" in sql.replace("syscall_data", "") and response.status_code == 403:
                    assert "'payloads' scope" in response.json()["detail"]
            # the statement that read everyone's secrets before: 403 naming the scope
            before = client.post("/v1/sql", json={"sql": BEFORE})
            assert before.status_code == 403, before.text
            print(f"{which}: read token, {BEFORE}: {before.status_code} "
                  f"{before.json()['detail']}")
            # control: the same token reads the metadata of those rows
            rows = client.post("/v1/sql", json={
                "sql": "SELECT count(*) FROM syscall_data WHERE pid = "
                       f"{recorded.pid}"}).json()["rows"]
            assert rows[0][0] > 5


def test_a_payloads_token_reads_them_redacted_and_masked(setup: Setup,
                                                         servers: dict[str, Served]) -> None:
    for which in ("plain", "sealed"):  # the sealed lake's server holds the readers' key
        with servers[which].client("payloads") as client:
            response = client.post("/v1/sql", json={"sql": BEFORE})
            assert response.status_code == 200, response.text
            text = response.json()["rows"][0][0]
            print(f"{which}: payloads token, {BEFORE}: {len(text)} characters, "
                  f"{text.count('[kprobe-redacted]')} redacted values, "
                  f"{text.count(MASKED_PAN)} masked card numbers")
            assert MASKED_PAN in text and "AUTHORISED" in text
            assert "API_KEY=[kprobe-redacted]" in text
            assert not any(secret in text for secret in SECRETS)
            env = client.post("/v1/sql", json={
                "sql": "SELECT env FROM processes WHERE env IS NOT NULL LIMIT 1"})
            assert env.status_code == 200, env.text


def test_the_live_stream_sends_payload_columns_only_with_the_scope(
        setup: Setup, servers: dict[str, Served]) -> None:
    url = servers["plain"].base.replace("http", "ws") + "/v1/live?kind=syscall_data&node=live"
    got: dict[str, dict[str, Any]] = {}
    with ExitStack() as stack:
        sockets = {name: stack.enter_context(ws_connect(url, open_timeout=10, additional_headers={
            "Authorization": f"Bearer {servers['plain'].tokens[name]}"}))
            for name in ("reader", "payloads")}
        for ws in sockets.values():
            assert json.loads(ws.recv(timeout=10))["type"] == "subscribed"
        LakeWriter(resolve(LakeSettings(lake=str(setup.plain.lake))), "live").append(
            "syscall_data", {"ts_ns": [time.time_ns()], "pid": [1], "seq": [1],
                             "data": [b"LIVE-PAYLOAD-BYTES"]})
        for name, ws in sockets.items():
            while name not in got:
                message = json.loads(ws.recv(timeout=20))
                if message["type"] == "events":
                    got[name] = message["rows"][0]
    assert "data" not in got["reader"] and got["reader"]["seq"] == 1
    assert "LIVE-PAYLOAD" not in json.dumps(got["reader"])
    assert "data" in got["payloads"]  # base64 of the bytes


def test_a_replay_report_shows_program_bytes_only_with_the_scope(
        setup: Setup, servers: dict[str, Served]) -> None:
    require(shutil.which("bwrap") is not None, "the bwrap program")
    served = servers["plain"]
    with served.client("full") as client:
        launched = client.post("/v1/replays", json={
            "process": f"{setup.plain.pid}@{setup.plain.node}", "timeout_s": 60})
        assert launched.status_code == 202, launched.text
        job_id = launched.json()["id"]
        deadline = time.monotonic() + 120
        while (job := client.get(f"/v1/replays/{job_id}").json())["status"] == "running":
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        without = client.get(f"/v1/replays/{job_id}/report")
    with served.client("payloads") as client:
        with_scope = client.get(f"/v1/replays/{job_id}/report")
    assert without.status_code == with_scope.status_code == 200, without.text
    assert "AUTHORISED" not in without.text and "4111" not in without.text
    assert without.json()["outputs_match"] and without.json()["status"] == "completed"
    assert "AUTHORISED" in with_scope.text and MASKED_PAN in with_scope.text


def test_timelines_hold_no_payload(setup: Setup, servers: dict[str, Served]) -> None:
    with servers["plain"].client("reader") as client:
        span = client.post("/v1/sql", json={
            "sql": "SELECT min(ts_ns), max(ts_ns) FROM syscalls WHERE pid = "
                   f"{setup.plain.pid}"}).json()["rows"][0]
        timeline = client.get("/v1/timeline", params={
            "pid": setup.plain.pid, "node": setup.plain.node, "from": str(span[0]),
            "to": str(span[1] + 1)})
    assert timeline.status_code == 200, timeline.text
    assert timeline.json()["sections"]["syscalls"]["rows_total"] > 5
    assert not any(t in timeline.text for t in (*SECRETS, *PAYLOAD_TEXT, MASKED_PAN))
