"""Probe families as the agent sees them: registered explicitly, typed (``ProbeFamily``),
every ring's converter behind the one shared header check, the agent's options reaching
each family's sensor, and the agent itself knowing no family by name."""

from __future__ import annotations

import ast
import inspect

import numpy as np
import pytest

from kprobe.capture_agent import agent
from kprobe.capture_agent.clock import ClockSample
from kprobe.capture_agent.errors import RingBufferError
from kprobe.capture_agent.families import FAMILIES, PROBE_FAMILIES, AgentOptions, ProbeFamily
from kprobe.capture_agent.layouts import EVENT_HEADER

CLOCK = ClockSample(mono_to_epoch_ns=1_700_000_000_000_000_000, bracket_ns=0, taken_at_ns=0)
RINGS = [(name, ring) for name, cls in PROBE_FAMILIES.items() for ring in cls.rings]


def test_every_family_is_registered_and_typed() -> None:
    assert list(PROBE_FAMILIES) == ["sched", "net", "block", "mem", "process", "syscalls"]
    for name, cls in PROBE_FAMILIES.items():
        assert issubclass(cls, ProbeFamily) and not inspect.isabstract(cls)
        assert cls.family is FAMILIES[name] and cls.family.name == name
        # the rings the agent drains are exactly the rings the layouts declare
        assert set(cls.rings) == set(cls.family.rings)


def _batch(family: str, ring: str, *, version: int | None = None,
           kind: int | None = None) -> np.ndarray:
    cls = PROBE_FAMILIES[family]
    batch = np.zeros(3, dtype=cls.family.rings[ring])
    batch["hdr"]["version"] = cls.family.layout_version if version is None else version
    if kind is not None:
        batch["hdr"]["kind"] = kind
    return batch


@pytest.mark.parametrize(("family", "ring"), RINGS)
def test_every_converter_refuses_another_layout_version(family: str, ring: str) -> None:
    probes = PROBE_FAMILIES[family](AgentOptions())
    bad = _batch(family, ring, version=PROBE_FAMILIES[family].family.layout_version + 7)
    with pytest.raises(RingBufferError, match=f"{family} record layout version"):
        probes.convert(ring, bad, CLOCK)


@pytest.mark.parametrize(("family", "ring"), RINGS)
def test_every_converter_refuses_a_foreign_kind(family: str, ring: str) -> None:
    probes = PROBE_FAMILIES[family](AgentOptions())
    with pytest.raises(RingBufferError, match=f"unexpected record kinds in a {family} batch"):
        probes.convert(ring, _batch(family, ring, kind=0xFFF0), CLOCK)


def test_an_empty_batch_converts_to_no_rows() -> None:
    probes = PROBE_FAMILIES["net"](AgentOptions())
    out = probes.convert("net_events", np.zeros(0, FAMILIES["net"].rings["net_events"]), CLOCK)
    assert {t: r.num_rows for t, r in out.items()} == {"net": 0}


def test_the_agents_options_reach_each_sensor() -> None:
    options = AgentOptions(target_all=True, min_offcpu_ns=5_000_000, payloads=True,
                           payload_cap=4096, vdso_clocks=False)
    sched = PROBE_FAMILIES["sched"](options).sensor_spec({"targets": 7})
    assert sched.config["min_offcpu_ns"] == 5_000_000 and sched.config["target_all"] == 1
    assert sched.shared_maps == {"targets": 7}
    syscalls = PROBE_FAMILIES["syscalls"](options).sensor_spec({})
    assert syscalls.config["capture_payloads"] == 1 and syscalls.config["payload_cap"] == 4096
    assert not syscalls.uprobes  # no vDSO clock uprobes when asked not to
    idle = PROBE_FAMILIES["syscalls"](AgentOptions()).sensor_spec({})
    assert idle.config["capture_payloads"] == 0 and idle.config["target_all"] == 0
    assert PROBE_FAMILIES["net"](options).sensor_spec({}).config["target_all"] == 1
    # per-process uprobes: only the family that places them says where
    assert PROBE_FAMILIES["syscalls"](options).uprobe_places() is not None
    assert PROBE_FAMILIES["sched"](options).uprobe_places() is None


def test_evidence_capture_bounds_a_targets_syscalls_only_without_payloads() -> None:
    def bound(**kw: object) -> object:
        return PROBE_FAMILIES["syscalls"](AgentOptions(**kw)).sensor_spec({}) \
            .config["min_syscall_ns"]  # type: ignore[arg-type]

    assert bound(capture="evidence", min_offcpu_ns=3_000_000) == 3_000_000
    # payloads feed a replay, which needs every call; full capture writes every call
    assert bound(capture="evidence", payloads=True) == 0
    assert bound(capture="full") == 0


def test_the_agent_knows_no_family_by_name() -> None:
    """No getattr probing of family modules, no family or table special-cased."""
    tree = ast.parse(inspect.getsource(agent.Agent))
    names = {n.func.id for n in ast.walk(tree)
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "getattr" not in names
    strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
               and isinstance(n.value, str)}
    assert not strings & {"sched", "offcpu", "kstacks", "net", "block", "mem", "process"}
    assert EVENT_HEADER.itemsize == 16  # the header every ring's records start with
