"""What the agent does to sensitive data before it reaches the lake (or the spool).

Applied by the agent to every table it submits:

- ``processes``: environments (``env``) and command lines (``argv``) redacted by the rules
  (capture_agent/redaction.py), card numbers masked; environments are kept only when
  payloads are recorded (a replay is their only use), else stored as null.
- ``syscall_data``: card numbers masked in every payload (capture_agent/cards.py), and the
  argv and environment each exec's payload rows carry (``nr`` 59, arguments 1 and 2)
  redacted like ``processes``. Those regions come in chunks (4 KiB each); a chunk may cut
  an entry in two, so a region is redacted whole: chunks of a region not yet complete wait
  for the next flush (at most ``hold_flushes``, then whatever arrived is redacted, cut at
  the first missing chunk). A redacted region is written again as chunks from offset 0;
  its length changes (the marker replaces the value), which is fine: a replay only ever
  joins these chunks, it never serves them to a syscall.

Everything else passes untouched. Vectorised: a batch costs a few Arrow scans; Python runs
only for exec regions (one per exec) and for rows that may hold a card number.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from kprobe.capture_agent.cards import mask_bytes, mask_pans
from kprobe.capture_agent.redaction import RedactionRules, flatten_lists, rebuild_lists
from kprobe.lake.schema import spec as table_spec

NR_EXECVE = 59  # capture_agent.families.syscalls.NR_EXECVE
EXEC_ARGV, EXEC_ENV = 1, 2
CHUNK = 4096  # capture_agent.families.syscalls.SYSCALL_DATA_CHUNK


@dataclass(frozen=True)
class ProtectionConfig:
    rules: RedactionRules = field(default_factory=RedactionRules)
    mask_pans: bool = True  # off e.g. when payloads are encrypted and needed verbatim
    keep_env: bool = True  # processes.env at all (the agent: only with payloads)
    payload_cap: int = 64 << 10  # the recorder's cap: how long a complete region is
    hold_flushes: int = 5


@dataclass
class ProtectionStats:
    redacted_regions: int = 0
    masked_pans: int = 0
    held_rows: int = 0


class PayloadProtection:
    """The agent's protection stage (one per agent; called from its flush thread)."""

    def __init__(self, config: ProtectionConfig | None = None) -> None:
        self.config = config or ProtectionConfig()
        self.stats = ProtectionStats()
        self._held: pa.Table | None = None  # exec rows of incomplete regions
        self._held_age: dict[tuple[int, int, int, int], int] = {}

    def apply(self, table: str, data: pa.Table) -> pa.Table:
        """``data`` for ``table`` as it may be stored (rows held back are released later)."""
        if table == "processes":
            return self._processes(data)
        if table == "syscall_data":
            return self._syscall_data(data, flush_all=False)
        return data

    def release(self) -> pa.Table | None:
        """Every held row, redacted with what arrived (at the agent's stop)."""
        if self._held is None:
            return None
        return self._syscall_data(self._held.slice(0, 0), flush_all=True)

    # -- processes --------------------------------------------------------------------------
    def _processes(self, data: pa.Table) -> pa.Table:
        rules = self.config.rules
        if "argv" in data.column_names:
            argv = rules.command_line(data.column("argv").combine_chunks())
            data = data.set_column(data.schema.get_field_index("argv"), "argv",
                                   self._mask_list(argv))
        if "env" in data.column_names:
            env = data.column("env").combine_chunks()
            if self.config.keep_env:
                values, offsets, validity = flatten_lists(env)
                env = rebuild_lists(rules.environment(values), offsets, validity, env.type)
                env = self._mask_list(env)
            else:
                env = pa.nulls(len(env), env.type)
            data = data.set_column(data.schema.get_field_index("env"), "env", env)
        return data

    def _mask_list(self, lists: pa.Array) -> pa.Array:
        if not self.config.mask_pans:
            return lists
        values, offsets, validity = flatten_lists(lists)
        masked, found = mask_pans(values)
        self.stats.masked_pans += found
        return rebuild_lists(masked, offsets, validity, lists.type) if found else lists

    # -- syscall_data -----------------------------------------------------------------------
    def _syscall_data(self, data: pa.Table, *, flush_all: bool) -> pa.Table:
        nr = np.asarray(pc.fill_null(data.column("nr"), -1).to_numpy(), np.int64)
        arg = np.asarray(pc.fill_null(data.column("arg_index"), -1).to_numpy(), np.int64)
        is_exec = (nr == NR_EXECVE) & ((arg == EXEC_ARGV) | (arg == EXEC_ENV))
        rest = data.filter(pa.array(~is_exec)) if is_exec.any() else data
        if self.config.mask_pans and rest.num_rows:
            masked, found = mask_pans(rest.column("data"))
            if found:
                self.stats.masked_pans += found
                rest = rest.set_column(rest.schema.get_field_index("data"), "data", masked)
        execs = data.filter(pa.array(is_exec))
        if self._held is not None:
            execs = pa.concat_tables([self._held, execs])
            self._held = None
        if not execs.num_rows:
            return rest
        done = self._exec_regions(execs, flush_all)
        if done is None:
            return rest
        return pa.concat_tables([rest, done.cast(rest.schema)])

    def _exec_regions(self, rows: pa.Table, flush_all: bool) -> pa.Table | None:
        """Redact the complete exec regions among ``rows`` (one Python pass per region);
        hold the others."""
        cols = {c: rows.column(c).to_pylist() for c in (
            "ts_ns", "pid", "tid", "seq", "nr", "arg_index", "offset", "data", "total_len",
            "truncated")}
        regions: dict[tuple[int, int, int, int], list[int]] = {}
        for i, key in enumerate(zip(cols["pid"], cols["tid"], cols["seq"], cols["arg_index"],
                                    strict=True)):
            regions.setdefault(key, []).append(i)
        out: dict[str, list[object]] = {c: [] for c in cols}
        held: list[int] = []
        for key, members in regions.items():
            chunks = sorted((cols["offset"][i] or 0, cols["data"][i] or b"", i) for i in members)
            got = sum(len(c[1]) for c in chunks)
            total = max(cols["total_len"][i] or 0 for i in members)
            faulted = any(cols["truncated"][i] and not cols["data"][i] for i in members)
            age = self._held_age.pop(key, 0)
            complete = faulted or got >= min(total, self.config.payload_cap)
            if not complete and not flush_all and age + 1 < self.config.hold_flushes:
                held.extend(members)
                self._held_age[key] = age + 1
                continue
            joined, cut = _contiguous(chunks)
            redacted = self._redact_region(joined, key[3])
            first = members[0]
            lost = total - len(joined)  # bytes the region had past what was captured
            truncated = cut or any(bool(cols["truncated"][i]) for i in members)
            for at in range(0, max(len(redacted), 1), CHUNK):
                for c in ("ts_ns", "pid", "tid", "seq", "nr", "arg_index"):
                    out[c].append(cols[c][first])
                out["offset"].append(at)
                out["data"].append(redacted[at:at + CHUNK])
                out["total_len"].append(len(redacted) + max(lost, 0))
                out["truncated"].append(truncated)
            self.stats.redacted_regions += 1
        if held:
            self._held = rows.take(pa.array(held))
        self.stats.held_rows = len(held)
        if not out["ts_ns"]:
            return None
        out["blob"] = [None] * len(out["ts_ns"])  # exec regions are bytes, never file reads
        out["blob_offset"] = [None] * len(out["ts_ns"])
        return pa.table(out, schema=table_spec("syscall_data").payload_schema)

    def _redact_region(self, region: bytes, arg: int) -> bytes:
        entries = pa.array(region.split(b"\0"), pa.binary())
        rules = self.config.rules
        if arg == EXEC_ENV:
            cleaned = rules.environment(entries)
        else:
            lists = pa.ListArray.from_arrays(pa.array([0, len(entries)], pa.int32()), entries)
            cleaned = rules.command_line(lists).flatten()
        text = b"\0".join(v or b"" for v in cleaned.to_pylist())
        if self.config.mask_pans:
            text, found = mask_bytes(text)
            self.stats.masked_pans += found
        return text


def _contiguous(chunks: list[tuple[int, bytes, int]]) -> tuple[bytes, bool]:
    """The region's bytes from offset 0 up to the first missing chunk; whether cut there."""
    out = bytearray()
    for offset, data, _ in chunks:
        if offset != len(out):
            return bytes(out), True
        out += data
    return bytes(out), False
