"""linkvault: keep your users' connections to external data providers."""

from linkvault.credentials import (
    ApiKeyCredentials,
    CredentialPayload,
    CustomCredentials,
    LinkTokenCredentials,
    OAuth2Tokens,
    open_credentials,
    seal_credentials,
)
from linkvault.crypto import (
    AesGcmCipher,
    Key,
    KeyRing,
    generate_key,
    load_key_file,
    load_or_create_key_file,
    parse_keys,
)
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
    DecryptionError,
    DomainError,
    InvalidArgumentError,
    InvalidConnectionError,
    InvalidCredentialsError,
    InvalidTransitionError,
    KeyRingError,
    LinkvaultError,
    NotFoundError,
    SchemaError,
    StaleConnectionError,
    UnknownProviderError,
)
from linkvault.imports import Grant, import_grants, parse_grants
from linkvault.ports import ProviderConnectionRepository
from linkvault.providers import (
    AuthStyle,
    ClientCredentials,
    Provider,
    ProviderRegistry,
    load_registry,
)
from linkvault.services.connect import connection_with_credentials
from linkvault.stores import ConnectionStore, open_store
from linkvault.stores.memory import InMemoryConnectionRepository

__all__ = [
    "TRANSITIONS",
    "AesGcmCipher",
    "ApiKeyCredentials",
    "AuthStyle",
    "ClientCredentials",
    "ConfigurationError",
    "ConnectionStatus",
    "ConnectionStore",
    "ConstraintViolationError",
    "CredentialPayload",
    "CredentialType",
    "CustomCredentials",
    "DatabaseError",
    "DatabaseUnavailableError",
    "DecryptionError",
    "DomainError",
    "Grant",
    "InMemoryConnectionRepository",
    "InvalidArgumentError",
    "InvalidConnectionError",
    "InvalidCredentialsError",
    "InvalidTransitionError",
    "Key",
    "KeyRing",
    "KeyRingError",
    "LinkTokenCredentials",
    "LinkvaultError",
    "NotFoundError",
    "OAuth2Tokens",
    "Provider",
    "ProviderConnection",
    "ProviderConnectionRepository",
    "ProviderCredentials",
    "ProviderRegistry",
    "SchemaError",
    "StaleConnectionError",
    "UnknownProviderError",
    "connection_with_credentials",
    "generate_key",
    "import_grants",
    "load_key_file",
    "load_or_create_key_file",
    "load_registry",
    "open_credentials",
    "open_store",
    "parse_grants",
    "parse_keys",
    "seal_credentials",
]
__version__ = "0.1.0"
