"""Dependencies, as ``Annotated`` aliases the routers put in their signatures.

Per-process objects (the live hub, the replay runner, the token store) hang off
``app.state`` and are built on first use from the injected settings, so tests that
override ``get_settings`` / ``get_lake_settings`` get objects built from their settings.
"""

from __future__ import annotations

import threading
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.requests import HTTPConnection

from compute.errors import WindowError
from compute.settings import ComputeSettings
from compute.window import parse_instant
from lake import LakeLocation, LakeSettings, resolve
from query_api.auth import Principal, TokenStore, authenticate
from query_api.causal import Slots
from query_api.errors import BadRequest, ServiceUnavailable
from query_api.live import LiveHub
from query_api.metrics import ApiMetrics
from query_api.replays import ReplayRunner
from query_api.settings import (
    ApiSettings,
    Scope,
    get_compute_settings,
    get_lake_settings,
    get_settings,
)

SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
LakeSettingsDep = Annotated[LakeSettings, Depends(get_lake_settings)]
ComputeSettingsDep = Annotated[ComputeSettings, Depends(get_compute_settings)]

_bearer = HTTPBearer(auto_error=False, description="a token from the tokens file")
_state_lock = threading.Lock()
T = TypeVar("T")


def get_location(lake: LakeSettingsDep) -> LakeLocation:
    return resolve(lake)


LocationDep = Annotated[LakeLocation, Depends(get_location)]


def get_metrics(request: HTTPConnection) -> ApiMetrics:
    metrics: ApiMetrics = request.app.state.metrics
    return metrics


MetricsDep = Annotated[ApiMetrics, Depends(get_metrics)]


def _state(request: HTTPConnection, name: str, key: Any, build: Any) -> Any:
    """``app.state.<name>`` built by ``build()``; rebuilt if ``key`` (its settings) changed."""
    with _state_lock:
        current = getattr(request.app.state, name, None)
        if current is None or current[0] != key:
            current = (key, build())
            setattr(request.app.state, name, current)
        return current[1]


def token_store(request: HTTPConnection, settings: ApiSettings) -> TokenStore | None:
    """The token store, or None when authentication is disabled."""
    if settings.auth_disabled:
        return None
    if settings.tokens_file is None:
        raise ServiceUnavailable("no tokens file configured (KPROBE_API_TOKENS_FILE or "
                                 "kprobe serve --tokens-file); every request is refused")
    path = settings.tokens_file
    store: TokenStore = _state(request, "token_store", str(path), lambda: TokenStore(path))
    return store


def _require(scope: Scope) -> Any:
    def check(request: Request, settings: SettingsDep,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
              ) -> Principal:
        token = credentials.credentials if credentials else None
        return authenticate(token_store(request, settings), token, scope)

    return check


ReadAccess = Annotated[Principal, Depends(_require("read"))]
ReplayAccess = Annotated[Principal, Depends(_require("replay"))]


def get_hub(request: HTTPConnection, location: LocationDep, settings: SettingsDep,
            metrics: MetricsDep) -> LiveHub:
    hub: LiveHub = _state(request, "live_hub", (location, settings.model_dump_json()),
                          lambda: LiveHub(location, settings, metrics))
    return hub


def get_runner(request: HTTPConnection, location: LocationDep, lake: LakeSettingsDep,
               settings: SettingsDep, metrics: MetricsDep) -> ReplayRunner:
    runner: ReplayRunner = _state(
        request, "replay_runner", (location, settings.model_dump_json()),
        lambda: ReplayRunner(location, lake, settings, metrics))
    return runner


def get_graph_slots(request: HTTPConnection, settings: SettingsDep) -> Slots:
    slots: Slots = _state(request, "graph_slots",
                          (settings.graph_max_open, settings.graph_wait_s),
                          lambda: Slots("graph", settings.graph_max_open,
                                        settings.graph_wait_s))
    return slots


def get_sql_slots(request: HTTPConnection, settings: SettingsDep) -> Slots:
    slots: Slots = _state(request, "sql_slots",
                          (settings.sql_max_concurrent, settings.sql_timeout_s),
                          lambda: Slots("SQL", settings.sql_max_concurrent,
                                        settings.sql_timeout_s))
    return slots


GraphSlotsDep = Annotated[Slots, Depends(get_graph_slots)]
SqlSlotsDep = Annotated[Slots, Depends(get_sql_slots)]
RunnerDep = Annotated[ReplayRunner, Depends(get_runner)]
HubDep = Annotated[LiveHub, Depends(get_hub)]


def parse_time(value: str | None, name: str) -> int | None:
    """A time parameter as epoch ns (None stays None); BadRequest names the parameter."""
    if value is None or value == "":
        return None
    try:
        parsed = parse_instant(value)
    except WindowError as err:
        raise BadRequest(f"{name}: {err}") from None
    except (OverflowError, ValueError, OSError):
        raise BadRequest(f"{name}: {value!r} is out of range") from None
    if not 0 <= parsed < 2**63:
        raise BadRequest(f"{name}: {value!r} is out of range")
    return parsed
