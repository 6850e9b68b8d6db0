"""Options shared by subcommands: ``--lake`` and ``--format``."""

from __future__ import annotations

import argparse
import os

from lake import LakeSettings

FORMATS = ("text", "json")


def add_lake_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--lake",
        default=None,
        metavar="URI",
        help="lake root: a path, file:///path or s3://bucket/prefix "
        "(default: $KPROBE_LAKE or file:///var/lib/kprobe/lake)",
    )


def add_format_option(
    parser: argparse.ArgumentParser, choices: tuple[str, ...] = FORMATS
) -> None:
    parser.add_argument("--format", choices=choices, default="text", help="output format")


def lake_settings(args: argparse.Namespace) -> LakeSettings:
    """Settings from the environment, with ``--lake`` taking precedence."""
    uri = getattr(args, "lake", None) or os.environ.get("KPROBE_LAKE")
    return LakeSettings(lake=uri) if uri else LakeSettings()
