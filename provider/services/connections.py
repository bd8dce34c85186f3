"""Payer connections: register one, and build the Bulk Data client that speaks for it."""

import threading
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from django.conf import settings
from django.core.exceptions import ValidationError

from provider.bulk_client import BulkDataClient, Limits
from provider.models import PayerConnection

# One client per connection and process, so a worker reuses the cached access token and
# the HTTP connections across tasks instead of asking for a token on every task.
_clients: dict[tuple, BulkDataClient] = {}
_clients_lock = threading.Lock()


def private_key_path_resolve(*, path: str) -> Path:
    """Return the key file's absolute path (a relative path is taken from the project root)."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else Path(settings.BASE_DIR) / candidate


def private_key_read(*, connection: PayerConnection) -> bytes:
    """Return the connection's PEM private key from its file; the key never goes in the database."""
    return private_key_path_resolve(path=connection.private_key_path).read_bytes()


def private_key_check(*, path: str, algorithm: str) -> None:
    """Raise ValidationError unless ``path`` holds a PEM private key usable with ``algorithm``.

    The message names the file, never its content.
    """
    file = private_key_path_resolve(path=path)
    try:
        key = load_pem_private_key(file.read_bytes(), password=None)
    except FileNotFoundError:
        raise ValidationError(f"No private key file at {file}.") from None
    except (ValueError, TypeError):
        raise ValidationError(f"{file} is not an unencrypted PEM private key.") from None
    expected = rsa.RSAPrivateKey if algorithm == "RS384" else ec.EllipticCurvePrivateKey
    if not isinstance(key, expected):
        raise ValidationError(f"The key in {file} cannot sign {algorithm}.")


def payer_connection_create(
    *,
    name: str,
    display_name: str,
    fhir_base_url: str,
    client_id: str,
    private_key_path: str,
    key_id: str,
    algorithm: str = "RS384",
    scopes: str = "system/*.read",
    token_url: str = "",
    validation_level: str = PayerConnection.ValidationLevel.FULL,
    organization_npi: str = "",
) -> PayerConnection:
    """Create or update the connection called ``name`` after checking its key file.

    ``organization_npi`` names the provider organization whose SMART client this is; only
    that organization's clinicians may fetch through the connection.
    """
    private_key_check(path=private_key_path, algorithm=algorithm)
    connection = PayerConnection.objects.filter(name=name).first() or PayerConnection(name=name)
    for attr, value in {
        "display_name": display_name, "fhir_base_url": fhir_base_url.rstrip("/"), "client_id": client_id,
        "private_key_path": private_key_path, "key_id": key_id, "algorithm": algorithm, "scopes": scopes,
        "token_url": token_url, "validation_level": validation_level, "organization_npi": organization_npi.strip(),
    }.items():
        setattr(connection, attr, value)
    connection.full_clean()
    connection.save()
    return connection


def bulk_client_for(*, connection: PayerConnection) -> BulkDataClient:
    """Return the (process-wide, cached) Bulk Data client for ``connection``."""
    key = (
        connection.pk, connection.fhir_base_url, connection.client_id, connection.private_key_path,
        connection.key_id, connection.algorithm, connection.scopes, connection.token_url,
        connection.file_origins, connection.token_origins, connection.max_file_bytes, connection.max_line_bytes,
        connection.max_manifest_files,
    )
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            client = BulkDataClient(
                connection.fhir_base_url,
                connection.client_id,
                private_key_read(connection=connection),
                connection.key_id,
                algorithm=connection.algorithm,
                scopes=connection.scopes,
                token_url=connection.token_url or None,
                file_origins=connection.file_origins,
                token_origins=connection.token_origins,
                limits=Limits(
                    max_file_bytes=connection.max_file_bytes, max_line_bytes=connection.max_line_bytes,
                    max_manifest_files=connection.max_manifest_files,
                ),
            )
            _clients[key] = client
        return client
