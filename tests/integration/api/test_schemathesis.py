from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from pydantic import SecretStr
from schemathesis import APIOperation, BaseSchema, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Ok

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.crypto import generate_key
from linkvault.settings import Settings
from linkvault.testing import sandbox_in_thread
from linkvault.testing.api import api_in_thread

PROVIDERS = """
[[providers]]
slug = "acme-keys"
id = "0b7b3a5e-53c4-4c0e-9a34-7f1a2f5e9d11"
display_name = "Acme (API key)"
auth_style = "api_key"
"""
KEY, ENTRY = generate_api_key("schemathesis", set(Scope))
AUTH = {"Authorization": f"Bearer {KEY}"}
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
]


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root: Path = tmp_path_factory.mktemp("schemathesis")
    (root / "providers.toml").write_text(PROVIDERS)
    config = Settings(
        database_url=f"sqlite:///{root / 'api.db'}",
        keys=SecretStr(generate_key("k1")),
        providers_file=root / "providers.toml",
    )
    with sandbox_in_thread() as sandbox:
        # Every OAuth2 provider has a client, so no operation can meet a missing configuration.
        env = {**sandbox.env(), "LINKVAULT_PROVIDER_SCHWAB_CLIENT_ID": "schwab-client"}
        with api_in_thread(config, ApiKeySet([ENTRY]), env=env) as running:
            yield running.url


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> BaseSchema:
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


def operations(schema: BaseSchema) -> list[APIOperation[Any, Any, Any, Any]]:
    found = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        found.append(result.ok())
    return found


# schemathesis' own pytest integration cannot load a schema from a fixture under pytest 9
# (it reads a node attribute pytest 9 removed), so each operation runs as a Hypothesis test.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_api_honours_its_own_openapi_schema(
    api_schema: BaseSchema, api_url: str, mode: GenerationMode
) -> None:
    failures: dict[str, str] = {}
    ran = 0
    for operation in operations(api_schema):
        if mode is GenerationMode.NEGATIVE and not _has_inputs(operation):
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(base_url=api_url, headers=AUTH, checks=CHECKS, timeout=30)

        try:
            run()
        except Exception as exc:  # every operation runs; failures are reported together
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:3000]
        ran += 1
    assert ran >= 10 if mode is GenerationMode.POSITIVE else ran >= 5
    assert not failures, "\n\n".join(f"{label}\n{text}" for label, text in failures.items())


def _has_inputs(operation: APIOperation[Any, Any, Any, Any]) -> bool:
    return bool(operation.path_parameters or operation.query or operation.body)
