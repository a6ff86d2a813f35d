"""The API over real HTTP on loopback: what a hostile or careless client meets."""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit
from uuid import uuid4

import httpx
import jsonschema_rs
import pytest
from pydantic import SecretStr

from linkvault.access import ApiKeySet, Scope, generate_api_key
from linkvault.api import CALLBACK_PATH
from linkvault.crypto import generate_key
from linkvault.settings import Settings
from linkvault.testing import RunningSandbox
from linkvault.testing.api import api_in_thread
from tests.sandbox_fixtures import drive_consent
from tests.support import API_KEY_PROVIDER_TOML, problem_of

APP_ORIGIN = "https://app.example"
BODY_LIMIT = 16 * 1024
ADMIN, ADMIN_ENTRY = generate_api_key("admin", set(Scope))
READER, READER_ENTRY = generate_api_key("reader", {Scope.READ})
WRITER, WRITER_ENTRY = generate_api_key("writer-only", {Scope.WRITE})
ACCESS = ApiKeySet([ADMIN_ENTRY, READER_ENTRY, WRITER_ENTRY])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Served:
    url: str
    http: httpx.Client

    def count(self) -> int:
        return len(self.http.get("/v1/connections", params={"limit": 500}).json()["items"])

    def connect_key(self, alias: str = "first") -> dict[str, Any]:
        body = {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k-1", "alias": alias}
        r = self.http.post("/v1/connections", json=body)
        assert r.status_code == 201, r.text
        connection: dict[str, Any] = r.json()["connection"]
        return connection


@contextmanager
def serve(
    database_url: str,
    root: Path,
    sandbox: RunningSandbox,
    *,
    origins: tuple[str, ...] = (APP_ORIGIN,),
    key: str | None = None,
) -> Iterator[Served]:
    (root / "providers.toml").write_text(API_KEY_PROVIDER_TOML)
    settings = Settings(
        database_url=database_url,
        keys=SecretStr(key or generate_key("k1")),
        providers_file=root / "providers.toml",
        return_origins=origins,
        max_body_bytes=BODY_LIMIT,
    )
    with (
        api_in_thread(settings, ACCESS, env=sandbox.env()) as running,
        httpx.Client(base_url=running.url, headers=auth(ADMIN), timeout=30) as http,
    ):
        yield Served(running.url, http)


@pytest.fixture
def served(tmp_path: Path, running_sandbox: RunningSandbox) -> Iterator[Served]:
    with serve(f"sqlite:///{tmp_path / 'api.db'}", tmp_path, running_sandbox) as s:
        yield s


def raw_exchange(url: str, request: bytes, *, then: Sequence[bytes] = ()) -> bytes:
    """Send bytes on a fresh socket, then read the answer until the server closes or stops."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=20) as sock:
        sock.sendall(request)
        for chunk in then:
            sock.sendall(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or not _complete(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    found = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
    return found is not None and len(body) >= int(found.group(1))


def status_and_json(answer: bytes) -> tuple[int, dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, json.loads(body)


# --- 1: metrics -----------------------------------------------------------------------


def test_made_up_methods_and_paths_without_a_key_add_no_metric_series(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as anonymous:
        for i in range(150):
            r = anonymous.request(f"BREW{i}", f"/v1/connections/{uuid4()}")
            assert r.status_code == 401
            assert anonymous.request(f"X{i}Y", f"/made/up/{i}").status_code == 401
    metrics = served.http.get("/metrics")
    assert metrics.status_code == 200
    series = [
        line
        for line in metrics.text.splitlines()
        if line.startswith("linkvault_http_requests_total{")
    ]
    methods = {re.search(r'method="([^"]*)"', s).group(1) for s in series}  # type: ignore[union-attr]
    routes = {re.search(r'route="([^"]*)"', s).group(1) for s in series}  # type: ignore[union-attr]
    assert methods <= {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other"}
    assert routes <= {"/v1/connections/{connection_id}", "/metrics", "<unmatched>"}
    assert len(series) <= 4


# --- 2: return_to -----------------------------------------------------------------------


def test_return_to_outside_the_allowed_origins_or_with_userinfo_is_a_422_that_creates_nothing(
    served: Served,
) -> None:
    refused = [
        "https://app.example@evil.example/",
        "https://user:pw@app.example/done",
        "https://evil.example/done",
        "https://app.example.evil.example/",
        "http://app.example/done",
        "https://app.example:8443/done",
        "https://app.example\\@evil.example/",
        "",
    ]
    before = served.count()
    for url in refused:
        body = {"user_id": str(uuid4()), "provider": "sandbox", "return_to": url}
        problem = problem_of(served.http.post("/v1/connections", json=body), 422)
        assert ["body", "return_to"] in [e["loc"] for e in problem["errors"]], url
    assert served.count() == before


async def test_after_consent_the_callback_sends_the_user_only_to_an_allowed_origin(
    served: Served,
) -> None:
    body = {"user_id": str(uuid4()), "provider": "sandbox", "return_to": f"{APP_ORIGIN}/done"}
    started = served.http.post("/v1/connections", json=body)
    assert started.status_code == 201, started.text
    conn_id = started.json()["connection"]["id"]
    elsewhere = served.http.post(
        f"/v1/connections/{conn_id}/reconnect", json={"return_to": "https://evil.example/"}
    )
    problem_of(elsewhere, 422)
    params = await drive_consent(started.json()["authorize_url"])
    back = served.http.get(f"{CALLBACK_PATH}?{urlencode(params)}")
    assert back.status_code == 303
    target = urlsplit(back.headers["location"])
    assert f"{target.scheme}://{target.netloc}" == APP_ORIGIN
    assert dict(parse_qsl(target.query))["status"] == "active"


async def test_an_origin_dropped_from_the_list_before_the_callback_gets_no_redirect(
    tmp_path: Path, running_sandbox: RunningSandbox
) -> None:
    database, key = f"sqlite:///{tmp_path / 'api.db'}", generate_key("k1")
    body = {"user_id": str(uuid4()), "provider": "sandbox", "return_to": f"{APP_ORIGIN}/done"}
    with serve(database, tmp_path, running_sandbox, key=key) as before:
        started = before.http.post("/v1/connections", json=body)
        assert started.status_code == 201, started.text
    params = await drive_consent(started.json()["authorize_url"])
    with serve(database, tmp_path, running_sandbox, key=key, origins=()) as after:
        back = after.http.get(f"{CALLBACK_PATH}?{urlencode(params)}")
    assert back.status_code == 200, back.text
    assert "location" not in back.headers


# --- 3: body size -----------------------------------------------------------------------


def test_a_body_declared_larger_than_the_limit_is_a_413_before_any_of_it_is_sent(
    served: Served,
) -> None:
    head = (
        "POST /v1/connections HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        "Content-Length: 50000000\r\n\r\n"
    )
    status, problem = status_and_json(raw_exchange(served.url, head.encode()))
    assert status == 413
    assert problem["type"] == "urn:linkvault:problem:body-too-large"
    assert problem["max_bytes"] == BODY_LIMIT


def test_a_chunked_body_is_refused_with_413_as_soon_as_it_passes_the_limit(
    served: Served,
) -> None:
    before = served.count()
    head = (
        "POST /v1/connections HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    )
    chunk = b"x" * 4096
    # Past the limit, and never finished: only a server that stops reading can answer.
    chunks = [b"%x\r\n%s\r\n" % (len(chunk), chunk)] * (BODY_LIMIT // len(chunk) + 2)
    status, problem = status_and_json(raw_exchange(served.url, head.encode(), then=chunks))
    assert status == 413
    assert problem["type"] == "urn:linkvault:problem:body-too-large"
    assert served.count() == before


def test_a_body_of_many_unknown_fields_gets_a_short_problem(served: Served) -> None:
    body: dict[str, Any] = {"user_id": str(uuid4()), "provider": "acme-keys", "api_key": "k"}
    body |= {f"f{i}": 0 for i in range(1000)}
    body["long-" + "n" * 3000] = 1
    encoded = json.dumps(body).encode()
    assert len(encoded) < BODY_LIMIT
    r = served.http.post(
        "/v1/connections", content=encoded, headers={"Content-Type": "application/json"}
    )
    problem = problem_of(r, 422)
    assert len(r.content) < 8 * 1024
    assert len(problem["errors"]) == 20
    assert problem["errors_omitted"] == 1001 - 20
    assert "981 more" in problem["detail"]


# --- 5: what a write answer shows ------------------------------------------------------------


def test_an_empty_patch_is_a_422_and_a_write_only_key_gets_back_only_id_and_version(
    served: Served,
) -> None:
    conn = served.connect_key("secret-ish alias")
    path = f"/v1/connections/{conn['id']}"
    with httpx.Client(base_url=served.url, headers=auth(WRITER), timeout=30) as writer:
        problem_of(writer.get(path), 403)
        problem_of(writer.patch(path, json={}), 422)
        problem_of(writer.patch(path, json={"version": conn["version"]}), 422)
        assert served.http.get(path).json()["version"] == conn["version"]

        renamed = writer.patch(path, json={"alias": "renamed"})
        assert renamed.status_code == 200, renamed.text
        assert renamed.json() == {"id": conn["id"], "version": conn["version"] + 1}
        assert renamed.headers["etag"] == f'"{conn["version"] + 1}"'

        disconnected = writer.post(f"{path}/disconnect")
        assert disconnected.json() == {"id": conn["id"], "version": conn["version"] + 2}
        started = writer.post(
            "/v1/connections", json={"user_id": str(uuid4()), "provider": "sandbox"}
        )
        assert started.status_code == 201
        assert set(started.json()["connection"]) == {"id", "version"}
    assert served.http.get(path).json()["alias"] == "renamed"


# --- 6: conditional and unconditional renames ------------------------------------------------


def test_a_stale_if_match_is_412_a_stale_body_version_409_and_disagreeing_ones_422(
    served: Served,
) -> None:
    conn = served.connect_key()
    path = f"/v1/connections/{conn['id']}"
    version = conn["version"]
    served.http.patch(path, json={"alias": "moved on"})

    stale_header = served.http.patch(
        path, json={"alias": "x"}, headers={"If-Match": f'"{version}"'}
    )
    assert problem_of(stale_header, 412)["type"] == "urn:linkvault:problem:precondition-failed"
    stale_body = served.http.patch(path, json={"alias": "x", "version": version})
    assert problem_of(stale_body, 409)["type"] == "urn:linkvault:problem:stale-connection"
    current = version + 1
    both = served.http.patch(
        path, json={"alias": "x", "version": current}, headers={"If-Match": f'"{version}"'}
    )
    assert problem_of(both, 422)["type"] == "urn:linkvault:problem:validation-error"
    after = served.http.get(path).json()
    assert (after["alias"], after["version"]) == ("moved on", current)

    agreed = served.http.patch(
        path, json={"alias": "y", "version": current}, headers={"If-Match": f'"{current}"'}
    )
    assert agreed.status_code == 200
    assert agreed.json()["alias"] == "y"


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'api.db'}"
    return str(request.getfixturevalue("postgres_url"))


def test_twenty_concurrent_unconditional_renames_all_succeed(
    database_url: str, tmp_path: Path, running_sandbox: RunningSandbox
) -> None:
    with serve(database_url, tmp_path, running_sandbox) as s:
        conn = s.connect_key()
        path = f"/v1/connections/{conn['id']}"
        start = threading.Barrier(20)

        def rename(i: int) -> httpx.Response:
            with httpx.Client(base_url=s.url, headers=auth(ADMIN), timeout=60) as http:
                http.get("/v1/health")  # connected before the race starts
                start.wait()
                return http.patch(path, json={"alias": f"name {i}"})

        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(rename, range(20)))
        assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers]
        after = s.http.get(path).json()
        assert after["version"] == conn["version"] + 20
        assert after["alias"] in {f"name {i}" for i in range(20)}


# --- 7: no redirects from the Host header ---------------------------------------------------


def test_a_trailing_slash_is_a_404_and_nothing_redirects_to_the_host_header(
    served: Served,
) -> None:
    for path in ("/v1/connections/", "/v1/providers/", "/docs/"):
        r = served.http.get(path, headers={"Host": "evil.example"})
        problem_of(r, 404)
        assert "location" not in r.headers
        assert "evil.example" not in r.text


# --- 9: Allow and HEAD ---------------------------------------------------------------------


def test_a_405_lists_every_method_the_path_answers_and_head_works_wherever_get_does(
    served: Served,
) -> None:
    conn = served.connect_key()
    for method, path, allowed in [
        ("OPTIONS", "/v1/connections", "GET, HEAD, POST"),
        ("PUT", "/v1/connections", "GET, HEAD, POST"),
        ("PUT", f"/v1/connections/{conn['id']}", "DELETE, GET, HEAD, PATCH"),
        ("GET", f"/v1/connections/{conn['id']}/disconnect", "POST"),
        ("POST", "/v1/health", "GET, HEAD"),
    ]:
        r = served.http.request(method, path)
        problem_of(r, 405)
        assert r.headers["allow"] == allowed, (method, path)

    health = served.http.head("/v1/health")
    assert health.status_code == 200
    assert health.content == b""
    assert health.headers["content-type"] == "application/json"
    one = served.http.head(f"/v1/connections/{conn['id']}")
    assert one.status_code == 200
    assert one.headers["etag"] == f'"{conn["version"]}"'
    assert one.content == b""


# --- 10: the schema says what is accepted ---------------------------------------------------


def _validates(schema: dict[str, Any], part: dict[str, Any], value: Any) -> bool:
    document = {**part, "components": schema["components"]}
    return bool(jsonschema_rs.validator_for(document, validate_formats=True).is_valid(value))


def test_the_openapi_schema_refuses_what_the_api_refuses(served: Served) -> None:
    schema = served.http.get("/openapi.json").json()
    start = {"$ref": "#/components/schemas/StartConnection"}
    patch = schema["paths"]["/v1/connections/{connection_id}"]["patch"]
    if_match = next(p for p in patch["parameters"] if p["name"] == "If-Match")["schema"]
    listing = schema["paths"]["/v1/connections"]["get"]["parameters"]
    cursor = next(p for p in listing if p["name"] == "cursor")["schema"]
    provider_filter = next(p for p in listing if p["name"] == "provider")["schema"]
    conn = served.connect_key()
    user = str(uuid4())

    cases: list[tuple[dict[str, Any], Any, httpx.Response]] = [
        (
            start,
            {"user_id": user, "provider": "no-such-provider"},
            served.http.post(
                "/v1/connections", json={"user_id": user, "provider": "no-such-provider"}
            ),
        ),
        (
            start,
            {"user_id": user, "provider": "sandbox", "return_to": ""},
            served.http.post(
                "/v1/connections", json={"user_id": user, "provider": "sandbox", "return_to": ""}
            ),
        ),
        (
            if_match,
            "W/" + "9" * 98,
            served.http.patch(
                f"/v1/connections/{conn['id']}",
                json={"alias": "z"},
                headers={"If-Match": "W/" + "9" * 98},
            ),
        ),
        (cursor, "A" * 23, served.http.get("/v1/connections", params={"cursor": "A" * 23})),
        (
            provider_filter,
            "no-such-provider",
            served.http.get("/v1/connections", params={"provider": "no-such-provider"}),
        ),
    ]
    for part, value, answer in cases:
        assert not _validates(schema, part, value), value
        problem_of(answer, 422)

    # And what the schema allows goes through.
    assert _validates(schema, if_match, f'"{conn["version"]}"')
    ok = {"user_id": user, "provider": "sandbox", "return_to": f"{APP_ORIGIN}/x?y=1"}
    assert _validates(schema, start, ok)
    assert served.http.post("/v1/connections", json=ok).status_code == 201
    assert served.count() == 2
