"""One settings object, read from the environment (LINKVAULT_*) and an optional .env file."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from dotenv import dotenv_values
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from linkvault.errors import ConfigurationError
from linkvault.origins import parse_origin
from linkvault.stores import DEFAULT_URL

ENV_PREFIX = "LINKVAULT_"
ENV_FILE = ".env"


class Settings(BaseSettings):
    """Everything linkvault reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=ENV_FILE, extra="ignore", frozen=True
    )

    database_url: str = DEFAULT_URL
    keys: SecretStr | None = Field(
        default=None, description="key ring entries: id:base64url-32-bytes, comma separated"
    )
    key_file: Path | None = None
    active_key_id: str | None = None
    api_keys: SecretStr | None = Field(
        default=None, description="API keys: name:scope+scope:sha256hex entries, comma separated"
    )
    api_key_file: Path | None = None
    providers_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    public_url: str | None = Field(
        default=None, description="base URL the OAuth2 callback is reached at"
    )
    return_origins: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(),
        description="origins return_to may point at, comma separated (https://app.example)",
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, le=16 * 1024 * 1024, description="largest request body"
    )
    log_level: str = "INFO"
    refresh_horizon_minutes: int = Field(default=10, ge=1, le=24 * 60)
    refresh_concurrency: int = Field(default=16, ge=1, le=1000)
    refresh_batch_size: int = Field(default=100, ge=1, le=1000)
    refresh_lease_seconds: int = Field(
        default=15, ge=2, le=3600, description="a refresh lease; renewed while work is live"
    )
    refresh_heartbeat_seconds: float | None = Field(
        default=None, gt=0, le=1800, description="lease renewal period (default: lease / 4)"
    )
    refresh_max_attempts: int = Field(default=8, ge=1, le=100)
    refresh_timeout_seconds: float = Field(
        default=60.0, gt=0, le=600, description="how long a token request waits for its answer"
    )
    refresh_connect_timeout_seconds: float = Field(
        default=3.0, gt=0, le=60, description="how long a token request waits to connect"
    )
    webhook_allow_http_loopback: bool = Field(
        default=False, description="accept http:// webhook URLs on loopback (development only)"
    )
    webhook_timeout_seconds: float = Field(
        default=10.0, gt=0, le=60, description="how long a webhook delivery waits for its answer"
    )
    webhook_connect_timeout_seconds: float = Field(
        default=3.0, gt=0, le=30, description="how long a webhook delivery waits to connect"
    )
    webhook_lease_seconds: float = Field(
        default=60.0,
        ge=5,
        le=3600,
        description="how long a worker holds a delivery (at least the timeout plus 5 s)",
    )
    proxy_timeout_seconds: float = Field(
        default=30.0, gt=0, le=600, description="how long a proxied call waits for the provider"
    )
    proxy_connect_timeout_seconds: float = Field(
        default=3.0, gt=0, le=60, description="how long a proxied call waits to connect"
    )
    proxy_max_body_bytes: int = Field(
        default=32 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="largest request body the proxy streams to a provider",
    )
    shutdown_grace_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="after SIGTERM, how long in-flight requests and refreshes get to finish",
    )
    consent_warning_hours: float = Field(
        default=24.0,
        ge=0,
        le=24 * 30,
        description="how long before a provider ends a consent by rule to warn (consent_expiring)",
    )

    @field_validator("return_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else list(value or ())
        return tuple(dict.fromkeys(parse_origin(str(o)) for o in items if str(o).strip()))

    @property
    def base_url(self) -> str:
        """Where this service is reached, for the OAuth2 redirect URI."""
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def is_embedded(self) -> bool:
        """Whether the database is embedded in the process (see `is_embedded`)."""
        return is_embedded(self.database_url)


def is_embedded(database_url: str) -> bool:
    """Whether a database URL names an embedded database: a SQLite file or memory://.

    The one definition: an embedded deployment creates its own key files and migrates itself.
    """
    return database_url.split(":", 1)[0].lower() in ("sqlite", "memory")


def load_settings() -> Settings:
    """Read the settings, turning validation failures into one ConfigurationError."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"LINKVAULT_{'_'.join(str(p) for p in err['loc']).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigurationError(f"invalid settings: {problems}") from None


def source_of(settings: Settings, name: str) -> str:
    """Where a setting came from, for messages: its variable, or the default."""
    variable = f"{ENV_PREFIX}{name.upper()}"
    return variable if name in settings.model_fields_set else f"the default; {variable} is unset"


def environment(
    env_file: str | Path = ENV_FILE, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The LINKVAULT_* variables of the .env file, overridden by those of the process.

    Provider variables (LINKVAULT_PROVIDER_<SLUG>_*) are named at run time, so they are read
    from here rather than declared as settings.
    """
    merged = {
        name: value
        for name, value in dotenv_values(env_file).items()
        if name.startswith(ENV_PREFIX) and value is not None
    }
    source = os.environ if environ is None else environ
    merged.update((n, v) for n, v in source.items() if n.startswith(ENV_PREFIX))
    return merged
