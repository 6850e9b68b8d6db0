"""``explain``: the chain from the business event to the kernel event, as typed data (compute),
as text (``kprobe explain``) and as JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kprobe.cli import main
from kprobe.commands._explain_text import LEGEND, chain_lines
from kprobe.compute.analysis import run_window
from kprobe.compute.errors import GraphNotFound, NotFound
from kprobe.compute.explain import explain, fmt_bytes, fmt_ns
from kprobe.compute.explain_model import Explanation, FailureStep, KernelStep
from kprobe.compute.settings import ComputeSettings
from kprobe.compute.window import Window
from kprobe.lake import LakeLocation, LakeSettings, resolve
from tests.unit.test_compute_scenario import (
    WINDOW_END,
    WINDOW_START,
    key,
    payment_scenario,
)

EXPECTED = """\
[Payment #98721 received]
  | 0.4 ms  [Risk check passed]
  | 1.2 ms  [Settlement write initiated]
  |   [KERNEL: memcg reclaim 790 ms]  <- batch job PID 4721 allocating 1.2 GiB in the same cgroup
  | 798 ms  [Settlement write completed]
  [TIMEOUT: payment-handler exceeded 750 ms]  <- root cause: memory pressure (50 ms too late)
  [MISSED: the 14:00 clearing window by 50 ms]
[Payment failed]"""


@pytest.fixture
def analysed(lake_dir: Path) -> LakeLocation:
    payment_scenario().write(lake_dir)
    location = resolve(LakeSettings(lake=str(lake_dir)))
    run_window(location, Window(WINDOW_START, WINDOW_END), ComputeSettings())
    return location


def test_explain_text(analysed: LakeLocation) -> None:
    # WHEN the payment is explained by its business id
    [result] = explain(analysed, "98721", ComputeSettings())
    # THEN the chain runs from the payment down to the reclaim and its driver, and ends
    # with the timeout, its root cause, the missed clearing window and the outcome
    assert "\n".join(chain_lines(result)) == EXPECTED


def test_explain_is_typed_data(analysed: LakeLocation) -> None:
    [by_trace] = explain(analysed, "t1".ljust(32, "0"), ComputeSettings())
    [result] = explain(analysed, "98721", ComputeSettings())
    assert by_trace.steps == result.steps
    kernel = [s for s in result.steps if isinstance(s, KernelStep)]
    assert kernel[0].cause == "memory_pressure" and kernel[0].span == key("c")
    assert kernel[0].driver is not None and kernel[0].driver.pid == 4721
    assert kernel[0].delay_ns == 790_000_000
    # evidence arrives parsed (once, by the graph read), not as JSON text
    assert isinstance(kernel[0].driver.evidence, dict)
    assert kernel[0].label == "memcg reclaim 790 ms"
    assert kernel[0].detail == "batch job PID 4721 allocating 1.2 GiB in the same cgroup"
    assert isinstance(result.failure, FailureStep) and result.failure.over_ns == 50_000_000
    assert result.root_cause is not None and result.root_cause.kind == "memory_pressure"
    assert result.root_cause.sufficient is True
    assert (result.root_cause.driver or "").startswith("batch job PID 4721")
    assert result.concept == "Payment" and result.business_id == "98721"
    # the JSON document round-trips to the same typed data, and carries no CLI text
    doc = Explanation(query="98721", transactions=[result]).model_dump(mode="json")
    assert Explanation.model_validate(doc).transactions == [result]
    assert "text" not in doc["transactions"][0]
    assert all("line" not in step for step in doc["transactions"][0]["steps"])


def test_explain_cli(analysed: LakeLocation, capsys: pytest.CaptureFixture[str]) -> None:
    lake = analysed.root
    assert main(["explain", "--lake", lake, "98721"]) == 0
    out = capsys.readouterr().out
    legend, block = out.rstrip("\n").split("\n\n")
    heading, *chain = block.splitlines()
    assert legend == LEGEND and "left column: time since the event line above" in legend
    # the heading names the transaction and its start as a UTC time, not nanoseconds
    assert heading.startswith("# Payment 98721: failed; payment-handler: ")
    assert re.search(r"started \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z, took", heading)
    assert "\n".join(chain) == EXPECTED
    assert main(["explain", "--lake", lake, "--format", "json", "98721"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["query"] == "98721"
    assert data["transactions"][0]["root_cause"]["kind"] == "memory_pressure"
    assert main(["explain", "--lake", lake, "nope"]) == 2
    assert "no transaction, trace or span 'nope'" in capsys.readouterr().err


def test_explain_before_analysis(lake_dir: Path) -> None:
    payment_scenario().write(lake_dir)
    location = resolve(LakeSettings(lake=str(lake_dir)))
    with pytest.raises(GraphNotFound, match="run kprobe analyze"):
        explain(location, "98721", ComputeSettings())
    with pytest.raises(NotFound):
        run_window(location, Window(WINDOW_START, WINDOW_END), ComputeSettings())
        explain(location, "12345", ComputeSettings())


def test_formats() -> None:
    assert [fmt_ns(v) for v in (35_000, 400_000, 1_200_000, 50_000_000, 790_000_000,
                                1_500_000_000)] == ["35 µs", "0.4 ms", "1.2 ms", "50 ms",
                                                    "790 ms", "1.5 s"]
    assert fmt_bytes(314_572 * 4096) == "1.2 GiB" and fmt_bytes(512) == "512 B"
