"""The HTTP API: JSON under /v1, bearer API keys with scopes, RFC 9457 problems for every error.

Connection responses describe credentials (type, expiry) and never carry them; the one
response that holds a secret is GET /v1/connections/{id}/credentials, and each such read
is logged with the connection id and the API key's name.
"""

from linkvault.api.app import create_app, serve
from linkvault.api.paths import CALLBACK_PATH

__all__ = ["CALLBACK_PATH", "create_app", "serve"]
