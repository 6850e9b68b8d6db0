"""Lake faults surface as 503 with one line, and the server recovers without a restart
(issue 14, item 6), on a real ``kprobe serve`` over a copy of a recorded lake.

Measured before on the same lake: a torn commit gave 500 with 13 native backtrace frames
in the body; after a log went back to an older version (a commit removed, as a restore
from backup does) every request was 500 until a restart ("the newest version in the log 1
is older than the existing snapshot version 2"); with its ``_delta_log`` moved away a table
kept answering from the cache, and a fresh server read it as empty; a truncated Parquet
file was a 400 ("query failed"); ``/readyz`` said ready through all of it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kprobe.lake import LakeSettings, LakeWriter, resolve
from tests.s3server import S3Server
from tests.security.api_server import RecordedLake, Served, copy_lake, serve

pytestmark = pytest.mark.timeout(300)

COUNT = {"sql": "SELECT count(*) FROM spans"}
NATIVE = ("<unknown>", "pthread_create", "clone3", "Backtrace", "stack backtrace", "\x1b[")


@pytest.fixture
def served(api_lake: RecordedLake, tmp_path: Path) -> Iterator[Served]:
    lake = copy_lake(api_lake, tmp_path)
    with serve(lake.lake, tmp_path / "serve") as server:
        yield server


def unavailable(answer: httpx.Response) -> dict[str, Any]:
    print(f"{answer.status_code}: {answer.text[:300]}")
    assert answer.status_code == 503, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = answer.json()
    assert body["type"].endswith("lake-unavailable")
    assert "\n" not in body["detail"] and len(body["detail"]) <= 600
    assert not any(mark in answer.text for mark in NATIVE), answer.text
    return body


def test_a_torn_commit_is_503_and_repairing_it_recovers(served: Served) -> None:
    log = served.lake / "v1" / "spans" / "_delta_log"
    with served.client("reader") as client:
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]
        # GIVEN a commit torn in the middle of a line (a writer that died mid-upload)
        newest = sorted(log.glob("*.json"))[-1]
        torn = log / f"{int(newest.stem) + 1:020d}.json"
        torn.write_bytes(newest.read_bytes()[:150])
        body = unavailable(client.post("/v1/sql", json=COUNT))
        assert "spans" in body["detail"]
        unavailable(client.get("/readyz"))
        # WHEN the log is repaired THEN the next request reads it, no restart
        torn.unlink()
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]
        assert client.get("/readyz").status_code == 200


def test_a_log_that_goes_back_is_read_again(served: Served) -> None:
    log = served.lake / "v1" / "spans" / "_delta_log"
    with served.client("reader") as client:
        # GIVEN the server has seen a newer commit (an empty one) ...
        newest = sorted(log.glob("*.json"))[-1]
        extra = log / f"{int(newest.stem) + 1:020d}.json"
        extra.write_text('{"commitInfo":{"timestamp":1,"operation":"WRITE",'
                         '"operationParameters":{}}}\n')
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]
        assert client.get("/v1/tables").json()["tables"][-1]  # it has the new version
        # WHEN the log goes back to before it (restored) THEN answered from the log as it is
        extra.unlink()
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]


def test_a_missing_delta_log_is_an_error_not_an_empty_table(served: Served,
                                                            tmp_path: Path) -> None:
    log = served.lake / "v1" / "spans" / "_delta_log"
    with served.client("reader") as client:
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]
        shutil.move(log, tmp_path / "saved-log")
        body = unavailable(client.post("/v1/sql", json=COUNT))
        assert "_delta_log" in body["detail"]
        unavailable(client.get("/readyz"))
        shutil.move(tmp_path / "saved-log", log)
        assert client.post("/v1/sql", json=COUNT).json()["rows"] == [[52]]
    # a server that starts without it does not read an empty table either
    shutil.move(log, tmp_path / "saved-log")
    with serve(served.lake, tmp_path / "fresh") as fresh, fresh.client("reader") as client:
        unavailable(client.post("/v1/sql", json=COUNT))
    shutil.move(tmp_path / "saved-log", log)
    # the control: a table not created yet (no directory at all) is an empty table, also
    # one the server had open with rows (which of the recorded lake's tables have rows
    # depends on what its agent lost, so this one gets some)
    lost = {"sql": "SELECT count(*) FROM lost"}
    LakeWriter(resolve(LakeSettings(lake=str(served.lake))), "faults").append(
        "lost", {"ts_ns": [1, 2, 3], "source": ["x"] * 3, "count": [1, 2, 3]})
    with served.client("reader") as client:
        assert client.post("/v1/sql", json=lost).json()["rows"][0][0] >= 3
    shutil.rmtree(served.lake / "v1" / "lost")
    with served.client("reader") as client:
        answer = client.post("/v1/sql", json=lost)
        assert answer.status_code == 200 and answer.json()["rows"] == [[0]], answer.text


def test_a_corrupt_data_file_is_503(served: Served, tmp_path: Path) -> None:
    [data, *_] = sorted((served.lake / "v1" / "syscalls").rglob("*.parquet"))
    saved = tmp_path / "saved.parquet"
    shutil.copy(data, saved)
    with served.client("reader") as client:
        total = {"sql": "SELECT count(*), sum(dur_ns) FROM syscalls"}
        good = client.post("/v1/sql", json=total).json()["rows"]
        data.write_bytes(saved.read_bytes()[:1000])  # truncated on disk
        body = unavailable(client.post("/v1/sql", json=total))
        assert "unreadable" in body["detail"]
        shutil.copy(saved, data)
        assert client.post("/v1/sql", json=total).json()["rows"] == good
        # the control: a statement's own mistake is still the client's (400)
        wrong = client.post("/v1/sql", json={"sql": "SELECT no_such_column FROM syscalls"})
        assert wrong.status_code == 400


def test_an_object_store_table_without_its_log_is_an_error(s3_server: S3Server,
                                                           tmp_path: Path) -> None:
    # GIVEN a table in an S3 lake (SeaweedFS) with rows, then its _delta_log deleted
    location = resolve(s3_server.lake_settings("faults"))
    LakeWriter(location, "faults").append("lost", {"ts_ns": [1, 2, 3], "source": ["x"] * 3,
                                                   "count": [1, 2, 3]})
    client = s3_server.client()
    listed = client.list_objects_v2(Bucket=s3_server.bucket, Prefix="faults/v1/lost/")
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert any("/_delta_log/" in k for k in keys) and any(k.endswith(".parquet") for k in keys)
    env = s3_server.env("faults")
    with serve(env["KPROBE_LAKE"], tmp_path / "before", env=env) as server, \
            server.client("reader") as api:
        assert api.post("/v1/sql", json={"sql": "SELECT sum(count) FROM lost"}
                        ).json()["rows"] == [[6]]
    for key in keys:
        if "/_delta_log/" in key:
            client.delete_object(Bucket=s3_server.bucket, Key=key)
    # WHEN a server reads it THEN 503 naming the lost log, not an empty table
    with serve(env["KPROBE_LAKE"], tmp_path / "after", env=env) as server, \
            server.client("reader") as api:
        body = unavailable(api.post("/v1/sql", json={"sql": "SELECT sum(count) FROM lost"}))
        assert "_delta_log" in body["detail"]
        # the control: a table never written is still an empty table
        assert api.post("/v1/sql", json={"sql": "SELECT count(*) FROM spans"}
                        ).json()["rows"] == [[0]]
