"""The Cypher tokenizer and read-only parser (query_api/cypher_guard.py), without an engine:
what it accepts, what it refuses and why, and that the text it hands on is the statement's
own (comments blanked, the final ';' dropped). The same families run against a real server
and a real engine in tests/security/test_api_cypher.py."""

from __future__ import annotations

import re

import pytest

from kprobe.query_api.cypher_guard import check, check_read_only, tokenize
from kprobe.query_api.errors import CypherRefused

LOAD = "LOAD FROM '/etc/passwd' (file_format='csv') RETURN *"

GOOD = [
    "RETURN 'abc'",
    "RETURN 'it\\'s', \"q\\\"\", 'tab\\tnew\\nline', 'hex\\x41', 'u\\u00e9' AS s",
    "match (s:Span) where s.failed and s.name = $name return s.id, s.`name` as n",
    "MATCH (a:Span)-[:CHILD_OF*1..3]->(b:Span) RETURN count(*)",
    "MATCH (a:Span)<-[r:DELAYED_BY|CAUSED_BY]-(b) RETURN r.delay_ns ORDER BY 1 DESC SKIP 2 "
    "LIMIT 10",
    "MATCH p = (a:Span)-[:CHILD_OF]->(b:Span {name: 'x'}) RETURN length(p)",
    "OPTIONAL MATCH (s:Span) WITH s.service AS svc, count(*) AS n WHERE n > 1 RETURN svc",
    "UNWIND [1, 2, 3] AS x RETURN x * 2 ^ 2 % 3 AS y UNION ALL RETURN 4 AS y",
    "RETURN CASE WHEN 1 = 1 THEN 'y' ELSE 'n' END AS c, [1,2,3][0..2] AS l, [1,2][1:] AS m",
    "RETURN ALL(x IN [1,2] WHERE x > 0) AS a, -1.5e-3 AS f, .5 AS g, 5! AS h",
    "RETURN list_transform([1,2], x -> x + 1) AS a, list_transform([1], (y) -> y) AS b",
    "RETURN CAST(1 AS STRING) AS a, CAST(1, 'INT8') AS b, count(DISTINCT 1) AS c",
    "RETURN {a: 1, `b`: 2, 'c': 3, start: 4} AS m, map([1], ['a']) AS n",
    "MATCH (s:Span) WHERE EXISTS { MATCH (s)-[:CHILD_OF]->(:Span) } RETURN COUNT { MATCH (t) }",
    "MATCH (s:Span) WHERE (s)-[:CHILD_OF]->(:Span) AND NOT s.failed IS NULL RETURN s",
    "MATCH (s:Span) WHERE s.name STARTS WITH 'a' OR s.name =~ 'b.*' XOR s.x IN [1] RETURN s",
    "CALL show_tables() RETURN *",
    "CALL table_info('Span') WHERE name <> 'id' YIELD name AS n RETURN n",
    "EXPLAIN MATCH (s) RETURN s",
    "RETURN 1 AS x;",
    "RETURN 1 AS x // a comment\n",
    "RETURN $1 AS a, (1 + 2) * 3 AS b, 1 << 2 | 3 & 4 AS c",
]


@pytest.mark.parametrize("statement", GOOD)
def test_the_read_only_subset_is_accepted(statement: str) -> None:
    assert check_read_only(statement)


def test_the_text_run_is_the_statements_own() -> None:
    assert check_read_only("RETURN 'abc'") == "RETURN 'abc'"  # the old filter cut it
    assert check_read_only("RETURN 1/*x*/+1 // y\n;") == "RETURN 1 +1"
    assert check_read_only("RETURN 'a // not a comment' AS s") == \
        "RETURN 'a // not a comment' AS s"
    assert check("CALL show_functions() RETURN *").calls == ("show_functions",)


REFUSED = [
    # glued to numbers: what the engine reads as a new clause
    ("UNWIND [1] AS x WITH x WHERE x = 1" + LOAD, "number touching 'L'"),
    ("UNWIND [1] AS x WITH x WHERE x = 1.0" + LOAD, "number touching 'L'"),
    ("UNWIND [1] AS x WITH x WHERE x = 0x1" + LOAD, "number touching 'x'"),
    ("UNWIND [1] AS x WITH x WHERE x = 1e5" + LOAD, "number touching 'L'"),
    ("UNWIND [1] AS x WITH x WHERE x = 1CALL show_functions() RETURN *", "touching 'C'"),
    ("RETURN 1. AS x", "touching '.'"),
    ("RETURN 007 AS x", "leading zero"),
    ("RETURN 1e+5 AS x", "touching 'e'"),
    ("RETURN a$b AS x", "'$' touching a name"),
    # comments, case and Unicode
    ("UNWIND [1] AS x WITH x WHERE x = 1/**/" + LOAD, "LOAD is not allowed"),
    ("RETURN 1 AS x /* never closed", "unterminated comment"),
    ("lOaD FROM '/etc/passwd' RETURN *", "LOAD is not allowed"),
    ("RETURN 1 AS a UnIoN " + LOAD, "LOAD is not allowed"),
    ("RETURN 1 AS ｘ", "U+FF58"),
    ("RETURN 1\u2003AS x", "U+2003"),
    ("RETURN 1 AS x\u200b", "U+200B"),
    ("RETURN 1 AS x\x00", "control character"),
    # quoting
    ("RETURN 'a''b' AS s", "string touching a string"),
    ("RETURN 'a\\q' AS s", "unknown escape"),
    ("RETURN 'a\\x4' AS s", "unknown escape"),
    ("RETURN 'abc AS s", "unterminated string"),
    ("RETURN 1 AS `a``b`", "doubled backquote"),
    ("RETURN 1 AS ``", "empty `name`"),
    ("RETURN 1 AS `x", "unterminated `name`"),
    # keywords used as names must be backquoted
    ("MATCH (load:Span) RETURN load", "LOAD is not allowed"),
    ("RETURN 1 AS type", "TYPE is not allowed"),
    # clauses outside the subset
    ("MATCH (n) DELETE n", "DELETE is not allowed"),
    ("MATCH (n) SET n.x = 1 RETURN n", "SET is not allowed"),
    ("CREATE (:Span {id: 'x'})", "CREATE is not allowed"),
    ("MERGE (n:Span {id: 'x'})", "MERGE is not allowed"),
    ("COPY (MATCH (s) RETURN s) TO '/tmp/x'", "COPY is not allowed"),
    ("INSTALL httpfs", "INSTALL is not allowed"),
    ("LOAD EXTENSION httpfs", "LOAD is not allowed"),
    ("ATTACH '/tmp/x' AS y (dbtype lbug)", "ATTACH is not allowed"),
    ("EXPORT DATABASE '/tmp/x'", "EXPORT is not allowed"),
    ("BEGIN TRANSACTION", "BEGIN is not allowed"),
    ("CALL file_info('/etc/passwd') RETURN *", "CALL file_info is not allowed"),
    ("CALL show_tables", "CALL show_tables needs its arguments"),
    ("CALL table_info(x) RETURN *", "CALL arguments must be literals"),
    ("CALL threads=1", "CALL threads is not allowed"),
    ("MATCH (s) WHERE EXISTS { " + LOAD + " } RETURN s", "LOAD is not allowed"),
    ("MATCH (a)<-[]->(b) RETURN a", "one direction"),
    ("RETURN 1 AS x; RETURN 2 AS y", "exactly one statement"),
    ("RETURN 1 AS x RETURN 2", "unexpected text"),
    ("MATCH (s:Span)", "expected MATCH, OPTIONAL MATCH"),
    ("RETURN " + "(" * 300 + "1" + ")" * 300, "nested too deeply"),
    ("   ", "empty"),
    ("// only a comment", "empty"),
]


@pytest.mark.parametrize("statement,reason", REFUSED)
def test_everything_else_is_refused_with_its_reason(statement: str, reason: str) -> None:
    with pytest.raises(CypherRefused, match=re.escape(reason)):
        check_read_only(statement)


def test_refusals_say_where() -> None:
    with pytest.raises(CypherRefused, match=r"at character 35"):
        check_read_only("UNWIND [1] AS x WITH x WHERE x = 1LOAD FROM 'f' RETURN *")


def test_tokens_agree_with_the_engine_on_boundaries() -> None:
    tokens, clean = tokenize("MATCH (a)-[:R*1..2]->(b) RETURN a.`x y`, 'q\\'r', $p, 1.5e-3")
    texts = [t.text for t in tokens if t.kind != "end"]
    assert texts == ["MATCH", "(", "a", ")", "-", "[", ":", "R", "*", "1", "..", "2", "]",
                     "-", ">", "(", "b", ")", "RETURN", "a", ".", "`x y`", ",", "'q\\'r'",
                     ",", "$p", ",", "1.5e-3"]
    assert all(clean[t.start:t.end] == t.text for t in tokens)
