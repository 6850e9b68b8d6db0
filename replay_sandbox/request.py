"""The typed replay request: what to replay and how, checked once, the same for every caller.

``kprobe replay`` builds one from its flags and runs it in-process; ``kprobe serve`` builds
one from ``POST /v1/replays`` and hands it as JSON to the worker process
(``python -P -m kprobe.replay_sandbox.worker``, see ``worker``). Either way the same code
(``worker.execute``) turns it into a replay, so nothing travels as a command line or as
text on stderr.

    request = ReplayRequest(pid=4721, node="node-a", set_args=((3, "1500"),))
    ReplayRequest.from_json(request.to_json()) == request

Every field is checked in ``__post_init__`` (a ``SpecError`` with a one-line reason):
what comes from a request is hostile until then. ``sandbox`` is the CLI's
``--no-sandbox`` (a debugging aid for root on its own machine) and is not part of the JSON
form: a request from the API always replays in the sandbox.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from kprobe.lake.errors import TimeSpecError
from kprobe.lake.timespec import parse_instant
from kprobe.replay_sandbox.errors import RecordingError, SpecError
from kprobe.replay_sandbox.injection import parse_all
from kprobe.replay_sandbox.lake_source import parse_process
from kprobe.replay_sandbox.limits import Limits

Mode = Literal["exact", "whatif"]
Executor = Literal["auto", "inline", "processes", "ray"]

_NODE = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
_MAX_ARG = 128 << 10  # the kernel's longest argument or environment string
_MAX_ARGS = 4096
_MAX_ENV = 1024
_MAX_INJECTIONS = 64
_MAX_TIMEOUT_S = 86_400.0


@dataclass(frozen=True)
class FuzzSpec:
    """Timing fuzz (``replay_sandbox.fuzz``): ``runs`` perturbed replays after a baseline."""

    runs: int
    seed: int = 0
    max_delay_ns: int = 200_000_000
    swaps: bool = True
    workers: int | None = None
    executor: Executor = "auto"
    ray_address: str | None = None

    def __post_init__(self) -> None:
        _int(self.runs, "fuzz.runs", 1, 100_000)
        _int(self.seed, "fuzz.seed", 0, 2**63 - 1)
        _int(self.max_delay_ns, "fuzz.max_delay_ns", 1, 3_600 * 10**9)
        _bool(self.swaps, "fuzz.swaps")
        if self.workers is not None:
            _int(self.workers, "fuzz.workers", 1, 1024)
        if self.executor not in ("auto", "inline", "processes", "ray"):
            raise SpecError(f"fuzz.executor: expected auto, inline, processes or ray, got "
                            f"{self.executor!r}")
        if self.ray_address is not None:
            _text(self.ray_address, "fuzz.ray_address", 1024)


@dataclass(frozen=True)
class ReplayRequest:
    pid: int
    node: str
    from_ns: int | None = None  # the exec of pid at or before this time (default: the last)
    to_ns: int | None = None  # stop where the recording reaches this time
    injections: tuple[str, ...] = ()  # 'fsync:+50ms', 'recv fd=7:+800ms', ...
    set_args: tuple[tuple[int, str], ...] = ()  # what-if: argv[index] = value
    env: tuple[tuple[str, str], ...] = ()  # what-if: variables to set
    cmd: tuple[str, ...] | None = None  # what-if: another command line (argv, not a shell)
    mode: Mode | None = None
    expect_exit: int | None = None
    expect_output_match: bool = False
    timeout_s: float = 120.0
    fuzz: FuzzSpec | None = None
    limits: Limits = field(default_factory=Limits)
    tree: bool = False  # the process and every descendant, from one recording
    sandbox: bool = True  # the CLI's --no-sandbox only; never from JSON

    def __post_init__(self) -> None:
        _int(self.pid, "process", 1, 2**31 - 1)
        if not isinstance(self.node, str) or not _NODE.match(self.node):
            raise SpecError(f"process node {self.node!r}: expected letters, digits, '.', "
                            f"'_' or '-' (at most 253)")
        for name in ("from_ns", "to_ns"):
            value = getattr(self, name)
            if value is not None:
                _int(value, name, 0, 2**63 - 1)
        if len(self.injections) > _MAX_INJECTIONS:
            raise SpecError(f"inject: at most {_MAX_INJECTIONS} injections")
        for spec in self.injections:
            _text(spec, "inject", 200)
        parse_all(list(self.injections))  # SpecError with the reason
        if len(self.set_args) > _MAX_ARGS:
            raise SpecError(f"set_args: at most {_MAX_ARGS} changes")
        for pair in self.set_args:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise SpecError("set_args: expected (index, value) pairs")
            _int(pair[0], "set_args index", 0, _MAX_ARGS - 1)
            _text(pair[1], f"set_args[{pair[0]}]", _MAX_ARG, empty=True)
        if len(self.env) > _MAX_ENV:
            raise SpecError(f"env: at most {_MAX_ENV} variables")
        for variable in self.env:
            if not isinstance(variable, tuple) or len(variable) != 2:
                raise SpecError("env: expected (name, value) pairs")
            name, value = variable
            _text(name, "env name", 256)
            if "=" in name:
                raise SpecError(f"env name {name[:40]!r}: must not contain '='")
            _text(value, f"env {name[:40]}", _MAX_ARG, empty=True)
        if self.cmd is not None:
            if not isinstance(self.cmd, tuple) or not self.cmd or len(self.cmd) > _MAX_ARGS:
                raise SpecError(f"cmd: expected 1 to {_MAX_ARGS} arguments")
            _text(self.cmd[0], "cmd[0]", 4096)
            for arg in self.cmd[1:]:
                _text(arg, "cmd argument", _MAX_ARG, empty=True)
        if self.mode not in (None, "exact", "whatif"):
            raise SpecError(f"mode: expected exact or whatif, got {self.mode!r}")
        if self.expect_exit is not None:
            _int(self.expect_exit, "expect_exit", 0, 255)
        _bool(self.expect_output_match, "expect_output_match")
        if self.expect_exit is not None and self.expect_output_match:
            raise SpecError("expect_exit and expect_output_match exclude each other")
        if (not isinstance(self.timeout_s, (int, float)) or isinstance(self.timeout_s, bool)
                or not math.isfinite(self.timeout_s)
                or not 0 < self.timeout_s <= _MAX_TIMEOUT_S):
            raise SpecError(f"timeout: expected seconds in (0, {_MAX_TIMEOUT_S:g}], got "
                            f"{self.timeout_s!r}")
        if self.fuzz is not None and not isinstance(self.fuzz, FuzzSpec):
            raise SpecError("fuzz: expected a FuzzSpec")
        if not isinstance(self.limits, Limits):
            raise SpecError("limits: expected Limits")
        _bool(self.tree, "tree")
        _bool(self.sandbox, "sandbox")

    @property
    def process(self) -> str:
        return f"{self.pid}@{self.node}"

    # -- JSON (the worker's input) ----------
    def to_json(self) -> dict[str, Any]:
        """The request as JSON values (``sandbox`` is not part of it)."""
        fuzz = None
        if self.fuzz is not None:
            fuzz = {k: getattr(self.fuzz, k) for k in FuzzSpec.__dataclass_fields__}
        return {
            "process": self.process, "from_ns": self.from_ns, "to_ns": self.to_ns,
            "inject": list(self.injections),
            "set_args": [{"index": i, "value": v} for i, v in self.set_args],
            "env": dict(self.env), "cmd": list(self.cmd) if self.cmd is not None else None,
            "mode": self.mode, "expect_exit": self.expect_exit,
            "expect_output_match": self.expect_output_match, "timeout_s": self.timeout_s,
            "fuzz": fuzz, "limits": self.limits.to_json(), "tree": self.tree,
        }

    @classmethod
    def from_json(cls, data: Any) -> ReplayRequest:
        """Parse what ``to_json`` gives; unknown or mistyped fields are a ``SpecError``."""
        if not isinstance(data, dict):
            raise SpecError("request: expected a JSON object")
        known = {"process", "from_ns", "to_ns", "inject", "set_args", "env", "cmd", "mode",
                 "expect_exit", "expect_output_match", "timeout_s", "fuzz", "limits", "tree"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"request: unknown field {unknown[0]!r}")
        try:
            pid, node = parse_process(_field(data, "process", str))
        except RecordingError as err:
            raise SpecError(str(err)) from None
        set_args = []
        for item in _field(data, "set_args", list, []):
            if not isinstance(item, dict) or set(item) != {"index", "value"}:
                raise SpecError("set_args: expected objects {index, value}")
            set_args.append((item["index"], item["value"]))
        env = _field(data, "env", dict, {})
        cmd = _field(data, "cmd", list, None)
        fuzz = _field(data, "fuzz", dict, None)
        if fuzz is not None:
            allowed = set(FuzzSpec.__dataclass_fields__)
            if not set(fuzz) <= allowed or "runs" not in fuzz:
                raise SpecError("fuzz: expected {runs, seed, max_delay_ns, swaps, workers, "
                                "executor, ray_address}")
        limits = _field(data, "limits", dict, None)
        return cls(
            pid=pid, node=node, from_ns=_field(data, "from_ns", int, None),
            to_ns=_field(data, "to_ns", int, None),
            injections=tuple(_field(data, "inject", list, [])), set_args=tuple(set_args),
            env=tuple(env.items()), cmd=tuple(cmd) if cmd is not None else None,
            mode=_field(data, "mode", str, None),
            expect_exit=_field(data, "expect_exit", int, None),
            expect_output_match=_field(data, "expect_output_match", bool, False),
            timeout_s=_field(data, "timeout_s", (int, float), 120.0),
            fuzz=FuzzSpec(**fuzz) if fuzz is not None else None,
            limits=Limits.from_json(limits) if limits is not None else Limits(),
            tree=_field(data, "tree", bool, False))


def parse_time(text: str | None, option: str) -> int | None:
    """An instant of the one time grammar (lake/timespec.py: now, -15m, RFC 3339 with a
    zone, epoch with its unit or by its digits) as epoch ns; None stays None."""
    if text is None:
        return None
    try:
        return parse_instant(text)
    except TimeSpecError as err:
        raise SpecError(f"{option}: {err}") from None


def _field(data: dict[str, Any], name: str, kind: type | tuple[type, ...],
           default: Any = ...) -> Any:
    if name not in data or data[name] is None:
        if default is ...:
            raise SpecError(f"request: {name} is required")
        return default
    value = data[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, float))):
        raise SpecError(f"request: {name} has the wrong type")
    return value


def _int(value: Any, name: str, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise SpecError(f"{name}: expected an integer in [{low}, {high}], got {value!r}"[:200])


def _bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise SpecError(f"{name}: expected true or false")


def _text(value: Any, name: str, limit: int, empty: bool = False) -> None:
    if not isinstance(value, str) or "\x00" in value or len(value) > limit \
            or (not value and not empty):
        raise SpecError(f"{name}: expected {'a' if empty else 'a non-empty'} string of at "
                        f"most {limit} characters without NUL")
