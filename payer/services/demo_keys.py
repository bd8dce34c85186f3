"""The demo's provider-side signing key: made once on disk, its public half registered with the payer.

The private key lives only in a PEM file (mode 0600) that the provider side reads; the
payer stores the public JWKS. Nothing secret goes into the database.
"""

import os
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from payer.models import ProviderOrganization, SmartClient
from payer.services.auth import client_register, jwks_validate

DEMO_SCOPES = "system/*.read"


def demo_key_path(*, key_dir: Path, client_id: str) -> Path:
    """Return where the demo private key PEM of ``client_id`` lives."""
    return Path(key_dir) / f"{client_id}.pem"


def demo_key_kid(*, client_id: str) -> str:
    """Return the ``kid`` the demo key of ``client_id`` is registered and signed under."""
    return f"{client_id}-rs384"


def _private_key_ensure(path: Path) -> rsa.RSAPrivateKey:
    """Load the PEM at ``path``, or make a 2048-bit RSA key there (mode 0600) if there is none."""
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, rsa.RSAPrivateKey):
            raise ValueError(f"{path} does not hold an RSA private key.")
        return key
    path.parent.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Create with 0600 from the start, so the key is never readable by others even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


def demo_client_ensure(*, organization: ProviderOrganization, key_dir: Path, client_id: str) -> SmartClient:
    """Return the demo SmartClient ``client_id`` of ``organization``, with the public key of
    the PEM under ``key_dir`` registered (RS384, kid ``demo_key_kid``). Idempotent."""
    key = _private_key_ensure(demo_key_path(key_dir=key_dir, client_id=client_id))
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwks = {"keys": [{**jwk, "kid": demo_key_kid(client_id=client_id), "alg": "RS384", "use": "sig"}]}
    jwks_validate(jwks=jwks)
    client = SmartClient.objects.filter(client_id=client_id).first()
    if client is None:
        return client_register(
            organization=organization, jwks=jwks, scopes=DEMO_SCOPES,
            name=f"{organization.name} provider access client", client_id=client_id,
        )
    changed = False
    if client.jwks != jwks or client.jwks_url:
        client.jwks, client.jwks_url, changed = jwks, "", True
    if client.organization_id != organization.pk or not client.active:
        client.organization, client.active, changed = organization, True, True
    if changed:
        client.save(update_fields=["jwks", "jwks_url", "organization", "active"])
    return client
