"""ptrace replay of recorded processes under a virtual clock.

    recording = lake_source.load(location, pid, node)     # or Recording.from_tables(...)
    report = replay(recording, ReplayOptions(injections=parse_all(["fsync:+50ms"])))
"""

from replay_sandbox.engine import ReplayOptions, replay
from replay_sandbox.errors import (
    RecordingError,
    ReplaySandboxError,
    SandboxError,
    SpecError,
    TracerError,
)
from replay_sandbox.injection import Injection, parse_all
from replay_sandbox.recording import ProcessInfo, Recording
from replay_sandbox.report import Divergence, ReplayReport

__all__ = [
    "Divergence",
    "Injection",
    "ProcessInfo",
    "Recording",
    "RecordingError",
    "ReplayOptions",
    "ReplayReport",
    "ReplaySandboxError",
    "SandboxError",
    "SpecError",
    "TracerError",
    "parse_all",
    "replay",
]
