"""Timing fuzz without a kernel: ddmin on synthetic predicates, the sampling, where
perturbations can go in a synthetic recording, and the campaign driven by a stand-in pool
whose "replays" are a rule over the perturbations (the real replays are in
tests/integration/test_replay_fuzz.py)."""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence

import pytest

from kprobe.cli import main
from kprobe.replay_sandbox.ddmin import ddmin
from kprobe.replay_sandbox.engine import ReplayOptions
from kprobe.replay_sandbox.errors import SpecError
from kprobe.replay_sandbox.fuzz import FuzzConfig, fuzz, parse_duration
from kprobe.replay_sandbox.fuzz_pool import Job, Kind
from kprobe.replay_sandbox.perturb import (
    MS,
    Delay,
    Expectation,
    Outcome,
    Perturbation,
    Swap,
    find_inputs,
    find_swaps,
    perturbed,
    sample,
)
from kprobe.replay_sandbox.recording import ProcessInfo, Recording, Row
from kprobe.replay_sandbox.syscall_table import NUMBERS

# -- ddmin ----------


def _counting(predicate: Callable[[frozenset[int]], bool], batch_seen: list[int]
              ) -> Callable[[list[tuple[int, ...]]], list[bool]]:
    tested: set[frozenset[int]] = set()

    def fails(configs: list[tuple[int, ...]]) -> list[bool]:
        batch_seen.append(len(configs))
        for c in configs:
            key = frozenset(c)
            assert key not in tested, f"{sorted(key)} tested twice"
            tested.add(key)
        return [predicate(frozenset(c)) for c in configs]

    return fails


def _one_minimal(result: Sequence[int], predicate: Callable[[frozenset[int]], bool]) -> bool:
    whole = frozenset(result)
    return predicate(whole) and all(not predicate(whole - {x}) for x in whole)


def test_ddmin_finds_the_single_culprit() -> None:
    # GIVEN 32 perturbations of which only number 23 flips the outcome
    seen: list[int] = []
    shrunk = ddmin(list(range(32)), _counting(lambda c: 23 in c, seen))
    # THEN ddmin returns it alone, in far fewer tests than trying every subset
    assert shrunk.minimal == (23,)
    assert shrunk.tests <= 2 * 5 + 2  # about 2 log2(32)


def test_ddmin_keeps_every_element_of_a_needed_combination() -> None:
    # GIVEN a flip that needs 3 and 11 together (each alone does nothing)
    def predicate(c: frozenset[int]) -> bool:
        return {3, 11} <= c

    shrunk = ddmin(list(range(16)), _counting(predicate, []))
    assert shrunk.minimal == (3, 11)


def test_ddmin_result_is_one_minimal_on_random_predicates() -> None:
    # GIVEN random monotone and non-monotone predicates over 12 elements
    rng = random.Random(5)
    for _ in range(200):
        items = list(range(12))
        causes = [frozenset(rng.sample(items, rng.randint(1, 3))) for _ in range(3)]
        masked = frozenset(rng.sample(items, rng.randint(0, 2)))

        def predicate(c: frozenset[int], causes: list[frozenset[int]] = causes,
                      masked: frozenset[int] = masked) -> bool:
            # fails when one cause is complete, unless a masking element is also present
            # (non-monotone, like a second delay that cancels the first)
            return any(cause <= c for cause in causes) and not (masked & c - max(
                causes, key=len))

        whole = frozenset(items)
        if not predicate(whole):
            continue
        shrunk = ddmin(items, _counting(predicate, []))
        # THEN the result fails, and removing any one element makes it pass
        assert _one_minimal(shrunk.minimal, predicate), (causes, masked, shrunk.minimal)
        assert list(shrunk.minimal) == sorted(shrunk.minimal)  # input order kept


@pytest.mark.parametrize("batch", [1, 2, 3, 8])
def test_ddmin_is_the_same_whatever_the_batch(batch: int) -> None:
    # GIVEN a predicate with two independent causes (ddmin must pick the same one)
    def predicate(c: frozenset[int]) -> bool:
        return 5 in c or {17, 30} <= c

    seen: list[int] = []
    shrunk = ddmin(list(range(40)), _counting(predicate, seen), batch=batch)
    reference = ddmin(list(range(40)), _counting(predicate, []), batch=1)
    # THEN the result does not depend on how many tests run at once
    assert shrunk.minimal == reference.minimal == (5,)
    assert max(seen) <= batch


def test_ddmin_rejects_a_bad_batch_and_short_answers() -> None:
    with pytest.raises(ValueError):
        ddmin([1, 2], lambda cs: [True] * len(cs), batch=0)
    with pytest.raises(ValueError):
        ddmin([1, 2, 3, 4], lambda cs: [True], batch=4)
    assert ddmin([7], lambda cs: [True] * len(cs)).minimal == (7,)


# -- a synthetic recording ----------
POLL, RECVFROM, READ = NUMBERS["poll"], NUMBERS["recvfrom"], NUMBERS["read"]
SOCKET, OPENAT, CLOSE, WRITE = NUMBERS["socket"], NUMBERS["openat"], NUMBERS["close"], \
    NUMBERS["write"]
PIPE2, CLOCK = NUMBERS["pipe2"], NUMBERS["clock_gettime"]


def _pollfd(fd: int, revents: int) -> bytes:
    return fd.to_bytes(4, "little", signed=True) + (1).to_bytes(2, "little") + \
        revents.to_bytes(2, "little")


def _recording() -> Recording:
    """A client: a socket, a poll that waited 700 ms of its 750, the reply; a file read
    (never an input that arrives); a pipe read; two threads writing close together."""
    ms = MS
    rows = [
        Row(1, 1, 0, 10_000, SOCKET, 3, (2, 1, 0, 0, 0, 0), -1),
        Row(1, 2, 1 * ms, 700 * ms, POLL, 1, (0x1000, 1, 750, 0, 0, 0), -1,
            outs=[(0, 0, _pollfd(3, 1))]),
        Row(1, 3, 702 * ms, 5_000, RECVFROM, 20, (3, 0x2000, 100, 0, 0, 0), 3,
            outs=[(1, 0, b"HTTP/1.0 200 OK\r\n\r\n")]),
        Row(1, 4, 703 * ms, 5_000, OPENAT, 4, (-100, 0x3000, 0, 0, 0, 0), 4,
            ins={1: b"/etc/hostname\0"}),
        Row(1, 5, 704 * ms, 5_000, READ, 5, (4, 0x4000, 64, 0, 0, 0), 4,
            outs=[(1, 0, b"host\n")]),
        Row(1, 6, 705 * ms, 5_000, CLOSE, 0, (4, 0, 0, 0, 0, 0), 4),
        Row(1, 7, 706 * ms, 5_000, PIPE2, 0, (0x5000, 0, 0, 0, 0, 0), -1,
            outs=[(0, 0, (4).to_bytes(4, "little") + (5).to_bytes(4, "little"))]),
        Row(1, 8, 707 * ms, 30 * ms, READ, 3, (4, 0x4000, 64, 0, 0, 0), 4,
            outs=[(1, 0, b"abc")]),
        Row(1, 9, 740 * ms, 5_000, WRITE, 2, (1, 0x6000, 2, 0, 0, 0), 1, ins={1: b"A\n"}),
        Row(2, 1, 740 * ms + 20_000, 5_000, WRITE, 2, (1, 0x7000, 2, 0, 0, 0), 1,
            ins={1: b"B\n"}),
        Row(2, 2, 741 * ms, 5_000, CLOCK, 0, (1, 0x8000, 0, 0, 0, 0), -1),
    ]
    for order, row in enumerate(sorted(rows, key=lambda r: r.end_ns)):
        row.order = order
    threads: dict[int, list[Row]] = {}
    for row in rows:
        threads.setdefault(row.tid, []).append(row)
    process = ProcessInfo(pid=1, node="n", exe="/bin/client", argv=["client"], env=[],
                          cwd="/", start_ns=0, exit_code=0)
    return Recording(process, threads)


def test_inputs_are_the_rows_that_wait_for_outside_data() -> None:
    inputs = find_inputs(_recording())
    # THEN the poll that reported data, the socket reply and the pipe read; not the file
    assert [(i.tid, i.seq, i.name) for i in inputs] == [
        (1, 2, "poll"), (1, 3, "recvfrom"), (1, 8, "read")]
    poll = inputs[0]
    assert poll.fds == (3,) and poll.waited_ns == 700 * MS
    assert poll.slack_ns == 50 * MS and poll.at_risk(200 * MS) and not poll.at_risk(40 * MS)
    assert inputs[1].slack_ns is None and not inputs[1].at_risk(10**12)


def test_swaps_are_adjacent_served_rows_of_two_threads_within_the_bound() -> None:
    rec = _recording()
    assert find_swaps(rec, 1 * MS) == [Swap((1, 9), (2, 1))]
    assert find_swaps(rec, 10_000) == []  # recorded 20 us apart: beyond a 10 us bound


def test_a_swap_exchanges_the_order_and_keeps_the_recorded_outputs() -> None:
    rec = _recording()
    outputs = rec.outputs()
    assert outputs[1] == b"A\nB\n"
    swapped, options = perturbed(rec, ReplayOptions(), [Swap((1, 9), (2, 1)),
                                                        Delay(1, 2, 60 * MS)])
    a = next(r for r in swapped.threads[1] if r.seq == 9)
    b = swapped.threads[2][0]
    original_a = next(r for r in rec.threads[1] if r.seq == 9)
    assert b.order + 1 == a.order == original_a.order + 1  # B is served first now
    assert swapped.outputs() == outputs  # a replay is still compared with the recording
    assert options.arrival_delays == {(1, 2): 60 * MS}
    assert options.effective_mode() == "whatif"
    assert original_a.order < rec.threads[2][0].order  # the original is untouched


def test_sampling_is_seeded_bounded_and_never_empty() -> None:
    rec = _recording()
    inputs, swaps = find_inputs(rec), find_swaps(rec, 200 * MS)
    runs = [sample(7, i, inputs, swaps, 200 * MS) for i in range(200)]
    # THEN the same seed gives the same sets (run i does not depend on how many runs)
    assert runs[:20] == [sample(7, i, inputs, swaps, 200 * MS) for i in range(20)]
    assert runs != [sample(8, i, inputs, swaps, 200 * MS) for i in range(200)]
    assert all(runs)
    delays = [p for run in runs for p in run if isinstance(p, Delay)]
    assert all(0 < d.delay_ns <= 200 * MS for d in delays)
    # AND the poll 50 ms from its timeout is perturbed more often than the others, mostly
    # by more than its slack
    by_row = {row: [d for d in delays if d.row == row] for row in ((1, 2), (1, 3), (1, 8))}
    assert len(by_row[(1, 2)]) > 2 * len(by_row[(1, 3)])
    beyond = sum(d.delay_ns > 50 * MS for d in by_row[(1, 2)])
    assert beyond > 0.7 * len(by_row[(1, 2)])


# -- the campaign with a stand-in pool ----------
def _outcome(stdout: bytes, held: bool = True, given: bool = False, relaxed: int = 0,
             error: str | None = None) -> Outcome:
    return Outcome("completed" if error is None else "error", 0 if error is None else None,
                   None, ((1, stdout.hex()[:16]),), held, given, relaxed, error,
                   previews=((1, stdout),))


class RulePool:
    """Replays as a rule over perturbations: the poll (1, 2) delayed past 50 ms times the
    request out; a swap that the program's locks forbid relaxes the order."""

    kind: Kind = "inline"

    def __init__(self, workers: int = 2, expectation: Expectation | None = None,
                 rule: Callable[[tuple[Perturbation, ...]], Outcome] | None = None) -> None:
        self.workers = workers
        self.jobs: list[Job] = []
        self.given = (expectation or Expectation()).given
        self.rule = rule or self.timeout_rule

    def timeout_rule(self, ps: tuple[Perturbation, ...]) -> Outcome:
        late = any(isinstance(p, Delay) and p.row == (1, 2) and p.delay_ns > 50 * MS
                   for p in ps)
        relaxed = int(any(isinstance(p, Swap) for p in ps))
        if late:
            return _outcome(b"HTTP 504\n", held=False, given=self.given, relaxed=relaxed)
        return _outcome(b"HTTP 200\n", given=self.given, relaxed=relaxed)

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        assert len(jobs) <= 64
        self.jobs.extend(jobs)
        return [self.rule(job.perturbations) for job in jobs]

    def close(self) -> None:
        raise AssertionError("the campaign must not close a pool it was given")


def test_campaign_finds_and_shrinks_the_delay_that_times_the_request_out() -> None:
    rec = _recording()
    pool = RulePool()
    report = fuzz(rec, ReplayOptions(), FuzzConfig(runs=30, seed=3, max_delay_ns=200 * MS),
                  pool=pool)
    # THEN some runs flipped, all of them shrink to the one poll, counted together
    assert report.flipped_runs and not report.passed
    (flip,) = report.flips
    assert len(flip.perturbations) == 1
    assert isinstance(flip.perturbations[0], Delay) and flip.perturbations[0].row == (1, 2)
    assert flip.runs == report.flipped_runs
    assert all(d > 50 * MS for d in flip.delays_ns[(1, 2)])
    # AND the threshold search brackets the 50 ms rule within max_delay/64
    assert flip.threshold_ns is not None
    low, high = flip.threshold_ns
    assert low <= 50 * MS < high and high - low <= 200 * MS // 64
    # AND swaps (relaxed order) are infeasible, never flips; the baseline ran first, alone
    assert pool.jobs[0].perturbations == ()
    infeasible = [r for r in report.runs if r.infeasible]
    assert all(not r.flipped for r in infeasible)
    assert report.replays["baseline"] == 1 and report.replays["perturbed"] <= 30
    text = report.render_text()
    assert "minimal flip #1: 1 perturbation(s)" in text and "thread 1 seq 2 poll(fd 3)" in text
    assert "'HTTP 200\\n' -> 'HTTP 504\\n'" in text
    data = json.loads(report.to_json())
    assert data["passed"] is False
    assert data["minimal_flips"][0]["perturbations"][0]["syscall"] == "poll"
    assert data["minimal_flips"][0]["count"] == len(report.flipped_runs)


def test_campaign_is_the_same_with_one_or_several_workers() -> None:
    rec = _recording()
    config = FuzzConfig(runs=25, seed=11, max_delay_ns=200 * MS)
    one = fuzz(rec, ReplayOptions(), config, pool=RulePool(workers=1))
    four = fuzz(rec, ReplayOptions(), config, pool=RulePool(workers=4))
    assert [r.perturbations for r in one.runs] == [r.perturbations for r in four.runs]
    assert [(f.perturbations, f.runs, f.threshold_ns) for f in one.flips] == \
        [(f.perturbations, f.runs, f.threshold_ns) for f in four.flips]


def test_no_flip_passes_and_errors_are_not_flips() -> None:
    rec = _recording()
    calls = itertools.count()

    def rule(ps: tuple[Perturbation, ...]) -> Outcome:
        # the baseline is fine; every third perturbed replay cannot run
        n = next(calls)
        return _outcome(b"ok\n", error="sandbox" if n and n % 3 == 0 else None)

    report = fuzz(rec, ReplayOptions(), FuzzConfig(runs=9, seed=1), pool=RulePool(rule=rule))
    assert report.passed and not report.flips and not report.flipped_runs
    assert sum(1 for r in report.runs if r.outcome.error) >= 2
    assert "verdict: no perturbation flips the outcome" in report.render_text()


class SlowMachinePool(RulePool):
    """Every perturbed replay meets the campaign's short deadline (a loaded machine) and
    completes with the replay's own timeout; ``hangs`` ones time out whatever the time."""

    def __init__(self, hangs: bool) -> None:
        super().__init__()
        self.hangs = hangs

    def run(self, jobs: Sequence[Job]) -> list[Outcome]:
        self.jobs.extend(jobs)
        out = []
        for job in jobs:
            short = job.timeout_s is not None and job.timeout_s < ReplayOptions().timeout_s
            if job.perturbations and (short or self.hangs):
                out.append(Outcome("timeout", None, 9, (), True, False))
            else:
                out.append(self.rule(job.perturbations))
        return out


def test_a_replay_stopped_by_the_campaign_deadline_is_replayed_with_its_own() -> None:
    # GIVEN perturbed replays that all meet the campaign's short deadline on a slow machine
    pool = SlowMachinePool(hangs=False)
    report = fuzz(_recording(), ReplayOptions(), FuzzConfig(runs=12, seed=3), pool=pool)
    # THEN each is replayed again with the replay's own timeout, and only the rule flips
    first = [j for j in pool.jobs if j.perturbations and j.timeout_s == 10.0]
    again = [j for j in pool.jobs if j.perturbations and j.timeout_s == 120.0]
    assert first and sorted(map(repr, again)) == sorted(
        repr(Job(j.perturbations, 120.0)) for j in first)
    assert all(r.outcome.status == "completed" for r in report.runs)
    rule = fuzz(_recording(), ReplayOptions(), FuzzConfig(runs=12, seed=3), pool=RulePool())
    assert [r.flipped for r in report.runs] == [r.flipped for r in rule.runs]
    assert [f.perturbations for f in report.flips] == [f.perturbations for f in rule.flips]
    # AND a replay that hangs with its own timeout too is still a finding (a flip)
    hung = fuzz(_recording(), ReplayOptions(), FuzzConfig(runs=4, seed=3, shrink=False),
                pool=SlowMachinePool(hangs=True))
    assert all(r.outcome.status == "timeout" and r.flipped for r in hung.runs)


def test_an_expectation_that_fails_unperturbed_fails_the_campaign() -> None:
    rec = _recording()
    expectation = Expectation(exit_code=3)

    def rule(ps: tuple[Perturbation, ...]) -> Outcome:
        return _outcome(b"x", held=False, given=True)

    report = fuzz(rec, ReplayOptions(), FuzzConfig(runs=3, expectation=expectation),
                  pool=RulePool(expectation=expectation, rule=rule))
    assert not report.flipped_runs and not report.passed
    assert "expectation fails without any perturbation" in report.render_text()


def test_with_an_expectation_only_its_verdict_is_the_outcome() -> None:
    rec = _recording()
    expectation = Expectation(exit_code=0)

    def rule(ps: tuple[Perturbation, ...]) -> Outcome:
        # every perturbation changes the bytes, none changes the verdict
        return _outcome(repr(ps).encode(), given=True)

    report = fuzz(rec, ReplayOptions(), FuzzConfig(runs=5, expectation=expectation),
                  pool=RulePool(expectation=expectation, rule=rule))
    assert report.passed and not report.flipped_runs


def test_bad_fuzz_settings_are_spec_errors() -> None:
    with pytest.raises(SpecError):
        fuzz(_recording(), None, FuzzConfig(runs=0), pool=RulePool())
    with pytest.raises(SpecError):
        fuzz(_recording(), None, FuzzConfig(runs=1, max_delay_ns=0), pool=RulePool())


def test_durations() -> None:
    assert parse_duration("200ms") == 200 * MS
    assert parse_duration("0.5s") == 500 * MS
    assert parse_duration("750us") == 750_000
    assert parse_duration(" 10 ns") == 10
    assert parse_duration("1m30s") == 90_000 * MS  # the one grammar's compound form
    for bad in ("200", "ms", "-5ms", "0s", "fast", "5 parsecs"):
        with pytest.raises(SpecError, match="duration"):
            parse_duration(bad)


def test_fuzz_options_need_fuzz(capsys: pytest.CaptureFixture[str]) -> None:
    # the check comes before any lake access or root check: bad input is exit 2
    assert main(["replay", "--lake", "/nonexistent", "--process", "1@n", "--seed", "3"]) == 2
    assert "--seed needs --fuzz N" in capsys.readouterr().err
    assert main(["replay", "--lake", "/nonexistent", "--process", "1@n", "--ray"]) == 2
