"""Benchmark sealing plus opening a ~600-byte OAuth2 payload against bare AESGCM calls.

Three variants run interleaved in the same process, each op one seal and one open:

  bare AESGCM     os.urandom nonce + AESGCM.encrypt + AESGCM.decrypt of same-size bytes
  bare + AAD      the same, building the header + connection id AAD per call (reference)
  cipher          AesGcmCipher.seal + .open of the serialized payload (header, AAD, key lookup)
  credentials     seal_credentials + open_credentials (adds JSON and payload validation)

Targets: the cipher within 1.5x of bare; typed credentials (msgspec JSON and the payload
checks on top) within 3x.

    .venv/bin/python bench/bench_crypto.py [--ops 5000] [--repeats 31]
"""

from __future__ import annotations

import argparse
import base64
import gc
import os
import platform
import secrets
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import cryptography
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from linkvault.credentials import (
    OAuth2Tokens,
    open_credentials,
    seal_credentials,
    serialize_payload,
)
from linkvault.crypto import AesGcmCipher, Key, KeyRing

TARGET_RATIO = 1.5
TYPED_TARGET = 3.0  # typed seal + open (JSON, validation) against bare AESGCM


def b64url(size: int) -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(size)).rstrip(b"=").decode()


def realistic_tokens() -> OAuth2Tokens:
    # A JWT access token (header.claims.RS256 signature) and an opaque refresh token.
    access = f"eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.{b64url(110)}.{b64url(128)}"
    return OAuth2Tokens(
        access_token=access,
        refresh_token=b64url(40),
        token_type="Bearer",
        scope="accounts:read balances:read transactions:read offline_access",
        expires_at=datetime.now(UTC) + timedelta(hours=1),
    )


def time_ops(op: Callable[[], object], ops: int) -> float:
    """Operations per second of `ops` calls, with the garbage collector paused."""
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(ops):
            op()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return ops / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=5_000, help="seal+open pairs per repeat")
    parser.add_argument("--repeats", type=int, default=31, help="timed repeats per variant")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed ops per variant")
    args = parser.parse_args()

    connection_id = uuid4()
    key = Key.generate("bench")
    cipher = AesGcmCipher(KeyRing([key]))
    tokens = realistic_tokens()
    plaintext = serialize_payload(tokens)
    bare = AESGCM(secrets.token_bytes(32))
    bare_plaintext = secrets.token_bytes(len(plaintext))
    bare_aad = connection_id.bytes

    def bare_op() -> bytes:
        nonce = os.urandom(12)
        return bare.decrypt(nonce, bare.encrypt(nonce, bare_plaintext, bare_aad), bare_aad)

    header = key.prefix

    def bound_op() -> bytes:
        nonce = os.urandom(12)
        aad = header + connection_id.bytes
        sealed = bare.encrypt(nonce, bare_plaintext, aad)
        return bare.decrypt(nonce, sealed, header + connection_id.bytes)

    def cipher_op() -> bytes:
        blob = cipher.seal(plaintext, connection_id=connection_id)
        return cipher.open(blob, connection_id=connection_id)

    def credentials_op() -> object:
        sealed = seal_credentials(tokens, connection_id=connection_id, cipher=cipher)
        return open_credentials(sealed, connection_id=connection_id, cipher=cipher)

    assert cipher_op() == plaintext
    assert credentials_op() == tokens
    variants: dict[str, Callable[[], object]] = {
        "bare AESGCM": bare_op,
        "bare + AAD": bound_op,
        "cipher": cipher_op,
        "credentials": credentials_op,
    }
    for op in variants.values():
        time_ops(op, args.warmup)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.repeats):
        for name, op in variants.items():
            samples[name].append(time_ops(op, args.ops))

    blob_size = len(cipher.seal(plaintext, connection_id=connection_id))
    print(
        f"python {platform.python_version()}, cryptography {cryptography.__version__}, "
        f"{platform.machine()}"
    )
    print(
        f"payload: {len(plaintext)} bytes serialized OAuth2 tokens, blob {blob_size} bytes; "
        f"{args.repeats} repeats x {args.ops} seal+open, median"
    )
    baseline = statistics.median(samples["bare AESGCM"])
    print(f"{'variant':<14}{'ops/s':>12}{'us/op':>9}{'vs bare':>9}")
    for name, values in samples.items():
        median = statistics.median(values)
        print(f"{name:<14}{median:>12,.0f}{1e6 / median:>9.2f}{baseline / median:>8.2f}x")
    ratio = baseline / statistics.median(samples["cipher"])
    verdict = "within" if ratio <= TARGET_RATIO else "OVER"
    print(f"cipher ratio {ratio:.2f}x: {verdict} the <= {TARGET_RATIO}x target")
    # Each round times every variant back to back: its ratio is immune to load that drifts
    # between rounds, which the ratio of medians above is not on a shared machine.
    per_round = statistics.median(
        bare / cipher
        for bare, cipher in zip(samples["bare AESGCM"], samples["cipher"], strict=True)
    )
    print(f"cipher ratio, median of per-round ratios: {per_round:.2f}x")
    typed = statistics.median(
        bare / creds
        for bare, creds in zip(samples["bare AESGCM"], samples["credentials"], strict=True)
    )
    verdict = "within" if typed <= TYPED_TARGET else "OVER"
    print(
        f"credentials ratio, median of per-round ratios: {typed:.2f}x: "
        f"{verdict} the <= {TYPED_TARGET}x target"
    )


if __name__ == "__main__":
    main()
