"""ptrace replay of recorded processes under a virtual clock.

    recording = lake_source.load(location, pid, node)     # or Recording.from_tables(...)
    report = replay(recording, ReplayOptions(injections=parse_all(["fsync:+50ms"])))
    fuzzed = fuzz.fuzz(recording, ReplayOptions(), FuzzConfig(runs=20, seed=7))  # timing
"""

from kprobe.replay_sandbox.engine import ReplayOptions, replay
from kprobe.replay_sandbox.errors import (
    FuzzError,
    RecordingError,
    ReplaySandboxError,
    SandboxError,
    SpecError,
    TracerError,
)
from kprobe.replay_sandbox.fuzz import FuzzConfig, FuzzReport
from kprobe.replay_sandbox.injection import Injection, parse_all
from kprobe.replay_sandbox.recording import ProcessInfo, Recording
from kprobe.replay_sandbox.report import Divergence, ReplayReport

__all__ = [
    "Divergence",
    "FuzzConfig",
    "FuzzError",
    "FuzzReport",
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
