"""Online key rotation: reseal every credential blob under the active key, and retire old keys.

Rotation walks the rows sealed outside the active key in id order (a keyset cursor), so it
keeps no state of its own: run it again after a crash and the query skips what is already
done. Each row is saved with the version check, so a concurrent write wins and the row is
reloaded and retried. Refreshable active rows are leased first, as the refresh worker does,
so a token refresh in flight is never made stale by the rotation (its tokens would be lost).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from types import MappingProxyType
from uuid import UUID

from linkvault.crypto import AesGcmCipher, KeyRing, blob_key_id, key_prefix
from linkvault.domain import ConnectionStatus, ProviderConnection, ProviderCredentials
from linkvault.errors import (
    DecryptionError,
    InvalidArgumentError,
    KeyInUseError,
    KeyRingError,
    StaleConnectionError,
)
from linkvault.services.retry import save_with_retry
from linkvault.stores import ConnectionStore
from linkvault.stores.common import MAX_PAGE

__all__ = [
    "KeyInUseError",
    "ProgressCallback",
    "RotationReport",
    "UnreadableBlob",
    "count_outside_ring",
    "key_usage",
    "retire",
    "rotate",
]

log = logging.getLogger("linkvault.rotation")

ProgressCallback = Callable[[int, int], object]


@dataclass(frozen=True, slots=True)
class UnreadableBlob:
    """A connection whose credentials cannot be opened with the ring (never the bytes)."""

    connection_id: UUID
    key_id: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class RotationReport:
    """What one rotation run did, and what is left under old keys afterwards."""

    active_key: str
    total: int
    rotated: int
    retried: int
    skipped: int
    busy: tuple[UUID, ...]
    unreadable: tuple[UnreadableBlob, ...]
    remaining: Mapping[str, int]
    outside_ring: int

    @property
    def complete(self) -> bool:
        """Whether every blob is now sealed under the active key."""
        return (
            not self.unreadable
            and not self.busy
            and self.outside_ring == 0
            and not any(self.remaining.values())
        )

    def unreadable_by_key(self) -> dict[str | None, int]:
        """How many unreadable blobs name each key id (None: the blob names none)."""
        counts: dict[str | None, int] = {}
        for blob in self.unreadable:
            counts[blob.key_id] = counts.get(blob.key_id, 0) + 1
        return counts


class RowRotation(Enum):
    """What rotating one row came to."""

    ROTATED = "rotated"
    SKIPPED = "skipped"
    BUSY = "busy"
    UNREADABLE = "unreadable"


@dataclass
class _Run:
    store: ConnectionStore
    cipher: AesGcmCipher
    max_attempts: int
    lease: timedelta
    owner: str = field(
        default_factory=lambda: f"linkvault-rotation-{os.getpid()}-{secrets.token_hex(3)}"
    )
    rotated: int = 0
    retried: int = 0
    skipped: int = 0
    unreadable: dict[UUID, UnreadableBlob] = field(default_factory=dict)

    async def row(self, conn: ProviderConnection) -> RowRotation:
        claimed: UUID | None = None
        try:
            for _ in range(self.max_attempts):
                creds = conn.credentials
                if creds is None or self.cipher.is_current(creds.encrypted_data):
                    return RowRotation.SKIPPED
                if claimed is None and _refreshable(conn):
                    # A refresh worker that finds its row resealed under it discards the
                    # tokens it just obtained: hold the row's lease so the two never overlap.
                    claim = await self.store.claim_connection(conn.id, self.owner, lease=self.lease)
                    if claim is not None:
                        claimed = conn.id
                        conn = claim.connection
                        continue
                    fresh = await self.store.find_by_id(conn.id)
                    if fresh is None:
                        return RowRotation.SKIPPED
                    if _refreshable(fresh):
                        return RowRotation.BUSY
                    conn = fresh
                    continue
                try:
                    result = await save_with_retry(
                        self.store,
                        conn,
                        self._reseal,
                        still_applies=functools.partial(self._plain_save, claimed=claimed),
                        attempts=self.max_attempts,
                        on_stale=self._count_retry,
                    )
                except DecryptionError:
                    return RowRotation.UNREADABLE
                except StaleConnectionError:
                    return RowRotation.BUSY
                if result.saved:
                    return RowRotation.ROTATED
                if result.connection is None:
                    return RowRotation.SKIPPED
                conn = result.connection  # claimed or already done: the checks above decide
            return RowRotation.BUSY
        finally:
            if claimed is not None:
                await self.store.release_claims([claimed], self.owner)

    def _reseal(self, conn: ProviderConnection) -> None:
        creds = conn.credentials
        assert creds is not None
        try:
            blob = self.cipher.reseal(creds.encrypted_data, connection_id=conn.id)
        except DecryptionError as exc:
            self._unreadable(conn.id, creds.encrypted_data, exc)
            raise
        conn.reseal_credentials(ProviderCredentials(blob, creds.credential_type, creds.expires_at))

    def _plain_save(self, fresh: ProviderConnection, claimed: UUID | None) -> bool:
        # A fresh copy is resealed as it is unless it is done, or now needs its lease first.
        creds = fresh.credentials
        if creds is None or self.cipher.is_current(creds.encrypted_data):
            return False
        return claimed is not None or not _refreshable(fresh)

    def _count_retry(self) -> None:
        self.retried += 1

    def _unreadable(self, connection_id: UUID, blob: bytes, exc: DecryptionError) -> None:
        try:
            key_id: str | None = blob_key_id(blob)
        except DecryptionError:
            key_id = None
        # DecryptionError messages name key ids and connection ids, never blob or key bytes.
        self.unreadable[connection_id] = UnreadableBlob(connection_id, key_id, str(exc))
        log.warning("rotation cannot open the credentials of connection %s: %s", connection_id, exc)


def _refreshable(conn: ProviderConnection) -> bool:
    return (
        conn.status is ConnectionStatus.ACTIVE
        and conn.credentials is not None
        and conn.credentials.supports_refresh
    )


async def key_usage(store: ConnectionStore, keyring: KeyRing) -> dict[str, int]:
    """How many connections hold credentials sealed under each key of the ring."""
    return {key.id: await store.count_sealed_with(key.prefix) for key in keyring}


async def count_outside_ring(store: ConnectionStore, keyring: KeyRing) -> int:
    """How many connections hold blobs under keys the ring lacks (or no readable key id)."""
    return await store.count_sealed_outside([key.prefix for key in keyring])


async def _count_outside_active(store: ConnectionStore, keyring: KeyRing) -> int:
    return await store.count_sealed_outside([keyring.active.prefix])


async def _outside_active(store: ConnectionStore, cipher: AesGcmCipher, row: UUID) -> bool:
    conn = await store.find_by_id(row)
    return (
        conn is not None
        and conn.credentials is not None
        and not cipher.is_current(conn.credentials.encrypted_data)
    )


async def rotate(
    store: ConnectionStore,
    cipher: AesGcmCipher,
    *,
    batch_size: int = 500,
    on_progress: ProgressCallback | None = None,
    max_attempts: int = 5,
    max_passes: int = 3,
    pass_delay: float = 1.0,
    lease: timedelta = timedelta(seconds=60),
) -> RotationReport:
    """Reseal every blob not under the cipher's active key, in batches; safe to rerun."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise InvalidArgumentError("batch_size must be an integer")
    if not 1 <= batch_size <= MAX_PAGE:
        raise InvalidArgumentError(f"batch_size must be between 1 and {MAX_PAGE}")
    if max_attempts < 1 or max_passes < 1:
        raise InvalidArgumentError("max_attempts and max_passes must be at least 1")
    ring = cipher.keyring
    active = ring.active.prefix
    run = _Run(store, cipher, max_attempts, lease)
    total = await _count_outside_active(store, ring)
    log.info("rotating %d connection(s) to key %r", total, ring.active_id)
    done = 0
    busy: dict[UUID, None] = {}
    for attempt in range(max_passes):
        busy = {}
        cursor: UUID | None = None
        while True:
            batch = await store.find_sealed_outside(active, after=cursor, limit=batch_size)
            if not batch:
                break
            for conn in batch:
                if conn.id in run.unreadable:
                    continue
                outcome = await run.row(conn)
                if outcome is RowRotation.BUSY:
                    busy[conn.id] = None
                    continue
                if outcome is RowRotation.ROTATED:
                    run.rotated += 1
                elif outcome is RowRotation.SKIPPED:
                    run.skipped += 1
                done += 1
            cursor = batch[-1].id
            if on_progress is not None:
                on_progress(done, max(total, done))
        # Rows written under an old key behind the cursor (a process still running with the
        # old ring) or left busy call for another pass; unreadable ones never will.
        left = await _count_outside_active(store, ring)
        if left <= len(run.unreadable) or attempt == max_passes - 1:
            break
        if busy:
            await asyncio.sleep(pass_delay)
    # A busy row may have been rewritten under the active key since: that one is done.
    still_busy = [i for i in busy if await _outside_active(store, cipher, i)]
    if len(still_busy) < len(busy):
        run.skipped += len(busy) - len(still_busy)
        done += len(busy) - len(still_busy)
        if on_progress is not None:
            on_progress(done, max(total, done))
    await _reseal_webhook_secrets(store, cipher)
    remaining = {
        key_id: count
        for key_id, count in (await key_usage(store, ring)).items()
        if key_id != ring.active_id
    }
    report = RotationReport(
        active_key=ring.active_id,
        total=total,
        rotated=run.rotated,
        retried=run.retried,
        skipped=run.skipped,
        busy=tuple(still_busy),
        unreadable=tuple(run.unreadable.values()),
        remaining=MappingProxyType(remaining),
        outside_ring=await count_outside_ring(store, ring),
    )
    log.info(
        "rotation to key %r: %d rotated, %d retried, %d skipped, %d busy, %d unreadable",
        ring.active_id,
        report.rotated,
        report.retried,
        report.skipped,
        len(report.busy),
        len(report.unreadable),
    )
    return report


async def _reseal_webhook_secrets(store: ConnectionStore, cipher: AesGcmCipher) -> None:
    """Webhook signing secrets move to the active key too (a handful of rows: no batches)."""
    for endpoint in await store.webhook_endpoints():
        blob = endpoint.sealed_secret
        if cipher.is_current(blob):
            continue
        try:
            new = cipher.reseal(blob, connection_id=endpoint.id)
        except DecryptionError as exc:
            log.warning("webhook endpoint %s: its secret cannot be resealed: %s", endpoint.id, exc)
            continue
        await store.reseal_webhook_secret(endpoint.id, blob, new)


async def webhook_secrets_sealed_with(store: ConnectionStore, prefix: bytes) -> int:
    """How many webhook endpoints keep their secret under the key of `prefix`."""
    return sum(e.sealed_secret.startswith(prefix) for e in await store.webhook_endpoints())


async def retire(store: ConnectionStore, keyring: KeyRing, key_id: str) -> KeyRing:
    """The ring without `key_id`; refused for the active key and for a key still in use."""
    prefix = key_prefix(key_id)
    if key_id not in keyring:
        raise KeyRingError(
            f"key {key_id!r} is not in the key ring (it holds "
            f"{', '.join(repr(k) for k in keyring.ids)})"
        )
    if key_id == keyring.active_id:
        raise KeyRingError(
            f"key {key_id!r} is the active key: make another key active and run "
            "`linkvault keys rotate` before retiring it"
        )
    rows = await store.count_sealed_with(prefix)
    if rows:
        raise KeyInUseError(key_id, rows)
    pending = await store.count_states_sealed_with(prefix)
    if pending:
        raise KeyInUseError(key_id, pending, what="pending authorization")
    secrets = await webhook_secrets_sealed_with(store, prefix)
    if secrets:
        raise KeyInUseError(key_id, secrets, what="webhook signing secret")
    return keyring.without(key_id)
