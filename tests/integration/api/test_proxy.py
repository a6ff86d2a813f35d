"""The provider proxy over real HTTP: linkvault served by uvicorn on loopback, forwarding to
the sandbox's protected API (another uvicorn server), with the sandbox checking its tokens."""

from __future__ import annotations

import hashlib
import http.client
import logging
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import uuid4

import httpx
import pytest
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import CALLBACK_PATH
from linkvault.crypto import generate_key
from linkvault.providers import SANDBOX_CLIENT_ID, SANDBOX_CLIENT_SECRET
from linkvault.settings import Settings
from linkvault.testing import RunningSandbox, SandboxAdmin, sandbox_in_thread
from linkvault.testing.api import api_in_thread
from linkvault.testing.sandbox.resources import accounts_of
from tests.support import API_KEY_PROVIDER_TOML, problem_of

ADMIN, ADMIN_ENTRY = generate_api_key("admin", set(Scope))
NO_PROXY, NO_PROXY_ENTRY = generate_api_key("no-proxy", set(Scope) - {Scope.PROXY})
PROXY_ONLY, PROXY_ONLY_ENTRY = generate_api_key("proxy-only", {Scope.PROXY})
ACCESS = ApiKeySet([ADMIN_ENTRY, NO_PROXY_ENTRY, PROXY_ONLY_ENTRY])
MB = 1024 * 1024

# Two providers on the same sandbox, with rate limits small enough to reach in a test.
LIMITED_TOML = """
[[providers]]
slug = "sandbox-limited"
id = "9b0f7d4e-2c1a-4a57-8f0e-3d6c5b4a2f10"
display_name = "Sandbox, rate limited"
auth_style = "oauth2"
base_url = "{url}"
authorize_url = "/oauth/authorize"
token_url = "/oauth/token"
api_base_url = "/api"
api_rate_limit = {{ per_connection = "2/m", per_provider = "3/m" }}
"""


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Proxied:
    url: str
    http: httpx.Client
    sandbox: RunningSandbox
    admin: SandboxAdmin
    seen: list[httpx.Response] = field(default_factory=list)

    def connect(self, subject: str = "alice", provider: str = "sandbox") -> str:
        body = {"user_id": str(uuid4()), "provider": provider}
        started = self.http.post("/v1/connections", json=body)
        assert started.status_code == 201, started.text
        authorize_url = started.json()["authorize_url"]
        with httpx.Client() as browser:
            page = browser.get(authorize_url)
            request_id = re.search(r'name="request_id" value="([^"]+)"', page.text)
            assert request_id is not None
            consent = browser.post(
                f"{self.sandbox.url}/oauth/authorize",
                data={"request_id": request_id.group(1), "decision": "approve", "subject": subject},
            )
        params = dict(parse_qsl(urlsplit(consent.headers["location"]).query))
        done = self.http.get(CALLBACK_PATH, params=params)
        assert done.status_code == 200, done.text
        connection_id: str = started.json()["connection"]["id"]
        return connection_id

    def call(
        self, method: str, connection_id: str, path: str, key: str = ADMIN, **kwargs: Any
    ) -> httpx.Response:
        headers = {**auth(key), **kwargs.pop("headers", {})}
        response = self.http.request(
            method, f"/v1/connections/{connection_id}/proxy/{path}", headers=headers, **kwargs
        )
        self.seen.append(response)
        return response

    def raw(self, method: str, target: str, headers: dict[str, str] | None = None) -> Any:
        """Send `target` byte for byte: no client normalizes the path on the way."""
        parts = urlsplit(self.url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
        try:
            conn.request(method, target, headers={**auth(ADMIN), **(headers or {})})
            answer = conn.getresponse()
            body = answer.read()
            return answer.status, dict(answer.getheaders()), body
        finally:
            conn.close()

    def tokens(self) -> list[str]:
        """Every token the sandbox ever issued that it still knows of."""
        return [
            t
            for g in self.admin.grants()
            for t in (g["access_token"], g["refresh_token"])
            if t is not None
        ]


# Tokens from the sandbox, its data API somewhere else (a server the test plays).
ELSEWHERE_TOML = """
[[providers]]
slug = "sandbox-elsewhere"
id = "5c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e"
display_name = "Sandbox, API elsewhere"
auth_style = "oauth2"
base_url = "{url}"
authorize_url = "/oauth/authorize"
token_url = "/oauth/token"
api_base_url = "{api}"
"""


@contextmanager
def serve(
    root: Path,
    running: RunningSandbox,
    *,
    database_url: str | None = None,
    elsewhere: str = "http://127.0.0.1:9/api",
    **settings: Any,
) -> Iterator[Proxied]:
    (root / "providers.toml").write_text(
        API_KEY_PROVIDER_TOML
        + LIMITED_TOML.format(url=running.url)
        + ELSEWHERE_TOML.format(url=running.url, api=elsewhere)
    )
    env = {**running.env()}
    for slug in ("SANDBOX_LIMITED", "SANDBOX_ELSEWHERE"):
        env[f"LINKVAULT_PROVIDER_{slug}_CLIENT_ID"] = SANDBOX_CLIENT_ID
        env[f"LINKVAULT_PROVIDER_{slug}_CLIENT_SECRET"] = SANDBOX_CLIENT_SECRET
    config = Settings(
        database_url=database_url or f"sqlite:///{root / 'api.db'}",
        keys=SecretStr(generate_key("k1")),
        providers_file=root / "providers.toml",
        return_origins=("https://app.example",),
        **settings,
    )
    with (
        api_in_thread(config, ACCESS, env=env) as api,
        httpx.Client(base_url=api.url, headers=auth(ADMIN), timeout=60) as client,
        SandboxAdmin(running.url) as admin,
    ):
        yield Proxied(api.url, client, running, admin)


@pytest.fixture
def proxied(tmp_path: Path, running_sandbox: RunningSandbox) -> Iterator[Proxied]:
    with serve(tmp_path, running_sandbox) as p:
        yield p


def received(proxied: Proxied) -> list[dict[str, Any]]:
    return proxied.admin.api_requests()


def header_names(pairs: list[list[str]]) -> set[str]:
    return {name.lower() for name, _ in pairs}


# --- it works ---------------------------------------------------------------------------


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_accounts_and_balances_come_through_the_proxy_as_the_sandbox_serves_them(
    tmp_path: Path, running_sandbox: RunningSandbox, request: pytest.FixtureRequest, database: str
) -> None:
    url = None if database == "sqlite" else request.getfixturevalue("postgres_url")
    with serve(tmp_path, running_sandbox, database_url=url) as proxied:
        conn = proxied.connect("alice")
        accounts = proxied.call("GET", conn, "accounts")
        account = accounts.json()["accounts"][0]["id"]
        balances = proxied.call("GET", conn, f"accounts/{account}/balances")
        elsewhere = proxied.call("GET", conn, f"accounts/{accounts_of('bob')[0]['id']}/balances")

    assert accounts.status_code == 200
    assert accounts.json() == {"subject": "alice", "accounts": accounts_of("alice")}
    assert accounts.headers["content-type"] == "application/json"
    assert balances.status_code == 200
    assert balances.json()["account_id"] == account
    assert elsewhere.status_code == 404  # the provider's own 404, passed through
    assert elsewhere.json()["error"] == "not_found"


def test_the_query_string_is_passed_on_as_sent(proxied: Proxied) -> None:
    conn = proxied.connect()

    echoed = proxied.call("GET", conn, "echo/a%20b/c?q=1&q=2&next=%2Fx&empty=").json()

    assert echoed["raw_path"] == "/api/echo/a%20b/c"
    assert echoed["query"] == "q=1&q=2&next=%2Fx&empty="


def test_every_method_is_forwarded_with_its_body_and_head_stays_head(proxied: Proxied) -> None:
    conn = proxied.connect()
    for method in ("POST", "PUT", "PATCH", "DELETE", "OPTIONS"):
        echoed = proxied.call(method, conn, "echo/x", content=b"payload").json()
        assert echoed["method"] == method
        assert echoed["body_bytes"] == 7

    head = proxied.call("HEAD", conn, "download?bytes=1000")

    assert head.status_code == 200
    assert head.headers["content-length"] == "1000"
    assert received(proxied)[-1]["method"] == "HEAD"


def test_a_key_without_the_proxy_scope_is_refused_and_nothing_is_sent(proxied: Proxied) -> None:
    conn = proxied.connect()

    refused = proxied.call("GET", conn, "accounts", key=NO_PROXY)
    allowed = proxied.call("GET", conn, "accounts", key=PROXY_ONLY)

    assert problem_of(refused, 403)["detail"] == "the API key 'no-proxy' lacks the 'proxy' scope"
    assert allowed.status_code == 200
    assert len(received(proxied)) == 1


def test_an_unknown_connection_is_not_found(proxied: Proxied) -> None:
    problem_of(proxied.call("GET", str(uuid4()), "accounts"), 404)
    assert received(proxied) == []


def test_a_connection_to_a_provider_without_an_api_is_a_conflict(proxied: Proxied) -> None:
    body = {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k-1"}
    conn = proxied.http.post("/v1/connections", json=body).json()["connection"]["id"]

    problem = problem_of(proxied.call("GET", conn, "accounts"), 409)

    assert problem["type"] == "urn:linkvault:problem:no-provider-api"


# --- what is sent, what comes back --------------------------------------------------------


def test_linkvaults_key_and_cookies_never_reach_the_provider_nor_hop_by_hop_headers(
    proxied: Proxied,
) -> None:
    conn = proxied.connect()
    [grant] = proxied.admin.grants("alice")

    response = proxied.call(
        "POST",
        conn,
        "echo/headers",
        content=b"{}",
        headers={
            "Cookie": "linkvault_session=abc",
            "Proxy-Authorization": "Basic c2VjcmV0",
            "Connection": "X-Hop",
            "X-Hop": "drop me",
            "Keep-Alive": "timeout=5",
            "TE": "trailers",
            "Upgrade": "websocket",
            "X-Forwarded-For": "10.0.0.1",
            "X-Custom": "kept",
            "Content-Type": "application/json",
        },
    )

    echoed = response.json()
    names = header_names(echoed["raw_headers"])
    authorizations = [v for k, v in echoed["raw_headers"] if k.lower() == "authorization"]
    assert authorizations == [f"Bearer {grant['access_token']}"]
    assert ADMIN not in str(echoed["raw_headers"])
    assert not names & {
        "cookie",
        "proxy-authorization",
        "x-hop",
        "keep-alive",
        "te",
        "upgrade",
        "x-forwarded-for",
    }
    assert echoed["headers"]["x-custom"] == "kept"
    assert echoed["headers"]["content-type"] == "application/json"
    # ...and on the way back: the sandbox sent Keep-Alive, Proxy-Authenticate, Upgrade and
    # a session cookie; none of them passes, its own headers do.
    assert response.headers["x-sandbox-note"] == "kept"
    assert not {"keep-alive", "proxy-authenticate", "upgrade", "set-cookie"} & set(
        response.headers.keys()
    )
    assert "secret-session" not in str(response.headers)


def test_a_providers_cookie_never_comes_back_on_a_later_call_of_any_connection(
    proxied: Proxied,
) -> None:
    alice, bob = proxied.connect("alice"), proxied.connect("bob")

    proxied.call("GET", alice, "echo/first")  # the sandbox answers with Set-Cookie
    later = [proxied.call("GET", conn, "echo/later").json() for conn in [alice, bob] * 10]

    for echoed in later:
        assert "cookie" not in echoed["headers"]
    assert all("secret-session" not in str(r["raw_headers"]) for r in received(proxied))


TRAVERSALS = [
    "../oauth/token",
    "accounts/../../admin/stats",
    "%2e%2e/admin/stats",
    "%2E%2E%2Fadmin%2Fstats",
    "accounts/%2e%2e/%2e%2e/admin/stats",
    "%252e%252e/admin/stats",
    "./accounts",
    "/evil.example/x",
    "http://evil.example/x",
    "https:%2F%2Fevil.example",
    "%2F%2Fevil.example/x",
    "%40evil.example/x",
    "user@evil.example/x",
    "accounts%5c..%5cadmin",
    "accounts\\..\\admin",
    "accounts//x",
    "echo/%0d%0aX-Injected:%201",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_a_path_that_could_leave_the_providers_api_is_refused_and_nothing_is_sent(
    proxied: Proxied, path: str
) -> None:
    conn = proxied.connect()

    status, headers, body = proxied.raw("GET", f"/v1/connections/{conn}/proxy/{path}")

    assert headers["content-type"].startswith("application/problem+json")
    if "%0d" in path:  # no route matches a decoded line break at all
        assert status == 404, body
    else:
        assert status == 400, body
        assert b"proxy-path-refused" in body
    assert received(proxied) == []
    assert proxied.admin.stats()["api_requests"] == 0


def test_an_encoded_connection_id_segment_cannot_smuggle_a_path(proxied: Proxied) -> None:
    conn = proxied.connect()

    status, _, body = proxied.raw("GET", f"/v1/connections/{conn}%2Fproxy%2F..%2F../proxy/accounts")

    assert status in (400, 404, 422), body
    assert received(proxied) == []


def test_a_redirect_is_handed_back_and_never_followed(proxied: Proxied) -> None:
    conn = proxied.connect()
    with sandbox_in_thread() as elsewhere:
        target = f"{elsewhere.url}/api/echo/stolen"
        response = proxied.call("GET", conn, "redirect", params={"to": target})
        same_host = proxied.call("GET", conn, "redirect", params={"to": "/api/accounts"})
        assert elsewhere.sandbox.api_requests() == []

    assert response.status_code == 302
    assert response.headers["location"] == target
    assert same_host.status_code == 302
    assert [r["path"] for r in received(proxied)] == ["/api/redirect", "/api/redirect"]


def test_a_provider_too_slow_to_answer_is_a_504_problem(
    tmp_path: Path, running_sandbox: RunningSandbox
) -> None:
    with serve(tmp_path, running_sandbox, proxy_timeout_seconds=0.5) as proxied:
        conn = proxied.connect()
        proxied.admin.inject_fault("slow", grant_type="api", delay=2)

        slow = proxied.call("GET", conn, "accounts")

    assert problem_of(slow, 504)["type"] == "urn:linkvault:problem:provider-timeout"


def test_a_provider_that_stopped_listening_is_a_502_problem(tmp_path: Path) -> None:
    with ExitStack() as stack:
        with sandbox_in_thread() as gone:
            proxied = stack.enter_context(serve(tmp_path, gone))
            conn = proxied.connect()
        # The sandbox has stopped; linkvault still holds a token good for half an hour.
        answer = proxied.call("GET", conn, "accounts")

    problem = problem_of(answer, 502)
    assert problem["type"] == "urn:linkvault:problem:provider-unreachable"


@contextmanager
def broken_provider(answer: bytes) -> Iterator[str]:
    """A server on loopback that reads a request, sends `answer` and hangs up; its URL."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(30)
    stop = threading.Event()

    def serve_forever() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

    thread = threading.Thread(target=serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}/api"
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\ncut short",
        b"this is not HTTP\r\n\r\n",
        b"",
    ],
)
def test_a_broken_answer_from_the_provider_is_a_502_problem(
    tmp_path: Path, running_sandbox: RunningSandbox, answer: bytes
) -> None:
    with (
        broken_provider(answer) as api,
        serve(tmp_path, running_sandbox, elsewhere=api) as proxied,
    ):
        conn = proxied.connect(provider="sandbox-elsewhere")

        broken = proxied.call("GET", conn, "accounts")

    assert problem_of(broken, 502)["type"] == "urn:linkvault:problem:provider-unreachable"


# --- tokens: a 401 refreshes once and retries once ---------------------------------------


def test_a_token_that_expires_mid_session_is_refreshed_once_and_the_call_retried(
    proxied: Proxied, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = proxied.connect()
    [before] = proxied.admin.grants("alice")
    statuses = [proxied.call("GET", conn, "accounts").status_code for _ in range(3)]

    proxied.admin.expire_access_tokens("alice")
    statuses += [proxied.call("GET", conn, "accounts").status_code for _ in range(3)]

    [after] = proxied.admin.grants("alice")
    stats = proxied.admin.stats()
    assert statuses == [200] * 6
    assert stats["issued"].get("refresh_token") == 1
    assert stats["api_refused"] == 1  # the one 401, then the retry with the new token
    assert after["access_token"] != before["access_token"]
    sent = [r["headers"]["authorization"] for r in received(proxied)]
    assert sent[-1] == f"Bearer {after['access_token']}"
    assert proxied.http.get(f"/v1/connections/{conn}").json()["status"] == "active"
    assert_no_secret_shown(proxied, caplog)


def test_a_second_401_after_the_refresh_is_handed_back(
    proxied: Proxied, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = proxied.connect()
    proxied.admin.inject_fault("revoked", grant_type="api", count=2)

    response = proxied.call("GET", conn, "accounts")

    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]
    assert response.json()["error"] == "invalid_token"  # the provider's body, not a problem
    assert proxied.admin.stats()["issued"].get("refresh_token") == 1
    assert len(received(proxied)) == 2
    assert proxied.call("GET", conn, "accounts").status_code == 200
    assert_no_secret_shown(proxied, caplog)


def test_a_revoked_grant_ends_in_a_problem_asking_the_user_to_reconnect(
    proxied: Proxied, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    conn = proxied.connect()
    proxied.admin.revoke_subject("alice")

    first = proxied.call("GET", conn, "accounts")
    again = proxied.call("GET", conn, "accounts")

    status = proxied.http.get(f"/v1/connections/{conn}").json()["status"]
    assert status in ("expired", "revoked")
    for problem in (problem_of(first, 409), problem_of(again, 409)):
        assert problem["needs_user_action"] is True
        assert problem["connection_status"] == status
    assert len(received(proxied)) == 1  # the second call never left linkvault
    assert_no_secret_shown(proxied, caplog)


def assert_no_secret_shown(proxied: Proxied, caplog: pytest.LogCaptureFixture) -> None:
    problems = [
        r.text
        for r in proxied.seen
        if r.headers.get("content-type", "").startswith("application/problem+json")
    ]
    for secret in [*proxied.tokens(), ADMIN]:
        assert secret not in caplog.text
        assert not any(secret in problem for problem in problems)


# --- rate limits --------------------------------------------------------------------------


def test_a_providers_own_429_comes_back_with_its_retry_after(proxied: Proxied) -> None:
    conn = proxied.connect()
    proxied.admin.inject_fault("rate_limited", grant_type="api", retry_after=17)

    response = proxied.call("GET", conn, "accounts")

    assert response.status_code == 429
    assert response.headers["retry-after"] == "17"
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == "rate_limited"


def test_linkvaults_limits_per_connection_and_per_provider_answer_429_before_sending(
    proxied: Proxied,
) -> None:
    first = proxied.connect("alice", provider="sandbox-limited")
    second = proxied.connect("bob", provider="sandbox-limited")

    a = [proxied.call("GET", first, "accounts") for _ in range(3)]  # 2 per connection a minute
    b = [proxied.call("GET", second, "accounts") for _ in range(2)]  # 3 per provider a minute

    assert [r.status_code for r in a] == [200, 200, 429]
    assert [r.status_code for r in b] == [200, 429]
    for limited, scope in ((a[2], "per connection"), (b[1], "per provider")):
        problem = problem_of(limited, 429)
        assert problem["type"] == "urn:linkvault:problem:rate-limited"
        assert scope in problem["detail"]
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        assert problem["retry_after"] == int(limited.headers["retry-after"])
    assert len(received(proxied)) == 3
    # The unlimited built-in sandbox is not held back by the other provider's limits.
    plain = proxied.connect("carol")
    assert all(proxied.call("GET", plain, "accounts").status_code == 200 for _ in range(5))


# --- bodies stream, both ways ---------------------------------------------------------------


def test_a_large_upload_streams_through_without_being_held_in_memory(
    tmp_path: Path, running_sandbox: RunningSandbox
) -> None:
    size = 24 * MB
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    digest = hashlib.sha256()
    for _ in range(size // len(block)):
        digest.update(block)

    def chunks() -> Iterator[bytes]:
        for _ in range(size // len(block)):
            yield block

    with serve(tmp_path, running_sandbox) as proxied:
        conn = proxied.connect()
        tracemalloc.start()
        try:
            response = proxied.call(
                "POST",
                conn,
                "echo/upload",
                content=chunks(),
                headers={"Content-Type": "application/octet-stream"},
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()

    echoed = response.json()
    assert response.status_code == 200
    assert echoed["body_bytes"] == size
    assert echoed["body_sha256"] == digest.hexdigest()
    # Client, linkvault and the sandbox all run in this process: together they held a few
    # chunks at a time, not the 24 MB.
    assert peak < 6 * MB, f"peak traced memory {peak / MB:.1f} MB"


def test_a_large_download_streams_through_without_being_held_in_memory(
    proxied: Proxied,
) -> None:
    size = 24 * MB + 5
    conn = proxied.connect()
    received_bytes = 0
    tracemalloc.start()
    try:
        with proxied.http.stream(
            "GET",
            f"/v1/connections/{conn}/proxy/download",
            params={"bytes": size, "chunked": "1"},
        ) as response:
            for chunk in response.iter_raw():
                received_bytes += len(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 200
    assert "content-length" not in response.headers
    assert received_bytes == size
    assert peak < 6 * MB, f"peak traced memory {peak / MB:.1f} MB"


def test_a_streamed_body_keeps_its_length_and_its_401_comes_back_after_the_refresh(
    proxied: Proxied,
) -> None:
    conn = proxied.connect()
    proxied.call("GET", conn, "accounts")
    proxied.admin.expire_access_tokens("alice")
    body = b"s" * (MB + 3)

    rejected = proxied.call("PUT", conn, "echo/upload", content=body)
    retried = proxied.call("PUT", conn, "echo/upload", content=body)

    # A body past 64 KiB goes as it comes and cannot be sent twice: the 401 is the caller's
    # to retry, and the token is already refreshed for that retry.
    assert rejected.status_code == 401
    assert proxied.admin.stats()["issued"].get("refresh_token") == 1
    assert retried.status_code == 200
    assert retried.json()["body_bytes"] == len(body)
    sent = received(proxied)[-1]["headers"]
    assert sent["content-length"] == str(len(body))
    assert "transfer-encoding" not in sent


def test_a_body_over_the_proxy_limit_is_refused_before_anything_is_sent(
    tmp_path: Path, running_sandbox: RunningSandbox
) -> None:
    with serve(tmp_path, running_sandbox, proxy_max_body_bytes=256 * 1024) as proxied:
        conn = proxied.connect()
        declared = proxied.call("POST", conn, "echo/big", content=b"x" * (300 * 1024))

        def chunks() -> Iterator[bytes]:
            for _ in range(8):
                yield b"y" * (64 * 1024)
                time.sleep(0.01)

        assert problem_of(declared, 413)["max_bytes"] == 256 * 1024
        assert received(proxied) == []

        streamed = proxied.call("POST", conn, "echo/big", content=chunks())
        small = proxied.call("POST", conn, "echo/small", content=b"z" * (200 * 1024))

        assert problem_of(streamed, 413)["max_bytes"] == 256 * 1024
        assert small.status_code == 200
        assert small.json()["body_bytes"] == 200 * 1024
