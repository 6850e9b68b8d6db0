"""Delta debugging: shrink a failure-inducing set to a 1-minimal one (Zeller and Hildebrandt,
"Simplifying and Isolating Failure-Inducing Input", IEEE TSE 28(2), 2002, algorithm ddmin).

Here a "failure" is a set of timing perturbations that flips a replay's outcome; a test is
a replay, so tests are expensive and are evaluated in batches (the fuzz runs a batch on
several workers at once). ddmin is deterministic whatever the batch size: of the
candidates of one step it always takes the first failing one in Zeller's order (subsets,
then complements), even when a later one finished first.

A test that cannot decide (Zeller's "unresolved", here an infeasible or broken replay)
is reported as not failing, as in the paper.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T", bound=Hashable)

# fails(configurations) -> one verdict per configuration, in order
BatchTest = Callable[[list[tuple[T, ...]]], list[bool]]


@dataclass
class Shrunk(Generic[T]):
    """The 1-minimal failing configuration and what finding it cost."""

    minimal: tuple[T, ...]
    tests: int  # configurations tested (cached repeats not counted)


def ddmin(failing: Sequence[T], fails: BatchTest[T], batch: int = 1) -> Shrunk[T]:
    """A 1-minimal subset of ``failing`` (which must fail) for which ``fails`` holds: removing
    any one of its elements makes the failure go away.

    ``fails`` is called with up to ``batch`` configurations at a time; each configuration
    keeps the order of ``failing``. Verdicts are cached, so no configuration runs twice.
    """
    if batch < 1:
        raise ValueError("batch must be at least 1")
    cache: dict[frozenset[int], bool] = {}
    tested = 0
    items = tuple(failing)

    def first_failing(candidates: list[tuple[int, ...]]) -> tuple[int, ...] | None:
        """The first candidate (in the given order) that fails, testing ``batch`` at once."""
        nonlocal tested
        for start in range(0, len(candidates), batch):
            chunk = candidates[start:start + batch]
            todo = [c for c in dict.fromkeys(chunk) if frozenset(c) not in cache]
            if todo:
                verdicts = fails([tuple(items[i] for i in c) for c in todo])
                if len(verdicts) != len(todo):
                    raise ValueError("fails() must return one verdict per configuration")
                for c, verdict in zip(todo, verdicts):
                    cache[frozenset(c)] = bool(verdict)
                tested += len(todo)
            for c in chunk:
                if cache[frozenset(c)]:
                    return c
        return None

    current = tuple(range(len(items)))
    cache[frozenset(current)] = True  # the precondition: the whole set fails
    cache[frozenset()] = False  # and the empty set (the unperturbed baseline) does not
    n = 2
    while len(current) >= 2:
        parts = _split(current, n)
        subsets = list(parts)
        # with two parts each complement is the other part: nothing new to test
        complements = [] if n == 2 else [
            tuple(i for i in current if i not in dropped)
            for dropped in (frozenset(part) for part in parts)]
        found = first_failing(subsets)
        if found is not None:  # reduce to a subset
            current, n = found, 2
            continue
        found = first_failing(complements)
        if found is not None:  # reduce to a complement
            current, n = found, max(n - 1, 2)
            continue
        if n >= len(current):  # every single element is needed: 1-minimal
            break
        n = min(len(current), 2 * n)  # increase granularity
    return Shrunk(tuple(items[i] for i in current), tested)


def _split(indices: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    """``indices`` cut into ``n`` contiguous parts of nearly equal size."""
    size, extra = divmod(len(indices), n)
    parts: list[tuple[int, ...]] = []
    start = 0
    for k in range(n):
        end = start + size + (1 if k < extra else 0)
        parts.append(indices[start:end])
        start = end
    return [p for p in parts if p]
