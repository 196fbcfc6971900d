"""The API docs, `/docs` (Swagger UI) and `/redoc`, with their scripts and styles served from the
installed package (the files `fastapi-offline` ships, MIT; Swagger UI is Apache-2.0, ReDoc MIT)
instead of a CDN: the pages work on a machine without internet access, and the browser asks
nothing of anyone but this server. The paths are in `routing.py`."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from .errors import ApiError

__all__ = ["ASSETS", "asset", "oauth2_redirect", "redoc", "swagger_ui"]

ASSETS_PATH = "/docs/assets"

#: The files the pages load, by name: their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "text/javascript",
    "favicon.png": "image/png",
}

_TITLE = "ckptserve"
# Swagger UI would otherwise show a badge fetched from an online validator.
_SWAGGER_PARAMETERS: dict[str, Any] = {"validatorUrl": None}


def _root(request: Request) -> str:
    return str(request.scope.get("root_path", ""))


async def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI for `/openapi.json`."""
    root = _root(request)
    return get_swagger_ui_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{_TITLE} - Swagger UI",
        oauth2_redirect_url=f"{root}/docs/oauth2-redirect",
        swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters=_SWAGGER_PARAMETERS,
    )


async def oauth2_redirect() -> HTMLResponse:
    """Swagger UI's OAuth2 redirect page."""
    return get_swagger_ui_oauth2_redirect_html()


async def redoc(request: Request) -> HTMLResponse:
    """ReDoc for `/openapi.json`, without web fonts."""
    root = _root(request)
    return get_redoc_html(
        openapi_url=f"{root}/openapi.json",
        title=f"{_TITLE} - ReDoc",
        redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
        redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        with_google_fonts=False,
    )


async def asset(file: str) -> Response:
    """One of the pages' files; any other name is a 404."""
    media_type = ASSETS.get(file)
    if media_type is None:
        raise ApiError(404, f"no docs asset named {file!r}")
    path = files("fastapi_offline") / "static" / file
    return FileResponse(str(path), media_type=media_type,
                        headers={"cache-control": "public, max-age=86400"})  # fmt: skip
