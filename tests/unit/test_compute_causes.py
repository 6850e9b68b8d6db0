"""Cause attribution on synthetic lake rows: each cause names who or what delayed whom."""

from __future__ import annotations

from pathlib import Path

from tests.unit.test_compute_scenario import (
    MS,
    Scenario,
    analyze,
    key,
    payment_scenario,
    rels,
    span_row,
)


def test_memory_pressure_names_the_allocating_process(lake_dir: Path) -> None:
    # GIVEN the payment that reclaimed for 790 ms while batch-job allocated 1.2 GiB
    analysis = analyze(payment_scenario(), lake_dir)
    # THEN the payment (and its settlement write) were delayed by one pressure episode
    delayed = rels(analysis, src=key("a"), kind="memory_pressure")
    assert len(delayed) == 1
    edge = delayed[0]
    assert edge["delay_ns"] == 790 * MS
    assert edge["dst"].startswith("mem:n1:7:")
    assert edge["evidence"]["mem"][0]["tid"] == 101  # the row reference: reclaim on 101
    assert edge["evidence"]["offcpu"][0]["wait_reason"] == "reclaim"
    assert rels(analysis, src=key("c"), kind="memory_pressure")[0]["dst"] == edge["dst"]
    # AND the episode was driven by batch-job: most pages, in the same memcg
    drivers = sorted(rels(analysis, "CAUSED_BY", src=edge["dst"]), key=lambda r: r["rank"])
    assert [d["dst"] for d in drivers] == ["n1:4721", "n1:555"]
    top = drivers[0]
    assert top["kind"] == "memory_driver" and top["bytes"] == 314_572 * 4096
    assert top["evidence"]["same_memcg"] is True and top["evidence"]["share"] > 0.99
    processes = {p["id"]: p for p in analysis.tables["Process"].to_pylist()}
    assert processes["n1:4721"]["role"] == "batch job"
    # AND the failed payment's root cause is that episode: 790 ms >= 50 ms late
    payment = span_row(analysis, "a")
    assert payment["failed"] and payment["failure_kind"] == "timeout"
    assert payment["over_ns"] == 50 * MS
    assert (payment["root_cause_kind"], payment["root_cause_target"]) == (
        "memory_pressure", edge["dst"])
    assert payment["root_cause_sufficient"] is True


def test_cpu_contention_names_the_hog(lake_dir: Path) -> None:
    # GIVEN thread 601 preempted on CPU 0 by stress (tid 701) for 60 ms of its 100 ms
    sc = Scenario().process(600, "quotes").process(700, "stress")
    sc.run(0, 600, 601, 0, 10, leave="R").run(0, 700, 701, 10, 70, leave="R")
    sc.run(0, 600, 601, 70, 100, leave="S")
    sc.run(1, 700, 702, -10, 110, leave="R")  # the other CPU is busy too
    sc.span("t2", "q", None, "quotes", "order.book.update", 0, 100, pid=600, tid=601,
            attrs={"order.id": "O-1"})
    analysis = analyze(sc, lake_dir)
    # THEN 60 ms of run-queue wait, all held by tid 701; nothing else
    q = span_row(analysis, "q", "t2")
    assert (q["on_cpu_ns"], q["runqueue_ns"], q["blocked_ns"]) == (40 * MS, 60 * MS, 0)
    edges = rels(analysis, src=key("q", "t2"))
    assert [(e["kind"], e["dst"], e["delay_ns"]) for e in edges] == [
        ("cpu_contention", "n1:701", 60 * MS)]
    assert edges[0]["evidence"]["sched"][0]["cpu"] == 0


def _lock_scenario() -> Scenario:
    """ledger-api (tid 201) waits 280 ms on a futex held by ledger-writer (tid 302), which
    spends that time in memcg reclaim (memcg 9) while nightly-report allocates."""
    sc = Scenario().process(200, "ledger-api", cgroup_id=5)
    sc.process(300, "ledger-writer", cgroup_id=9).process(4800, "nightly-report", cgroup_id=9)
    sc.run(0, 200, 201, 0, 10, leave="S")
    sc.offcpu(200, 201, 10, 290, "futex", waker=(300, 302))
    sc.wake(290, (200, 201), (300, 302))
    sc.run(0, 200, 201, 290, 300, leave="S")
    sc.run(1, 300, 302, 0, 295, leave="S")
    sc.reclaim(300, 302, 20, 280, memcg=9)
    sc.page_alloc(4800, 300, 200_000, 9)
    sc.span("t3", "l", None, "ledger-api", "ledger.write", 0, 300, pid=200, tid=201,
            status="ERROR", message="context deadline exceeded",
            attrs={"ledger.entry_id": "L-7", "deadline_ms": 100})
    sc.span("t4", "w", None, "ledger-writer", "flush", 0, 295, pid=300, tid=302)
    return sc


def test_lock_wait_names_the_waker_and_follows_it(lake_dir: Path) -> None:
    analysis = analyze(_lock_scenario(), lake_dir)
    waits = rels(analysis, src=key("l", "t3"), kind="lock_wait")
    # THEN the wait points at the waker thread, with what it was doing
    assert [(w["dst"], w["delay_ns"]) for w in waits] == [("n1:302", 280 * MS)]
    ev = waits[0]["evidence"]
    assert ev["waker_tid"] == 302 and ev["waker_spans"][0]["name"] == "flush"
    assert ev["waker_activity"]["on_cpu_ns"] == 280 * MS
    # AND the holder's own time during the wait was analysed (one hop further)
    holders = rels(analysis, src=key("l", "t3"), kind="holder")
    assert len(holders) == 1
    holder_causes = rels(analysis, src=holders[0]["dst"], kind="memory_pressure")
    assert holder_causes and holder_causes[0]["delay_ns"] == 260 * MS
    # AND the root cause is the deepest sufficient one: the holder's memory pressure
    ledger = span_row(analysis, "l", "t3")
    assert ledger["over_ns"] == 200 * MS
    assert ledger["root_cause_kind"] == "memory_pressure"
    assert rels(analysis, "CAUSED_BY", src=holder_causes[0]["dst"])[0]["dst"] == "n1:4800"
    woke = rels(analysis, "WOKE", src="n1:302")
    assert woke and woke[0]["dst"] == "n1:201" and woke[0]["kind"] == "futex"


def test_disk_wait_names_the_writer(lake_dir: Path) -> None:
    sc = Scenario().process(1000, "settlement").process(1100, "backup-agent")
    sc.run(0, 1000, 1001, 0, 5, leave="D")
    sc.offcpu(1000, 1001, 5, 180, "disk", state="D")
    sc.wake(180, (1000, 1001), (0, 0))
    sc.run(0, 1000, 1001, 180, 200, leave="S")
    sc.block_io(1000, 1001, 5, 178, 4096)
    for i in range(4):
        sc.block_io(1100, 1101, i * 45, i * 45 + 50, 64 << 20)
    sc.span("t5", "s", None, "settlement", "settlement.write", 0, 200, pid=1000, tid=1001)
    analysis = analyze(sc, lake_dir)
    edges = rels(analysis, src=key("s", "t5"), kind="disk")
    assert len(edges) == 1 and edges[0]["delay_ns"] == 175 * MS
    assert edges[0]["evidence"]["own_bytes"] == 4096
    drivers = rels(analysis, "CAUSED_BY", src=edges[0]["dst"], kind="disk_driver")
    top = min(drivers, key=lambda d: d["rank"])
    assert top["dst"] == "n1:1100" and top["bytes"] == 4 * (64 << 20)


def _fsync_behind_a_flood(own_request_after_the_wait: bool,
                          own_request_before_the_wait: bool = False) -> Scenario:
    """Settlement's fsync blocked 5-150 ms on device 254:0, whose busy period (a backup's
    flood) ended at 60 ms; a decoy kept 7:0 busy until 40 ms. Settlement's own write to
    254:0 goes out when the wait ends (a CI run of the disk scenario: 46 ms of the wait
    came after the flood's last request completed, the device idle, the write held back)."""
    sc = Scenario().process(1000, "settlement").process(1100, "backup-agent")
    sc.process(1200, "decoy-writer")
    sc.run(0, 1000, 1001, 0, 5, leave="D")
    sc.offcpu(1000, 1001, 5, 150, "disk", state="D")
    sc.wake(150, (1000, 1001), (0, 0))
    sc.run(0, 1000, 1001, 150, 160, leave="S")
    for i in range(4):
        sc.block_io(1100, 1101, -20 + i * 5, 60, 4 << 20, dev="254:0")
        sc.block_io(1200, 1201, -10 + i * 5, 40, 4 << 20, dev="7:0")
    if own_request_after_the_wait:
        sc.block_io(1000, 1001, 150.03, 150.2, 4096, dev="254:0")
    if own_request_before_the_wait:  # its previous write, before the flood
        sc.block_io(1000, 1001, -40, -39.8, 4096, dev="254:0")
    sc.span("t7", "s", None, "settlement", "settlement.write", 0, 160, pid=1000, tid=1001)
    return sc


def test_a_disk_wait_past_the_flood_is_the_floods_on_the_device_it_waited_for(
        lake_dir: Path, tmp_path: Path) -> None:
    # GIVEN the fsync whose own write to 254:0 went out as its wait ended
    analysis = analyze(_fsync_behind_a_flood(True), lake_dir)
    # THEN its whole wait is the 254:0 episode's (the backup's), the decoy device's nothing
    edges = rels(analysis, src=key("s", "t7"), kind="disk")
    assert [(e["dst"].split(":")[2], e["delay_ns"]) for e in edges] == [("254", 145 * MS)]
    drivers = rels(analysis, "CAUSED_BY", src=edges[0]["dst"], kind="disk_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:1100"
    # control: without its own request to name the device, only the busy periods' overlap
    # counts, on each device (nothing is extended by guess)
    other = tmp_path / "control"
    other.mkdir()
    control = analyze(_fsync_behind_a_flood(False), other)
    delays = sorted((e["dst"].split(":")[2], e["delay_ns"])
                    for e in rels(control, src=key("s", "t7"), kind="disk"))
    assert delays == [("254", 55 * MS), ("7", 35 * MS)]


def test_a_disk_wait_whose_write_a_flusher_sent_is_on_the_device_its_process_writes_to(
        lake_dir: Path) -> None:
    """GIVEN the same fsync, none of whose requests its process sent (the kernel's flusher
    wrote its pages back: a clean-clone run of the disk scenario), but whose process sent
    its previous write to 254:0
    THEN its wait is the 254:0 episode's (the backup's), the busier decoy device's
    nothing (before: every busy device, and a payment was blamed on the decoy)."""
    analysis = analyze(_fsync_behind_a_flood(False, own_request_before_the_wait=True),
                       lake_dir)
    edges = rels(analysis, src=key("s", "t7"), kind="disk")
    assert [(e["dst"].split(":")[2], e["delay_ns"]) for e in edges] == [("254", 145 * MS)]
    drivers = rels(analysis, "CAUSED_BY", src=edges[0]["dst"], kind="disk_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:1100"


def _fsync_after_a_flood(flood_ended_ms_before: float) -> Scenario:
    """An fsync blocked 0-80 ms on 254:0 with nothing in flight there: the backup's flood
    ended before the wait began; the fsync's own write goes out as the wait ends."""
    sc = Scenario().process(1000, "settlement").process(1100, "backup-agent")
    sc.run(0, 1000, 1001, -1, 0, leave="D")
    sc.offcpu(1000, 1001, 0, 80, "disk", state="D")
    sc.wake(80, (1000, 1001), (0, 0))
    sc.run(0, 1000, 1001, 80, 90, leave="S")
    end = -flood_ended_ms_before
    for i in range(4):
        sc.block_io(1100, 1101, end - 80 + i, end, 4 << 20, dev="254:0")
    sc.block_io(1000, 1001, 80.03, 80.2, 4096, dev="254:0")
    sc.span("t8", "s", None, "settlement", "settlement.write", 0, 90, pid=1000, tid=1001)
    return sc


def test_a_disk_wait_just_after_a_flood_is_the_floods_and_a_later_one_is_not(
        lake_dir: Path, tmp_path: Path) -> None:
    # GIVEN the flood ended 20 ms before the wait (within disk_aftermath_ns, 250 ms)
    analysis = analyze(_fsync_after_a_flood(20), lake_dir)
    [edge] = rels(analysis, src=key("s", "t8"), kind="disk")
    assert (edge["dst"].split(":")[2], edge["delay_ns"]) == ("254", 80 * MS)
    drivers = rels(analysis, "CAUSED_BY", src=edge["dst"], kind="disk_driver")
    assert min(drivers, key=lambda d: d["rank"])["dst"] == "n1:1100"
    # control: a flood that ended 400 ms before is not blamed: the wait is I/O unseen
    other = tmp_path / "control"
    other.mkdir()
    [edge] = rels(analyze(_fsync_after_a_flood(400), other), src=key("s", "t8"), kind="disk")
    assert edge["dst"].split(":")[2] == "?" and edge["delay_ns"] == 80 * MS


def test_retransmit_on_the_span_connection(lake_dir: Path) -> None:
    # GIVEN a client span with no thread id: its server port and pid find the connection
    sc = Scenario().process(1200, "gateway").process(1250, "other")
    local, remote = ("10.0.0.1", 40000), ("10.0.0.2", 8443)
    sc.run(0, 1200, 1201, 0, 2, leave="S").run(0, 1200, 1201, 390, 400, leave="S")
    sc.net("send", 1, 1200, 1201, local, remote, 300)
    sc.net("retransmit", 201, None, None, local, remote)
    sc.net("recv", 390, 1200, 1201, local, remote, 900)
    # another connection's retransmit at the same time must not count
    sc.net("retransmit", 150, None, None, ("10.0.0.1", 40001), remote)
    sc.span("t6", "g", None, "gateway", "POST /risk", 0, 400, pid=1200, kind="CLIENT",
            server_port=8443, server_address="10.0.0.2")
    analysis = analyze(sc, lake_dir)
    g = span_row(analysis, "g", "t6")
    assert (g["tid"], g["mapped_by"], g["conn"]) == (
        1201, "net_tuple", "10.0.0.1:40000-10.0.0.2:8443")
    edges = rels(analysis, src=key("g", "t6"), kind="network")
    assert [(e["delay_ns"], e["count"]) for e in edges] == [(200 * MS, 1)]
    assert edges[0]["evidence"]["net"][0]["kind"] == "retransmit"


def test_uninstrumented_server_found_by_four_tuple(lake_dir: Path) -> None:
    # GIVEN a client span (deadline 100 ms) whose server (limits-svc) has no spans and
    # spent 270 ms of the call in memcg reclaim
    sc = Scenario().process(1300, "risk-client").process(1400, "limits-svc", cgroup_id=4)
    sc.process(1500, "cache-warmer", cgroup_id=4)
    client, server = ("127.0.0.1", 41000), ("127.0.0.1", 9000)
    sc.run(0, 1300, 1301, 0, 1, leave="S").run(0, 1300, 1301, 291, 300, leave="S")
    sc.net("send", 1, 1300, 1301, client, server, 200)
    sc.net("recv", 2, 1400, 1401, server, client, 200)
    sc.run(1, 1400, 1401, 2, 290, leave="S")
    sc.reclaim(1400, 1401, 10, 280, memcg=4)
    sc.page_alloc(1500, 290, 50_000, 4)
    sc.net("send", 290, 1400, 1401, server, client, 800)
    sc.net("recv", 291, 1300, 1301, client, server, 800)
    sc.span("t7", "r", None, "risk-client", "GET /limits", 0, 300, pid=1300, kind="CLIENT",
            server_port=9000, attrs={"kprobe.deadline_ms": 100})
    analysis = analyze(sc, lake_dir)
    # THEN the server side became a synthetic span on the server's thread ...
    calls = [r for r in rels(analysis, src=key("r", "t7"), kind="remote_call")
             if r["dst_label"] == "Span"]
    assert len(calls) == 1
    server_span = [s for s in analysis.tables["Span"].to_pylist() if s["id"] == calls[0]["dst"]]
    assert server_span[0]["origin"] == "remote" and server_span[0]["tid"] == 1401
    assert server_span[0]["service"] == "limits-svc"
    assert calls[0]["delay_ns"] == 288 * MS
    # ... the client's wait (no waker recorded: it was the call) is for the server thread,
    # followed into what that thread did: its memory pressure is the client's root cause
    waits = [r for r in rels(analysis, src=key("r", "t7"), kind="remote_call")
             if r["dst_label"] == "Thread"]
    assert [(w["dst"], w["evidence"]["how"]) for w in waits] == [("n1:1401", "call")]
    r = span_row(analysis, "r", "t7")
    assert r["root_cause_kind"] == "memory_pressure"
    sent = rels(analysis, "SENT_TO", src="n1:1301")
    assert sent and sent[0]["dst"] == "n1:1401"



def test_a_server_spans_caller_is_not_taken_for_a_server_it_called(lake_dir: Path) -> None:
    # GIVEN a risk service's SERVER span that names both ends of its request's connection
    # (client.port / server.port, as semantic conventions ask) and has no child span; its
    # caller (the gateway) receives the answer on its own port during the span
    sc = Scenario().process(1300, "gateway").process(1400, "risk-svc")
    caller, server = ("127.0.0.1", 41000), ("127.0.0.1", 9000)
    sc.run(0, 1300, 1301, 0, 1, leave="S").run(0, 1300, 1301, 30, 31, leave="S")
    sc.run(1, 1400, 1401, 2, 29, leave="S")
    sc.net("send", 1, 1300, 1301, caller, server, 200)
    sc.net("recv", 2, 1400, 1401, server, caller, 200)
    sc.net("send", 26, 1400, 1401, server, caller, 300)
    sc.net("recv", 27, 1300, 1301, caller, server, 300)  # before the span has ended
    sc.span("t8", "s", None, "risk-svc", "risk.check", 2, 29, pid=1400, tid=1401,
            kind="SERVER", client_port=41000, server_port=9000)
    analysis = analyze(sc, lake_dir)
    # THEN no synthetic "remote" server span is made for the caller
    assert rels(analysis, src=key("s", "t8"), kind="remote_call") == []
    assert [s for s in analysis.tables["Span"].to_pylist() if s["origin"] == "remote"] == []

def test_healthy_control_invents_no_cause(lake_dir: Path) -> None:
    # GIVEN a quick, successful operation with short waits, and an unrelated reclaim
    # episode in another cgroup later on
    sc = Scenario().process(800, "pricing", cgroup_id=2).process(900, "other", cgroup_id=3)
    sc.run(0, 800, 801, 0, 20, leave="S")
    sc.offcpu(800, 801, 20, 20.3, "socket")
    sc.wake(20.3, (800, 801), (0, 0))
    sc.run(0, 900, 901, 19, 20.5, leave="S")  # a 0.2 ms run-queue wait
    sc.run(0, 800, 801, 20.5, 50, leave="S")
    sc.run(1, 900, 902, 100, 400, leave="S")
    sc.reclaim(900, 902, 100, 400, memcg=3)
    sc.page_alloc(900, 400, 90_000, 3)
    sc.span("t8", "p", None, "pricing", "GET /price", 0, 50, pid=800, tid=801, kind="SERVER")
    analysis = analyze(sc, lake_dir)
    p = span_row(analysis, "p", "t8")
    # THEN no cause edge, no failure, no root cause: short waits are not causes
    assert rels(analysis, src=key("p", "t8")) == []
    assert not p["failed"] and p["root_cause_kind"] is None
    assert p["on_cpu_ns"] + p["runqueue_ns"] + p["blocked_ns"] == 50 * MS
    assert analysis.summary["failures"] == 0 and analysis.summary["root_causes"] == 0


def _retransmits_to_a_server(reclaiming: bool) -> Scenario:
    """A client sends a request at 1 ms and resends it at 101, 201 and 285 ms (no answer
    yet: the segments were dropped); the server answers at 290 ms. With ``reclaiming`` the
    server received the request at 2 ms and then spent 10-280 ms in memcg reclaim (a batch
    job's pressure in its cgroup: it did not drain the socket); else it got the request
    only at 285 ms, from the last retransmit (a real loss), and sat idle before."""
    sc = Scenario().process(1300, "settle-client").process(1400, "cache-svc", cgroup_id=4)
    sc.process(1500, "batch-job", cgroup_id=4)
    client, server = ("127.0.0.1", 41000), ("127.0.0.1", 9000)
    sc.run(0, 1300, 1301, 0, 1, leave="S").run(0, 1300, 1301, 291, 300, leave="S")
    sc.net("send", 1, 1300, 1301, client, server, 16_000)
    for at in (101, 201, 285):
        sc.net("retransmit", at, None, None, client, server)
    if reclaiming:
        sc.net("recv", 2, 1400, 1401, server, client, 16_000)
        sc.run(1, 1400, 1401, 2, 290, leave="S")
        sc.reclaim(1400, 1401, 10, 280, memcg=4)
        sc.page_alloc(1500, 290, 50_000, 4)
    else:
        sc.run(1, 1400, 1401, -50, 0, leave="S")
        sc.net("recv", 285, 1400, 1401, server, client, 16_000)
        sc.run(1, 1400, 1401, 285, 290, leave="S")
    sc.net("send", 290, 1400, 1401, server, client, 800)
    sc.net("recv", 291, 1300, 1301, client, server, 800)
    sc.span("t9", "c", None, "settle-client", "cache SET", 0, 300, pid=1300, kind="CLIENT",
            server_port=9000, attrs={"kprobe.deadline_ms": 100})
    return sc


def test_retransmits_to_a_server_held_up_in_reclaim_are_that_reclaims(
        tmp_path: Path) -> None:
    # GIVEN retransmits (284 ms of waiting) to a server that spent 270 ms of the call in
    # memcg reclaim: both sufficient for a call 200 ms late, the retransmits the longer
    analysis = analyze(_retransmits_to_a_server(reclaiming=True), tmp_path)
    c = span_row(analysis, "c", "t9")
    [net] = rels(analysis, src=key("c", "t9"), kind="network")
    assert net["delay_ns"] == 284 * MS  # the retransmits stay on the span, as evidence
    # THEN the root cause is the server's memory pressure (the segments waited for a
    # receiver that did not read), counted once: the longer of the two, not their sum
    assert c["root_cause_kind"] == "memory_pressure", c
    [cause] = [r for r in rels(analysis, "CAUSED_BY", src=key("c", "t9")) if r["rank"] == 1]
    assert cause["delay_ns"] == 284 * MS
    assert cause["evidence"]["retransmits"] == [net["dst"]]  # the verdict says so
    # control: a server that was idle until the last retransmit reached it (a real loss)
    other = tmp_path / "control"
    other.mkdir()
    lost = span_row(analyze(_retransmits_to_a_server(reclaiming=False), other), "c", "t9")
    assert lost["root_cause_kind"] == "network", lost
