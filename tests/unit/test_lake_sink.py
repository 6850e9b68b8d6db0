"""The agent's lake sink: outages go to the spool, come back in order, nothing duplicated."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from kprobe.capture_agent.lake_sink import LakeSink
from kprobe.capture_agent.spool import Spool
from kprobe.lake import LakeSettings, LakeWriter, connect, resolve

T0 = 1_767_225_600_000_000_000


def _rows(start: int, n: int) -> pa.Table:
    return pa.table({"ts_ns": list(range(T0 + start, T0 + start + n)), "count": [1] * n})


def test_outage_spools_then_uploads_in_order_without_duplicates(tmp_path: Path) -> None:
    """GIVEN a lake that cannot be written (a path under /proc) WHEN batches arrive THEN they
    are spooled; WHEN the lake is reachable again THEN every row lands exactly once."""
    good = resolve(LakeSettings(lake=str(tmp_path / "lake")))
    writer = LakeWriter(resolve(LakeSettings(lake="/proc/kprobe-no-such-lake")), "n1", "w1")
    spool = Spool(tmp_path / "spool")
    sink = LakeSink(writer, spool, retry_interval_s=0.05).start()
    for i in range(3):
        assert sink.submit("lost", _rows(i * 10, 10))
    sink.stop()
    assert sink.stats.spooled_batches == 3 and len(spool) == 3
    assert sink.stats.lake_errors >= 1 and "lake unavailable" in sink.stats.last_error

    # The lake comes back: a restarted agent (new writer id) uploads the old spool first.
    writer2 = LakeWriter(good, "n1", "w2")
    sink2 = LakeSink(writer2, Spool(tmp_path / "spool"), retry_interval_s=0.05).start()
    sink2.submit("lost", _rows(100, 5))
    sink2.stop()
    assert len(spool) == 0 and sink2.stats.unspooled_batches == 3
    con = connect(good)
    assert con.execute("select count(*), count(distinct ts_ns) from lost").fetchone() == (35, 35)
    assert con.execute("select count(distinct batch_id) from lost").fetchone() == (4,)


def test_full_queue_refuses_and_counts_the_rows(tmp_path: Path) -> None:
    writer = LakeWriter(resolve(LakeSettings(lake=str(tmp_path / "lake"))), "n1", "w1")
    sink = LakeSink(writer, None, max_queue_batches=1)  # not started: nothing drains
    assert sink.submit("lost", _rows(0, 4))
    assert not sink.submit("lost", _rows(4, 6))
    assert sink.take_new_losses() == {("lost", "queue_full"): 6}
    assert sink.take_new_losses() == {}


def test_full_spool_counts_loss(tmp_path: Path) -> None:
    writer = LakeWriter(resolve(LakeSettings(lake="/proc/kprobe-no-such-lake")), "n1", "w1")
    sink = LakeSink(writer, Spool(tmp_path / "spool", max_bytes=1), retry_interval_s=0.05)
    sink.start().submit("lost", _rows(0, 7))
    sink.stop()
    assert sink.take_new_losses() == {("lost", "spool_full"): 7}
