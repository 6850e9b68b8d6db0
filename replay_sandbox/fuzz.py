"""Timing fuzz: which small timing changes flip the outcome of a replay, and the minimal
sets of them that do (``kprobe replay --fuzz N --seed S``).

    report = fuzz(recording, ReplayOptions(), FuzzConfig(runs=20, seed=7))

1. Baseline: one unperturbed replay (what-if mode, like every replay of the campaign,
   since a perturbed program may take another path). Its outcome is the reference.
2. ``runs`` perturbed replays, each with perturbations drawn from a seeded RNG
   (``perturb.sample``: arrival delays of single recorded inputs within
   ``max_delay_ns``, and swaps of adjacent rows of two threads), run in parallel
   (``fuzz_pool``: worker processes, or Ray when a cluster is configured or asked for).
3. Each replay whose outcome differs from the baseline's is a flip. Its perturbation
   set is shrunk with ddmin to a 1-minimal set (re-running replays); flips that shrink
   to the same rows are counted together. A set already known to flip is tried first
   on each new flip that contains it (one replay instead of a whole ddmin).
4. For a minimal set of one delay, the smallest delay that still flips is searched
   (ternary search, assuming a later arrival flips at least as surely).

The outcome is the expectation (``--expect-exit`` / ``--expect-output-match``) when one
is given, else what the program did: status, exit code or signal, and the bytes of each
output. A replay that could not run, or one with a swap after which the engine had to
relax the cross-thread order (an order the program's own locks forbid), is not a flip.
A perturbed replay has a short deadline (20 times the baseline's wall time, at least 10 s)
so that one that hangs does not hold the campaign; one that meets it is replayed again with
the replay's own timeout before its outcome counts (a loaded machine is not a finding).
The same seed gives the same perturbations and, replays being deterministic, the same
report, whatever the number of workers.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from kprobe.lake import timespec
from kprobe.lake.errors import TimeSpecError
from kprobe.replay_sandbox.ddmin import ddmin
from kprobe.replay_sandbox.engine import ReplayOptions
from kprobe.replay_sandbox.errors import FuzzError, SpecError
from kprobe.replay_sandbox.fuzz_pool import Executor, Job, Kind, Pool, choose, open_pool
from kprobe.replay_sandbox.perturb import (
    MS,
    Delay,
    Expectation,
    Input,
    Outcome,
    Perturbation,
    Swap,
    find_inputs,
    find_swaps,
    sample,
)
from kprobe.replay_sandbox.recording import Recording
from kprobe.replay_sandbox.report import compare_outputs
from kprobe.replay_sandbox.syscall_table import name_of

__all__ = ["Delay", "Expectation", "FuzzConfig", "FuzzReport", "Input", "MinimalFlip", "Outcome",
           "Swap", "fuzz", "parse_duration"]

Site = tuple[int, int] | Swap  # a delayed row (tid, seq), or a swap


@dataclass
class FuzzConfig:
    runs: int
    seed: int = 0
    max_delay_ns: int = 200 * MS
    swaps: bool = True  # also perturb the cross-thread order (several threads only)
    workers: int | None = None  # replays at a time; None: the CPUs this process may use
    executor: Executor = "auto"
    ray_address: str | None = None
    expectation: Expectation = field(default_factory=Expectation)
    shrink: bool = True  # ddmin each flip
    thresholds: bool = True  # smallest flipping delay of single-delay minimal sets


@dataclass
class Run:
    """One perturbed replay."""

    index: int
    perturbations: tuple[Perturbation, ...]
    outcome: Outcome
    flipped: bool
    infeasible: bool


@dataclass
class MinimalFlip:
    """A 1-minimal set of perturbations that flips the outcome, and the runs shrunk to it."""

    perturbations: tuple[Perturbation, ...]  # the first one found
    outcome: Outcome  # of that set alone
    runs: list[int] = field(default_factory=list)
    delays_ns: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # all seen
    threshold_ns: tuple[int, int] | None = None  # (largest delay that did not flip, smallest
    # that did), single-delay sets only

    @property
    def sites(self) -> frozenset[Site]:
        return frozenset(_site(p) for p in self.perturbations)


@dataclass
class FuzzReport:
    process: dict[str, Any]
    seed: int
    max_delay_ns: int
    executor: Kind
    workers: int
    inputs: list[Input]
    swap_sites: int
    baseline: Outcome
    runs: list[Run]
    flips: list[MinimalFlip]
    replays: dict[str, int]  # baseline, perturbed, shrinking, thresholds
    wall_s: float
    row_names: dict[tuple[int, int], str] = field(default_factory=dict, repr=False)

    @property
    def flipped_runs(self) -> list[int]:
        return [r.index for r in self.runs if r.flipped]

    @property
    def passed(self) -> bool:
        """The CLI's exit 0: no perturbation flipped the outcome, and the expectation (when
        one is given) held in the baseline, hence in every perturbed replay too."""
        held = self.baseline.held if self.baseline.expectation_given else True
        return held and not self.flipped_runs

    # -- output ----------
    def to_dict(self) -> dict[str, Any]:
        total = sum(self.replays.values())
        return {
            "process": self.process,
            "seed": self.seed,
            "max_delay_ns": self.max_delay_ns,
            "executor": self.executor,
            "workers": self.workers,
            "passed": self.passed,
            "baseline": _outcome_dict(self.baseline),
            "candidates": {"inputs": len(self.inputs), "swaps": self.swap_sites,
                           "at_risk": [_input_dict(i) for i in self.inputs
                                       if i.at_risk(self.max_delay_ns)]},
            "runs": {"total": len(self.runs), "flipped": self.flipped_runs,
                     "errors": [r.index for r in self.runs if r.outcome.error],
                     "infeasible": [r.index for r in self.runs if r.infeasible]},
            "minimal_flips": [self._flip_dict(f) for f in self.flips],
            "replays": {**self.replays, "total": total},
            "wall_s": round(self.wall_s, 3),
            "replays_per_min": round(total / self.wall_s * 60, 1) if self.wall_s else None,
            "perturbed": [{"run": r.index, "flipped": r.flipped,
                           "perturbations": [self._perturbation_dict(p)
                                             for p in r.perturbations],
                           "outcome": _outcome_dict(r.outcome)} for r in self.runs],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def _flip_dict(self, flip: MinimalFlip) -> dict[str, Any]:
        return {
            "perturbations": [self._perturbation_dict(p) for p in flip.perturbations],
            "found_by_runs": flip.runs,
            "count": len(flip.runs),
            "delays_seen_ns": {f"{tid}:{seq}": sorted(ds)
                               for (tid, seq), ds in flip.delays_ns.items()},
            "threshold_ns": (None if flip.threshold_ns is None
                             else {"not_flipping": flip.threshold_ns[0],
                                   "flipping": flip.threshold_ns[1]}),
            "outcome": _outcome_dict(flip.outcome),
            "changes": self._changes(flip.outcome),
        }

    def _perturbation_dict(self, p: Perturbation) -> dict[str, Any]:
        if isinstance(p, Delay):
            item = next((i for i in self.inputs if i.row == p.row), None)
            return {"kind": "delay", "tid": p.tid, "seq": p.seq, "delay_ns": p.delay_ns,
                    "syscall": item.name if item else None,
                    "fds": list(item.fds) if item else [],
                    "recorded_wait_ns": item.waited_ns if item else None,
                    "slack_ns": item.slack_ns if item else None}
        return {"kind": "swap",
                "first": {"tid": p.first[0], "seq": p.first[1],
                          "row": self.row_names.get(p.first)},
                "second": {"tid": p.second[0], "seq": p.second[1],
                           "row": self.row_names.get(p.second)}}

    def _changes(self, outcome: Outcome) -> list[str]:
        """How an outcome differs from the baseline, for people."""
        base = self.baseline
        out: list[str] = []
        if (outcome.status, outcome.exit_code, outcome.exit_signal) != (
                base.status, base.exit_code, base.exit_signal):
            out.append(f"{base.describe()} -> {outcome.describe()}")
        elif outcome.held != base.held and outcome.expectation_given:
            out.append(f"expectation {'held' if base.held else 'failed'} -> "
                       f"{'held' if outcome.held else 'failed'}")
        before, after = dict(base.previews), dict(outcome.previews)
        digests_before, digests_after = dict(base.digests), dict(outcome.digests)
        for fd in sorted(set(digests_before) | set(digests_after)):
            if digests_before.get(fd) == digests_after.get(fd):
                continue
            (cmp,) = compare_outputs({fd: before.get(fd, b"")}, {fd: after.get(fd, b"")})
            if cmp.match:
                out.append(f"fd {fd}: differs after the first {len(before.get(fd, b''))} "
                           f"bytes")
            else:
                out.append(f"fd {fd} differs at byte {cmp.first_difference}: "
                           f"{cmp.recorded} -> {cmp.replayed}")
        return out

    def _describe(self, p: Perturbation) -> str:
        if isinstance(p, Delay):
            item = next((i for i in self.inputs if i.row == p.row), None)
            where = item.describe() if item else f"thread {p.tid} seq {p.seq}"
            return f"delay {where}: +{_ms(p.delay_ns)}"
        return (f"swap {self.row_names.get(p.first, p.first)} <-> "
                f"{self.row_names.get(p.second, p.second)} (the second served first)")

    def render_text(self) -> str:
        proc = self.process
        at_risk = [i for i in self.inputs if i.at_risk(self.max_delay_ns)]
        lines = [
            f"timing fuzz of pid {proc.get('pid')}@{proc.get('node')} "
            f"({' '.join(proc.get('argv') or [])}): {len(self.runs)} perturbed replays, "
            f"seed {self.seed}, delays up to {_ms(self.max_delay_ns)}",
            f"  candidates: {len(self.inputs)} inputs ({len(at_risk)} within "
            f"{_ms(self.max_delay_ns)} of a timeout), {self.swap_sites} cross-thread swaps",
        ]
        lines.extend(f"    at risk: {i.describe()}" for i in at_risk[:10])
        if not self.inputs and not self.swap_sites:
            lines.append("  nothing to perturb: no recorded input waits for outside data and "
                         "no two threads' rows are adjacent within the bound")
        lines.append(f"  baseline: {self.baseline.describe()}")
        flipped = self.flipped_runs
        lines.append(f"  flipped: {len(flipped)} of {len(self.runs)} perturbed replays"
                     + (f" (runs {', '.join(map(str, flipped[:20]))}"
                        f"{', ...' if len(flipped) > 20 else ''})" if flipped else ""))
        errors = [r.index for r in self.runs if r.outcome.error]
        infeasible = [r.index for r in self.runs if r.infeasible]
        if errors:
            first = next(r.outcome.error for r in self.runs if r.outcome.error)
            lines.append(f"  could not replay: {len(errors)} runs (first: {first})")
        if infeasible:
            lines.append(f"  infeasible (the program's own locks forbid the order): "
                         f"{len(infeasible)} runs")
        for n, flip in enumerate(self.flips, 1):
            lines.append(f"  minimal flip #{n}: {len(flip.perturbations)} perturbation(s), "
                         f"found by {len(flip.runs)} run(s)")
            for p in flip.perturbations:
                lines.append(f"    {self._describe(p)}")
                if isinstance(p, Delay) and len(flip.delays_ns.get(p.row, [])) > 1:
                    seen = flip.delays_ns[p.row]
                    lines.append(f"      flipping delays seen: {_ms(min(seen))} .. "
                                 f"{_ms(max(seen))}")
            if flip.threshold_ns is not None:
                low, high = flip.threshold_ns
                lines.append(f"    flips from a delay between {_ms(low)} (no flip) and "
                             f"{_ms(high)}")
            lines.extend(f"    {change}" for change in self._changes(flip.outcome))
        total = sum(self.replays.values())
        parts = ", ".join(f"{k} {v}" for k, v in self.replays.items())
        rate = total / self.wall_s * 60 if self.wall_s else 0.0
        lines.append(f"  replays: {total} ({parts}) in {self.wall_s:.1f} s on {self.workers} "
                     f"{self.executor} worker(s): {rate:.0f} replays/min")
        verdict = "no perturbation flips the outcome" if not flipped else \
            "the outcome depends on timing"
        if self.baseline.expectation_given and not self.baseline.held:
            verdict = "the expectation fails without any perturbation"
        lines.append(f"  verdict: {verdict}")
        return "\n".join(lines) + "\n"


def _ms(ns: int) -> str:
    if abs(ns) >= MS:
        return f"{ns / MS:.1f} ms"
    return f"{ns / 1000:.1f} us" if abs(ns) >= 1000 else f"{ns} ns"


def _site(p: Perturbation) -> Site:
    return p.row if isinstance(p, Delay) else p


def _outcome_dict(o: Outcome) -> dict[str, Any]:
    return {"status": o.status, "exit_code": o.exit_code, "exit_signal": o.exit_signal,
            "expectation_held": o.held if o.expectation_given else None,
            "outputs_sha256": {str(fd): d for fd, d in o.digests},
            "error": o.error, "wall_s": round(o.wall_s, 4)}


def _input_dict(i: Input) -> dict[str, Any]:
    return {"tid": i.tid, "seq": i.seq, "syscall": i.name, "fds": list(i.fds),
            "recorded_wait_ns": i.waited_ns, "slack_ns": i.slack_ns}


def parse_duration(text: str) -> int:
    """A positive duration of the one time grammar (lake/timespec.py: ``200ms``, ``0.5s``,
    ``1h30m``) -> ns; bad input is a SpecError with the grammar's one-line reason."""
    try:
        return timespec.parse_duration(text)
    except TimeSpecError as err:
        raise SpecError(str(err)) from None


# -- the campaign ----------
class _Campaign:
    def __init__(self, config: FuzzConfig, pool: Pool) -> None:
        self.config = config
        self.pool = pool
        self.cache: dict[frozenset[Perturbation], Outcome] = {}
        self.counts = {"baseline": 0, "perturbed": 0, "shrinking": 0, "thresholds": 0}
        self.timeout_s: float | None = None  # perturbed replays: short, set after the baseline
        self.full_timeout_s = float("inf")  # the replay's own timeout
        self.baseline: Outcome | None = None

    def outcomes(self, sets: Sequence[tuple[Perturbation, ...]], purpose: str) -> list[Outcome]:
        """Outcomes of perturbation sets (each replayed once per campaign).

        A replay stopped by the campaign's short deadline (``timeout_s``) is run once more
        with the replay's own (``full_timeout_s``) before its outcome counts: wall time on
        a loaded machine says nothing about the program (replays of one recording took
        0.15-17 s here), and a timeout differs from the baseline, so it would be a flip."""
        todo = list(dict.fromkeys(frozenset(s) for s in sets if frozenset(s) not in self.cache))
        if todo:
            jobs = [Job(tuple(sorted(s, key=_sort_key)), self.timeout_s) for s in todo]
            outcomes = self.pool.run(jobs)
            slow = [i for i, o in enumerate(outcomes) if o.status == "timeout"
                    and self.timeout_s is not None and self.timeout_s < self.full_timeout_s]
            if slow:
                again = self.pool.run([Job(jobs[i].perturbations, self.full_timeout_s)
                                       for i in slow])
                for i, outcome in zip(slow, again):
                    outcomes[i] = outcome
            for key, outcome in zip(todo, outcomes):
                self.cache[key] = outcome
            self.counts[purpose] += len(todo) + len(slow)
        return [self.cache[frozenset(s)] for s in sets]

    def infeasible(self, perturbations: Sequence[Perturbation], outcome: Outcome) -> bool:
        """A swap made the engine give up rows it held threads for (its hold timeout): the
        program's own synchronisation forbids that order, so it says nothing about timing.
        (With delays alone, a relaxed order is part of the outcome.)"""
        assert self.baseline is not None
        return (outcome.error is None and outcome.relaxed > self.baseline.relaxed
                and any(isinstance(p, Swap) for p in perturbations))

    def flips(self, perturbations: Sequence[Perturbation], outcome: Outcome) -> bool:
        assert self.baseline is not None
        return (outcome.error is None and not self.infeasible(perturbations, outcome)
                and outcome.key != self.baseline.key)

    def verdicts(self, sets: list[tuple[Perturbation, ...]], purpose: str) -> list[bool]:
        return [self.flips(s, o) for s, o in zip(sets, self.outcomes(sets, purpose))]

    def shrink(self, run: Run, known: list[MinimalFlip]) -> tuple[Perturbation, ...]:
        """A 1-minimal flipping subset of the run's perturbations."""
        sites = {_site(p) for p in run.perturbations}
        for flip in known:  # a culprit seen before: one replay may settle it
            if flip.sites <= sites:
                part = tuple(p for p in run.perturbations if _site(p) in flip.sites)
                if self.verdicts([part], "shrinking")[0]:
                    return self._ddmin(part)
        return self._ddmin(run.perturbations)

    def _ddmin(self, failing: tuple[Perturbation, ...]) -> tuple[Perturbation, ...]:
        shrunk = ddmin(failing, lambda sets: self.verdicts(sets, "shrinking"),
                       batch=self.pool.workers)
        return shrunk.minimal

    def threshold(self, delay: Delay) -> tuple[int, int]:
        """(largest delay seen not to flip, smallest seen to flip) of this row alone, to
        within max_delay/64: two probes per round, so workers run them side by side."""
        low, high = 0, delay.delay_ns
        resolution = max(1_000, self.config.max_delay_ns // 64)
        while high - low > resolution:
            probes = [low + (high - low) // 3, low + 2 * (high - low) // 3]
            sets: list[tuple[Perturbation, ...]] = [(Delay(delay.tid, delay.seq, p),)
                                                    for p in probes]
            first, second = self.verdicts(sets, "thresholds")
            if first:
                high = probes[0]
            elif second:
                low, high = probes[0], probes[1]
            else:
                low = probes[1]
        return low, high


def _sort_key(p: Perturbation) -> tuple[int, int, int, int]:
    if isinstance(p, Delay):
        return (0, p.tid, p.seq, p.delay_ns)
    return (1, *p.first, 0)


def fuzz(recording: Recording, options: ReplayOptions | None, config: FuzzConfig,
         pool: Pool | None = None) -> FuzzReport:
    """Run the campaign (see the module docstring) and return its report. ``pool`` runs the
    replays instead of one opened for the campaign (the caller keeps it open)."""
    if config.runs < 1:
        raise SpecError("--fuzz needs at least one perturbed replay")
    if config.max_delay_ns <= 0:
        raise SpecError("--fuzz-max-delay must be positive")
    started = time.perf_counter()
    options = options or ReplayOptions()
    if options.mode is None:  # a perturbed program may take another path: what-if
        options = replace(options, mode="whatif")
    inputs = find_inputs(recording)
    swaps = find_swaps(recording, config.max_delay_ns) if config.swaps else []
    workers = config.workers or len(os.sched_getaffinity(0))
    own_pool = pool is None
    if pool is None:
        pool = open_pool(choose(config.executor, workers, config.ray_address), config.workers,
                         recording, options, config.expectation, config.ray_address)
    kind = pool.kind
    try:
        campaign = _Campaign(config, pool)
        campaign.full_timeout_s = options.timeout_s
        (baseline,) = campaign.outcomes([()], "baseline")
        if baseline.error is not None:
            raise FuzzError(f"the unperturbed replay could not run: {baseline.error}")
        campaign.baseline = baseline
        # a perturbed replay that hangs must not hold the campaign for the full timeout
        campaign.timeout_s = min(options.timeout_s, max(10.0, 20 * baseline.wall_s))
        sets = [sample(config.seed, i, inputs, swaps, config.max_delay_ns)
                for i in range(config.runs)]
        outcomes = campaign.outcomes(sets, "perturbed") if inputs or swaps else []
        runs = [Run(i, s, o, campaign.flips(s, o), campaign.infeasible(s, o))
                for i, (s, o) in enumerate(zip(sets, outcomes))]
        flips: list[MinimalFlip] = []
        if config.shrink:
            for run in (r for r in runs if r.flipped):
                minimal = campaign.shrink(run, flips)
                sites = frozenset(_site(p) for p in minimal)
                flip = next((f for f in flips if f.sites == sites), None)
                if flip is None:
                    (outcome,) = campaign.outcomes([minimal], "shrinking")
                    flip = MinimalFlip(minimal, outcome)
                    flips.append(flip)
                flip.runs.append(run.index)
                for p in minimal:
                    if isinstance(p, Delay):
                        flip.delays_ns.setdefault(p.row, []).append(p.delay_ns)
            if config.thresholds:
                for flip in flips:
                    if len(flip.perturbations) == 1 and isinstance(flip.perturbations[0],
                                                                      Delay):
                        row = flip.perturbations[0]
                        smallest = Delay(row.tid, row.seq, min(flip.delays_ns[row.row]))
                        flip.threshold_ns = campaign.threshold(smallest)
        workers = pool.workers
    finally:
        if own_pool:
            pool.close()
    proc = recording.process
    return FuzzReport(
        process={"pid": proc.pid, "node": proc.node, "exe": options.exe or proc.exe,
                 "argv": options.argv if options.argv is not None else proc.argv},
        seed=config.seed, max_delay_ns=config.max_delay_ns, executor=kind, workers=workers,
        inputs=inputs, swap_sites=len(swaps), baseline=baseline, runs=runs, flips=flips,
        replays=dict(campaign.counts), wall_s=time.perf_counter() - started,
        row_names=_row_names(recording, swaps))


def _row_names(recording: Recording, swaps: list[Swap]) -> dict[tuple[int, int], str]:
    wanted = {key for s in swaps for key in (s.first, s.second)}
    names: dict[tuple[int, int], str] = {}
    for tid, rows in recording.threads.items():
        for row in rows:
            if (tid, row.seq) in wanted:
                fd = f"fd {row.fd}" if row.fd >= 0 else ""
                names[(tid, row.seq)] = f"thread {tid} seq {row.seq} {name_of(row.nr)}({fd})"
    return names
