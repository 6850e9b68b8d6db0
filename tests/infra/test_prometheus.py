"""Alert rules and dashboards against real Prometheus (Debian's): promtool checks and unit
tests the rules; a Prometheus server scrapes a recording agent, the query API and the
continuous analysis; every metric a rule or dashboard names exists in their live /metrics,
and every dashboard query is valid PromQL to that server."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support import REPO, deadline_s, free_port, require_binary, require_root

PROM = REPO / "infra" / "prometheus"
DASHBOARDS = sorted((REPO / "infra" / "grafana" / "dashboards").glob("*.json"))
_METRIC = re.compile(r"\b(kprobe_[a-z0-9_]+)\b")


def test_rules_pass_promtool_check_and_their_unit_tests(tmp_path: Path) -> None:
    promtool = require_binary("promtool")
    check = subprocess.run([promtool, "check", "rules", str(PROM / "kprobe-alerts.yml")],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 14 rules found" in check.stdout
    tested = subprocess.run([promtool, "test", "rules", "kprobe-alerts.test.yml"], cwd=PROM,
                            capture_output=True, text=True)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    config = subprocess.run([promtool, "check", "config", "prometheus.example.yml"], cwd=PROM,
                            capture_output=True, text=True)
    assert config.returncode == 0, config.stdout + config.stderr
    # controls: a rule with a broken expression, and an alert that no longer fires, fail
    broken = tmp_path / "broken.yml"
    broken.write_text((PROM / "kprobe-alerts.yml").read_text().replace(
        "kprobe_analysis_lag_seconds > 300", "kprobe_analysis_lag_seconds >"))
    assert subprocess.run([promtool, "check", "rules", str(broken)],
                          capture_output=True).returncode != 0
    quiet = tmp_path / "kprobe-alerts.yml"
    quiet.write_text((PROM / "kprobe-alerts.yml").read_text().replace(
        "kprobe_analysis_lag_seconds > 300", "kprobe_analysis_lag_seconds > 3000"))
    (tmp_path / "t.yml").write_text((PROM / "kprobe-alerts.test.yml").read_text())
    assert subprocess.run([promtool, "test", "rules", "t.yml"], cwd=tmp_path,
                          capture_output=True).returncode != 0


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - loopback
        return str(answer.read().decode())


def _names(exposition: str) -> set[str]:
    """Sample names a /metrics page can have: from its TYPE lines (a labelled family with
    no sample yet is still declared) and its samples."""
    names: set[str] = set()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                "summary": ("_sum", "_count", ""), "gauge": ("",), "untyped": ("",)}
    for line in exposition.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            if kind == "counter":  # declared with or without its _total, by version
                name = name.removesuffix("_total")
            names.update(name + s for s in suffixes.get(kind, ("",)))
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _exprs() -> list[tuple[str, str]]:
    """(where, expr) of every dashboard query and alert rule."""
    found = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((f"{path.name}: {panel['title']}", target["expr"]))
    rules = (PROM / "kprobe-alerts.yml").read_text()
    for alert, expr in re.findall(r"- alert: (\w+)\n\s+expr: (>\n(?:\s{10}.*\n)+|.*\n)", rules):
        found.append((alert, " ".join(expr.removeprefix(">").split())))
    return found


@contextmanager
def _process(args: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    out = log.open("wb")
    proc = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=deadline_s(120))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        out.close()


def _until(what: str, check: object, timeout_s: float = 120) -> object:
    deadline = time.monotonic() + deadline_s(timeout_s)
    while True:
        try:
            value = check()  # type: ignore[operator]
        except OSError:
            value = None
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def test_prometheus_scrapes_agent_api_and_analysis(tmp_path: Path) -> None:
    """GIVEN a recording agent, `kprobe serve` and `kprobe analyze --follow`, each with its
    /metrics, WHEN Debian's Prometheus scrapes them with the shipped rules THEN all three
    targets are up, their metrics are queryable, the rules load healthy, and every metric
    a dashboard or rule names is in their live /metrics."""
    require_root()
    prometheus = require_binary("prometheus")
    lake = tmp_path / "lake"
    agent_port, api_port, follow_port, prom_port = (free_port() for _ in range(4))
    kprobe = [sys.executable, "-m", "kprobe"]
    config = tmp_path / "prometheus.yml"
    (tmp_path / "kprobe-alerts.yml").write_text((PROM / "kprobe-alerts.yml").read_text())
    config.write_text(f"""
global: {{scrape_interval: 1s, evaluation_interval: 1s}}
rule_files: [kprobe-alerts.yml]
scrape_configs:
  - job_name: kprobe-agent
    static_configs: [{{targets: ["127.0.0.1:{agent_port}"]}}]
  - job_name: kprobe-api
    static_configs: [{{targets: ["127.0.0.1:{api_port}"]}}]
  - job_name: kprobe-analysis
    static_configs: [{{targets: ["127.0.0.1:{follow_port}"]}}]
""")
    with _process([*kprobe, "record", "--lake", str(lake), "--spool-dir",
                   str(tmp_path / "spool"), "--families", "process", "--no-otlp",
                   "--flush-interval", "0.5", "--metrics-port", str(agent_port)],
                  tmp_path / "record.log"), \
            _process([*kprobe, "serve", "--lake", str(lake), "--no-auth", "--port",
                      str(api_port)], tmp_path / "serve.log"), \
            _process([*kprobe, "analyze", "--follow", "--lake", str(lake), "--window", "5s",
                      "--grace", "2s", "--poll", "0.5s", "--metrics-port", str(follow_port)],
                     tmp_path / "follow.log"), \
            _process([prometheus, f"--config.file={config}",
                      f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                      f"--web.listen-address=127.0.0.1:{prom_port}"],
                     tmp_path / "prometheus.log"):
        api = f"http://127.0.0.1:{prom_port}/api/v1"
        endpoints = {"agent": f"http://127.0.0.1:{agent_port}/metrics",
                     "api": f"http://127.0.0.1:{api_port}/metrics",
                     "analysis": f"http://127.0.0.1:{follow_port}/metrics"}
        pages = {name: str(_until(f"{name} /metrics", lambda u=url: _get(u), 240))
                 for name, url in endpoints.items()}
        _get(f"http://127.0.0.1:{api_port}/healthz")  # one request the API counts

        def targets_up() -> bool:
            active = json.loads(_get(f"{api}/targets"))["data"]["activeTargets"]
            return len(active) == 3 and all(t["health"] == "up" for t in active)

        _until("all three targets up", targets_up, 120)

        def query(expr: str) -> dict[str, object]:
            url = f"{api}/query?" + urllib.parse.urlencode({"query": expr})
            try:
                return dict(json.loads(_get(url)))
            except urllib.error.HTTPError as err:  # 400: the expression does not parse
                return dict(json.loads(err.read().decode()))

        for expr in ('kprobe_flushes_total{job="kprobe-agent"} > 0',
                     'kprobe_analysis_polls_total{job="kprobe-analysis"} > 0',
                     'kprobe_api_requests_total{job="kprobe-api"} > 0'):
            _until(expr, lambda e=expr: query(e)["data"]["result"], 60)  # type: ignore[index]

        def rules_loaded() -> list[dict[str, object]]:
            groups = json.loads(_get(f"{api}/rules"))["data"]["groups"]
            return [r for g in groups for r in g["rules"]]

        rules = rules_loaded()
        assert len(rules) == 14
        _until("rules evaluated", lambda: all(r.get("health") == "ok"
                                              for r in rules_loaded()), 60)
        # every metric a dashboard or a rule names is in a live /metrics page
        live = set().union(*(_names(page) for page in pages.values()))
        exprs = _exprs()
        assert len(exprs) > 30
        missing = {(where, name) for where, expr in exprs for name in _METRIC.findall(expr)
                   if name not in live}
        assert not missing, sorted(missing)
        # control: a misspelt metric is caught by the same check
        assert "kprobe_flush_total" not in live
        # every dashboard query parses at this Prometheus
        for where, expr in exprs:
            answer = query(expr.replace("$instance", ".*"))
            assert answer["status"] == "success", (where, expr, answer)
        assert query("sum(rate(kprobe_events_total[1m]")["status"] == "error"  # control
