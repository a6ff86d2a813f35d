from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
from mypy import api as mypy_api

from linkvault.ports import ProviderConnectionRepository
from linkvault.stores.memory import InMemoryConnectionRepository
from linkvault.stores.postgres import PostgresConnectionRepository
from linkvault.stores.sqlite import SqliteConnectionRepository

STORES = [PostgresConnectionRepository, SqliteConnectionRepository, InMemoryConnectionRepository]
PORT_METHODS = {
    "find_by_id",
    "find_by_user_id",
    "find_by_user_and_provider",
    "find_active_by_user",
    "save",
    "delete",
    "find_expiring_soon",
}


def test_the_port_has_exactly_the_seven_methods_of_the_design() -> None:
    declared = {
        name
        for name, value in vars(ProviderConnectionRepository).items()
        if inspect.iscoroutinefunction(value)
    }
    assert declared == PORT_METHODS


def test_find_expiring_soon_defaults_to_thirty_minutes() -> None:
    signature = inspect.signature(ProviderConnectionRepository.find_expiring_soon)
    assert signature.parameters["minutes"].default == 30


@pytest.mark.parametrize("store", STORES, ids=lambda s: s.__name__)
def test_stores_do_not_inherit_from_the_port(store: type) -> None:
    assert ProviderConnectionRepository not in store.__mro__


@pytest.mark.parametrize("store", STORES, ids=lambda s: s.__name__)
def test_store_methods_have_the_port_signatures(store: type) -> None:
    for name in PORT_METHODS:
        port = inspect.signature(getattr(ProviderConnectionRepository, name))
        impl = inspect.signature(getattr(store, name))
        assert list(impl.parameters) == list(port.parameters), name
        for param in port.parameters.values():
            assert impl.parameters[param.name].default == param.default, name
            assert impl.parameters[param.name].kind == param.kind, name
        assert str(impl.return_annotation) == str(port.return_annotation), name
        assert inspect.iscoroutinefunction(getattr(store, name)), name


def test_mypy_accepts_every_store_as_the_port_and_rejects_an_incomplete_one(
    tmp_path: Path,
) -> None:
    program = tmp_path / "check_port.py"
    program.write_text(
        textwrap.dedent(
            """
            from uuid import UUID
            from linkvault.domain import ProviderConnection
            from linkvault.ports import ProviderConnectionRepository
            from linkvault.stores.memory import InMemoryConnectionRepository
            from linkvault.stores.postgres import PostgresConnectionRepository
            from linkvault.stores.sqlite import SqliteConnectionRepository

            def accept(repo: ProviderConnectionRepository) -> None: ...

            def check(
                pg: PostgresConnectionRepository,
                lite: SqliteConnectionRepository,
                mem: InMemoryConnectionRepository,
            ) -> None:
                accept(pg)
                accept(lite)
                accept(mem)

            class Incomplete:
                async def find_by_id(self, connection_id: UUID) -> ProviderConnection | None:
                    return None

            accept(Incomplete())
            """
        )
    )
    stdout, _, status = mypy_api.run(
        ["--strict", "--no-incremental", "--no-error-summary", str(program)]
    )
    errors = [line for line in stdout.splitlines() if ": error:" in line]
    assert status == 1
    assert len(errors) == 1, stdout
    assert "Incomplete" in errors[0]
