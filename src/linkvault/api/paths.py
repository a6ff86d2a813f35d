"""The API's fixed paths, shared by the routes, the middlewares and the problem pages."""

CALLBACK_PATH = "/v1/oauth/callback"
HEALTH_PATH = "/v1/health"
DOCS_ASSETS = "/docs/assets"
PUBLIC_PATHS = frozenset({HEALTH_PATH, CALLBACK_PATH, "/openapi.json", "/docs"})
