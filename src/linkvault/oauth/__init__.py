"""OAuth2: the RFC code in `protocol` (no I/O), the httpx token client in `client`.

Token-endpoint failures are raised as typed OAuthError subclasses whose messages never
hold a token, code, verifier or client secret.
"""

from linkvault.oauth.client import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_READ_TIMEOUT,
    DEFAULT_TIMEOUT,
    HttpxTokenClient,
    exchange_code,
    no_cookies,
    refresh,
    revoke,
)
from linkvault.oauth.protocol import (
    TokenResponse,
    build_authorize_url,
    code_challenge_s256,
    generate_code_verifier,
    generate_state,
    parse_retry_after,
    sanitize_description,
    token_expiry,
    verify_code_challenge,
)

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_READ_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "HttpxTokenClient",
    "TokenResponse",
    "build_authorize_url",
    "code_challenge_s256",
    "exchange_code",
    "generate_code_verifier",
    "generate_state",
    "no_cookies",
    "parse_retry_after",
    "refresh",
    "revoke",
    "sanitize_description",
    "token_expiry",
    "verify_code_challenge",
]
