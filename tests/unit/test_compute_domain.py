"""Financial domain mapping: concepts, business ids, deadlines, failures, clearing windows."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kprobe.compute.domain import DEFAULT_RULES, cutoffs_table, load_rules
from kprobe.compute.errors import RulesError
from tests.unit.test_compute_scenario import (
    MS,
    T0,
    Scenario,
    analyze,
    key,
    payment_scenario,
    span_row,
)


def _events(analysis: object) -> dict[str, dict[str, object]]:
    return {e["id"]: e for e in analysis.tables["DomainEvent"].to_pylist()}  # type: ignore[attr-defined]


def test_payment_ids_and_clearing_window_miss(lake_dir: Path) -> None:
    # GIVEN the payment running from 13:59:59.250 to 14:00:00.050
    analysis = analyze(payment_scenario(), lake_dir)
    events = _events(analysis)
    payment = events[f"Payment:{key('a')}"]
    # THEN each span is its financial operation, all carrying payment 98721
    assert (payment["type"], payment["business_id"], payment["txn_id"]) == (
        "Payment", "98721", "98721")
    assert events[f"RiskCheck:{key('b')}"]["label_completed"] == "Risk check passed"
    settle = events[f"SettlementWrite:{key('c')}"]
    assert settle["business_id"] == "98721"
    assert payment["label_started"] == "Payment #98721 received"
    # AND the payment and the settlement write missed the 14:00 clearing window by 50 ms
    assert payment["cutoff_ns"] == T0 and payment["missed_by_ns"] == 50 * MS
    assert settle["missed_by_ns"] == 50 * MS
    assert events[f"ClearingWindow:{T0}"]["cutoff_label"] == "14:00 clearing window"
    # the risk check ended long before the cutoff: nothing missed
    assert events[f"RiskCheck:{key('b')}"]["missed_by_ns"] is None


def test_operation_deadline_from_rules_file(lake_dir: Path, tmp_path: Path) -> None:
    # GIVEN rules that give payment-handler a 750 ms deadline, and a payment span that
    # carries no deadline attribute and no error status
    rules = yaml.safe_load(DEFAULT_RULES.read_text())
    rules["operations"] = [{"service": "^payment-handler$", "name": "POST", "deadline_ms": 750}]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    sc = Scenario().process(100, "payment-handler")
    sc.run(0, 100, 101, 0, 800, leave="S")
    sc.span("t1", "a", None, "payment-handler", "POST /payments", 0, 800, pid=100, tid=101,
            attrs={"payment_id": "P-1"})
    sc.span("t1", "b", None, "payment-handler", "GET /health", 0, 800, pid=100, tid=101)
    analysis = analyze(sc, lake_dir, rules_path=path)
    a, b = span_row(analysis, "a"), span_row(analysis, "b")
    # THEN the payment failed by its deadline: 50 ms too late, only on-CPU work to blame
    assert (a["concept"], a["business_id"], a["deadline_ns"]) == ("Payment", "P-1", 750 * MS)
    assert a["failed"] and a["failure_kind"] == "timeout" and a["over_ns"] == 50 * MS
    assert a["root_cause_kind"] == "app_cpu"
    assert not b["failed"] and b["deadline_ns"] is None and b["concept"] is None


def test_timeout_message_without_deadline(lake_dir: Path) -> None:
    sc = Scenario().process(100, "orders")
    sc.span("t1", "a", None, "orders", "new_order", 0, 30, pid=100, status="ERROR",
            message="upstream request timed out", attrs={"order.id": "O-9"})
    sc.span("t1", "b", None, "orders", "cancel order", 0, 30, pid=100, status="ERROR",
            message="insufficient funds")
    analysis = analyze(sc, lake_dir)
    a, b = span_row(analysis, "a"), span_row(analysis, "b")
    assert (a["concept"], a["business_id"], a["failure_kind"], a["over_ns"]) == (
        "OrderBookOp", "O-9", "timeout", None)
    assert (b["concept"], b["failure_kind"]) == ("OrderBookOp", "error")


def test_bad_rules_are_one_line_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("version: 1\nconcepts:\n  - concept: Payment\n    match: [{name: '(['}]\n")
    with pytest.raises(RulesError, match=r"concepts\.0\.match\.0\.name: .*bad regular"):
        load_rules(path)
    path.write_text("version: 2\n")
    with pytest.raises(RulesError, match="version"):
        load_rules(path)
    with pytest.raises(RulesError, match="cannot read rules"):
        load_rules(tmp_path / "missing.yaml")
    path.write_text("version: [\n")
    with pytest.raises(RulesError, match="not valid YAML"):
        load_rules(path)


def test_cutoffs_follow_the_time_zone() -> None:
    rules = load_rules()
    assert rules.clearing is not None and rules.clearing.cutoffs == ["14:00", "16:30"]
    london = rules.model_copy(update={"clearing": rules.clearing.model_copy(
        update={"timezone": "Europe/London"})})
    summer = 1_782_900_000_000_000_000  # 2026-07-01, British Summer Time (UTC+1)
    table = cutoffs_table(london, summer, summer).to_pylist()
    assert {"cutoff_ns": 1_782_910_800_000_000_000, "cutoff_label": "14:00 Europe/London"} \
        in table  # 2026-07-01T13:00:00Z
