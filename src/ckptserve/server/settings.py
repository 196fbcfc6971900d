"""Settings: one frozen object that carries every server option from the CLI (or the
environment, prefix `CKPTSERVE_`) to `create_app`.

The registry's options are nested as `settings.registry` (a RegistryOptions) and declared once, in
options.py: their fields here, their `CKPTSERVE_<FIELD>` variables and their `serve` flags are
generated from those declarations. The environment is read here and nowhere else in the server.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    PrivateAttr,
    SecretStr,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from ..options import OPTIONS, RegistryOptions

__all__ = ["ENV_PREFIX", "Flag", "ModelSpec", "RegistrySettings", "Settings", "flags"]

ENV_PREFIX = "CKPTSERVE_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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


def _checked(check: Any) -> AfterValidator:
    def run(value: Any) -> Any:
        if value is not None:
            check(value)
        return value

    return AfterValidator(run)


class _RegistryBase(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")


def _registry_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(RegistryOptions):
        spec = OPTIONS[f.name]
        if not spec.setting:
            continue
        kind = spec.parsed_as if spec.parsed_as is not None else f.type
        if spec.check is not None:
            kind = Annotated[kind, _checked(spec.check)]
        fields[f.name] = (
            kind,
            Field(f.default, ge=spec.ge, gt=spec.gt, le=spec.le, description=spec.help),
        )
    return fields


#: The registry options the server can be told, as pydantic fields generated from options.py.
RegistrySettings = create_model(
    "RegistrySettings", __base__=_RegistryBase, __module__=__name__, **_registry_fields()
)


class _AsRegistryOptions:
    """Validates `settings.registry` through RegistrySettings and keeps it a RegistryOptions."""

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        def build(value: Any, validate: core_schema.ValidatorFunctionWrapHandler) -> Any:
            if isinstance(value, RegistryOptions):
                return value
            return RegistryOptions(**dict(validate(value)))

        def dump(options: RegistryOptions) -> dict[str, Any]:
            return {name: getattr(options, name) for name in RegistrySettings.model_fields}

        return core_schema.no_info_wrap_validator_function(
            build,
            handler.generate_schema(RegistrySettings),
            serialization=core_schema.plain_serializer_function_ser_schema(dump),
        )


class _RegistryEnv(EnvSettingsSource):
    """The flat `CKPTSERVE_<FIELD>` variables of the registry options, nested under `registry`."""

    def __call__(self) -> dict[str, Any]:
        found = super().__call__()
        return {"registry": found} if found else {}


class Settings(BaseSettings):
    """Everything `ckptserve serve` can be told. Every field can come from `CKPTSERVE_<FIELD>`,
    the registry's too (`CKPTSERVE_SWAP`: they are flat in the environment and as keywords).

    Example:
        settings = Settings(models=[ModelSpec(name="actor", path="models/")], swap="background")
        app = create_app(settings)
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    #: Fields without a `serve` flag: the models are its arguments; secrets never go on a command
    #: line (`ps` shows it); the rest are tuning knobs or set by the CLI itself.
    NOT_FLAGS: ClassVar[frozenset[str]] = frozenset({
        "models", "admin_token", "signing_key", "signing_keys", "feedback_secret",
        "feedback_token", "prometheus_multiproc_dir", "watch_interval", "loop_probe_interval",
    })  # fmt: skip

    models: tuple[ModelSpec, ...] = ()
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="Port to listen on.")
    workers: int = Field(
        1, ge=1, description="uvicorn worker processes (each loads its own copy of each model)."
    )
    device: str = Field("cpu", description="Where models are loaded (cpu, cuda, cuda:0, ...).")
    ray: bool = Field(
        False, description="Serve as a Ray Serve application (ckptserve[ray]): on the cluster in "
        "$RAY_ADDRESS, else a local Ray bound to --host.",
    )  # fmt: skip
    replicas: int = Field(
        1, ge=1, description="With --ray: how many replicas, each watching the source itself."
    )
    registry: Annotated[RegistryOptions, _AsRegistryOptions] = RegistryOptions()
    factory: str | None = Field(
        None, description="package.module:function building the module for weights formats "
        "(state_dict, safetensors).",
    )  # fmt: skip
    app_dir: str = Field(
        ".", description="Directory put first on the import path for --factory (as uvicorn's "
        "--app-dir), in every worker: a factory module beside your checkpoints imports.",
    )  # fmt: skip
    prefix: str = Field("/rl", description="URL prefix of the original API.")
    max_body_bytes: int = Field(
        1 << 20, ge=1, description="Request body limit (413), enforced while the body streams in."
    )
    max_batch: int = Field(4096, ge=1, description="Most states in one request.")
    batch_max_size: int = Field(
        32, ge=1, description="Dynamic batching: gather up to N concurrent states into one "
        "forward pass; it waits for no timer (a lone request runs at once), and a failed batch is "
        "retried in halves (1: off).",
    )  # fmt: skip
    batch_max_wait_ms: float = Field(
        0.0, ge=0, description="How long a batch waits for more requests (0: one event-loop turn)."
    )
    limit_concurrency: int | None = Field(
        None, ge=0, description="Connections and requests per worker past which requests get 503 "
        "at once (0: no limit).", json_schema_extra={"default_text": "the open-file limit - 128"},
    )  # fmt: skip
    timeout_headers: float = Field(
        10.0, ge=0, description="Seconds a client has to send a request's headers, from "
        "connecting or from the first byte of a later request (0: no deadline).",
    )  # fmt: skip
    timeout_keep_alive: int = Field(
        5, ge=1, description="Seconds an idle kept-alive connection stays open (behind a load "
        "balancer: more than its idle timeout).",
    )  # fmt: skip
    timeout_worker_healthcheck: int = Field(
        60, ge=1, description="With --workers N: seconds a worker may take to answer uvicorn's "
        "health check (importing torch on busy cores takes several) before it is replaced.",
    )  # fmt: skip
    torch_threads: int = Field(
        1, ge=0, description="torch intra-op threads per process (0: torch's default)."
    )
    log_format: Literal["text", "json"] = Field("text", description="One line per event.")
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        "info", description="The least severe log lines shown."
    )
    watch_interval: float = Field(
        1.0, gt=0, description="Seconds between the background checks of every model."
    )
    loop_probe_interval: float = Field(
        0.001, ge=0, description="Event-loop lag probe tick in seconds (0: off)."
    )
    admin_token: SecretStr | None = Field(None, description="Bearer token of admin actions.")
    signing_key: SecretStr | None = Field(None, description="HMAC key of manifest signatures.")
    signing_keys: SecretStr | None = Field(
        None, description="The keys accepted while a key is rotated (format: manifest.py)."
    )
    feedback_secret: SecretStr | None = Field(
        None, description="The key request ids are signed with (default: a random one, shared "
        "by the workers of --workers N; Ray replicas and several servers need a shared one to "
        "read the ids the others issued).",
    )  # fmt: skip
    feedback_token: SecretStr | None = Field(
        None, description="Bearer token POST {prefix}/feedback requires (default: none needed)."
    )
    prometheus_multiproc_dir: str | None = Field(
        None,
        validation_alias=AliasChoices("prometheus_multiproc_dir", "PROMETHEUS_MULTIPROC_DIR"),
        description="prometheus-client's directory for metrics summed over worker processes.",
    )

    _registry_options: RegistryOptions | None = PrivateAttr(None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        registry_env = _RegistryEnv(RegistrySettings)
        return init_settings, registry_env, env_settings, dotenv_settings, file_secret_settings

    @model_validator(mode="before")
    @classmethod
    def _nest_registry_options(cls, data: Any) -> Any:
        """`Settings(swap="background")`: registry options given flat go into `registry`."""
        if not isinstance(data, dict):
            return data
        flat = {key: data[key] for key in data if key in RegistrySettings.model_fields}
        if not flat:
            return data
        nested = data.get("registry", {})
        if isinstance(nested, RegistryOptions):
            raise ValueError(f"give {', '.join(flat)} inside registry=, or registry= as a dict")
        rest = {key: value for key, value in data.items() if key not in flat}
        return {**rest, "registry": {**nested, **flat}}

    @field_validator("prefix")
    @classmethod
    def _valid_prefix(cls, value: str) -> str:
        value = "/" + value.strip("/")
        if value == "/" or not re.match(r"^(/[A-Za-z0-9._-]+)+$", value):
            raise ValueError(f"prefix {value!r} must look like /rl")
        if value.split("/")[1] in ("v2", "metrics", "healthz", "readyz", "docs", "openapi.json"):
            raise ValueError(f"prefix {value!r} collides with a built-in route")
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
        """The RegistryOptions every model's registry is built with: `registry`, plus the loader
        `factory` names and the signing keys. Built once per process; with a factory, `app_dir`
        goes first on `sys.path` then (the factory module is imported at the first load)."""
        if self._registry_options is None:
            loader: Any = "auto"
            if self.factory is not None:
                from ..formats import state_dict_loader

                app_dir = os.path.abspath(self.app_dir)
                if app_dir not in sys.path:
                    sys.path.insert(0, app_dir)
                loader = state_dict_loader(self.factory)
            self._registry_options = dataclasses.replace(
                self.registry,
                loader=loader,
                signing_key=_secret(self.signing_key),
                signing_keys=_secret(self.signing_keys),
            )
        return self._registry_options

    def to_env(self) -> str:
        """JSON for handing the settings to worker processes; what comes from the environment
        only (the admin token, the signing keys, the feedback secret and token) is left out:
        workers read it themselves."""
        return self.model_dump_json(exclude=_ENV_ONLY)


#: Settings that only come from the environment, never handed to workers as JSON.
_ENV_ONLY = {
    "admin_token", "signing_key", "signing_keys", "feedback_secret", "feedback_token",
    "prometheus_multiproc_dir",
}  # fmt: skip


def _secret(value: SecretStr | None) -> str | None:
    return value.get_secret_value() if value is not None else None


@dataclass(frozen=True, slots=True)
class Flag:
    """One `ckptserve serve` flag: the settings field it sets and how `--help` shows it."""

    name: str
    annotation: Any
    help: str
    default_text: str

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")


def flags() -> list[Flag]:
    """The `serve` flags, one per settings field that has one, in declaration order (the
    registry's options where `registry` is declared)."""
    out = []
    for name, info in Settings.model_fields.items():
        if name == "registry":
            for option_name, option_info in RegistrySettings.model_fields.items():
                shown = OPTIONS[option_name].default_text or _shown(option_info.default)
                out.append(
                    Flag(option_name, option_info.annotation, option_info.description or "", shown)
                )
        elif name not in Settings.NOT_FLAGS:
            extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
            shown = str(extra.get("default_text") or _shown(info.default))
            out.append(Flag(name, info.annotation, info.description or "", shown))
    return out


def _shown(default: Any) -> str:
    if default is None:
        return "none"
    if isinstance(default, bool):
        return "on" if default else "off"
    if isinstance(default, float) and default.is_integer():
        return str(int(default))
    return str(default)
