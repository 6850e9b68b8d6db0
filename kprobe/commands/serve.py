"""``kprobe serve``: the HTTP API (uvicorn), bound to 127.0.0.1 unless told otherwise."""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from kprobe.commands._common import add_lake_option, lake_settings
from kprobe.errors import CommandError
from kprobe.lake import resolve


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = sub.add_parser(
        "serve",
        help="serve the HTTP API: SQL, explanations, graphs, timelines, live stream, replays",
        description="Run the stateless HTTP API over the lake (any number of replicas; all "
        "state is in the lake). Requests need a bearer token from --tokens-file (create one "
        "with --new-token) unless --no-auth. OpenAPI at /docs and /openapi.json; health at "
        "/healthz, /readyz, /metrics. Defaults come from KPROBE_API_* variables.",
    )
    parser.add_argument("--host", default=None,
                        help="address to listen on (default: $KPROBE_API_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None,
                        help="port (default: $KPROBE_API_PORT or 8470)")
    add_lake_option(parser)
    parser.add_argument("--tokens-file", default=None, metavar="PATH",
                        help="JSON file of token hashes and scopes "
                        "(default: $KPROBE_API_TOKENS_FILE)")
    parser.add_argument("--no-auth", action="store_true",
                        help="serve without tokens, read-only (no replays), on a loopback "
                        "address only")
    parser.add_argument("--cors-origin", action="append", default=None, metavar="ORIGIN",
                        help="allow browser calls from ORIGIN (repeatable; default: none)")
    parser.add_argument("--workers", type=int, default=1, metavar="N",
                        help="worker processes (default 1)")
    parser.add_argument("--log-level", default="warning",
                        choices=("critical", "error", "warning", "info", "debug"),
                        help="server log level (default warning)")
    parser.add_argument("--new-token", metavar="NAME",
                        help="create a token NAME in --tokens-file, print it once, and exit")
    parser.add_argument("--scopes", default="read", metavar="LIST",
                        help="scopes of --new-token, comma-separated: read, replay, "
                        "payloads (with read: payload bytes and environments), e.g. "
                        "read,payloads")
    parser.add_argument("--nodes", default=None, metavar="LIST",
                        help="limit --new-token to these nodes, comma-separated: it reads "
                        "and analyses only windows of them, and routes that cannot confine "
                        "their answer to nodes refuse it")
    parser.add_argument("--analyze-timeout", type=float, default=None, metavar="SECONDS",
                        help="how long an explanation waits for the on-demand analysis of "
                        "its window before answering 503 analysis-running (default: "
                        "$KPROBE_API_ANALYZE_TIMEOUT_S or 20)")
    parser.add_argument("--no-analyze", action="store_true",
                        help="answer explanations only from windows already analysed "
                        "(no on-demand analysis: the API then never writes to the lake)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from kprobe.query_api.auth import add_token
    from kprobe.query_api.settings import ApiSettings

    if args.new_token:
        if not args.tokens_file:
            raise CommandError("--new-token needs --tokens-file")
        scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
        nodes = ([n.strip() for n in args.nodes.split(",") if n.strip()]
                 if args.nodes is not None else None)
        try:
            token = add_token(Path(args.tokens_file), args.new_token, scopes, nodes)
        except ValueError as err:
            raise CommandError(str(err)) from None
        print(token)
        return 0
    # the tokens file by absolute path: replays hide it from the replayed program by path
    tokens_file = str(Path(args.tokens_file).resolve()) if args.tokens_file else None
    overrides: dict[str, Any] = {name: value for name, value in (
        ("host", args.host), ("port", args.port), ("tokens_file", tokens_file),
        ("auth_disabled", True if args.no_auth else None),
        ("cors_origins", args.cors_origin), ("analyze_timeout_s", args.analyze_timeout),
        ("analyze_on_demand", False if args.no_analyze else None)) if value is not None}
    try:
        settings = ApiSettings(**overrides)
    except ValidationError as err:
        first = err.errors()[0]
        raise CommandError(f"invalid setting {'.'.join(map(str, first['loc']))}: "
                           f"{first['msg']}") from None
    if settings.auth_disabled and not is_loopback(settings.host):
        raise CommandError(f"--no-auth serves on a loopback address only, not "
                           f"{settings.host}: give tokens (--tokens-file) to listen there")
    if not settings.auth_disabled:
        if settings.tokens_file is None:
            raise CommandError("no tokens: give --tokens-file (create one with --new-token "
                               "NAME --tokens-file PATH) or --no-auth")
        from kprobe.query_api.auth import parse_tokens

        try:
            parse_tokens(settings.tokens_file.read_text("utf-8"), str(settings.tokens_file))
        except OSError as err:
            raise CommandError(f"cannot read {settings.tokens_file}: "
                               f"{err.strerror or err}") from None
    lake = lake_settings(args)
    location = resolve(lake)
    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    # The settings travel to the app (and to every worker) through the environment, so the
    # app is built by its factory exactly as `uvicorn --factory` would build it.
    os.environ.update({f"KPROBE_API_{name.upper()}": (json.dumps(value) if name ==
                                                       "cors_origins" else str(value))
                       for name, value in overrides.items()})
    os.environ["KPROBE_LAKE"] = lake.lake
    import uvicorn

    logging.basicConfig(level=args.log_level.upper(), format="kprobe serve: %(message)s")
    _raise_open_files(settings.max_connections)
    print(f"kprobe serve: http://{settings.host}:{settings.port} over {location.root}"
          f"{' (no tokens: read-only, loopback only)' if settings.auth_disabled else ''}",
          file=sys.stderr, flush=True)
    try:
        # h11 with our guard (query_api/http_guard.py): header size and time limits and a
        # connection cap; httptools has neither
        uvicorn.run("kprobe.query_api.app:create_app", factory=True, host=settings.host,
                    port=settings.port, workers=args.workers, log_level=args.log_level,
                    access_log=args.log_level in ("info", "debug"), server_header=False,
                    http="kprobe.query_api.http_guard:GuardedH11Protocol",
                    h11_max_incomplete_event_size=settings.max_header_bytes,
                    timeout_keep_alive=int(max(1, settings.keep_alive_s)),
                    ws="websockets-sansio", ws_max_size=1 << 16, lifespan="on",
                    timeout_graceful_shutdown=5)
    except OSError as err:
        raise CommandError(f"cannot listen on {settings.host}:{settings.port}: "
                           f"{err.strerror or err}") from None
    return 0


def is_loopback(host: str) -> bool:
    from kprobe.query_api.http_guard import is_loopback as loopback

    return loopback(host)


def _raise_open_files(connections: int) -> None:
    """Room for ``connections`` sockets plus the lake's files: raise the soft limit of open
    files towards the hard one (the server's own cap, max_connections, stays the bound)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + 512
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
