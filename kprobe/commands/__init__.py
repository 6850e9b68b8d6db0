"""Subcommands. Each module defines ``add_parser(subparsers)`` which sets ``func=run``."""

from __future__ import annotations

# Order shown in `kprobe --help`. A module listed here that does not exist yet is skipped
# so the CLI stays usable while features land.
COMMAND_MODULES: tuple[str, ...] = (
    "doctor",
    "record",
    "run",
    "otlp",
    "sql",
    "lake",
    "analyze",
    "explain",
    "failures",
    "graph",
    "replay",
    "serve",
    "demo",
)
