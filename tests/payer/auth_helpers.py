"""Test helpers for SMART Backend Services: keys, JWKS, signed client assertions and tokens.

Other test modules import these (``from tests.payer.auth_helpers import bearer_token_for``).
"""

import functools
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from payer.models import ProviderOrganization, SmartClient
from payer.services.auth import access_token_issue, client_register


def make_rsa_key() -> rsa.RSAPrivateKey:
    """Return a fresh 2048-bit RSA private key (for RS384)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def make_ec_key() -> ec.EllipticCurvePrivateKey:
    """Return a fresh P-384 private key (ES384 uses the P-384 curve, RFC 7518 section 3.4)."""
    return ec.generate_private_key(ec.SECP384R1())


@functools.cache
def shared_rsa_key() -> rsa.RSAPrivateKey:
    """Return one RSA key reused across tests, since generating keys is slow."""
    return make_rsa_key()


def jwk_for(key: Any, kid: str) -> dict[str, Any]:
    """Return the public JWK of ``key`` with ``kid`` and its ``alg``."""
    public = key.public_key()
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(public, as_dict=True)
        alg = "RS384"
    else:
        jwk = jwt.algorithms.ECAlgorithm.to_jwk(public, as_dict=True)
        alg = "ES384"
    return {**jwk, "kid": kid, "alg": alg, "use": "sig"}


def jwks_for(key: Any, kid: str) -> dict[str, Any]:
    """Return a JWKS holding the public half of ``key``."""
    return {"keys": [jwk_for(key, kid)]}


def client_assertion(
    key: Any,
    *,
    client_id: str,
    aud: str,
    kid: str,
    alg: str | None = None,
    headers: dict[str, Any] | None = None,
    **overrides: Any,
) -> str:
    """Return a signed SMART Backend Services client assertion (RFC 7523 JWT).

    ``overrides`` replace claims (``iss``, ``sub``, ``exp``, ``jti``...); a value of None
    removes the claim. ``headers`` adds or replaces JOSE header fields (e.g. ``jku``).
    """
    if alg is None:
        alg = "RS384" if isinstance(key, rsa.RSAPrivateKey) else "ES384"
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 240,
        "iat": now,
        "jti": uuid.uuid4().hex,
    }
    claims.update(overrides)
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"kid": kid, "typ": "JWT", **(headers or {})}
    return jwt.encode(claims, key, algorithm=alg, headers=header)


def register_test_client(
    organization: ProviderOrganization, *, scopes: str = "system/*.read", key: Any = None, kid: str = "test-key-1"
) -> SmartClient:
    """Register a client for ``organization`` with the public half of ``key`` (default: a shared RSA key)."""
    key = key or shared_rsa_key()
    return client_register(organization=organization, jwks=jwks_for(key, kid), scopes=scopes, name="Test client")


def bearer_token_for(organization: ProviderOrganization, scopes: str = "system/*.read") -> str:
    """Register a client for ``organization`` and return a live raw bearer token with ``scopes``."""
    client = register_test_client(organization, scopes=scopes)
    raw, _ = access_token_issue(client=client, scopes=scopes.split())
    return raw
