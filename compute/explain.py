"""``kprobe explain``: a transaction as a chain from the business event down to the kernel.

  [Payment #98721 received]
    | 0.4 ms  [Risk check passed]
    | 1.2 ms  [Settlement write initiated]
    |   [KERNEL: memcg reclaim 790 ms]  <- batch job PID 4721 allocating 1.2 GiB in the same cgroup
    | 798 ms  [Settlement write completed]
    [TIMEOUT: payment-handler exceeded 750 ms]  <- root cause: memory pressure (50 ms too late)
  [Payment failed]

The chain is built from the window's graph snapshot (``compute.graph.queries.trace_data``):
business events from the domain mapping (start / end lines of each mapped span, times
between consecutive events), kernel causes under the deepest span that suffered them (with
the process that drove the episode), lock holders and uninstrumented servers one level
further in, the failure with its root cause, and missed clearing windows. The result is
typed data (``compute.explain_model``); ``kprobe explain`` lays it out as the text above.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from kprobe import lake
from kprobe.compute.causes import KERNEL_KINDS, LEAF_KINDS, WAIT_KINDS
from kprobe.compute.errors import NotFound
from kprobe.compute.explain_model import (
    Cause,
    CpuHolder,
    Driver,
    Episode,
    EventStep,
    ExplainedTransaction,
    FailureStep,
    KernelStep,
    MissedStep,
    RemoteStep,
)
from kprobe.compute.graph import queries, store
from kprobe.compute.settings import ComputeSettings

CAUSE_NAMES = {
    "memory_pressure": "memory pressure", "cpu_contention": "CPU contention",
    "disk": "disk I/O", "network": "TCP retransmits", "network_reset": "TCP reset",
    "lock_wait": "lock wait", "remote_call": "a slow remote call",
    "thread_wait": "waiting for another thread", "thread_handoff": "waiting on another thread",
    "app_cpu": "on-CPU work", "timer": "a timer (the thread slept)",
    "kernel_wakeup": "a kernel thread's wakeup",
}
# Lines shown under a span: kernel causes, waits for other threads (with what those did,
# nested), kernel-thread wakeups.
SHOWN_KINDS = (*KERNEL_KINDS, *WAIT_KINDS, *LEAF_KINDS)
_MEM_KINDS = {"memcg_reclaim": "memcg reclaim", "direct_reclaim": "direct reclaim",
              "page_fault_io": "page-fault I/O", "reclaim": "reclaim wait"}


def fmt_ns(ns: int | float | None) -> str:
    """35 µs, 0.4 ms, 12 ms, 800 ms, 1.5 s: a duration for people."""
    if ns is None:
        return "?"
    value = float(ns)
    if abs(value) < 1_000:
        return f"{value:.0f} ns"
    if abs(value) < 100_000:
        return f"{value / 1e3:.0f} µs"
    if abs(value) < 10_000_000:
        return f"{value / 1e6:.1f} ms"
    if abs(value) < 1_000_000_000:
        return f"{value / 1e6:.0f} ms"
    if abs(value) < 60e9:
        return f"{value / 1e9:.1f} s"
    return f"{value / 60e9:.1f} min"


def fmt_bytes(n: int | None) -> str:
    if n is None:
        return "?"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.0f}" if unit == "B" else f"{value:.1f}".removesuffix(".0")
            return f"{text} {unit}"
        value /= 1024
    return f"{n} B"


@dataclass
class _Step:
    """A step being placed: ``order`` breaks ties of one instant (start events, kernel
    lines, failure, end events)."""

    order: int
    step: EventStep | KernelStep | RemoteStep | FailureStep | MissedStep


def explain(location: lake.LakeLocation, txn: str, settings: ComputeSettings, *,
            window_ids: list[str] | None = None, start_ns: int | None = None,
            end_ns: int | None = None) -> list[ExplainedTransaction]:
    """Explanations of every trace ``txn`` names (trace id, business id or span id)."""
    snapshots = store.select_snapshots(location, window_ids=window_ids, start_ns=start_ns,
                                       end_ns=end_ns)
    found: dict[str, ExplainedTransaction] = {}
    for info in snapshots:
        with store.open_snapshot(location, info, settings) as reader:
            for trace in queries.find_traces(reader, txn):
                result = build(queries.trace_data(reader, trace), info.window_id)
                if result is None:
                    continue
                previous = found.get(trace)
                # a trace seen by two windows: keep the one that owns its first span
                if previous is None or (result.owned and not previous.owned):
                    found[trace] = result
    if not found:
        where = ", ".join(s.window_id for s in snapshots[:3])
        more = f" and {len(snapshots) - 3} more" if len(snapshots) > 3 else ""
        raise NotFound(f"no transaction, trace or span {txn!r} in the analysed windows "
                       f"({where}{more})")
    return sorted(found.values(), key=lambda r: r.start_ns)


def build(data: dict[str, Any], window: str) -> ExplainedTransaction | None:
    """One trace's steps from ``queries.trace_data`` (evidence already parsed)."""
    spans = {s["id"]: s for s in data["spans"]}
    otel = [s for s in data["spans"] if s["origin"] == "otel"]
    if not otel:
        return None
    roots = [s for s in otel if s.get("parent_id") not in spans]
    root = min(roots or otel, key=lambda s: s["start_ns"])
    domain = {d["span_id"]: d for d in data["domain"]}
    holders = {h["id"]: h for h in data["holders"]}
    all_spans = {**spans, **holders}
    edges_by_src: dict[str, list[dict[str, Any]]] = {}
    for edge in data["edges"]:
        edges_by_src.setdefault(edge["src"], []).append(edge)
    ctx = _Context(all_spans, edges_by_src, {e["id"]: e for e in data["episodes"]},
                   _group(data["drivers"], "episode"), {t["id"]: t for t in data["threads"]})

    depth = {s["id"]: _depth(s, spans) for s in otel}
    # a cause is shown once, under the deepest span that suffered it: not under a span one
    # of whose descendants shows it (a parent's timeline holds its children's waits)
    below: dict[str, set[tuple[str, str]]] = {}
    for s in sorted(otel, key=lambda s: -depth[s["id"]]):
        mine = {(e["kind"], e["dst"]) for e in edges_by_src.get(s["id"], [])
                if e["rel"] == "DELAYED_BY" and _shown(e)}
        below.setdefault(s["id"], set())
        parent = s.get("parent_id")
        if parent in spans:
            below.setdefault(parent, set()).update(mine | below[s["id"]])

    shown = {s["id"]: [e for e in edges_by_src.get(s["id"], [])
                       if e["rel"] == "DELAYED_BY" and _shown(e)
                       and (e["kind"], e["dst"]) not in below.get(s["id"], set())]
             for s in otel}
    # ... and not again in what a waited-for thread did meanwhile, when a span of this
    # trace on that thread shows it (the settlement write's reclaim, seen from the gateway)
    ctx.on_spans = {(e["kind"], e["dst"]) for edges in shown.values() for e in edges}
    steps: list[_Step] = []
    for s in otel:
        dom = domain.get(s["id"])
        is_root = s["id"] == root["id"]
        kernel = shown[s["id"]]
        # an uninstrumented server's side of a call, unless a wait line already follows
        # that server thread (with what it did meanwhile)
        waited = {e["dst"] for e in edges_by_src.get(s["id"], [])
                  if e["kind"] in WAIT_KINDS and e["dst_label"] == "Thread"}
        remote = [e for e in edges_by_src.get(s["id"], [])
                  if e["rel"] == "DELAYED_BY" and e["kind"] in ("remote_call", "thread_handoff")
                  and all_spans.get(e["dst"], {}).get("origin") == "remote"
                  and f"{all_spans[e['dst']]['node']}:{all_spans[e['dst']]['tid']}" not in waited]
        if not (dom or is_root or s["failed"] or kernel or remote):
            continue
        steps.extend(_span_steps(s, dom, is_root))
        steps.extend(ctx.kernel_steps(s, kernel, indent=0))
        for edge in remote:
            steps.extend(ctx.remote_steps(s, edge))
        if s["failed"]:
            # the root's failure comes after every inner line of the same instant
            steps.append(_Step(6 if is_root else 3, ctx.failure_step(s)))
    # a missed cutoff is told once, on the outermost operation that missed it
    outermost: dict[Any, dict[str, Any]] = {}
    for missed in data["missed"]:
        span_id = missed["event"].split(":", 1)[1]
        if span_id not in depth:
            continue
        best = outermost.get(missed["cutoff"])
        if best is None or depth[span_id] < depth[best["event"].split(":", 1)[1]]:
            outermost[missed["cutoff"]] = missed
    for missed in outermost.values():
        span_id = missed["event"].split(":", 1)[1]
        s = spans.get(span_id)
        if s is not None:
            label = missed["label"].removesuffix(" clearing window")
            steps.append(_Step(7, MissedStep(
                ts_ns=s["end_ns"], depth=0 if span_id == root["id"] else 1,
                label=f"MISSED: the {label} clearing window by {fmt_ns(missed['missed_by_ns'])}",
                span=span_id, cutoff_ns=missed["cutoff_ns"],
                missed_by_ns=missed["missed_by_ns"])))
    steps.sort(key=lambda st: (st.step.ts_ns, st.order))
    # the root's end line closes the chain, whatever its timestamp ties with
    def closes(st: _Step) -> bool:
        return isinstance(st.step, EventStep) and st.step.depth == 0 and st.step.moment == "end"

    ordered = [st.step for st in steps if not closes(st)] + [
        st.step for st in steps if closes(st)]
    dom = domain.get(root["id"]) or {}
    failures = [st for st in ordered if isinstance(st, FailureStep)]
    outcome = next((f for f in failures if f.span == root["id"]),
                   failures[0] if failures else None)
    return ExplainedTransaction(
        trace_id=root["trace_id"], txn_id=root.get("txn_id"), concept=dom.get("type"),
        business_id=dom.get("business_id"), root_span=root["id"], service=root["service"],
        name=root["name"], start_ns=root["start_ns"], dur_ns=root["dur_ns"],
        owned=bool(root["owned"]), failed=bool(root["failed"] or any(s["failed"] for s in otel)),
        failure=outcome, root_cause=outcome.root_cause if outcome else None,
        other_causes=outcome.other_causes if outcome else [], steps=ordered, window=window)


def _shown(edge: dict[str, Any]) -> bool:
    """A cause line: a kernel cause, a wait for a thread, a timer; not a link to a span."""
    return bool(edge["kind"] in SHOWN_KINDS and edge.get("dst_label") != "Span"
                and not (edge["kind"] == "timer" and (edge["delay_ns"] or 0) < 1_000_000))


def _depth(span: dict[str, Any], spans: dict[str, dict[str, Any]]) -> int:
    depth, seen = 0, set()
    while span.get("parent_id") in spans and span["id"] not in seen:
        seen.add(span["id"])
        span = spans[span["parent_id"]]
        depth += 1
    return depth


def _group(rows: list[dict[str, Any]], key: str) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        out.setdefault(row[key], []).append(row)
    return out


def _span_steps(s: dict[str, Any], dom: dict[str, Any] | None, is_root: bool) -> list[_Step]:
    depth = 0 if is_root else 1
    if dom:
        start = dom.get("label_started")
        end = dom.get("label_failed") if s["failed"] else dom.get("label_completed")
    else:
        start = f"{s['service']}: {s['name']} started"
        end = (f"{s['service']}: {s['name']} failed" if s["failed"]
               else f"{s['service']}: {s['name']} completed")
    steps = []
    moments: tuple[tuple[int, int, Literal["start", "end"], str | None], ...] = (
        (s["start_ns"], 0, "start", start), (s["end_ns"], 5, "end", end))
    for ts, order, moment, label in moments:
        if label or is_root:
            steps.append(_Step(order, EventStep(
                ts_ns=ts, depth=depth, label=label or s["name"], span=s["id"],
                service=s["service"], name=s["name"], concept=dom["type"] if dom else None,
                moment=moment)))
    return steps


class _Context:
    def __init__(self, spans: dict[str, dict[str, Any]],
                 edges: dict[str, list[dict[str, Any]]], episodes: dict[str, dict[str, Any]],
                 drivers: dict[str, list[dict[str, Any]]],
                 threads: dict[str, dict[str, Any]]) -> None:
        self.spans, self.edges, self.episodes = spans, edges, episodes
        self.drivers, self.threads = drivers, threads
        self.on_spans: set[tuple[str, str]] = set()  # (kind, target) shown under a span

    # -- kernel lines -------------------------------------------------------------------
    def kernel_steps(self, s: dict[str, Any], edges: list[dict[str, Any]],
                     indent: int) -> list[_Step]:
        steps = []
        cpu = [e for e in edges if e["kind"] == "cpu_contention"]
        for edge in [e for e in edges if e["kind"] != "cpu_contention"] + cpu[:1]:
            group = cpu if edge in cpu else [edge]
            label, why, extra = self.describe(edge, group)
            steps.append(_Step(1, KernelStep(
                ts_ns=max(s["start_ns"], _first_ts(edge["evidence"]) or s["start_ns"]),
                indent=indent, label=label, detail=why, span=s["id"], cause=edge["kind"],
                target=edge["dst"], delay_ns=sum(e["delay_ns"] or 0 for e in group),
                **extra)))
            if edge["kind"] in WAIT_KINDS and indent < 6:
                # what the thread it waited for did meanwhile, and why (its holder spans,
                # one per wait: the same cause over several waits is one line)
                holders = [self.spans[h["dst"]] for h in self.edges.get(s["id"], [])
                           if h["kind"] == "holder" and h["dst"] in self.spans
                           and self.spans[h["dst"]].get("tid")
                           == edge["evidence"].get("waker_tid")]
                merged: dict[tuple[str, str], dict[str, Any]] = {}
                for holder in holders:
                    for e in self.edges.get(holder["id"], []):
                        if e["rel"] == "DELAYED_BY" and _shown(e):
                            key = (e["kind"], e["dst"])
                            if key in self.on_spans and e["kind"] not in WAIT_KINDS:
                                continue
                            if key in merged:
                                merged[key] = {**merged[key], "delay_ns": (
                                    merged[key]["delay_ns"] or 0) + (e["delay_ns"] or 0)}
                            else:
                                merged[key] = e
                if holders:
                    first = min(holders, key=lambda h: h["start_ns"])
                    steps.extend(self.kernel_steps(first, list(merged.values()), indent + 1))
        return steps

    def remote_steps(self, s: dict[str, Any], edge: dict[str, Any]) -> list[_Step]:
        child = self.spans[edge["dst"]]
        steps = [_Step(1, RemoteStep(
            ts_ns=child["start_ns"], span=s["id"], cause=edge["kind"], target=child["id"],
            delay_ns=edge["delay_ns"],
            label=(f"REMOTE: {child['service']} PID {child['pid']} {child['name']}, "
                   f"{fmt_ns(child['dur_ns'])}")))]
        inner = [e for e in self.edges.get(child["id"], [])
                 if e["rel"] == "DELAYED_BY" and _shown(e)]
        steps.extend(self.kernel_steps(child, inner, indent=1))
        return steps

    def describe(self, edge: dict[str, Any], group: list[dict[str, Any]]
                 ) -> tuple[str, str, dict[str, Any]]:
        """(what happened, who drove it, the step's typed fields) for one cause edge."""
        kind, ev, delay = edge["kind"], edge["evidence"], edge["delay_ns"]
        if kind in ("memory_pressure", "disk"):
            row = self.episodes.get(edge["dst"], {})
            episode = Episode(**row) if row else None
            top = self._top_driver(edge["dst"])
            driver = Driver(**top) if top else None
            if kind == "disk":
                dev = f" on {row['dev']}" if row.get("dev") not in (None, "?") else ""
                why = (f"{_who(top)} issuing {fmt_bytes(top['bytes'])} of I/O"
                       if top else "")
                return (f"disk I/O wait {fmt_ns(delay)}{dev}", why,
                        {"episode": episode, "driver": driver})
            what = _MEM_KINDS.get(row.get("subkind") or "", "memory pressure")
            why = ""
            if top:
                dev_ev = top["evidence"]
                scope = "in the same cgroup" if dev_ev.get("same_memcg") else "on the node"
                amount = (f"allocating {fmt_bytes(top['bytes'])}" if top["bytes"]
                          else f"faulting {dev_ev.get('faults')} pages")
                why = f"{_who(top)} {amount} {scope}"
            return f"{what} {fmt_ns(delay)}", why, {"episode": episode, "driver": driver}
        if kind == "cpu_contention":
            total = sum(e["delay_ns"] or 0 for e in group)
            top_edge = max(group, key=lambda e: e["delay_ns"] or 0)
            thread = self.threads.get(top_edge["dst"], {})
            others = f" (+{len(group) - 1} more)" if len(group) > 1 else ""
            return (f"run-queue wait {fmt_ns(total)}",
                    f"CPU held by {_who_thread(thread, top_edge['dst'])} for "
                    f"{fmt_ns(top_edge['delay_ns'])}{others}",
                    {"holders": [CpuHolder(thread=e["dst"], delay_ns=e["delay_ns"])
                                 for e in group]})
        if kind in ("network", "network_reset"):
            conn = ev.get("conn", "?")
            if kind == "network_reset":
                return f"TCP reset on {conn}", "", {"conn": conn}
            return (f"TCP retransmit x{edge['count']} on {conn}, {fmt_ns(delay)}", "",
                    {"conn": conn})
        if kind in WAIT_KINDS:
            thread = self.threads.get(edge["dst"], {})
            activity = ev.get("waker_activity") or {}
            doing = _activity(activity)
            spans = ev.get("waker_spans") or []
            inside = f" in {spans[0]['service']} '{spans[0]['name']}'" if spans else ""
            reasons = [r for r in ev.get("reasons") or [] if r and r != "other"]
            on = f" ({', '.join(reasons)})" if reasons else ""
            what = {"lock_wait": "lock wait", "remote_call": "remote call",
                    "thread_wait": "wait"}[kind]
            verb = "woken by" if ev.get("how") == "waker" else "waiting for"
            return (f"{what} {fmt_ns(delay)}{on}",
                    f"{verb} {_who_thread(thread, edge['dst'])}{inside}"
                    + (f", which was {doing}" if doing else ""),
                    {"waker": edge["dst"], "waker_activity": activity, "how": ev.get("how")})
        if kind == "timer":
            return f"timer {fmt_ns(delay)}", "the thread slept until its own timeout", {}
        if kind == "kernel_wakeup":
            thread = self.threads.get(edge["dst"], {})
            return (f"woken by the kernel after {fmt_ns(delay)}",
                    f"{_who_thread(thread, edge['dst'])}", {"waker": edge["dst"]})
        return f"{kind} {fmt_ns(delay)}", "", {}

    def _top_driver(self, episode_id: str) -> dict[str, Any] | None:
        drivers = self.drivers.get(episode_id) or []
        return min(drivers, key=lambda d: d["rank"] or 0) if drivers else None

    # -- failure line -------------------------------------------------------------------
    def failure_step(self, s: dict[str, Any]) -> FailureStep:
        kind = s.get("failure_kind") or "error"
        if kind == "timeout" and s.get("deadline_ns"):
            head = f"TIMEOUT: {s['service']} exceeded {fmt_ns(s['deadline_ns'])}"
        elif kind == "timeout":
            head = f"TIMEOUT: {s['service']} {s['name']} gave up after {fmt_ns(s['dur_ns'])}"
        else:
            msg = f": {s['status_message']}" if s.get("status_message") else ""
            head = f"ERROR: {s['service']} {s['name']}{msg}"
        ranked = sorted((e for e in self.edges.get(s["id"], []) if e["rel"] == "CAUSED_BY"),
                        key=lambda e: e["rank"] or 0)
        causes = [self._cause(e) for e in ranked]
        root = causes[0] if causes else None
        if root is None:
            why = "no cause found in the kernel record"
        else:
            late = f"{fmt_ns(s['over_ns'])} too late" if s.get("over_ns") else ""
            if root.sufficient is False:
                why = (f"largest cause: {root.name} {fmt_ns(root.delay_ns)}, not enough "
                       f"alone ({late})" if late else f"largest cause: {root.name}")
            else:
                why = f"root cause: {root.name}" + (f" ({late})" if late else "")
            if root.retransmits:
                why += "; the TCP retransmits were its too (their receiver was held up by it)"
        return FailureStep(
            ts_ns=s["end_ns"], label=head, detail=why, span=s["id"], failure_kind=kind,
            deadline_ns=s.get("deadline_ns"), dur_ns=s["dur_ns"], over_ns=s.get("over_ns"),
            status_message=s.get("status_message"), root_cause=root,
            other_causes=causes[1:])

    def _cause(self, edge: dict[str, Any]) -> Cause:
        ev = edge["evidence"]
        name = CAUSE_NAMES.get(edge["kind"], edge["kind"])
        target = self.spans.get(edge["dst"])
        if edge["kind"] == "remote_call" and target:
            name = f"a slow remote call to {target['service']}"
        elif edge["kind"] in WAIT_KINDS and edge["dst_label"] == "Thread":
            thread = self.threads.get(edge["dst"], {})
            who = _who_thread(thread, edge["dst"])
            name = {"lock_wait": f"lock wait for {who}",
                    "remote_call": f"a slow remote call to {who}",
                    "thread_wait": f"waiting for {who}"}[edge["kind"]]
        summary = ""
        if edge["dst_label"] == "KernelEpisode":
            summary = self.describe({**edge, "rel": "DELAYED_BY"}, [edge])[1]
        elif edge["dst_label"] == "Thread" and edge["kind"] != "app_cpu":
            summary = _who_thread(self.threads.get(edge["dst"], {}), edge["dst"])
        return Cause(rank=edge["rank"], kind=edge["kind"], name=name, target=edge["dst"],
                     target_label=edge["dst_label"], delay_ns=edge["delay_ns"],
                     sufficient=ev.get("sufficient"), depth=ev.get("depth"),
                     via_span=ev.get("via_span"), driver=summary or None,
                     retransmits=list(ev.get("retransmits") or []))


def _who(driver: dict[str, Any]) -> str:
    if driver.get("role"):
        return f"{driver['role']} PID {driver['pid']}"
    return f"{driver.get('comm') or 'process'} PID {driver['pid']}"


def _who_thread(thread: dict[str, Any], thread_id: str) -> str:
    if not thread:
        return f"thread {thread_id}"
    name = thread.get("role") or thread.get("comm") or thread.get("process") or "thread"
    if thread.get("pid") and thread.get("pid") != thread.get("tid"):
        return f"{name} TID {thread['tid']} (PID {thread['pid']})"
    return f"{name} PID {thread.get('pid') or thread.get('tid')}"


def _activity(activity: dict[str, Any]) -> str:
    parts = []
    blocked = activity.get("blocked_by_reason") or {}
    for reason, ns in sorted(blocked.items(), key=lambda kv: -(kv[1] or 0)):
        if ns:
            parts.append(f"blocked on {reason} {fmt_ns(ns)}")
    if activity.get("on_cpu_ns"):
        parts.append(f"on CPU {fmt_ns(activity['on_cpu_ns'])}")
    if activity.get("runqueue_ns"):
        parts.append(f"waiting for a CPU {fmt_ns(activity['runqueue_ns'])}")
    return ", ".join(parts[:3])


def _first_ts(evidence: dict[str, Any]) -> int | None:
    found = [row["ts_ns"] for value in evidence.values() if isinstance(value, list)
             for row in value if isinstance(row, dict) and isinstance(row.get("ts_ns"), int)]
    return min(found) if found else None
