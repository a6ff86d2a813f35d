"""One exception tree for linkvault, rooted at LinkvaultError."""

from __future__ import annotations

from uuid import UUID


class LinkvaultError(Exception):
    """Base class of every error linkvault raises on purpose."""


# --- domain -----------------------------------------------------------------


class DomainError(LinkvaultError):
    """A rule of the domain was broken; nothing was changed."""


class InvalidTransitionError(DomainError):
    """A status change the transition table does not allow."""

    def __init__(self, current: str, target: str | None, verb: str) -> None:
        if target is None:
            message = f"cannot {verb} a {current} connection"
        else:
            message = f"cannot {verb}: a connection cannot move from {current} to {target}"
        super().__init__(message)
        self.current = current
        self.target = target
        self.verb = verb


class InvalidConnectionError(DomainError, ValueError):
    """A field value the entity or a value object does not accept."""


class InvalidArgumentError(LinkvaultError, ValueError):
    """An argument outside what the operation accepts."""


# --- persistence -------------------------------------------------------------


class RepositoryError(LinkvaultError):
    """A repository operation failed."""


class NotFoundError(RepositoryError, LookupError):
    """The connection does not exist."""

    def __init__(self, connection_id: UUID) -> None:
        super().__init__(f"connection {connection_id} not found")
        self.connection_id = connection_id


class StaleConnectionError(RepositoryError):
    """A save was based on an outdated copy; the stored state was left as it was."""

    def __init__(self, connection_id: UUID, expected_version: int) -> None:
        super().__init__(
            f"connection {connection_id} was changed or removed since version "
            f"{expected_version} was read; reload it and apply the change again"
        )
        self.connection_id = connection_id
        self.expected_version = expected_version


class DatabaseError(RepositoryError):
    """The database failed; the driver's error is chained as the cause."""


class ConstraintViolationError(DatabaseError):
    """A write broke a database constraint (for example a duplicate or a malformed row)."""


class DatabaseUnavailableError(DatabaseError):
    """The database could not be reached."""


class SchemaError(DatabaseError):
    """The database schema is missing or behind the code."""


# --- configuration -----------------------------------------------------------


class ConfigurationError(LinkvaultError):
    """Settings are missing or malformed."""
