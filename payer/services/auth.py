"""SMART Backend Services: access tokens for registered provider systems."""

import datetime
import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from payer.models import AccessToken, SmartClient

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


def access_token_resolve(*, raw_token: str) -> AccessToken | None:
    """Return the live token for ``raw_token`` (with its client and organization), or None."""
    return (
        AccessToken.objects.select_related("client__organization")
        .filter(token_hash=token_hash(raw_token), expires_at__gt=timezone.now(), client__active=True)
        .first()
    )
