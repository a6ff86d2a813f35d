"""Tools for testing applications built on linkvault: never imported by the product path.

The sandbox OAuth2 provider, the in-memory store, a fake clock and an in-thread API runner
live here, so a user's own tests can drive linkvault end to end without a real provider.
`linkvault.testing.fleet` starts and watches `linkvault worker` processes against PostgreSQL,
for tests and benchmarks of a whole fleet.
"""

from linkvault.stores.memory import InMemoryConnectionRepository
from linkvault.testing.api import RunningApi, api_in_thread
from linkvault.testing.clock import FakeClock
from linkvault.testing.sandbox import (
    Fault,
    FaultKind,
    RunningSandbox,
    Sandbox,
    SandboxAdmin,
    SandboxClient,
    SandboxConfig,
    SandboxSettings,
    sandbox_in_subprocess,
    sandbox_in_thread,
    sandbox_provider,
)

__all__ = [
    "FakeClock",
    "Fault",
    "FaultKind",
    "InMemoryConnectionRepository",
    "RunningApi",
    "RunningSandbox",
    "Sandbox",
    "SandboxAdmin",
    "SandboxClient",
    "SandboxConfig",
    "SandboxSettings",
    "api_in_thread",
    "sandbox_in_subprocess",
    "sandbox_in_thread",
    "sandbox_provider",
]
