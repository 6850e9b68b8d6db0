"""A ``read`` token cannot reach host files through Cypher (issue 14, item 2).

Against a real ``kprobe serve`` over a lake the agent recorded and the engine analysed,
every bypass family of the issue is posted to ``POST /v1/graph/cypher``: keywords glued to
numbers (``1LOAD``, ``1.0LOAD``, ``0x1LOAD``, ``1e5LOAD``), comments between tokens, UNION
into a reading clause, case and Unicode tricks, quoting tricks, several statements, CALL of
what is not the catalogue. None may answer 200 with ``/etc/passwd``, write a file or run a
CALL. Then the second line alone: the confined worker, given the same statements with the
parser bypassed, cannot open a host file, write one or download an extension. Known-good
statements (and the explain and graph routes, Cypher inside) keep working.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from kprobe.compute.graph import store
from kprobe.compute.settings import ComputeSettings
from kprobe.lake import LakeSettings, resolve
from kprobe.query_api.confine import unavailable_reason
from kprobe.query_api.cypher_worker import CypherJob, CypherPool, snapshot_files
from tests.security.api_server import RecordedLake, Served, serve
from tests.support import require

pytestmark = pytest.mark.timeout(600)

LEAK = Path("/tmp/kprobe-cypher-leak.csv")
LOAD = "LOAD FROM '/etc/passwd' (file_format='csv', header=false, delim=':') RETURN *"
COPY = f"COPY (MATCH (s:Span) RETURN s.id) TO '{LEAK}'"
PREFIX = "UNWIND [1] AS x WITH x WHERE x = "

BYPASSES = {
    # the family: a keyword glued to a number
    "glued integer": PREFIX + "1" + LOAD,
    "glued float": PREFIX + "1.0" + LOAD,
    "glued hex": PREFIX + "0x1" + LOAD,
    "glued exponent": PREFIX + "1e5" + LOAD,
    "glued negative exponent": PREFIX + "1E-5" + LOAD,
    "glued call": PREFIX + "1CALL show_functions() RETURN *",
    "glued call of a file function": PREFIX + "1CALL file_info('/etc/passwd') RETURN *",
    "glued copy": PREFIX + "1" + COPY,
    "leading zero": PREFIX + "01" + LOAD,
    # comments between tokens
    "block comment": PREFIX + "1/**/" + LOAD,
    "line comment": PREFIX + "1 // x\n" + LOAD,
    "comment inside the keyword": PREFIX + "1 LO/**/AD FROM '/etc/passwd' RETURN *",
    # UNION into a reading clause
    "union load": "RETURN 1 AS a UNION " + LOAD,
    "union all load": "RETURN 1 AS a UNION ALL " + LOAD,
    "union call": "RETURN 1 AS a UNION CALL show_functions() RETURN *",
    "union after match": "MATCH (s:Span) RETURN s.id AS a UNION " + LOAD,
    # case
    "lower case": LOAD.lower(),
    "mixed case": "lOaD fRoM '/etc/passwd' (file_format='csv', header=false, delim=':') "
                  "ReTuRn *",
    "mixed case union": "RETURN 1 AS a uNiOn LoAd FROM '/etc/passwd' RETURN *",
    # Unicode: lookalike letters, invisible and exotic spaces the engine takes as spaces
    "fullwidth keyword": PREFIX + "1 ＬＯＡＤ FROM '/etc/passwd' RETURN *",
    "cyrillic o": PREFIX + "1 L\u041eAD FROM '/etc/passwd' RETURN *",
    "em space": PREFIX + "1\u2003" + LOAD,
    "no-break space": PREFIX + "1\u00a0" + LOAD,
    "zero-width space": PREFIX + "1\u200b" + LOAD,
    "ideographic space": "RETURN 1 AS a\u3000UNION\u3000" + LOAD,
    # quoting: where does a string or a `name` end?
    "doubled quote": "RETURN 'a''b' AS s UNION " + LOAD,
    "escaped quote": "RETURN 'a\\' AS s UNION " + LOAD + " //'",
    "unknown escape": "RETURN 'a\\q' AS s UNION " + LOAD,
    "doubled backquote": "RETURN 1 AS `a``b` UNION " + LOAD,
    "unterminated string": "RETURN 'abc UNION " + LOAD,
    "backquoted keyword": "RETURN 1 AS a UNION `LOAD` FROM '/etc/passwd' RETURN *",
    # more than one statement, writes, extensions
    "second statement": "RETURN 1 AS a; " + LOAD,
    "copy": COPY,
    "install": "INSTALL httpfs",
    "load extension": "LOAD EXTENSION '/tmp/kprobe-none.so'",
    "call outside the catalogue": "CALL file_info('/etc/passwd') RETURN *",
    "standalone call": "CALL threads=1",
    "table function as an expression": "RETURN read_csv_serial('/etc/passwd') AS x",
    "explain of a load": "EXPLAIN " + LOAD,
    "subquery with a load": "MATCH (s:Span) WHERE EXISTS { " + LOAD + " } RETURN s",
    "deep nesting": "RETURN " + "(" * 5000 + "1" + ")" * 5000 + " AS x",
}
PASSWD_MARKS = ("root", "/bin/bash", "nologin", "daemon")


@pytest.fixture(scope="module")
def served(api_lake: RecordedLake, tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[Served]:
    require(unavailable_reason() is None, f"Landlock ABI 4+ ({unavailable_reason()})")
    with serve(api_lake.lake, tmp_path_factory.mktemp("api-cypher")) as server:
        yield server


@pytest.mark.parametrize("family", sorted(BYPASSES))
def test_bypass_families_never_read_a_host_file(served: Served, family: str) -> None:
    LEAK.unlink(missing_ok=True)
    with served.client("reader") as client:
        answer = client.post("/v1/graph/cypher", json={"cypher": BYPASSES[family]})
    print(f"{family}: {answer.status_code} {answer.text[:200]}")
    assert answer.status_code in (400, 422), answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    assert not any(mark in answer.text for mark in PASSWD_MARKS[1:]), answer.text
    assert "SHOW_FUNCTIONS" not in answer.text.upper() or answer.status_code != 200
    assert not LEAK.exists()


def test_known_good_statements_still_work(served: Served) -> None:
    with served.client("reader") as client:
        def run(cypher: str, **extra: object) -> list[list[object]]:
            answer = client.post("/v1/graph/cypher", json={"cypher": cypher, **extra})
            assert answer.status_code == 200, (cypher, answer.text)
            rows: list[list[object]] = answer.json()["rows"]
            return rows

        # a trailing string literal is kept whole (it was cut: `RETURN 'abc'` ran as RETURN)
        assert run("RETURN 'abc'")[0][1] == "abc"
        assert run("RETURN 'it\\'s' AS s, \"a\\\"b\" AS t")[0][1:] == ["it's", 'a"b']
        failed = run("match (s:Span) // comments and case are fine\n"
                     "WHERE s.failed AND s.owned AND s.name = $n /* a parameter */ "
                     "RETURN count(*) AS n;",  # owned: once, when a window edge cuts the run
                     params={"n": "POST /payments"})
        assert sum(int(str(row[1])) for row in failed) > 0  # 8 refused payments, owned once
        assert [r[1] for r in run("RETURN 1 AS x UNION ALL RETURN 2 AS x")] in ([1, 2], [2, 1])
        assert run("CALL show_tables() RETURN *")
        assert run("MATCH (s:Span)-[:CHILD_OF]->(p:Span) WITH p, count(s) AS children "
                   "RETURN max(children) AS most ORDER BY most DESC LIMIT 1")
        assert run("MATCH (s:Span) RETURN s.`name` AS `load` LIMIT 1")
        # the causal routes run Cypher of their own: still fine
        [txn] = client.get("/v1/transactions", params={"status": "failed", "limit": 1}
                           ).json()["items"]
        assert client.get(f"/v1/transactions/{txn['business_id']}/explain").status_code == 200
        assert client.get(txn["links"]["graph"]).status_code == 200


def test_the_worker_alone_cannot_reach_the_host(api_lake: RecordedLake) -> None:
    """The second line, with the parser bypassed: statements sent straight to a confined
    worker fail inside it."""
    require(unavailable_reason() is None, f"Landlock ABI 4+ ({unavailable_reason()})")
    LEAK.unlink(missing_ok=True)
    location = resolve(LakeSettings(lake=str(api_lake.lake)))
    settings = ComputeSettings()
    files = snapshot_files(location, store.list_snapshots(location), settings)
    pool = CypherPool(store.readable_roots(location, settings), 1, 30)
    try:
        def job(statement: str) -> CypherJob:
            return CypherJob(statement, {}, files, 1000, 1 << 20, 30,
                             settings.graph_buffer_pool_mb)

        # control: the same worker answers a read
        assert pool.run(job("MATCH (s:Span) RETURN count(*) AS n")).table.column("n")[0] \
            .as_py() == 52
        for statement in (LOAD, "LOAD FROM '/proc/self/environ' (file_format='csv') RETURN *",
                          COPY, "INSTALL httpfs",
                          "LOAD FROM '/etc/shadow' (file_format='csv') RETURN *"):
            with pytest.raises(Exception) as refused:  # noqa: PT011 - the engine's text
                pool.run(job(statement))
            print(f"{statement[:40]}: {refused.value}")
            assert "denied" in str(refused.value).lower() or \
                "failed to create directory" in str(refused.value).lower()
        [worker] = list(pool._idle.queue)  # noqa: SLF001 - the process to inspect
        status = Path(f"/proc/{worker.proc.pid}/status").read_text()
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        assert int(fields["CapEff"], 16) == 0 and int(fields["CapBnd"], 16) == 0, fields
        assert fields["NoNewPrivs"].strip() == "1"
    finally:
        pool.close()
    assert not LEAK.exists()


def test_a_host_without_landlock_refuses_cypher_unless_told(api_lake: RecordedLake,
                                                            tmp_path: Path) -> None:
    """``cypher_isolation`` none runs behind the parser alone, and says nothing else
    changes: the bypasses are still refused."""
    with serve(api_lake.lake, tmp_path, env={"KPROBE_API_CYPHER_ISOLATION": "none"}) as srv, \
            srv.client("reader") as client:
        ok = client.post("/v1/graph/cypher", json={"cypher": "RETURN 'abc'"})
        assert ok.status_code == 200 and ok.json()["rows"][0][1] == "abc"
        refused = client.post("/v1/graph/cypher", json={"cypher": BYPASSES["glued integer"]})
        assert refused.status_code == 400 and "/bin/bash" not in refused.text
        assert json.loads(refused.text)["type"].endswith("cypher-refused")
