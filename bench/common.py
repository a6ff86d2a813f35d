"""Shared pieces of the store benchmark: the data set, the timing harness, the tables."""

from __future__ import annotations

import asyncio
import math
import os
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import NAMESPACE_URL, UUID, uuid5

from linkvault.domain import (
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)

# The column order of every named query of linkvault (SELECT lists and INSERT).
COLUMNS = (
    "id",
    "user_id",
    "provider_id",
    "provider_slug",
    "alias",
    "status",
    "status_reason",
    "credential_type",
    "encrypted_credentials",
    "credentials_expire_at",
    "connected_at",
    "last_sync_at",
    "created_at",
    "updated_at",
    "version",
)

# One row: the values of COLUMNS, as Python objects (UUID, str, bytes, aware datetime, int).
Row = tuple[Any, ...]

BLOB_SIZE = 600
MAX_PER_USER = 8
DAY = 86_400.0


@dataclass(frozen=True)
class Provider:
    slug: str
    credential_type: CredentialType
    weight: int

    @property
    def id(self) -> UUID:
        return uuid5(NAMESPACE_URL, f"https://linkvault.bench/providers/{self.slug}")


_T = CredentialType
PROVIDERS = (
    Provider("schwab", _T.OAUTH2, 20),
    Provider("coinbase", _T.OAUTH2, 12),
    Provider("tradier", _T.OAUTH2, 6),
    Provider("plaid", _T.LINK_TOKEN, 25),
    Provider("yodlee", _T.LINK_TOKEN, 8),
    Provider("alpaca", _T.API_KEY, 12),
    Provider("kraken", _T.API_KEY, 7),
    Provider("ibkr-flex", _T.CERTIFICATE, 4),
    Provider("csv-import", _T.FILE_IMPORT, 6),
)

_S = ConnectionStatus
STATUS_WEIGHTS = (
    (_S.ACTIVE, 70),
    (_S.PENDING, 6),
    (_S.EXPIRED, 8),
    (_S.REVOKED, 5),
    (_S.FAILED, 4),
    (_S.DISCONNECTED, 7),
)
# Statuses whose rows hold credentials: ACTIVE must; EXPIRED and REVOKED keep the last ones.
# PENDING and FAILED never got any, DISCONNECTED dropped them.
_WITH_CREDENTIALS = frozenset({_S.ACTIVE, _S.EXPIRED, _S.REVOKED})
_REASONS = {
    _S.EXPIRED: "the provider rejected the refresh token",
    _S.REVOKED: "access revoked by the user at the provider",
    _S.FAILED: "authorization code exchange failed",
}


def uuid7_at(at: datetime, rng: random.Random) -> UUID:
    """A UUIDv7 stamped with `at`, as linkvault would have minted it then."""
    unix_ms = int(at.timestamp() * 1000)
    value = (unix_ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76
    value |= rng.getrandbits(12) << 64
    value |= 0b10 << 62
    value |= rng.getrandbits(62)
    return UUID(int=value)


def _expiry(
    rng: random.Random, now: datetime, status: ConnectionStatus, kind: CredentialType
) -> datetime | None:
    if kind.can_refresh:
        if status is _S.ACTIVE:
            # Refreshed before they lapse, so live tokens expire over the coming day.
            return now + timedelta(seconds=rng.uniform(0, DAY))
        return now - timedelta(seconds=rng.uniform(0, DAY / 2))
    if kind is _T.CERTIFICATE:
        return now + timedelta(days=rng.uniform(30, 365))
    return None  # API keys and file imports never expire


def _row(
    rng: random.Random,
    now: datetime,
    user_id: UUID,
    provider: Provider,
    status: ConnectionStatus,
    ordinal: int,
) -> Row:
    created = now - timedelta(seconds=rng.uniform(3_600, 365 * DAY))
    has_credentials = status in _WITH_CREDENTIALS
    kind = provider.credential_type if has_credentials else None
    blob = os.urandom(BLOB_SIZE) if has_credentials else None
    expires = _expiry(rng, now, status, provider.credential_type) if has_credentials else None
    connected = created + timedelta(seconds=rng.uniform(5, 600)) if has_credentials else None
    last_sync = None
    if status is _S.ACTIVE and rng.random() < 0.9:
        last_sync = max(now - timedelta(seconds=rng.uniform(0, DAY)), connected or created)
    updated = max(created, connected or created, last_sync or created)
    alias = None if rng.random() < 0.5 else f"{provider.slug} account {ordinal + 1}"
    return (
        uuid7_at(created, rng),
        user_id,
        provider.id,
        provider.slug,
        alias,
        status.value,
        _REASONS.get(status),
        None if kind is None else kind.value,
        blob,
        expires,
        connected,
        last_sync,
        created,
        updated,
        1,
    )


def generate_rows(count: int, now: datetime, seed: int) -> Iterator[Row]:
    """`count` connections of about count/4 users holding 1 to 8 each (realistic mix)."""
    rng = random.Random(seed)
    users = max(1, count // 4)
    per_user = [1] * users
    extra = count - users
    while extra:
        u = rng.randrange(users)
        if per_user[u] < MAX_PER_USER:
            per_user[u] += 1
            extra -= 1
    providers = list(PROVIDERS)
    provider_weights = [p.weight for p in PROVIDERS]
    statuses = [s for s, _ in STATUS_WEIGHTS]
    status_weights = [w for _, w in STATUS_WEIGHTS]
    for n in per_user:
        user_id = UUID(int=rng.getrandbits(128), version=4)
        for ordinal in range(n):
            provider = rng.choices(providers, provider_weights)[0]
            status = rng.choices(statuses, status_weights)[0]
            yield _row(rng, now, user_id, provider, status, ordinal)


def row_to_entity(row: Row, *, version: int | None = None) -> ProviderConnection:
    """The domain entity for a generated row (its constructor checks the row is valid)."""
    credentials = (
        None if row[8] is None else ProviderCredentials(row[8], CredentialType(row[7]), row[9])
    )
    return ProviderConnection(
        id=row[0],
        user_id=row[1],
        provider_id=row[2],
        provider_slug=row[3],
        alias=row[4],
        status=ConnectionStatus(row[5]),
        status_reason=row[6],
        credentials=credentials,
        connected_at=row[10],
        last_sync_at=row[11],
        created_at=row[12],
        updated_at=row[13],
        version=row[14] if version is None else version,
    )


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def micros(value: datetime | None) -> int | None:
    return None if value is None else (value - _EPOCH) // timedelta(microseconds=1)


def sqlite_row(row: Row) -> tuple[Any, ...]:
    """A generated row in SQLite's storage form: UUIDs as 16 bytes, instants as microseconds."""
    return (
        row[0].bytes,
        row[1].bytes,
        row[2].bytes,
        *row[3:9],
        micros(row[9]),
        micros(row[10]),
        micros(row[11]),
        micros(row[12]),
        micros(row[13]),
        row[14],
    )


@dataclass
class Dataset:
    """The loaded rows and the keys drawn from them."""

    now: datetime
    rows: list[Row]
    ids: list[UUID] = field(init=False)
    user_ids: list[UUID] = field(init=False)
    pairs: list[tuple[UUID, UUID]] = field(init=False)

    def __post_init__(self) -> None:
        self.ids = [r[0] for r in self.rows]
        self.user_ids = list(dict.fromkeys(r[1] for r in self.rows))
        self.pairs = list(dict.fromkeys((r[1], r[2]) for r in self.rows))

    def describe(self) -> str:
        statuses: dict[str, int] = {}
        for r in self.rows:
            statuses[r[5]] = statuses.get(r[5], 0) + 1
        mix = ", ".join(
            f"{s} {100 * statuses.get(s.value, 0) / len(self.rows):.1f}%" for s, _ in STATUS_WEIGHTS
        )
        return (
            f"{len(self.rows):,} connections, {len(self.user_ids):,} users, "
            f"{len(self.pairs):,} user/provider pairs, {len(PROVIDERS)} providers; {mix}"
        )


# --- timing ------------------------------------------------------------------

Op = Callable[[int], Awaitable[object]]
Cleanup = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class Prepared:
    """One run of one implementation: the operation (called with 0..n-1), then its cleanup."""

    op: Op
    cleanup: Cleanup | None = None


# (ops, run number) -> what to run; run numbers are unique so written rows never collide.
Preparer = Callable[[int, int], Awaitable[Prepared]]


@dataclass(frozen=True)
class Sample:
    ops: int
    seconds: float
    p50_us: float
    p99_us: float

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds

    def as_json(self) -> dict[str, float]:
        return {
            "ops": self.ops,
            "seconds": round(self.seconds, 6),
            "ops_per_s": round(self.ops_per_s, 1),
            "p50_us": round(self.p50_us, 1),
            "p99_us": round(self.p99_us, 1),
        }


def percentile(sorted_ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile of nanosecond latencies, in microseconds."""
    index = max(0, math.ceil(q * len(sorted_ns)) - 1)
    return sorted_ns[index] / 1000


async def measure(op: Op, ops: int, tasks: int) -> Sample:
    """Run op(0..ops-1) spread over `tasks` concurrent tasks; latency of every call."""
    latencies = [0] * ops
    indexes = iter(range(ops))
    clock = time.perf_counter_ns

    async def worker() -> None:
        for i in indexes:  # shared: each index is taken by exactly one task
            start = clock()
            await op(i)
            latencies[i] = clock() - start

    began = clock()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    elapsed = clock() - began
    latencies.sort()
    return Sample(ops, elapsed / 1e9, percentile(latencies, 0.50), percentile(latencies, 0.99))


@dataclass(frozen=True)
class Method:
    """A port method as benchmarked: how many ops at most, and one preparer per implementation."""

    name: str
    warmup_ops: int
    max_ops: int
    impls: Mapping[str, Preparer]


@dataclass
class Cell:
    method: str
    tasks: int
    runs: dict[str, list[Sample]]

    def median(self, impl: str) -> Sample:
        ordered = sorted(self.runs[impl], key=lambda s: s.ops_per_s)
        return ordered[(len(ordered) - 1) // 2]

    def ratio(self, impl: str, baseline: str) -> float:
        """Time per operation of `impl` over `baseline` (>1: impl is slower).

        The median over rounds of the ratio within each round: the two runs of one round are
        adjacent in time, so a noisy neighbour or a drifting machine weighs on both alike.
        """
        pairs = zip(self.runs[impl], self.runs[baseline], strict=True)
        return statistics.median(b.ops_per_s / s.ops_per_s for s, b in pairs)

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "tasks": self.tasks,
            "median": {k: self.median(k).as_json() for k in self.runs},
            "ratios_to_first": {
                k: round(self.ratio(k, next(iter(self.runs))), 3) for k in self.runs
            },
            "runs": {k: [s.as_json() for s in v] for k, v in self.runs.items()},
        }


class RunCounter:
    def __init__(self) -> None:
        self._n = 0

    def __call__(self) -> int:
        self._n += 1
        return self._n


async def run_once(preparer: Preparer, ops: int, tasks: int, run_no: int) -> Sample:
    prepared = await preparer(ops, run_no)
    try:
        return await measure(prepared.op, ops, tasks)
    finally:
        if prepared.cleanup is not None:
            await prepared.cleanup()


async def run_cell(
    method: Method,
    tasks: int,
    *,
    rounds: int,
    seconds: float,
    next_run: RunCounter,
    log: Callable[[str], None],
) -> Cell:
    """Warm every implementation up, size the run to `seconds` of the slowest, then alternate.

    Round r runs the implementations in order when r is even and in reverse when it is odd,
    so a slow drift of the machine lands on both sides.
    """
    rates = []
    for preparer in method.impls.values():
        warm = await run_once(preparer, method.warmup_ops, tasks, next_run())
        rates.append(warm.ops_per_s)
    ops = max(50, min(method.max_ops, int(min(rates) * seconds)))
    runs: dict[str, list[Sample]] = {name: [] for name in method.impls}
    order = list(method.impls.items())
    for r in range(rounds):
        for name, preparer in order if r % 2 == 0 else reversed(order):
            runs[name].append(await run_once(preparer, ops, tasks, next_run()))
    cell = Cell(method.name, tasks, runs)
    summary = ", ".join(f"{k} {cell.median(k).ops_per_s:,.0f}/s" for k in runs)
    log(f"  {method.name:<26} {tasks} task{'s' if tasks > 1 else ' '} x{ops:>6}: {summary}")
    return cell


# --- tables ------------------------------------------------------------------


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return " | ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in pairs).rstrip()

    rule = "-+-".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt_rate(sample: Sample) -> str:
    return f"{sample.ops_per_s:,.0f}"


def fmt_us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 10_000 else f"{value:.0f} us"


def mode_name(tasks: int) -> str:
    return "1 task" if tasks == 1 else f"{tasks} tasks"
