"""SERVE: the HTTP server (FastAPI + uvicorn) for hot-reloading models. Needs the `server` extra."""

from __future__ import annotations

from .app import app_from_env, create_app
from .settings import ModelSpec, Settings

__all__ = ["ModelSpec", "Settings", "app_from_env", "create_app"]
