"""linkvault: keep your users' connections to external data providers."""

from linkvault.domain import (
    TRANSITIONS,
    ConnectionStatus,
    CredentialType,
    ProviderConnection,
    ProviderCredentials,
)
from linkvault.errors import (
    ConfigurationError,
    ConstraintViolationError,
    DatabaseError,
    DatabaseUnavailableError,
    DomainError,
    InvalidArgumentError,
    InvalidConnectionError,
    InvalidTransitionError,
    LinkvaultError,
    NotFoundError,
    SchemaError,
    StaleConnectionError,
)
from linkvault.ports import ProviderConnectionRepository
from linkvault.stores import ConnectionStore, open_store
from linkvault.stores.memory import InMemoryConnectionRepository

__all__ = [
    "TRANSITIONS",
    "ConfigurationError",
    "ConnectionStatus",
    "ConnectionStore",
    "ConstraintViolationError",
    "CredentialType",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DomainError",
    "InMemoryConnectionRepository",
    "InvalidArgumentError",
    "InvalidConnectionError",
    "InvalidTransitionError",
    "LinkvaultError",
    "NotFoundError",
    "ProviderConnection",
    "ProviderConnectionRepository",
    "ProviderCredentials",
    "SchemaError",
    "StaleConnectionError",
    "open_store",
]
__version__ = "0.1.0"
