"""Webhook signing secrets follow key rotation, and hold their key in the ring until then."""

from __future__ import annotations

import pytest

from linkvault.crypto import AesGcmCipher, Key, KeyRing
from linkvault.errors import KeyInUseError
from linkvault.services.rotation import retire, rotate
from linkvault.services.webhooks import WebhookService
from linkvault.stores import ConnectionStore
from linkvault.testing import FakeClock


async def test_rotation_reseals_webhook_secrets_and_retire_waits_for_it(
    store: ConnectionStore, clock: FakeClock
) -> None:
    old, new = Key.generate("old"), Key.generate("new")
    service = WebhookService(store, AesGcmCipher(KeyRing([old])), clock=clock)
    created = await service.register("https://hooks.example.com/x")
    ring = KeyRing([old, new], active="new")

    with pytest.raises(KeyInUseError, match="webhook signing secret"):
        await retire(store, ring, "old")
    await rotate(store, AesGcmCipher(ring))

    endpoint = await service.get(created.endpoint.id)
    assert endpoint.sealed_secret.startswith(new.prefix)
    only_new = AesGcmCipher(await retire(store, ring, "old"))
    opened = only_new.open(endpoint.sealed_secret, connection_id=endpoint.id)
    assert opened.decode() == created.secret
