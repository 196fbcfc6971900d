"""Settings: one frozen object that carries every server option from the CLI (or the
environment, prefix `CKPTSERVE_`) to `create_app`."""

from __future__ import annotations

import os
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from ..registry import RegistryOptions

__all__ = ["ModelSpec", "Settings"]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
Bound = float | list[float] | None


class ModelSpec(BaseModel):
    """One served model: its name in URLs and the checkpoint file, manifest or directory."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    path: str

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not NAME_RE.match(value):
            raise ValueError(f"model name {value!r} must match {NAME_RE.pattern}")
        return value


class Settings(BaseSettings):
    """Everything `ckptserve serve` can be told. Every field can come from `CKPTSERVE_<FIELD>`.

    Example:
        settings = Settings(models=[ModelSpec(name="actor", path="models/")], swap="background")
        app = create_app(settings)
    """

    model_config = SettingsConfigDict(env_prefix="CKPTSERVE_", frozen=True, extra="forbid")

    models: tuple[ModelSpec, ...] = ()
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    workers: int = Field(1, ge=1)
    device: str = "cpu"
    prefix: str = "/rl"
    swap: Literal["sync", "background"] = "sync"
    background_nice: int = Field(10, ge=0, le=19)
    check_interval: float = Field(0.0, ge=0)
    retry_after: float = Field(5.0, ge=0)
    verify_interval: float | None = Field(None, ge=0)
    obs_dim: int | None = Field(None, ge=1)
    action_dim: int | None = Field(None, ge=1)
    obs_low: Bound = None
    obs_high: Bound = None
    action_low: Bound = None
    action_high: Bound = None
    allow_formats: tuple[str, ...] | None = None
    require_signature: bool = False
    factory: str | None = None
    max_body_bytes: int = Field(1 << 20, ge=1)
    max_batch: int = Field(4096, ge=1)
    batch_max_size: int = Field(1, ge=1)
    batch_max_wait_ms: float = Field(0.0, ge=0)
    max_concurrent_loads: int | None = Field(None, ge=1)
    watch_interval: float = Field(1.0, gt=0)
    loop_probe_interval: float = Field(0.001, ge=0)  # event-loop lag probe tick; 0 = off
    torch_threads: int = Field(1, ge=0)
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admin_token: SecretStr | None = None

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/" or not re.match(r"^(/[A-Za-z0-9._-]+)+$", value):
            raise ValueError(f"prefix {value!r} must look like /rl")
        if value.split("/")[1] in ("v2", "metrics", "healthz", "readyz", "docs", "openapi.json"):
            raise ValueError(f"prefix {value!r} collides with a built-in route")
        return value

    @field_validator("allow_formats")
    @classmethod
    def _known_formats(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        from ..formats import FORMATS

        if value is not None:
            unknown = sorted(set(value) - set(FORMATS))
            if unknown or not value:
                raise ValueError(
                    f"unknown format(s) {', '.join(unknown) or '(none)'}: choose from {', '.join(FORMATS)}"
                )
        return value

    @model_validator(mode="after")
    def _unique_names(self) -> Settings:
        seen: set[str] = set()
        for spec in self.models:
            if spec.name in seen:
                raise ValueError(f"model name {spec.name!r} is given twice")
            seen.add(spec.name)
        return self

    @property
    def default_model(self) -> str | None:
        return self.models[0].name if self.models else None

    def registry_options(self) -> RegistryOptions:
        """The RegistryOptions every model's registry is built with."""
        loader: Any = "auto"
        if self.factory is not None:
            from ..formats import state_dict_loader

            loader = state_dict_loader(self.factory)
        return RegistryOptions(
            check_interval=self.check_interval,
            swap=self.swap,
            background_nice=self.background_nice,
            loader=loader,
            retry_after=self.retry_after,
            verify_interval=self.verify_interval,
            obs_dim=self.obs_dim,
            action_dim=self.action_dim,
            obs_low=self.obs_low,
            obs_high=self.obs_high,
            action_low=self.action_low,
            action_high=self.action_high,
            allow_formats=self.allow_formats,
            require_signature=self.require_signature,
            max_concurrent_loads=self.max_concurrent_loads,
            signing_key=os.environ.get("CKPTSERVE_SIGNING_KEY") or None,
        )

    def to_env(self) -> str:
        """JSON for handing the settings to worker processes; the admin token is left out (the
        workers read it from `CKPTSERVE_ADMIN_TOKEN` themselves)."""
        return self.model_dump_json(exclude={"admin_token"})
