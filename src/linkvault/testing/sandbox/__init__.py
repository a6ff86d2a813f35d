"""A real OAuth2 authorization server for tests, benchmarks and demos: loopback only.

Authorization-code grant with PKCE S256 behind a consent page, refresh-token grant with
rotation and reuse detection, injectable faults and a capacity model, and counters of every
grant issued and refused, over HTTP (`/admin/...`) and in Python. It is also a resource
server: `/api/accounts` and `/api/accounts/{id}/balances` want an access token it issued,
unexpired, of a grant not revoked (`expire_access_tokens` ends them early), and it records
the requests its API received (`api_requests`). Run it in a thread
(`sandbox_in_thread`), in its own process (`sandbox_in_subprocess`, or
`python -m linkvault.testing.sandbox`), and drive another process's with `SandboxAdmin`.
"""

from linkvault.testing.sandbox.admin import SandboxAdmin
from linkvault.testing.sandbox.config import (
    DEFAULT_SCOPE,
    DEFAULT_SUBJECT,
    SandboxClient,
    SandboxConfig,
    SandboxSettings,
)
from linkvault.testing.sandbox.faults import Fault, FaultKind
from linkvault.testing.sandbox.run import (
    READY_PREFIX,
    RunningSandbox,
    sandbox_in_subprocess,
    sandbox_in_thread,
    sandbox_provider,
    serve_sandbox,
)
from linkvault.testing.sandbox.server import Sandbox

__all__ = [
    "DEFAULT_SCOPE",
    "DEFAULT_SUBJECT",
    "READY_PREFIX",
    "Fault",
    "FaultKind",
    "RunningSandbox",
    "Sandbox",
    "SandboxAdmin",
    "SandboxClient",
    "SandboxConfig",
    "SandboxSettings",
    "sandbox_in_subprocess",
    "sandbox_in_thread",
    "sandbox_provider",
    "serve_sandbox",
]
