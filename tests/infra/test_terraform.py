"""terraform/: parsed with python-hcl2 and checked rule by rule (what each role may do to
which key, that no lifecycle rule can expire a Delta log, TLS only, SSE-KMS, versioning),
then scanned by checkov. No AWS account is involved: this is what CI can check."""

from __future__ import annotations

import json
import re
import subprocess
from typing import Any

import pytest

from tests.infra.hclpolicy import allowed, blocks, files, parse, role_statements
from tests.support import REPO, require

CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
DATA = "kprobe/v1/sched/node=n1/hour=2026-01-01T14/part-0001.parquet"
OTHER_NODE = "kprobe/v1/sched/node=n2/hour=2026-01-01T14/part-0001.parquet"
LOG = "kprobe/v1/sched/_delta_log/00000000000000000042.json"
CHECKPOINT = "kprobe/v1/sched/_delta_log/00000000000000000040.checkpoint.parquet"
EDGES = "kprobe/v1/causal_edges/node=all/hour=2026-01-01T14/part-1.parquet"
GRAPH = "kprobe/graphs/20260101T140000Z_60s/graph.lbug"
JOB = "kprobe/jobs/replays/abc/job.json"


def test_every_role_may_do_exactly_its_job() -> None:
    """The attacks of the review: the API that runs user SQL deleting the lake, an agent
    unable to clean its commit log, an agent rewriting history."""
    roles = role_statements()
    assert set(roles) == {"agent", "compactor", "analyzer", "reader"}
    agent, compactor, analyzer, reader = (roles[r] for r in
                                          ("agent", "compactor", "analyzer", "reader"))
    # agent: appends data files and commits, deletes old commit-log files, nothing else
    assert allowed(agent, "s3:PutObject", DATA) and allowed(agent, "s3:PutObject", LOG)
    assert allowed(agent, "s3:DeleteObject", LOG)  # the log cleanup after a checkpoint
    assert allowed(agent, "s3:DeleteObject", CHECKPOINT)
    multipart = CHECKPOINT.replace(".parquet", ".0000000001.0000000002.parquet")
    assert allowed(agent, "s3:DeleteObject", multipart)
    assert not allowed(agent, "s3:DeleteObject", DATA)
    for key in (GRAPH, JOB, "kprobe/other/x", "elsewhere/v1/sched/_delta_log/1.json"):
        assert not allowed(agent, "s3:PutObject", key), key
    # compactor: rewrites and vacuums tables, nothing outside them
    assert allowed(compactor, "s3:DeleteObject", DATA)
    assert allowed(compactor, "s3:PutObject", LOG)
    assert not allowed(compactor, "s3:PutObject", JOB)
    assert not allowed(compactor, "s3:DeleteObject", GRAPH)
    # analyzer: graphs and causal_edges only
    assert allowed(analyzer, "s3:PutObject", GRAPH)
    assert allowed(analyzer, "s3:DeleteObject", EDGES)
    assert not allowed(analyzer, "s3:DeleteObject", DATA)
    assert not allowed(analyzer, "s3:PutObject", LOG)
    # reader (the API): reads everything, writes only replay jobs
    assert allowed(reader, "s3:GetObject", DATA) and allowed(reader, "s3:GetObject", GRAPH)
    assert allowed(reader, "s3:PutObject", JOB) and allowed(reader, "s3:DeleteObject", JOB)
    for key in (DATA, LOG, EDGES, GRAPH):
        assert not allowed(reader, "s3:PutObject", key), key
        assert not allowed(reader, "s3:DeleteObject", key), key
    # with on-demand analysis (api_analyzes_on_demand, the default) the API also writes what
    # the analyzer writes, and still never a data file or a commit of another table
    reader = role_statements(api_analyzes_on_demand=True)["reader"]
    assert allowed(reader, "s3:PutObject", GRAPH) and allowed(reader, "s3:DeleteObject", EDGES)
    for key in (DATA, LOG, CHECKPOINT, "kprobe/v1/sched/_delta_log/1.json"):
        assert not allowed(reader, "s3:PutObject", key), key
        assert not allowed(reader, "s3:DeleteObject", key), key
    # control: the checker does see a grant (the old reader policy: Put/Delete on prefix/*)
    old_reader = [{"actions": ["s3:PutObject", "s3:DeleteObject"],
                   "resources": ["arn:aws:s3:::lake-bucket/kprobe/*"]}]
    assert allowed(old_reader, "s3:DeleteObject", LOG)


def test_node_scoped_agents_write_only_their_partitions() -> None:
    agent = role_statements(agent_node_scoped=True)["agent"]
    assert allowed(agent, "s3:PutObject", DATA, {"kprobe-node": "n1"})
    assert not allowed(agent, "s3:PutObject", OTHER_NODE, {"kprobe-node": "n1"})
    assert not allowed(agent, "s3:PutObject", DATA)  # no session tag: no data file
    assert allowed(agent, "s3:PutObject", LOG)  # commits are shared by every node


def test_roles_trust_irsa_service_accounts_and_plain_principals() -> None:
    tf = parse()
    trust = blocks(tf, "data", "aws_iam_policy_document")["trust"]
    kinds = {d["statement"]["content"][0]["sid"]: d["statement"] for d in trust["dynamic"]}
    irsa = kinds["IRSA"]["content"][0]
    assert irsa["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    conditions = {c["variable"]: c["values"] for c in irsa["condition"]}
    assert conditions["${var.oidc_issuer}:sub"] == (
        '${[for sa in statement.value : "system:serviceaccount:${var.namespace}:${sa}"]}')
    assert conditions["${var.oidc_issuer}:aud"] == ["sts.amazonaws.com"]
    assert "Principals" in kinds
    roles = blocks(tf, "resource", "aws_iam_role")["lake"]
    assert roles["assume_role_policy"] == "${data.aws_iam_policy_document.trust[each.key].json}"
    # the service account names the roles trust (tests/infra/test_chart.py checks the chart
    # renders these names)
    iam = (REPO / "terraform/iam.tf").read_text().replace(" ", "")
    for component in ("agent", "compactor", "analyzer", "api", "replay"):
        assert f'"${{var.helm_release}}-{component}"' in iam, component


def test_bucket_is_versioned_kms_encrypted_tls_only_and_never_expires_a_delta_log() -> None:
    tf = parse()

    def res(type_: str) -> dict[str, Any]:
        return blocks(tf, "resource", type_)

    assert res("aws_s3_bucket_versioning")["lake"]["versioning_configuration"][0][
        "status"] == "Enabled"
    sse = res("aws_s3_bucket_server_side_encryption_configuration")["lake"]["rule"][0]
    default = sse["apply_server_side_encryption_by_default"][0]
    assert default["sse_algorithm"] == "aws:kms"
    assert default["kms_master_key_id"] == "${aws_kms_key.lake.arn}"
    assert res("aws_kms_key")["lake"]["enable_key_rotation"] is True
    pab = res("aws_s3_bucket_public_access_block")["lake"]
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy",
                                        "ignore_public_acls", "restrict_public_buckets"))
    policy = blocks(tf, "data", "aws_iam_policy_document")["bucket"]["statement"]
    tls = next(s for s in policy if s["sid"] == "TLSOnly")
    assert tls["effect"] == "Deny" and tls["actions"] == ["s3:*"]
    assert tls["condition"][0] == {"test": "Bool", "variable": "aws:SecureTransport",
                                   "values": ["false"]}
    rules = res("aws_s3_bucket_lifecycle_configuration")["lake"]["rule"]
    assert any(r.get("abort_incomplete_multipart_upload") for r in rules)
    for rule in rules:
        for expiration in rule.get("expiration", []):
            # a current object never expires (only delete markers nobody can read)
            assert set(expiration) == {"expired_object_delete_marker"}, rule
        for transition in ("transition", "noncurrent_version_transition"):
            assert transition not in rule, rule


def test_checkov_finds_nothing_unexplained() -> None:
    require(CHECKOV.exists(), f"checkov ({CHECKOV}; make setup installs it)")
    result = subprocess.run(
        [str(CHECKOV), "-d", str(REPO / "terraform"), "--framework", "terraform", "--quiet",
         "--compact", "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, check=False)
    report: Any = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 15, summary
    assert failed == [], failed
    assert summary["passed"] >= 70, summary
    # every skip carries its reason next to it
    for path in files():
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert re.search(r"checkov:skip=CKV\w+: \S.{20,}", line), line


@pytest.mark.parametrize("path", files(), ids=lambda p: p.name)
def test_every_file_parses(path: Any) -> None:
    import hcl2

    with path.open() as f:
        assert hcl2.load(f)
