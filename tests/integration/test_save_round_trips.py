from __future__ import annotations

import asyncio
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit
from uuid import uuid4

import asyncpg
import pytest

from linkvault.domain import ProviderConnection
from linkvault.errors import StaleConnectionError
from linkvault.stores.postgres import PostgresConnectionRepository
from tests.factories import active

pytestmark = pytest.mark.postgres

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass
class Message:
    sender: str  # "client" or "server"
    kind: str  # the protocol's one-letter message type
    body: bytes


def _cstrings(body: bytes, count: int) -> list[str]:
    return [part.decode() for part in body.split(b"\x00", count)[:count]]


@dataclass
class _Stream:
    """Frames one direction of a PostgreSQL wire-protocol connection."""

    sender: str
    startup: bool
    buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Message]:
        self.buffer += data
        out: list[Message] = []
        while True:
            if self.startup:
                if len(self.buffer) < 8:
                    return out
                (length,) = struct.unpack("!i", self.buffer[:4])
                if len(self.buffer) < length:
                    return out
                (code,) = struct.unpack("!i", self.buffer[4:8])
                del self.buffer[:length]
                if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                    raise AssertionError("the tap needs a clear-text connection (sslmode=disable)")
                self.startup = False
                continue
            if len(self.buffer) < 5:
                return out
            (length,) = struct.unpack("!i", self.buffer[1:5])
            if len(self.buffer) < 1 + length:
                return out
            kind = chr(self.buffer[0])
            out.append(Message(self.sender, kind, bytes(self.buffer[5 : 1 + length])))
            del self.buffer[: 1 + length]


class WireTap:
    """A TCP relay in front of PostgreSQL that records every protocol message both ways."""

    def __init__(self, host: str, port: int) -> None:
        self._upstream = (host, port)
        self._server: asyncio.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self.messages: list[Message] = []
        self._prepared: dict[tuple[int, str], str] = {}

    async def start(self) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def clear(self) -> None:
        self.messages.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        session = id(writer)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, _Stream("client", True), session)),
            asyncio.create_task(self._pump(up_reader, writer, _Stream("server", False), session)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                w.close()
            self._tasks.difference_update(pumps)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        stream: _Stream,
        session: int,
    ) -> None:
        while data := await reader.read(65536):
            for message in stream.feed(data):
                self._record(message, session)
            writer.write(data)
            await writer.drain()

    def _record(self, message: Message, session: int) -> None:
        if message.sender == "client" and message.kind == "P":
            name, query = _cstrings(message.body, 2)
            self._prepared[(session, name)] = query
        if message.sender == "client" and message.kind == "B":
            _portal, name = _cstrings(message.body, 2)
            message = Message("client", "B", self._prepared[(session, name)].encode())
        self.messages.append(message)

    # --- what went over the wire since the last clear() ----------------------

    def statements(self) -> list[str]:
        """The SQL the server was asked to run: one per Execute, one per simple Query."""
        run: list[str] = []
        bound = ""
        for m in self.messages:
            if m.sender != "client":
                continue
            if m.kind == "B":
                bound = m.body.decode()
            elif m.kind == "E":
                run.append(bound)
            elif m.kind == "Q":
                run.append(_cstrings(m.body, 1)[0])
        return run

    def round_trips(self) -> int:
        """How many times the client waited for the server to become ready again."""
        return sum(1 for m in self.messages if m.sender == "server" and m.kind == "Z")

    def parses(self) -> int:
        return sum(1 for m in self.messages if m.sender == "client" and m.kind == "P")


def _through(url: str, port: int) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)
    host = f"127.0.0.1:{port}"
    return urlunsplit(
        parts._replace(
            netloc=f"{netloc[0]}@{host}" if len(netloc) == 2 else host, query="sslmode=disable"
        )
    )


@pytest.fixture
async def tap(postgres_url: str) -> AsyncIterator[WireTap]:
    parts = urlsplit(postgres_url)
    tap = WireTap(parts.hostname or "127.0.0.1", parts.port or 5432)
    await tap.start()
    try:
        yield tap
    finally:
        await tap.close()


@pytest.fixture
async def tapped_repo(
    tap: WireTap, postgres_url: str
) -> AsyncIterator[PostgresConnectionRepository]:
    # One pooled connection, in a pool built the way the library builds its own.
    repo = await PostgresConnectionRepository.connect(
        _through(postgres_url, tap.port), min_size=1, max_size=1
    )
    async with repo:
        yield repo


async def warm_up(repo: PostgresConnectionRepository) -> None:
    """Prepare the insert and update statements once on the pooled connection."""
    connection = active(expires_at=None)
    await repo.save(connection)
    connection.rename("warm")
    await repo.save(connection)


async def stored_row(url: str, connection: ProviderConnection) -> asyncpg.Record | None:
    raw = await asyncpg.connect(url, timeout=5)
    try:
        row: asyncpg.Record | None = await raw.fetchrow(
            "SELECT alias, version, updated_at FROM provider_connections WHERE id = $1",
            connection.id,
        )
        return row
    finally:
        await raw.close()


async def settle() -> None:
    # Let the tap relay whatever the pool sends after the call returned (release housekeeping).
    await asyncio.sleep(0.05)


def only_insert(statements: list[str]) -> bool:
    """One statement inserting the connection: a new one is logged (connection.created) by
    that same statement, the insert wrapped with its event's."""
    if len(statements) != 1:
        return False
    sql = " ".join(statements[0].split()).upper()
    return sql.startswith(
        ("INSERT INTO PROVIDER_CONNECTIONS", "WITH SAVED AS (INSERT INTO PROVIDER_CONNECTIONS")
    )


def only_update(statements: list[str]) -> bool:
    return len(statements) == 1 and statements[0].lstrip().upper().startswith("UPDATE")


async def test_the_first_save_on_a_connection_runs_one_statement(
    tap: WireTap, tapped_repo: PostgresConnectionRepository
) -> None:
    await tapped_repo.find_by_id(uuid4())  # the pool's connection is open and idle
    await settle()
    tap.clear()

    await tapped_repo.save(active(expires_at=None))
    await settle()

    linkvault_sql = [s for s in tap.statements() if "provider_connections" in s]
    assert only_insert(linkvault_sql), tap.statements()
    assert tap.parses() == 1  # asyncpg prepares it once per connection, then reuses it


async def test_saving_a_new_connection_sends_one_statement_in_one_round_trip(
    tap: WireTap, tapped_repo: PostgresConnectionRepository
) -> None:
    await warm_up(tapped_repo)
    await settle()
    connection = active(expires_at=None)
    tap.clear()

    await tapped_repo.save(connection)
    await settle()

    assert only_insert(tap.statements()), tap.statements()
    assert tap.parses() == 0
    assert tap.round_trips() == 1, tap.statements()
    assert connection.version == 1


async def test_saving_a_stored_connection_sends_one_statement_in_one_round_trip(
    tap: WireTap, tapped_repo: PostgresConnectionRepository, postgres_url: str
) -> None:
    await warm_up(tapped_repo)
    connection = active(expires_at=None)
    await tapped_repo.save(connection)
    connection.rename("renamed")
    await settle()
    tap.clear()

    await tapped_repo.save(connection)
    await settle()

    assert only_update(tap.statements()), tap.statements()
    assert tap.parses() == 0
    assert tap.round_trips() == 1, tap.statements()
    assert connection.version == 2
    row = await stored_row(postgres_url, connection)
    assert row is not None
    assert (row["alias"], row["version"]) == ("renamed", 2)


async def test_a_stale_save_sends_one_statement_and_leaves_the_row_unchanged(
    tap: WireTap, tapped_repo: PostgresConnectionRepository, postgres_url: str
) -> None:
    await warm_up(tapped_repo)
    connection = active(expires_at=None)
    await tapped_repo.save(connection)
    first = await tapped_repo.find_by_id(connection.id)
    second = await tapped_repo.find_by_id(connection.id)
    assert first is not None
    assert second is not None
    first.rename("winner")
    await tapped_repo.save(first)
    before = await stored_row(postgres_url, connection)
    second.rename("loser")
    await settle()
    tap.clear()

    with pytest.raises(StaleConnectionError):
        await tapped_repo.save(second)
    await settle()

    assert only_update(tap.statements()), tap.statements()
    assert tap.round_trips() == 1, tap.statements()
    assert await stored_row(postgres_url, connection) == before
    assert before is not None
    assert (before["alias"], before["version"]) == ("winner", 2)
    assert second.version == 1


async def test_saving_a_new_connection_whose_id_is_taken_sends_one_statement(
    tap: WireTap, tapped_repo: PostgresConnectionRepository, postgres_url: str
) -> None:
    await warm_up(tapped_repo)
    original = active("original", expires_at=None)
    await tapped_repo.save(original)
    before = await stored_row(postgres_url, original)
    impostor = active("impostor", expires_at=None)
    impostor.id = original.id
    await settle()
    tap.clear()

    with pytest.raises(StaleConnectionError):
        await tapped_repo.save(impostor)
    await settle()

    assert only_insert(tap.statements()), tap.statements()
    assert tap.round_trips() == 1, tap.statements()
    assert await stored_row(postgres_url, original) == before


async def test_the_tap_sees_every_statement_a_select_then_write_would_send(
    tap: WireTap, tapped_repo: PostgresConnectionRepository
) -> None:
    await warm_up(tapped_repo)
    connection = active(expires_at=None)
    await settle()
    tap.clear()

    # What a select-then-write repository would do: the tap must count two statements.
    await tapped_repo.find_by_id(connection.id)
    await tapped_repo.save(connection)
    await settle()

    linkvault_sql = [s for s in tap.statements() if "provider_connections" in s]
    assert len(linkvault_sql) == 2
    assert tap.round_trips() >= 2
