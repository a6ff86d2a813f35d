"""The API's fixed paths, shared by the routes, the middlewares and the problem pages."""

import re

CALLBACK_PATH = "/v1/oauth/callback"
HEALTH_PATH = "/v1/health"
LIVE_PATH = "/v1/health/live"
READY_PATH = "/v1/health/ready"
DOCS_ASSETS = "/docs/assets"
# What an orchestrator or a browser reaches without an API key.
HEALTH_PATHS = frozenset({HEALTH_PATH, LIVE_PATH, READY_PATH})
PUBLIC_PATHS = HEALTH_PATHS | {CALLBACK_PATH, "/openapi.json", "/docs"}
PROXY_PATH = "/v1/connections/{connection_id}/proxy/{path:path}"
# Requests the middlewares hand on untouched: their bodies stream, HEAD stays HEAD.
PROXIED = re.compile(r"^/v1/connections/[^/]+/proxy/")
