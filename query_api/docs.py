"""``/docs``: Swagger UI from files served by this server, never from a CDN (a bank's
air-gapped network showed a blank page). The files come with the ``swagger-ui-py`` package
(Swagger UI 5, which reads OpenAPI 3.1); only its static directory is used."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

STATIC = "/docs/static"


def swagger_static_dir() -> Path | None:
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "static"
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def install(app: FastAPI) -> None:
    """Serve ``/docs`` and its assets locally (when the package is missing, ``/docs`` says
    so instead of loading from the internet)."""
    static = swagger_static_dir()
    if static is not None:
        app.mount(STATIC, StaticFiles(directory=static), name="swagger-static")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        if static is None:
            return HTMLResponse("<p>Swagger UI is not installed (pip install swagger-ui-py);"
                                " the schema is at <a href=\"openapi.json\">/openapi.json"
                                "</a>.</p>", status_code=503)
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json", title=f"{app.title} - docs",
            swagger_js_url=f"{root}{STATIC}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{STATIC}/swagger-ui.css",
            swagger_favicon_url=f"{root}{STATIC}/favicon-32x32.png")
