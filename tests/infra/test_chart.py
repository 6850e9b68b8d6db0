"""infra/helm/kprobe: rendered without helm (infra/helm/render.py), the committed rendering of
the default values kept in step with the chart, every manifest validated against Kubernetes'
schemas (kubernetes-validate) and scanned by checkov, and the review's defects checked on
what the chart renders."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.support import REPO, require

CHART = REPO / "infra/helm/kprobe"
RENDERED = REPO / "infra/helm/rendered/kprobe-default.yaml"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
K8S_VERSION = "1.31"
AGENT_PEAK_RSS = 285e6  # README: agent at ~100 k events/s, peak RSS


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("helm_render", REPO / "infra/helm/render.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["helm_render"] = module
    spec.loader.exec_module(module)
    return module


render = _renderer()


def manifests(release: str = "kprobe", overrides: dict[str, Any] | None = None
              ) -> list[dict[str, Any]]:
    text = render.render_chart(CHART, release, "kprobe", overrides)
    return [d for d in yaml.safe_load_all(text) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(doc: dict[str, Any]) -> dict[str, Any]:
    if doc["kind"] == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]  # type: ignore[no-any-return]
    return doc["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def quantity(text: str) -> float:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9, "": 1}
    m = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(text))
    assert m, text
    return float(m[1]) * units[m[2]]


# -- the rendering --------------------------------------------------------------------------

def test_committed_rendering_is_the_charts_own() -> None:
    """Any change to the chart without `make chart` fails here (the rendering cannot drift)."""
    fresh = render.render_chart(CHART, "kprobe", "kprobe")
    assert RENDERED.read_text() == fresh, "infra/helm/rendered is stale: run `make chart`"


def test_every_manifest_meets_the_kubernetes_schemas() -> None:
    docs = manifests()
    kinds = sorted({d["kind"] for d in docs})
    assert kinds == ["CronJob", "DaemonSet", "Deployment", "NetworkPolicy", "Service",
                     "ServiceAccount"], kinds
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    # control: the validator does reject a misspelt field and a wrong type
    broken = json.loads(json.dumps(by_kind(docs, "DaemonSet")["kprobe-agent"]))
    pod_spec(broken)["containers"][0]["securityContex"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    broken = json.loads(json.dumps(by_kind(docs, "Service")["kprobe-api"]))
    broken["spec"]["ports"][0]["port"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_checkov_finds_nothing_unexplained(tmp_path: Path) -> None:
    require(CHECKOV.exists(), f"checkov ({CHECKOV}; make setup installs it)")
    target = tmp_path / "kprobe-default.yaml"
    target.write_text(RENDERED.read_text())
    result = subprocess.run(
        [str(CHECKOV), "-f", str(target), "--framework", "kubernetes", "--quiet", "--compact",
         "--skip-download", "-o", "json"],
        capture_output=True, text=True, timeout=600, check=False)
    report: Any = json.loads(result.stdout)
    summary = report["summary"]
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] >= 20, summary
    assert failed == [], failed
    assert summary["passed"] >= 400, summary
    for doc in manifests():
        for key, reason in doc["metadata"].get("annotations", {}).items():
            if key.startswith("checkov.io/skip"):
                assert re.fullmatch(r"CKV\w+=\S.{30,}", reason), (key, reason)


# -- the review's defects, on what the chart renders ----------------------------------------

def test_api_takes_its_tokens_from_a_secret_and_hands_replays_to_the_runner() -> None:
    docs = manifests()
    api = by_kind(docs, "Deployment")["kprobe-api"]
    spec = pod_spec(api)
    container = spec["containers"][0]
    args = container["args"]
    assert "--no-auth" not in args
    tokens = args[args.index("--tokens-file") + 1]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "tokens")
    assert tokens.startswith(mount["mountPath"] + "/") and mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == "tokens")
    assert volume["secret"]["secretName"] == "kprobe-api-tokens"
    # no privilege at all in the API's pods; replays go to the runner's Service
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["runAsNonRoot"] is True
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["KPROBE_API_RAY_ADDRESS"] == "ray://kprobe-replay-runner:10001"
    assert "kprobe-replay-runner" in by_kind(docs, "Service")
    runner = pod_spec(by_kind(docs, "Deployment")["kprobe-replay-runner"])
    assert runner["serviceAccountName"] == "kprobe-replay"
    assert runner["containers"][0]["securityContext"]["capabilities"] == {
        "drop": ["ALL"], "add": ["DAC_OVERRIDE", "SETUID", "SETGID", "SETFCAP"]}
    # the chart's own Secret, when the tokens file is given in the values
    docs = manifests(overrides={"api": {"auth": {"existingSecret": "",
                                                 "tokensJson": '{"tokens": []}'}}})
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"] == "kprobe-api-tokens"
    assert secret["data"] == {"tokens.json": "eyJ0b2tlbnMiOiBbXX0="}
    with pytest.raises(render.TemplateError, match="api.auth"):
        manifests(overrides={"api": {"auth": {"existingSecret": "", "tokensJson": ""}}})
    # on-demand analysis (terraform's api_analyzes_on_demand grants its writes): on by
    # default, --no-analyze when turned off
    assert "--no-analyze" not in args
    off = by_kind(manifests(overrides={"api": {"analyzeOnDemand": False}}), "Deployment")
    assert "--no-analyze" in pod_spec(off["kprobe-api"])["containers"][0]["args"]


def test_agent_receivers_listen_for_the_cluster_with_services() -> None:
    docs = manifests()
    agent = pod_spec(by_kind(docs, "DaemonSet")["kprobe-agent"])["containers"][0]
    args = agent["args"]
    option = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
    assert option["--otlp-host"] == "0.0.0.0" and option["--metrics-host"] == "0.0.0.0"
    assert option["--otlp-grpc-port"] == "4317" and option["--otlp-port"] == "4318"
    ports = {p["name"]: p["containerPort"] for p in agent["ports"]}
    assert ports == {"otlp-http": 4318, "otlp-grpc": 4317, "metrics": 9464}
    service = by_kind(docs, "Service")["kprobe-agent"]
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {
        "otlp-http": 4318, "otlp-grpc": 4317, "metrics": 9464}
    assert service["spec"]["internalTrafficPolicy"] == "Local"
    api_service = by_kind(docs, "Service")["kprobe-api"]
    assert api_service["spec"]["ports"][0]["port"] == 8470
    # gRPC off: no port, no flag
    docs = manifests(overrides={"agent": {"otlp": {"grpcPort": 0}}})
    agent = pod_spec(by_kind(docs, "DaemonSet")["kprobe-agent"])["containers"][0]
    assert "--otlp-grpc-port" not in agent["args"]
    assert "otlp-grpc" not in {p["name"] for p in agent["ports"]}


def test_agent_has_the_measured_capabilities_host_mounts_tolerations_and_room() -> None:
    docs = manifests()
    spec = pod_spec(by_kind(docs, "DaemonSet")["kprobe-agent"])
    agent = spec["containers"][0]
    context = agent["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["BPF", "PERFMON", "SYSLOG"]}
    assert spec["hostPID"] is True
    mounts = {m["mountPath"]: m for m in agent["volumeMounts"]}
    host_paths = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"] if "hostPath" in v}
    for path in ("/sys/fs/cgroup", "/sys/fs/bpf", "/sys/kernel"):
        assert host_paths[mounts[path]["name"]] == path and mounts[path]["readOnly"] is True
    assert spec["tolerations"] == [{"operator": "Exists"}]
    limit = quantity(agent["resources"]["limits"]["memory"])
    request = quantity(agent["resources"]["requests"]["memory"])
    assert limit >= 1.5 * AGENT_PEAK_RSS and request >= AGENT_PEAK_RSS
    # the old values: a limit at the measured peak
    assert not quantity("300Mi") >= 1.5 * AGENT_PEAK_RSS
    docs = manifests(overrides={"agent": {"privileged": True}})
    context = pod_spec(by_kind(docs, "DaemonSet")["kprobe-agent"])["containers"][0][
        "securityContext"]
    assert context == {**context, "privileged": True} and "capabilities" not in context


def test_each_workload_has_its_own_service_account_named_as_terraform_trusts() -> None:
    docs = manifests(overrides={"serviceAccounts": {"agent": {"annotations": {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/kprobe-agent-lake"}}}})
    accounts = by_kind(docs, "ServiceAccount")
    assert set(accounts) == {"kprobe-agent", "kprobe-api", "kprobe-analyzer",
                             "kprobe-compactor", "kprobe-replay"}
    assert accounts["kprobe-agent"]["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/kprobe-agent-lake"}
    used = {d["metadata"]["name"]: pod_spec(d)["serviceAccountName"] for d in docs
            if d["kind"] in ("DaemonSet", "Deployment", "CronJob")}
    assert used == {"kprobe-agent": "kprobe-agent", "kprobe-api": "kprobe-api",
                    "kprobe-analyzer": "kprobe-analyzer", "kprobe-replay-runner": "kprobe-replay",
                    "kprobe-lake-compact": "kprobe-compactor",
                    "kprobe-lake-retain": "kprobe-compactor"}
    iam = (REPO / "terraform/iam.tf").read_text()
    for account in accounts:
        suffix = account.removeprefix("kprobe-")
        assert f'"${{var.helm_release}}-{suffix}"' in iam, account


def test_two_releases_never_select_each_others_pods() -> None:
    a, b = manifests("blue"), manifests("green")
    pods_b = [d["spec"]["template"]["metadata"]["labels"] for d in b
              if d["kind"] in ("DaemonSet", "Deployment")]
    selectors_a = [d["spec"]["selector"]["matchLabels"] for d in a
                   if d["kind"] in ("DaemonSet", "Deployment")]
    selectors_a += [d["spec"]["selector"] for d in a if d["kind"] == "Service"]
    selectors_a += [d["spec"]["podSelector"]["matchLabels"] for d in a
                    if d["kind"] == "NetworkPolicy"]
    assert len(selectors_a) == 11 and len(pods_b) == 4
    for selector in selectors_a:
        for labels in pods_b:
            assert not selector.items() <= labels.items(), (selector, labels)
    # control: each selector does select its own release's pods
    pods_a = [d["spec"]["template"]["metadata"]["labels"] for d in a
              if d["kind"] in ("DaemonSet", "Deployment")]
    assert all(any(s.items() <= labels.items() for labels in pods_a) for s in selectors_a)


def test_values_are_checked_against_the_schema() -> None:
    for bad, where in ((({"api": {"replicas": "two"}}), "api.replicas"),
                       ({"agent": {"capabilities": ["ALL"]}}, "agent.capabilities"),
                       ({"agent": {"otlp": {"httpPort": 70000}}}, "agent.otlp.httpPort"),
                       ({"lake": {"uri": "http://x"}}, "lake.uri"),
                       ({"agent": {"typo": 1}}, "agent")):
        with pytest.raises(render.TemplateError, match=re.escape(where)):
            manifests(overrides=bad)


# -- the renderer's Go template semantics ---------------------------------------------------

@pytest.mark.parametrize(("template", "expected"), [
    ("a {{- 1 }} b", "a1 b"),
    ("a {{ 1 -}} \n b", "a 1b"),
    ('{{ if eq .x 1 }}one{{ else if eq .x 2 }}two{{ else }}many{{ end }}', "two"),
    ("{{ range $i, $v := .l }}{{ $i }}={{ $v }};{{ end }}", "0=a;1=b;"),
    ("{{ range .m }}{{ . }}{{ end }}", "12"),
    ("{{ with .missing }}x{{ else }}none{{ end }}", "none"),
    ('{{ .s | default "d" | quote }}', '"d"'),
    ('{{ printf "%s-%s" "a" (.x | toString) }}', "a-2"),
    ("{{ toYaml .m | nindent 2 }}", "\n  a: 1\n  b: 2"),
    ('{{- /* a comment */ -}} x', "x"),
])
def test_renderer_follows_go_templates(template: str, expected: str) -> None:
    nodes, defines = render.parse(template)
    got = render.Renderer(defines).render(nodes, {"x": 2, "l": ["a", "b"], "m": {"b": 2, "a": 1},
                                                  "s": ""}, {"$": {}})
    assert got == expected


def test_renderer_refuses_what_it_does_not_know() -> None:
    for template, message in (("{{ lookup \"v1\" }}", "unknown function"),
                              ("{{ if .x }}open", "unclosed block"),
                              ("{{ .l }}", "printing a list")):
        with pytest.raises(render.TemplateError, match=message):
            nodes, defines = render.parse(template)
            render.Renderer(defines).render(nodes, {"x": 1, "l": [1]}, {"$": {}})


def test_every_container_command_line_is_one_kprobe_accepts() -> None:
    """The chart's args parsed by kprobe's own parser (a renamed or removed option fails here,
    not in a crash-looping pod)."""
    from kprobe.cli import build_parser

    docs = manifests(overrides={"api": {"corsOrigins": ["https://console.example"]}})
    checked = []
    for doc in docs:
        if doc["kind"] not in ("DaemonSet", "Deployment", "CronJob"):
            continue
        for container in pod_spec(doc)["containers"]:
            if "command" in container:  # the replay runner's Ray head
                assert container["command"] == ["/opt/kprobe/bin/ray"]
                continue
            args = container["args"]
            parsed = build_parser(args[0]).parse_args(args)
            assert parsed.command == args[0]
            checked.append(args[0])
    assert sorted(checked) == ["analyze", "lake", "lake", "record", "serve"]
    # control: the parser does refuse an option kprobe does not have
    with pytest.raises(SystemExit):
        build_parser("record").parse_args(["record", "--otlp-bind", "0.0.0.0"])
