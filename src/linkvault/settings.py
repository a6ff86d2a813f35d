"""One settings object, read from the environment (LINKVAULT_*) and an optional .env file."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from linkvault.errors import ConfigurationError
from linkvault.stores import DEFAULT_URL


class Settings(BaseSettings):
    """Everything linkvault reads from its environment."""

    model_config = SettingsConfigDict(
        env_prefix="LINKVAULT_", env_file=".env", extra="ignore", frozen=True
    )

    database_url: str = DEFAULT_URL
    keys: SecretStr | None = Field(
        default=None, description="key ring entries: id:base64url-32-bytes, comma separated"
    )
    key_file: Path | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: str = "INFO"

    @property
    def is_embedded(self) -> bool:
        """Whether the database is the embedded SQLite default kind."""
        return self.database_url.startswith(("sqlite:", "memory:"))


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
