"""SMART Backend Services: access tokens for registered provider systems."""

import datetime
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any

import jwt
import requests
import urllib3
from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from payer.models import AccessToken, ProviderOrganization, SmartClient, UsedAssertion

# SMART Backend Services: "The access token ... SHOULD have a lifetime of no more than five minutes."
ACCESS_TOKEN_LIFETIME = datetime.timedelta(seconds=300)


def token_hash(raw_token: str) -> str:
    """Return the SHA-256 hex digest under which a bearer token is stored."""
    return hashlib.sha256(raw_token.encode()).hexdigest()


@transaction.atomic
def access_token_issue(*, client: SmartClient, scopes: list[str]) -> tuple[str, AccessToken]:
    """Issue a bearer token for ``client`` with ``scopes``; return the raw token (shown once) and its row."""
    raw = secrets.token_urlsafe(32)
    now = timezone.now()
    token = AccessToken.objects.create(
        token_hash=token_hash(raw),
        client=client,
        scopes=" ".join(scopes),
        issued_at=now,
        expires_at=now + ACCESS_TOKEN_LIFETIME,
    )
    return raw, token


def access_tokens_purge(*, now: datetime.datetime | None = None) -> int:
    """Delete access tokens that expired; return how many went.

    An expired token is refused anyway (``access_token_resolve``); its row only grows the table.
    """
    deleted, _ = AccessToken.objects.filter(expires_at__lt=now or timezone.now()).delete()
    return deleted


def access_token_resolve(*, raw_token: str) -> AccessToken | None:
    """Return the live token for ``raw_token`` (with its client and organization), or None."""
    return (
        AccessToken.objects.select_related("client__organization")
        .filter(token_hash=token_hash(raw_token), expires_at__gt=timezone.now(), client__active=True)
        .first()
    )


# --- Scopes ---------------------------------------------------------------------------
# SMART App Launch 2.x scopes.html: v1 scopes end in ``.read``/``.write``/``.*``; v2
# scopes end in a subset of the letters ``cruds`` in that order ("c" create, "r" read,
# "u" update, "d" delete, "s" search). Backend Services clients ask for ``system/``
# scopes only. A v1 ``read`` is the same as v2 ``rs``.
_V1_PERMISSIONS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}
_V2_LETTERS = "cruds"


def scope_parse(scope: str) -> tuple[str, frozenset[str]] | None:
    """Return ``(resource_type_or_star, permission_letters)`` for a ``system/`` scope, or None.

    Query-style v2 scope refinements (``system/Observation.rs?category=...``) are not
    supported and parse as None, so they are never granted.
    """
    if not scope.startswith("system/") or "?" in scope:
        return None
    resource_type, dot, permission = scope[len("system/"):].partition(".")
    if not dot or not resource_type or not (resource_type == "*" or resource_type.isalnum()):
        return None
    if permission in _V1_PERMISSIONS:
        return resource_type, _V1_PERMISSIONS[permission]
    # v2: letters in the order c, r, u, d, s, each at most once.
    if permission and _is_ordered_subset(permission, _V2_LETTERS):
        return resource_type, frozenset(permission)
    return None


def _is_ordered_subset(letters: str, alphabet: str) -> bool:
    position = 0
    for letter in letters:
        found = alphabet.find(letter, position)
        if found < 0:
            return False
        position = found + 1
    return True


def _scope_list(scopes: str | list[str] | tuple[str, ...]) -> list[str]:
    return scopes.split() if isinstance(scopes, str) else [s for scope in scopes for s in scope.split()]


def scope_grants(*, scopes: str | list[str], resource_type: str, interaction: str = "read") -> bool:
    """Return True when ``scopes`` allow ``interaction`` ("read" or "search") on ``resource_type``.

    v1 ``system/*.read``, ``system/Encounter.read`` and ``system/*.*`` allow both; v2
    needs the letter ``r`` for read and ``s`` for search (``system/Encounter.rs`` both).
    """
    letter = "s" if interaction == "search" else "r"
    for scope in _scope_list(scopes):
        parsed = scope_parse(scope)
        if parsed and parsed[0] in ("*", resource_type) and letter in parsed[1]:
            return True
    return False


def scope_granted_types(
    *, scopes: str | list[str], candidates: list[str] | tuple[str, ...], interaction: str = "read"
) -> list[str]:
    """Return those of ``candidates`` (resource types) that ``scopes`` allow reading, in order."""
    return [t for t in candidates if scope_grants(scopes=scopes, resource_type=t, interaction=interaction)]


def _scope_covers(wider: tuple[str, frozenset[str]], narrower: tuple[str, frozenset[str]]) -> bool:
    return wider[0] in ("*", narrower[0]) and narrower[1] <= wider[1]


def scope_negotiate(*, requested: str | list[str], allowed: str | list[str]) -> list[str]:
    """Return the scopes to grant: the requested ones that the client's pre-authorized scopes
    cover, plus pre-authorized scopes narrower than a requested one (a request for
    ``system/*.read`` by a client allowed only ``system/Encounter.read`` gets the latter).

    SMART Backend Services: the server "MAY grant a subset" of the requested scopes.
    """
    allowed_parsed = [(s, p) for s in _scope_list(allowed) if (p := scope_parse(s))]
    granted: list[str] = []
    for scope in _scope_list(requested):
        parsed = scope_parse(scope)
        if parsed is None:
            continue
        if any(_scope_covers(a, parsed) for _, a in allowed_parsed):
            granted.append(scope)
            continue
        granted.extend(s for s, a in allowed_parsed if _scope_covers(parsed, a))
    return list(dict.fromkeys(granted))


# --- Client registration -------------------------------------------------------------
# JWK members that only a private key has (RFC 7518 sections 6.2.2 and 6.3.2).
_PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def jwks_validate(*, jwks: Any) -> list[dict[str, Any]]:
    """Return the keys of ``jwks`` after checking each is a public RSA or EC key with a unique ``kid``.

    Raise ``ValidationError`` otherwise. SMART Backend Services: the client's JWKS holds
    its public keys; a private key must never be registered with the server.
    """
    if not isinstance(jwks, dict) or not isinstance(jwks.get("keys"), list) or not jwks["keys"]:
        raise ValidationError('The JWKS must be a JSON object with a non-empty "keys" list.')
    kids: set[str] = set()
    for index, key in enumerate(jwks["keys"]):
        if not isinstance(key, dict):
            raise ValidationError(f"Key {index} is not a JSON object.")
        if key.get("kty") not in ("RSA", "EC"):
            raise ValidationError(f'Key {index}: kty must be "RSA" or "EC".')
        if _PRIVATE_JWK_MEMBERS & key.keys():
            raise ValidationError(f"Key {index} holds private key material; register public keys only.")
        kid = key.get("kid")
        if not isinstance(kid, str) or not kid:
            raise ValidationError(f'Key {index} has no "kid".')
        if kid in kids:
            raise ValidationError(f'Two keys share the kid "{kid}".')
        kids.add(kid)
        try:
            jwt.PyJWK(key)
        except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError) as exc:
            raise ValidationError(f"Key {index} ({kid}) is not a usable public key: {exc}") from None
    return jwks["keys"]


def client_register(
    *,
    organization: ProviderOrganization,
    jwks: dict[str, Any] | None = None,
    jwks_url: str = "",
    scopes: str | list[str] = "system/*.read",
    name: str = "",
    client_id: str = "",
) -> SmartClient:
    """Register a SMART Backend Services client for ``organization`` and return it.

    Give either ``jwks`` (public keys) or ``jwks_url`` (where the client serves them).
    ``client_id`` is generated unless given. Only parseable ``system/`` scopes are kept.
    """
    if bool(jwks) == bool(jwks_url):
        raise ValidationError("Give exactly one of a JWKS or a JWKS URL.")
    if jwks is not None:
        jwks_validate(jwks=jwks)
    if jwks_url and not jwks_url_allowed(url=jwks_url):
        raise ValidationError("The JWKS URL must be an https:// URL (plain http only with DEBUG on).")
    scope_list = _scope_list(scopes)
    bad = [s for s in scope_list if scope_parse(s) is None]
    if bad or not scope_list:
        raise ValidationError(f"Not a system/ scope: {' '.join(bad) or '(none given)'}")
    return SmartClient.objects.create(
        client_id=client_id or secrets.token_urlsafe(18),
        name=name or f"{organization.name} system",
        organization=organization,
        jwks=jwks,
        jwks_url=jwks_url,
        scopes=" ".join(dict.fromkeys(scope_list)),
    )


# --- The token endpoint (SMART Backend Services, "Client Authentication: Asymmetric") ---
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART Backend Services: servers SHALL support RS384 and ES384; we accept nothing else
# (never "none", never a symmetric HS* algorithm that would treat a public key as a secret).
ASSERTION_ALGORITHMS = ("RS384", "ES384")
_ALG_KTY = {"RS384": "RSA", "ES384": "EC"}
# "exp ... SHALL be no more than five minutes in the future."
ASSERTION_MAX_LIFETIME = 300
CLOCK_SKEW = 30
JWKS_CACHE_SECONDS = 300
JWKS_REFETCH_SECONDS = 30
JWKS_FETCH_TIMEOUT = 5
JWKS_MAX_BYTES = 64 * 1024


class TokenError(Exception):
    """A refused token request, answered per RFC 6749 section 5.2.

    ``client`` is the registered client the request named, when there was one (for the audit).
    """

    def __init__(self, error: str, description: str, *, client: SmartClient | None = None, claimed: str = "") -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.client = client
        self.claimed = claimed

    @property
    def status(self) -> int:
        # RFC 6749 section 5.2: invalid_client "MAY" be 401; RFC 7523 section 3.2 routes every
        # client assertion failure to invalid_client. The rest are 400.
        return 401 if self.error == "invalid_client" else 400


@dataclass(frozen=True)
class TokenGrant:
    raw_token: str
    token: AccessToken
    scopes: list[str]

    def response_body(self) -> dict[str, Any]:
        """Return the RFC 6749 section 5.1 success body (no refresh token, per SMART Backend Services)."""
        return {
            "access_token": self.raw_token,
            "token_type": "bearer",
            "expires_in": int((self.token.expires_at - self.token.issued_at).total_seconds()),
            "scope": " ".join(self.scopes),
        }


def jwks_url_allowed(*, url: str) -> bool:
    """Return True when keys may be fetched from ``url``: https, or plain http with DEBUG on.

    SMART App Launch 2.x: all exchanges SHALL use TLS; a JWKS read over plain http could
    be swapped in transit for an attacker's keys.
    """
    return url.startswith("https://") or (settings.DEBUG and url.startswith("http://"))


def _jwks_body(url: str) -> bytes:
    """Return the body at ``url``: at most ``PA_JWKS_MAX_BYTES``, within connect and read
    timeouts and an overall deadline (``PA_JWKS_DEADLINE_SECONDS``), so that a JWKS that
    drips a byte at a time cannot hold a token request (and a web worker) for long."""
    max_bytes = getattr(settings, "PA_JWKS_MAX_BYTES", JWKS_MAX_BYTES)
    deadline = time.monotonic() + getattr(settings, "PA_JWKS_DEADLINE_SECONDS", JWKS_FETCH_TIMEOUT)
    timeout = (getattr(settings, "PA_JWKS_CONNECT_TIMEOUT", 3), getattr(settings, "PA_JWKS_READ_TIMEOUT", 3))
    chunks, size = [], 0
    with requests.get(
        url, timeout=timeout, allow_redirects=False, stream=True,
        headers={"Accept": "application/json, application/jwk-set+json"},
    ) as response:
        response.raise_for_status()
        # read1: whatever has arrived (at most 4 KiB), so the deadline is checked as bytes
        # trickle in; read(n) would wait for all n of them.
        while chunk := response.raw.read1(4096, decode_content=True):
            size += len(chunk)
            if size > max_bytes:
                raise ValueError("JWKS too large")
            if time.monotonic() > deadline:
                raise ValueError("JWKS fetch past its deadline")
            chunks.append(chunk)
    return b"".join(chunks)


def jwks_fetch(*, url: str, refresh: bool = False) -> list[dict[str, Any]]:
    """Return the keys served at ``url`` (a client's registered JWKS URL), cached for a few minutes.

    Only ever called with the URL registered for the client, never one taken from a request.
    """
    if not jwks_url_allowed(url=url):
        raise TokenError("invalid_client", "The client's JWKS URL is not an https:// URL.")
    cache_key = "payer:jwks:" + hashlib.sha256(url.encode()).hexdigest()
    if not refresh:
        cached = cache.get(cache_key)
        if cached is not None:
            return cached
    try:
        body = _jwks_body(url)
        keys = json.loads(body)["keys"]
        if not isinstance(keys, list):
            raise ValueError("keys is not a list")
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError, ValueError, KeyError, TypeError) as exc:
        # A body cut short (urllib3's ProtocolError), too slow, or too large: refused (401,
        # audited by the caller), never a 500.
        raise TokenError("invalid_client", "The client's JWKS URL could not be read.") from exc
    keys = [k for k in keys if isinstance(k, dict)]
    cache.set(cache_key, keys, JWKS_CACHE_SECONDS)
    return keys


def _client_key(*, client: SmartClient, kid: str, alg: str) -> Any:
    """Return the one public key of ``client`` named ``kid`` that fits ``alg``."""

    def matching(keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [k for k in keys if k.get("kid") == kid and k.get("kty") == _ALG_KTY[alg]]

    if client.jwks_url:
        found = matching(jwks_fetch(url=client.jwks_url))
        # The client may have rotated its keys since we cached them: read them again, but at
        # most once per URL every JWKS_REFETCH_SECONDS, so assertions naming made-up kids
        # cannot make us hammer the client's server.
        refetch_key = "payer:jwks-refetch:" + hashlib.sha256(client.jwks_url.encode()).hexdigest()
        if not found and cache.add(refetch_key, 1, JWKS_REFETCH_SECONDS):
            found = matching(jwks_fetch(url=client.jwks_url, refresh=True))
    else:
        found = matching((client.jwks or {}).get("keys", []))
    if len(found) != 1:
        raise TokenError("invalid_client", f"No single registered key matches kid {kid!r} and alg {alg}.", client=client)
    if _PRIVATE_JWK_MEMBERS & found[0].keys():
        raise TokenError("invalid_client", "The registered key is not a public key.", client=client)
    try:
        return jwt.PyJWK(found[0], algorithm=alg).key
    except (jwt.PyJWKError, jwt.InvalidKeyError, ValueError, TypeError, KeyError):
        raise TokenError("invalid_client", f"The registered key {kid!r} is unusable.", client=client) from None


def client_assertion_verify(*, assertion: str, token_url: str) -> SmartClient:
    """Verify a private_key_jwt client assertion and return the client it authenticates.

    Raise ``TokenError("invalid_client", ...)`` on any failure (RFC 7523 section 3.2).
    Records the ``jti`` so that the same assertion is never accepted twice.
    """
    try:
        header = jwt.get_unverified_header(assertion)
        unverified = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.PyJWTError:
        raise TokenError("invalid_client", "The client assertion is not a well-formed JWT.") from None
    if _holds_nul(header) or _holds_nul(unverified):
        # Postgres text cannot hold NUL, and no client_id, kid or jti has one.
        raise TokenError("invalid_client", "The client assertion holds a NUL character.")
    alg = header.get("alg")
    if alg not in ASSERTION_ALGORITHMS:
        raise TokenError("invalid_client", f"Assertion alg must be one of {', '.join(ASSERTION_ALGORITHMS)}.")
    iss, sub = unverified.get("iss"), unverified.get("sub")
    claimed = str(iss)[:64] if iss else ""
    if not isinstance(iss, str) or not iss or iss != sub:
        raise TokenError("invalid_client", "Assertion iss and sub must both be the client_id.", claimed=claimed)
    client = SmartClient.objects.select_related("organization").filter(client_id=iss, active=True).first()
    if client is None:
        raise TokenError("invalid_client", "Unknown or inactive client.", claimed=claimed)
    # SMART Backend Services: a jku header must match the registered JWKS URL; we never
    # fetch any other URL (that would let anyone supply their own keys).
    if "jku" in header and (not client.jwks_url or header["jku"] != client.jwks_url):
        raise TokenError("invalid_client", "The jku header is not the client's registered JWKS URL.", client=client)
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise TokenError("invalid_client", "The assertion header has no kid.", client=client)
    key = _client_key(client=client, kid=kid, alg=alg)
    try:
        claims = jwt.decode(
            assertion,
            key,
            algorithms=[alg],
            audience=token_url,
            issuer=client.client_id,
            leeway=CLOCK_SKEW,
            options={"require": ["iss", "sub", "aud", "exp", "jti"]},
        )
    except jwt.InvalidSignatureError:
        raise TokenError("invalid_client", "The assertion signature does not verify.", client=client) from None
    except jwt.ExpiredSignatureError:
        raise TokenError("invalid_client", "The assertion has expired.", client=client) from None
    except jwt.InvalidAudienceError:
        raise TokenError("invalid_client", "The assertion aud is not this token endpoint.", client=client) from None
    except jwt.PyJWTError as exc:
        raise TokenError("invalid_client", f"The assertion is invalid: {exc}", client=client) from None
    now = time.time()
    exp = claims["exp"]
    if exp > now + ASSERTION_MAX_LIFETIME + CLOCK_SKEW:
        raise TokenError("invalid_client", "The assertion exp is more than five minutes ahead.", client=client)
    jti = claims["jti"]
    if not isinstance(jti, str) or not jti or len(jti) > 255:
        raise TokenError("invalid_client", "The assertion jti must be a string of at most 255 characters.", client=client)
    _assertion_jti_record(client=client, jti=jti, exp=exp)
    return client


def _holds_nul(value: Any) -> bool:
    """Return True when a string anywhere in the decoded JSON ``value`` holds a NUL."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(_holds_nul(k) or _holds_nul(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_holds_nul(item) for item in value)
    return False


def _assertion_jti_record(*, client: SmartClient, jti: str, exp: float) -> None:
    """Remember ``jti`` until its assertion expires; the unique constraint refuses a replay."""
    now = timezone.now()
    UsedAssertion.objects.filter(expires_at__lt=now - datetime.timedelta(seconds=CLOCK_SKEW)).delete()
    expires_at = datetime.datetime.fromtimestamp(exp, tz=datetime.UTC) + datetime.timedelta(seconds=CLOCK_SKEW)
    try:
        with transaction.atomic():
            UsedAssertion.objects.create(client=client, jti=jti, expires_at=expires_at)
    except IntegrityError:
        raise TokenError("invalid_client", "The assertion jti was already used.", client=client) from None


def token_grant(
    *, grant_type: str, client_assertion_type: str, client_assertion: str, scope: str, token_url: str
) -> TokenGrant:
    """Handle a client_credentials token request and return the grant, or raise ``TokenError``.

    SMART Backend Services: ``grant_type=client_credentials``, the client authenticates
    with a signed JWT (``private_key_jwt``), and gets only scopes it was pre-authorized for.
    """
    if not grant_type:
        raise TokenError("invalid_request", "grant_type is required.")
    if grant_type != "client_credentials":
        raise TokenError("unsupported_grant_type", "Only grant_type=client_credentials is supported.")
    if client_assertion_type != CLIENT_ASSERTION_TYPE:
        raise TokenError("invalid_request", f"client_assertion_type must be {CLIENT_ASSERTION_TYPE}.")
    if not client_assertion:
        raise TokenError("invalid_request", "client_assertion is required.")
    if not scope.strip():
        raise TokenError("invalid_request", "scope is required.")
    client = client_assertion_verify(assertion=client_assertion, token_url=token_url)
    granted = scope_negotiate(requested=scope, allowed=client.scopes)
    if not granted:
        raise TokenError("invalid_scope", "None of the requested scopes is authorized for this client.", client=client)
    raw, token = access_token_issue(client=client, scopes=granted)
    return TokenGrant(raw_token=raw, token=token, scopes=granted)
