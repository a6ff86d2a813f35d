from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any


@dataclass
class FakeClock:
    now: datetime = field(default_factory=lambda: datetime(2026, 3, 1, 12, 0, tzinfo=UTC))

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kwargs: float) -> None:
        self.now += timedelta(**kwargs)


PROBLEM_JSON = "application/problem+json"
# A provider that connects with an API key, for tests of the API's key flow.
API_KEY_PROVIDER_TOML = """
[[providers]]
slug = "acme-keys"
id = "0b7b3a5e-53c4-4c0e-9a34-7f1a2f5e9d11"
display_name = "Acme (API key)"
auth_style = "api_key"
"""


def problem_of(response: Any, status: int) -> dict[str, Any]:
    """The RFC 9457 body of `response` (an httpx response), after checking it is one."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM_JSON), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "detail", "instance"} <= body.keys()
    return body
