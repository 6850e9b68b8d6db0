"""``GET /v1/whoami``: the caller's token name and scopes (the console shows what it may do:
no replay button without the replay scope, no payload bytes without payloads)."""

from __future__ import annotations

from fastapi import APIRouter

from kprobe.query_api.deps import NodeReadAccess, SettingsDep
from kprobe.query_api.problems import problem_responses
from kprobe.query_api.schemas import WhoAmI
from kprobe.query_api.settings import SCOPES

router = APIRouter(prefix="/v1", tags=["auth"])


@router.get("/whoami", response_model=WhoAmI, responses=problem_responses(401, 403, 503),
            summary="The caller's token and scopes")
async def whoami(principal: NodeReadAccess, settings: SettingsDep) -> WhoAmI:
    # node-confined: it tells only the token's own name, scopes and nodes
    return WhoAmI(principal=principal.name,
                  scopes=[s for s in SCOPES if s in principal.scopes],
                  auth="none" if settings.auth_disabled else "token",
                  nodes=sorted(principal.nodes) if principal.nodes is not None else None)
