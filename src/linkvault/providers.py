"""The provider registry: which external providers exist, how to reach and authenticate to them.

Providers are described in TOML (the built-in `providers.toml` ships with the package);
client ids and secrets come from an environment mapping, never from the file.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import tomllib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urljoin, urlsplit
from uuid import UUID

from linkvault.errors import ProviderConfigError, UnknownProviderError

ENV_PREFIX = "LINKVAULT_PROVIDER_"
BUILTIN_SOURCE = "linkvault/providers.toml"
# The demo client of the built-in loopback `sandbox` provider: the sandbox registers it, and a
# process uses it when no client is configured for `sandbox`. A test fixture, not a credential.
SANDBOX_CLIENT_ID = "linkvault-sandbox"
SANDBOX_CLIENT_SECRET = "sandbox-secret"

_E = TypeVar("_E", bound=StrEnum)

_SLUG = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LOOPBACK_NAMES = frozenset({"localhost"})


class AuthStyle(StrEnum):
    OAUTH2 = "oauth2"
    API_KEY = "api_key"
    LINK_TOKEN = "link_token"


class TokenEndpointAuth(StrEnum):
    CLIENT_SECRET_BASIC = "client_secret_basic"
    CLIENT_SECRET_POST = "client_secret_post"


_RATE = re.compile(r"^\s*(\d{1,9})\s*/\s*(s|sec|second|m|min|minute|h|hour)\s*$")
_PERIODS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hour": 3600,
}


@dataclass(frozen=True, slots=True)
class Rate:
    """At most `requests` per `period` seconds, in bursts of up to `requests` (a token bucket)."""

    requests: int
    period: float

    def __post_init__(self) -> None:
        if isinstance(self.requests, bool) or not isinstance(self.requests, int):
            raise ProviderConfigError("a rate's request count must be a whole number")
        if self.requests < 1 or not self.period > 0:
            raise ProviderConfigError("a rate must allow at least 1 request in a positive period")

    @classmethod
    def parse(cls, text: str) -> Rate:
        """`"10/s"`, `"120/m"` or `"1000/h"` (also `sec`, `min`, `minute`, `hour`)."""
        found = _RATE.match(text) if isinstance(text, str) else None
        if found is None:
            raise ProviderConfigError(f'rate {text!r} must look like "10/s", "120/m" or "1000/h"')
        return cls(int(found.group(1)), float(_PERIODS[found.group(2)]))

    @property
    def per_second(self) -> float:
        return self.requests / self.period

    def __str__(self) -> str:
        unit = {1.0: "s", 60.0: "m", 3600.0: "h"}.get(self.period)
        return f"{self.requests}/{unit}" if unit else f"{self.requests}/{self.period:g}s"


@dataclass(frozen=True, slots=True)
class ApiRateLimit:
    """How fast linkvault lets calls through to a provider's API: per connection, per provider."""

    per_connection: Rate | None = None
    per_provider: Rate | None = None


@dataclass(frozen=True, slots=True, repr=False)
class ClientCredentials:
    """The client id and secret linkvault holds at one provider; the secret never shows."""

    client_id: str
    client_secret: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.client_id, str) or not self.client_id.strip():
            raise ProviderConfigError("a client id must be a non-empty string")
        if self.client_secret is not None and not isinstance(self.client_secret, str):
            raise ProviderConfigError("a client secret must be a string")

    def __repr__(self) -> str:
        secret = "<hidden>" if self.client_secret else "None"
        return f"ClientCredentials(client_id={self.client_id!r}, client_secret={secret})"

    __str__ = __repr__


@dataclass(frozen=True, slots=True, repr=False)
class Provider:
    """One external provider: identity, endpoints, token-endpoint authentication, refresh rules.

    Endpoints may be paths relative to `base_url`; `authorize_url`, `token_url` and
    `revoke_url` are the resolved absolute URLs.
    """

    slug: str
    id: UUID
    display_name: str
    auth_style: AuthStyle
    authorize_endpoint: str | None = None
    token_endpoint: str | None = None
    revoke_endpoint: str | None = None
    base_url: str | None = None
    scopes: tuple[str, ...] = ()
    scope_separator: str = " "
    token_endpoint_auth: TokenEndpointAuth = TokenEndpointAuth.CLIENT_SECRET_BASIC
    refreshes: bool = False
    rotates_refresh_tokens: bool = False
    # How long a rotated-out refresh token may still be replayed for the same answer (0: never).
    refresh_token_reuse_grace: timedelta = timedelta(0)
    pkce: bool = True
    extra_authorize_params: Mapping[str, str] = field(default_factory=dict)
    access_token_lifetime: timedelta | None = None
    refresh_token_lifetime: timedelta | None = None
    # Consent that ends by rule: the grant dies this long after the user consented, whatever
    # is refreshed meanwhile (Schwab: 7 days). None: consent lasts until revoked.
    consent_lifetime: timedelta | None = None
    # The provider's data API, which the proxy forwards to: absolute, or relative to base_url.
    api_base_endpoint: str | None = None
    api_rate_limit: ApiRateLimit = field(default_factory=ApiRateLimit)
    client: ClientCredentials | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.slug, str) or not _SLUG.match(self.slug):
            raise ProviderConfigError(
                f"provider slug {self.slug!r} must be lowercase letters, digits, '-' or '_', "
                "starting with a letter"
            )
        where = f"provider {self.slug!r}"
        if not isinstance(self.id, UUID):
            raise ProviderConfigError(f"{where}: id must be a UUID")
        if not isinstance(self.display_name, str) or not self.display_name.strip():
            raise ProviderConfigError(f"{where}: display_name must be a non-empty string")
        object.__setattr__(self, "auth_style", _enum(AuthStyle, self.auth_style, where))
        object.__setattr__(
            self,
            "token_endpoint_auth",
            _enum(TokenEndpointAuth, self.token_endpoint_auth, where),
        )
        object.__setattr__(self, "scopes", tuple(self.scopes))
        object.__setattr__(
            self, "extra_authorize_params", MappingProxyType(dict(self.extra_authorize_params))
        )
        if self.base_url is not None:
            _check_url(self.base_url, f"{where}: base_url")
        for name in ("authorize_endpoint", "token_endpoint", "revoke_endpoint"):
            if getattr(self, name) is not None:
                _check_url(self._resolve(getattr(self, name)), f"{where}: {name}")
        if self.api_base_endpoint is not None:
            _check_api_base(self._resolve(self.api_base_endpoint), f"{where}: api_base_url")
        if not isinstance(self.api_rate_limit, ApiRateLimit):
            raise ProviderConfigError(f"{where}: api_rate_limit must be an ApiRateLimit")
        self._check_style(where)
        if self.client is not None and not isinstance(self.client, ClientCredentials):
            raise ProviderConfigError(f"{where}: client must be ClientCredentials")

    def _check_style(self, where: str) -> None:
        if self.auth_style is AuthStyle.OAUTH2:
            for name in ("authorize_endpoint", "token_endpoint"):
                if getattr(self, name) is None:
                    raise ProviderConfigError(f"{where}: an oauth2 provider needs {name}")
        if self.auth_style is AuthStyle.API_KEY and self.refreshes:
            raise ProviderConfigError(f"{where}: an api_key provider cannot refresh")
        if self.rotates_refresh_tokens and not self.refreshes:
            raise ProviderConfigError(f"{where}: rotates_refresh_tokens needs refreshes = true")
        grace = self.refresh_token_reuse_grace
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise ProviderConfigError(f"{where}: refresh_token_reuse_grace must be 0 or more")
        if self.refreshes and self.token_endpoint is None:
            raise ProviderConfigError(f"{where}: a provider that refreshes needs token_endpoint")
        consent = self.consent_lifetime
        if consent is not None and (not isinstance(consent, timedelta) or consent <= timedelta(0)):
            raise ProviderConfigError(f"{where}: consent_lifetime must be more than 0 seconds")

    def consent_expires_at(self, connected_at: datetime | None) -> datetime | None:
        """When consent given at `connected_at` ends by the provider's rule (None: never)."""
        if self.consent_lifetime is None or connected_at is None:
            return None
        return connected_at + self.consent_lifetime

    def _resolve(self, endpoint: str) -> str:
        if urlsplit(endpoint).scheme:
            return endpoint
        if self.base_url is None:
            raise ProviderConfigError(
                f"provider {self.slug!r}: endpoint {endpoint!r} is relative but no base_url is set"
            )
        return urljoin(self.base_url.rstrip("/") + "/", endpoint.lstrip("/"))

    @property
    def authorize_url(self) -> str | None:
        """The absolute authorization endpoint."""
        return None if self.authorize_endpoint is None else self._resolve(self.authorize_endpoint)

    @property
    def token_url(self) -> str | None:
        """The absolute token endpoint."""
        return None if self.token_endpoint is None else self._resolve(self.token_endpoint)

    @property
    def revoke_url(self) -> str | None:
        """The absolute revocation endpoint, when the provider has one."""
        return None if self.revoke_endpoint is None else self._resolve(self.revoke_endpoint)

    @property
    def api_base_url(self) -> str | None:
        """The absolute base URL of the provider's data API, without a trailing slash."""
        if self.api_base_endpoint is None:
            return None
        return self._resolve(self.api_base_endpoint).rstrip("/")

    @property
    def configured(self) -> bool:
        """Whether connections can be made: an OAuth2 provider needs its client credentials."""
        return self.client is not None or self.auth_style is not AuthStyle.OAUTH2

    @property
    def env_prefix(self) -> str:
        """The prefix of this provider's environment variables."""
        return env_prefix(self.slug)

    def with_base_url(self, base_url: str) -> Provider:
        """A copy whose relative endpoints resolve against `base_url`."""
        return dataclasses.replace(self, base_url=base_url)

    def with_client(self, client: ClientCredentials | None) -> Provider:
        """A copy holding these client credentials."""
        return dataclasses.replace(self, client=client)

    def __hash__(self) -> int:
        return hash((self.slug, self.id))

    def __repr__(self) -> str:
        client = "configured" if self.client is not None else "missing"
        return (
            f"Provider(slug={self.slug!r}, id={self.id}, auth_style={self.auth_style.value}, "
            f"client={client})"
        )

    __str__ = __repr__


class ProviderRegistry:
    """The providers linkvault knows, by slug and by id."""

    def __init__(self, providers: Iterable[Provider] = ()) -> None:
        self._by_slug: dict[str, Provider] = {}
        self._by_id: dict[UUID, Provider] = {}
        for provider in providers:
            self._add(provider)

    def _add(self, provider: Provider) -> None:
        if provider.slug in self._by_slug:
            raise ProviderConfigError(f"duplicate provider slug {provider.slug!r}")
        if provider.id in self._by_id:
            other = self._by_id[provider.id].slug
            raise ProviderConfigError(
                f"provider {provider.slug!r} has the id {provider.id} already used by {other!r}"
            )
        self._by_slug[provider.slug] = provider
        self._by_id[provider.id] = provider

    def get(self, slug: str) -> Provider:
        """The provider with this slug; raises UnknownProviderError."""
        try:
            return self._by_slug[slug]
        except KeyError:
            raise UnknownProviderError(repr(slug)) from None

    def by_id(self, provider_id: UUID) -> Provider:
        """The provider with this id; raises UnknownProviderError."""
        try:
            return self._by_id[provider_id]
        except KeyError:
            raise UnknownProviderError(str(provider_id)) from None

    def replace(self, provider: Provider) -> ProviderRegistry:
        """A registry where the provider with this slug is swapped for `provider`."""
        if provider.slug not in self._by_slug:
            raise UnknownProviderError(repr(provider.slug))
        return ProviderRegistry(
            provider if p.slug == provider.slug else p for p in self._by_slug.values()
        )

    @property
    def slugs(self) -> tuple[str, ...]:
        return tuple(self._by_slug)

    def __iter__(self) -> Iterator[Provider]:
        return iter(self._by_slug.values())

    def __len__(self) -> int:
        return len(self._by_slug)

    def __contains__(self, slug: object) -> bool:
        return slug in self._by_slug

    def __repr__(self) -> str:
        return f"ProviderRegistry({', '.join(self._by_slug)})"


def env_prefix(slug: str) -> str:
    """`LINKVAULT_PROVIDER_<SLUG>_`, the slug upper-cased with '-' as '_'."""
    return f"{ENV_PREFIX}{slug.upper().replace('-', '_')}_"


def client_from_env(slug: str, env: Mapping[str, str]) -> ClientCredentials | None:
    """The provider's client credentials from `<prefix>CLIENT_ID` / `<prefix>CLIENT_SECRET`."""
    prefix = env_prefix(slug)
    client_id = env.get(f"{prefix}CLIENT_ID", "").strip()
    client_secret = env.get(f"{prefix}CLIENT_SECRET") or None
    if not client_id:
        if client_secret is not None:
            raise ProviderConfigError(f"{prefix}CLIENT_SECRET is set but {prefix}CLIENT_ID is not")
        return None
    return ClientCredentials(client_id, client_secret)


def builtin_providers_text() -> str:
    """The text of the built-in providers.toml."""
    return resources.files("linkvault").joinpath("providers.toml").read_text(encoding="utf-8")


def parse_providers(
    text: str, *, source: str = "<string>", env: Mapping[str, str] | None = None
) -> list[Provider]:
    """The providers a TOML document describes; raises ProviderConfigError naming the problem."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProviderConfigError(f"{source}: invalid TOML: {exc}") from None
    unknown = set(document) - {"providers"}
    if unknown:
        raise ProviderConfigError(f"{source}: unknown top-level key(s) {sorted(unknown)}")
    entries = document.get("providers", [])
    if not isinstance(entries, list):
        raise ProviderConfigError(f"{source}: 'providers' must be an array of tables")
    providers = [
        _provider_from_entry(entry, n, source, env or {}) for n, entry in enumerate(entries, 1)
    ]
    try:
        ProviderRegistry(providers)
    except ProviderConfigError as exc:
        raise ProviderConfigError(f"{source}: {exc}") from None
    return providers


def load_registry(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    include_builtin: bool = True,
) -> ProviderRegistry:
    """The built-in providers plus those of the TOML file at `path`, with clients from `env`."""
    providers: list[Provider] = []
    if include_builtin:
        providers += parse_providers(builtin_providers_text(), source=BUILTIN_SOURCE, env=env)
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ProviderConfigError(
                f"cannot read provider file {path}: {exc.strerror or exc}"
            ) from None
        providers += parse_providers(text, source=str(path), env=env)
    try:
        return ProviderRegistry(providers)
    except ProviderConfigError as exc:
        raise ProviderConfigError(f"{path}: {exc}") from None


# --- reading one [[providers]] table ------------------------------------------

_REQUIRED = ("slug", "id", "display_name", "auth_style")
_OPTIONAL = (
    "authorize_url",
    "token_url",
    "revoke_url",
    "base_url",
    "scopes",
    "scope_separator",
    "token_endpoint_auth",
    "refreshes",
    "rotates_refresh_tokens",
    "refresh_token_reuse_grace",
    "pkce",
    "extra_authorize_params",
    "access_token_lifetime",
    "refresh_token_lifetime",
    "consent_lifetime",
    "api_base_url",
    "api_rate_limit",
)


def _provider_from_entry(
    entry: object, number: int, source: str, env: Mapping[str, str]
) -> Provider:
    if not isinstance(entry, dict):
        raise ProviderConfigError(f"{source}: provider #{number} must be a table")
    label = f"provider #{number}"
    if isinstance(entry.get("slug"), str):
        label += f" ({entry['slug']!r})"
    where = f"{source}: {label}"
    for name in _REQUIRED:
        if name not in entry:
            raise ProviderConfigError(f"{where}: missing field {name!r}")
    unknown = sorted(set(entry) - set(_REQUIRED) - set(_OPTIONAL))
    if unknown:
        raise ProviderConfigError(f"{where}: unknown field(s) {', '.join(map(repr, unknown))}")
    try:
        return _build(entry, where, env)
    except ProviderConfigError as exc:
        message = str(exc)
        own = f"provider {entry.get('slug')!r}: "
        if message.startswith(own):
            message = f"{where}: {message.removeprefix(own)}"
        elif not message.startswith(source):
            message = f"{where}: {message}"
        raise ProviderConfigError(message) from None


def _build(entry: dict[str, Any], where: str, env: Mapping[str, str]) -> Provider:
    slug = _string(entry, "slug", where)
    try:
        provider_id = UUID(_string(entry, "id", where))
    except ValueError:
        raise ProviderConfigError(f"{where}: id {entry['id']!r} is not a UUID") from None
    style = _enum(AuthStyle, _string(entry, "auth_style", where), where)
    base_url_variable = f"{env_prefix(slug)}BASE_URL"
    base_url = env.get(base_url_variable) or _opt_string(entry, "base_url", where)
    if env.get(base_url_variable):
        _check_url(env[base_url_variable], f"{where}: {base_url_variable}")
    return Provider(
        slug=slug,
        id=provider_id,
        display_name=_string(entry, "display_name", where),
        auth_style=style,
        authorize_endpoint=_opt_string(entry, "authorize_url", where),
        token_endpoint=_opt_string(entry, "token_url", where),
        revoke_endpoint=_opt_string(entry, "revoke_url", where),
        base_url=base_url,
        scopes=_string_list(entry, "scopes", where),
        scope_separator=_opt_string(entry, "scope_separator", where) or " ",
        token_endpoint_auth=_enum(
            TokenEndpointAuth,
            _opt_string(entry, "token_endpoint_auth", where) or "client_secret_basic",
            where,
        ),
        refreshes=_bool(entry, "refreshes", where, default=style is AuthStyle.OAUTH2),
        rotates_refresh_tokens=_bool(entry, "rotates_refresh_tokens", where, default=False),
        refresh_token_reuse_grace=_seconds(
            entry, "refresh_token_reuse_grace", where, allow_zero=True
        )
        or timedelta(0),
        pkce=_bool(entry, "pkce", where, default=True),
        extra_authorize_params=_string_table(entry, "extra_authorize_params", where),
        access_token_lifetime=_seconds(entry, "access_token_lifetime", where),
        refresh_token_lifetime=_seconds(entry, "refresh_token_lifetime", where),
        consent_lifetime=_seconds(entry, "consent_lifetime", where),
        api_base_endpoint=_opt_string(entry, "api_base_url", where),
        api_rate_limit=_rate_limit(entry, where),
        client=client_from_env(slug, env),
    )


def _string(entry: Mapping[str, Any], name: str, where: str) -> str:
    value = entry[name]
    if not isinstance(value, str) or not value.strip():
        raise ProviderConfigError(f"{where}: {name} must be a non-empty string")
    return value


def _opt_string(entry: Mapping[str, Any], name: str, where: str) -> str | None:
    return _string(entry, name, where) if name in entry else None


def _bool(entry: Mapping[str, Any], name: str, where: str, *, default: bool) -> bool:
    value = entry.get(name, default)
    if not isinstance(value, bool):
        raise ProviderConfigError(f"{where}: {name} must be true or false")
    return value


def _string_list(entry: Mapping[str, Any], name: str, where: str) -> tuple[str, ...]:
    value = entry.get(name, [])
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ProviderConfigError(f"{where}: {name} must be an array of non-empty strings")
    return tuple(value)


def _string_table(entry: Mapping[str, Any], name: str, where: str) -> dict[str, str]:
    value = entry.get(name, {})
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ProviderConfigError(f"{where}: {name} must be a table of strings")
    return dict(value)


def _seconds(
    entry: Mapping[str, Any], name: str, where: str, *, allow_zero: bool = False
) -> timedelta | None:
    if name not in entry:
        return None
    value = entry[name]
    least = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        kind = (
            "a whole number of seconds, 0 or more" if allow_zero else "a positive number of seconds"
        )
        raise ProviderConfigError(f"{where}: {name} must be {kind}")
    return timedelta(seconds=value)


def _rate_limit(entry: Mapping[str, Any], where: str) -> ApiRateLimit:
    value = entry.get("api_rate_limit", {})
    shape = (
        'api_rate_limit must be a table like { per_connection = "10/s", per_provider = "100/s" }'
    )
    if not isinstance(value, dict):
        raise ProviderConfigError(f"{where}: {shape}")
    unknown = sorted(set(value) - {"per_connection", "per_provider"})
    if unknown:
        raise ProviderConfigError(
            f"{where}: api_rate_limit has unknown key(s) {', '.join(map(repr, unknown))}; {shape}"
        )
    rates: dict[str, Rate] = {}
    for name, text in value.items():
        try:
            rates[name] = Rate.parse(text)
        except ProviderConfigError as exc:
            raise ProviderConfigError(f"{where}: api_rate_limit.{name}: {exc}") from None
    return ApiRateLimit(**rates)


def _enum(kind: type[_E], value: object, where: str) -> _E:
    try:
        return kind(str(value))
    except ValueError:
        allowed = ", ".join(member.value for member in kind)
        raise ProviderConfigError(
            f"{where}: unknown {_ENUM_NAMES[kind]} {value!r} (expected one of: {allowed})"
        ) from None


_ENUM_NAMES: dict[type[StrEnum], str] = {
    AuthStyle: "auth_style",
    TokenEndpointAuth: "token_endpoint_auth",
}


def _check_url(url: str, what: str) -> None:
    if not isinstance(url, str):
        raise ProviderConfigError(f"{what} must be a string")
    parts = urlsplit(url)
    if "@" in parts.netloc:
        raise ProviderConfigError(f"{what} must not carry credentials in the URL")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProviderConfigError(f"{what} {url!r} is not an absolute http(s) URL")
    if parts.fragment:
        raise ProviderConfigError(f"{what} {url!r} must not have a fragment")
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise ProviderConfigError(f"{what} {url!r} must use https (http is for loopback only)")


def _check_api_base(url: str, what: str) -> None:
    _check_url(url, what)
    parts = urlsplit(url)
    if parts.query:
        raise ProviderConfigError(f"{what} {url!r} must not have a query")
    segments = parts.path.split("/")
    if any(s in (".", "..") for s in segments) or "\\" in parts.path or "%" in parts.path:
        raise ProviderConfigError(f"{what} {url!r} must be a plain path, without '..' or escapes")


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
