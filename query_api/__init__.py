"""Stateless FastAPI service over the lake: SQL, causal queries, timelines, live stream,
replays. ``create_app()`` builds the application; ``kprobe serve`` runs it."""

from query_api.app import create_app

__all__ = ["create_app"]
