from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import UUID, uuid4

import pytest

from linkvault.errors import ConfigurationError, ProviderConfigError, UnknownProviderError
from linkvault.providers import (
    ApiRateLimit,
    AuthStyle,
    ClientCredentials,
    Provider,
    ProviderRegistry,
    Rate,
    TokenEndpointAuth,
    client_from_env,
    load_registry,
    parse_providers,
)

SCHWAB_ID = UUID("4260d0e7-ea6e-4625-9003-c05ef76b88eb")
SANDBOX_ID = UUID("4f5719b1-4747-40c7-a72e-d8da540f0541")

VALID = """
[[providers]]
slug = "acme"
id = "6d1c7e0e-5b7e-4b8e-9a43-0d6f4c1f3c11"
display_name = "Acme Bank"
auth_style = "oauth2"
authorize_url = "https://auth.acme.example/authorize"
token_url = "https://auth.acme.example/token"
"""


def entry(**fields: object) -> str:
    base: dict[str, object] = {
        "slug": "acme",
        "id": "6d1c7e0e-5b7e-4b8e-9a43-0d6f4c1f3c11",
        "display_name": "Acme Bank",
        "auth_style": "oauth2",
        "authorize_url": "https://auth.acme.example/authorize",
        "token_url": "https://auth.acme.example/token",
    }
    base.update(fields)
    lines = ["[[providers]]"]
    for key, value in base.items():
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        elif isinstance(value, int):
            lines.append(f"{key} = {value}")
        else:
            lines.append(f'{key} = "{value}"')
    return "\n".join(lines) + "\n"


def config_error(text: str) -> str:
    with pytest.raises(ProviderConfigError) as caught:
        parse_providers(text, source="custom.toml")
    return str(caught.value)


def test_builtin_registry_holds_schwab_with_its_public_endpoints() -> None:
    schwab = load_registry().get("schwab")

    assert schwab.id == SCHWAB_ID
    assert schwab.display_name == "Charles Schwab"
    assert schwab.auth_style is AuthStyle.OAUTH2
    assert schwab.authorize_url == "https://api.schwabapi.com/v1/oauth/authorize"
    assert schwab.token_url == "https://api.schwabapi.com/v1/oauth/token"
    assert schwab.token_endpoint_auth is TokenEndpointAuth.CLIENT_SECRET_BASIC
    assert schwab.refreshes
    assert schwab.access_token_lifetime == timedelta(minutes=30)
    assert schwab.refresh_token_lifetime == timedelta(days=7)
    assert schwab.consent_lifetime == timedelta(days=7)


def test_builtin_sandbox_resolves_relative_endpoints_against_its_base_url() -> None:
    sandbox = load_registry().get("sandbox")

    assert sandbox.id == SANDBOX_ID
    assert sandbox.rotates_refresh_tokens
    assert sandbox.authorize_url == "http://127.0.0.1:8765/oauth/authorize"
    assert sandbox.token_url == "http://127.0.0.1:8765/oauth/token"
    assert sandbox.revoke_url == "http://127.0.0.1:8765/oauth/revoke"


def test_base_url_from_the_environment_points_the_sandbox_elsewhere() -> None:
    env = {"LINKVAULT_PROVIDER_SANDBOX_BASE_URL": "http://127.0.0.1:40123/prefix"}

    sandbox = load_registry(env=env).get("sandbox")

    assert sandbox.token_url == "http://127.0.0.1:40123/prefix/oauth/token"


def test_with_base_url_rebases_a_provider() -> None:
    sandbox = load_registry().get("sandbox").with_base_url("http://127.0.0.1:5000")

    assert sandbox.authorize_url == "http://127.0.0.1:5000/oauth/authorize"


def test_client_credentials_come_from_the_environment_only() -> None:
    env = {
        "LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID": "app-key",
        "LINKVAULT_PROVIDER_SCHWAB_CLIENT_SECRET": "app-secret",
    }

    registry = load_registry(env=env)

    assert registry.get("schwab").client == ClientCredentials("app-key", "app-secret")
    assert registry.get("sandbox").client is None


def test_a_slug_with_a_dash_maps_to_an_underscored_environment_name() -> None:
    env = {"LINKVAULT_PROVIDER_MY_BANK_CLIENT_ID": "id"}

    client = client_from_env("my-bank", env)

    assert client == ClientCredentials("id")


def test_a_client_secret_without_a_client_id_is_an_error() -> None:
    with pytest.raises(ProviderConfigError, match="CLIENT_ID is not"):
        client_from_env("schwab", {"LINKVAULT_PROVIDER_SCHWAB_CLIENT_SECRET": "s3cr3t-value"})


def test_client_secrets_never_show_in_reprs() -> None:
    env = {
        "LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID": "app-key",
        "LINKVAULT_PROVIDER_SCHWAB_CLIENT_SECRET": "very-secret-value",
    }
    registry = load_registry(env=env)
    schwab = registry.get("schwab")

    for text in (
        repr(schwab),
        str(schwab),
        repr(schwab.client),
        str(schwab.client),
        repr(registry),
    ):
        assert "very-secret-value" not in text
    assert "app-key" in repr(schwab.client)


def test_providers_are_found_by_slug_and_by_id() -> None:
    registry = load_registry()

    assert registry.by_id(SCHWAB_ID).slug == "schwab"
    assert "sandbox" in registry
    assert set(registry.slugs) == {"schwab", "sandbox"}
    assert len(registry) == 2


def test_an_unknown_slug_or_id_raises_unknown_provider() -> None:
    registry = load_registry()

    with pytest.raises(UnknownProviderError, match="nope"):
        registry.get("nope")
    with pytest.raises(UnknownProviderError):
        registry.by_id(uuid4())


def test_a_custom_file_adds_to_the_builtin_providers(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(VALID + 'extra_authorize_params = { access_type = "offline" }\n')

    registry = load_registry(path)

    acme = registry.get("acme")
    assert acme.extra_authorize_params == {"access_type": "offline"}
    assert acme.refreshes
    assert acme.token_endpoint_auth is TokenEndpointAuth.CLIENT_SECRET_BASIC
    assert {"schwab", "sandbox", "acme"} == set(registry.slugs)


def test_a_custom_file_may_not_reuse_a_builtin_slug(tmp_path: Path) -> None:
    path = tmp_path / "providers.toml"
    path.write_text(entry(slug="schwab"))

    with pytest.raises(ProviderConfigError, match="duplicate provider slug 'schwab'"):
        load_registry(path)


def test_an_unreadable_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot read provider file"):
        load_registry(tmp_path / "missing.toml")


def test_invalid_toml_names_the_file_and_line() -> None:
    message = config_error('[[providers]]\nslug = "acme"\nid = \n')

    assert "custom.toml" in message
    assert "invalid TOML" in message
    assert "line 3" in message


def test_a_missing_field_names_the_provider_and_the_field() -> None:
    message = config_error(entry(display_name=None))

    assert "custom.toml" in message
    assert "'acme'" in message
    assert "missing field 'display_name'" in message


def test_an_oauth2_provider_without_a_token_endpoint_is_refused() -> None:
    assert "needs token_endpoint" in config_error(entry(token_url=None))


def test_an_unknown_auth_style_lists_the_allowed_ones() -> None:
    message = config_error(entry(auth_style="saml"))

    assert "unknown auth_style 'saml'" in message
    assert "oauth2, api_key, link_token" in message


def test_an_unknown_client_authentication_is_refused() -> None:
    assert "unknown token_endpoint_auth 'private_key_jwt'" in config_error(
        entry(token_endpoint_auth="private_key_jwt")
    )


def test_an_unknown_field_is_refused_to_catch_typos() -> None:
    assert "unknown field(s) 'tokn_url'" in config_error(entry(tokn_url="https://x.example/t"))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("ftp://auth.acme.example/token", "not an absolute http(s) URL"),
        ("auth.acme.example/token", "relative but no base_url"),
        ("http://auth.acme.example/token", "must use https"),
        ("https://user:pw@auth.acme.example/token", "must not carry credentials"),
        ("https://auth.acme.example/token#frag", "must not have a fragment"),
    ],
)
def test_a_bad_endpoint_url_is_refused(url: str, problem: str) -> None:
    message = config_error(entry(token_url=url))

    assert problem in message
    assert "'acme'" in message
    assert "pw@" not in message


def test_plain_http_is_allowed_on_loopback() -> None:
    [provider] = parse_providers(entry(token_url="http://localhost:9000/token"))

    assert provider.token_url == "http://localhost:9000/token"


def test_a_non_uuid_id_is_refused() -> None:
    assert "id 'acme-1' is not a UUID" in config_error(entry(id="acme-1"))


def test_a_duplicate_slug_in_one_file_is_refused() -> None:
    text = entry() + entry(id="0b7d1c9e-6f43-4f27-8d62-91a3f3b3a0a1")

    assert "duplicate provider slug 'acme'" in config_error(text)


def test_a_duplicate_id_in_one_file_is_refused() -> None:
    text = entry() + entry(slug="other")

    assert "already used by 'acme'" in config_error(text)


def test_an_invalid_slug_is_refused() -> None:
    assert "must be lowercase" in config_error(entry(slug="Acme Bank"))


def test_an_api_key_provider_cannot_refresh() -> None:
    text = entry(auth_style="api_key", authorize_url=None, token_url=None, refreshes=True)

    assert "an api_key provider cannot refresh" in config_error(text)


def test_an_api_key_provider_needs_no_endpoints() -> None:
    text = entry(auth_style="api_key", authorize_url=None, token_url=None)

    [provider] = parse_providers(text)

    assert provider.auth_style is AuthStyle.API_KEY
    assert not provider.refreshes
    assert provider.token_url is None


def test_rotating_refresh_tokens_needs_refreshes() -> None:
    text = entry(refreshes=False, rotates_refresh_tokens=True)

    assert "rotates_refresh_tokens needs refreshes = true" in config_error(text)


def test_a_wrongly_typed_field_is_refused() -> None:
    assert "refreshes must be true or false" in config_error(entry(refreshes="yes"))
    assert "access_token_lifetime must be a positive number" in config_error(
        entry(access_token_lifetime=0)
    )


@pytest.mark.parametrize("value", [0, -5, True, "604800"])
def test_a_consent_lifetime_is_a_positive_number_of_seconds(value: object) -> None:
    assert "consent_lifetime must be a positive number of seconds" in config_error(
        entry(consent_lifetime=value)
    )


def test_a_consent_lifetime_dates_the_end_of_each_consent() -> None:
    [acme] = parse_providers(entry(consent_lifetime=3600), source="custom.toml")
    connected = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)

    assert acme.consent_expires_at(connected) == connected + timedelta(hours=1)
    assert acme.consent_expires_at(None) is None
    assert load_registry().get("sandbox").consent_expires_at(connected) is None


def test_a_registry_refuses_two_providers_with_one_id() -> None:
    [acme] = parse_providers(VALID)
    clone = Provider(
        slug="clone",
        id=acme.id,
        display_name="Clone",
        auth_style=AuthStyle.API_KEY,
    )

    with pytest.raises(ProviderConfigError, match="already used by 'acme'"):
        ProviderRegistry([acme, clone])


def test_replace_swaps_one_provider_and_keeps_the_others() -> None:
    registry = load_registry()
    moved = registry.get("sandbox").with_base_url("http://127.0.0.1:1234")

    replaced = registry.replace(moved)

    assert replaced.get("sandbox").token_url == "http://127.0.0.1:1234/oauth/token"
    assert replaced.get("schwab") == registry.get("schwab")
    assert registry.get("sandbox").token_url == "http://127.0.0.1:8765/oauth/token"


def test_a_bad_base_url_in_the_environment_names_the_variable() -> None:
    env = {"LINKVAULT_PROVIDER_SANDBOX_BASE_URL": "127.0.0.1:9000"}

    with pytest.raises(ProviderConfigError, match="LINKVAULT_PROVIDER_SANDBOX_BASE_URL"):
        load_registry(env=env)


def test_providers_can_key_a_dict() -> None:
    registry = load_registry()

    seen = {provider: provider.slug for provider in registry}

    assert seen[registry.get("schwab")] == "schwab"


# --- the data API: api_base_url and api_rate_limit ---------------------------------


def test_builtin_providers_declare_their_data_api() -> None:
    registry = load_registry(env={"LINKVAULT_PROVIDER_SANDBOX_BASE_URL": "http://127.0.0.1:9"})

    assert registry.get("schwab").api_base_url == "https://api.schwabapi.com/trader/v1"
    assert registry.get("sandbox").api_base_url == "http://127.0.0.1:9/api"


def test_an_api_base_url_loses_its_trailing_slash_and_may_be_relative() -> None:
    absolute = entry(api_base_url="https://api.acme.example/v2/")
    relative = entry(base_url="https://acme.example", api_base_url="/data/v1")

    assert parse_providers(absolute)[0].api_base_url == "https://api.acme.example/v2"
    assert parse_providers(relative)[0].api_base_url == "https://acme.example/data/v1"
    assert parse_providers(entry())[0].api_base_url is None


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://api.acme.example/v1", "must use https"),
        ("ftp://api.acme.example/v1", "not an absolute http(s) URL"),
        ("https://u:p@api.acme.example/v1", "must not carry credentials"),
        ("https://api.acme.example/v1?key=1", "must not have a query"),
        ("https://api.acme.example/v1/../admin", "without '..' or escapes"),
        ("https://api.acme.example/v1%2f..", "without '..' or escapes"),
    ],
)
def test_a_bad_api_base_url_is_refused(url: str, problem: str) -> None:
    message = config_error(entry(api_base_url=url))

    assert problem in message
    assert "api_base_url" in message
    assert "'acme'" in message
    assert "u:p@" not in message


def test_a_relative_api_base_url_needs_a_base_url() -> None:
    message = config_error(entry(api_base_url="data/v1"))

    assert "'data/v1' is relative but no base_url" in message


def test_an_api_base_url_may_be_plain_http_on_loopback_only() -> None:
    [provider] = parse_providers(entry(api_base_url="http://127.0.0.1:8765/api"))

    assert provider.api_base_url == "http://127.0.0.1:8765/api"


def test_a_rate_limit_is_declared_per_connection_and_per_provider() -> None:
    text = entry() + 'api_rate_limit = { per_connection = "10/s", per_provider = "120 / min" }\n'

    [provider] = parse_providers(text)

    limit = provider.api_rate_limit
    assert limit == ApiRateLimit(per_connection=Rate(10, 1.0), per_provider=Rate(120, 60.0))
    assert str(limit.per_provider) == "120/m"
    assert parse_providers(entry())[0].api_rate_limit.per_connection is None


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ('"10/s"', "must be a table like"),
        ('{ per_user = "1/s" }', "unknown key(s) 'per_user'"),
        ('{ per_connection = "ten a second" }', 'must look like "10/s"'),
        ("{ per_connection = 10 }", 'must look like "10/s"'),
        ('{ per_provider = "0/s" }', "at least 1 request"),
        ('{ per_provider = "5/d" }', 'must look like "10/s"'),
    ],
)
def test_a_bad_rate_limit_is_refused_with_the_key_named(value: str, problem: str) -> None:
    message = config_error(entry() + f"api_rate_limit = {value}\n")

    assert problem in message
    assert "'acme'" in message
