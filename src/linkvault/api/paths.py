"""The API's fixed paths, shared by the routes, the middlewares and the problem pages."""

import re

CALLBACK_PATH = "/v1/oauth/callback"
HEALTH_PATH = "/v1/health"
DOCS_ASSETS = "/docs/assets"
PUBLIC_PATHS = frozenset({HEALTH_PATH, CALLBACK_PATH, "/openapi.json", "/docs"})
PROXY_PATH = "/v1/connections/{connection_id}/proxy/{path:path}"
# Requests the middlewares hand on untouched: their bodies stream, HEAD stays HEAD.
PROXIED = re.compile(r"^/v1/connections/[^/]+/proxy/")
