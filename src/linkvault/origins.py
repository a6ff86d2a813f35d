"""Where a user's browser may be sent after consent: an allow-list of origins."""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import urlsplit

from linkvault.errors import InvalidArgumentError

MAX_RETURN_URL_LENGTH = 2000
# After the origin: printable ASCII without space or backslash (browsers read a backslash as a
# slash, so "https://app.example\@evil.example" must not get through); IRIs come percent-encoded.
_REST = r"[!-\[\]-~]*"
_DEFAULT_PORTS = {"http": 80, "https": 443}


def parse_origin(value: str) -> str:
    """`scheme://host[:port]` in canonical form; raises ValueError for anything else."""
    parts = urlsplit(value.strip())
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) origin like https://app.example")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise ValueError(f"{value!r} must not hold a user name or password")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"{value!r} must be an origin only, without path, query or fragment")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} has an invalid port") from None
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    if port is None or port == _DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


class ReturnOrigins:
    """The origins `return_to` may point at; an empty list refuses every `return_to`."""

    def __init__(self, origins: Iterable[str] = ()) -> None:
        self.origins = tuple(dict.fromkeys(parse_origin(o) for o in origins))
        alternatives = "|".join(re.escape(o) for o in self.origins)
        self.pattern = f"^(?:{alternatives})(?:[/?#]{_REST})?$" if self.origins else None

    def allows(self, url: str) -> bool:
        """Whether `url` is on an allowed origin (and holds no user name, space or backslash)."""
        if self.pattern is None or len(url) > MAX_RETURN_URL_LENGTH:
            return False
        return re.fullmatch(self.pattern[1:-1], url) is not None

    def check(self, url: str | None) -> None:
        """Raise InvalidArgumentError (field `return_to`) unless `url` is None or allowed."""
        if url is None or self.allows(url):
            return
        if not self.origins:
            detail = "return_to is not accepted: no return origins are configured"
        else:
            detail = f"return_to must start with one of: {', '.join(self.origins)}"
        raise InvalidArgumentError(detail, field="return_to")
