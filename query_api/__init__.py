"""Stateless FastAPI service over the lake: SQL, causal queries, timelines, live stream,
replays. ``create_app()`` builds the application; ``kprobe serve`` runs it.

``create_app`` is imported on first use, so a process that needs one module of the package
(the confined Cypher worker) does not load the web framework."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kprobe.query_api.app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from kprobe.query_api.app import create_app

        return create_app
    raise AttributeError(f"module 'query_api' has no attribute {name!r}")
