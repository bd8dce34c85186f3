"""The audit trail: who accessed or tried to access which patients' data, and how it ended.

CMS-0057-F and the issue ask that every token issued or refused, every read, search,
export kick-off, download and denial be recorded. One INSERT per event keeps it cheap
enough to call on every request. Tokens, assertions and keys are never stored.
"""

from collections.abc import Iterable
from typing import Any

from django.core.exceptions import SuspiciousOperation

from payer.models import AuditEvent

# Query parameters whose values must never reach the audit trail.
_SECRET_PARAMS = frozenset({"access_token", "client_assertion", "token", "code", "client_secret"})


def _request_path(request: Any) -> str:
    """Return the request path with the query, minus any secret-looking parameter values."""
    path = request.path
    try:
        query = getattr(request, "GET", None)
    except SuspiciousOperation:  # more fields than Django parses (TooManyFieldsSent)
        return f"{path}?(too many parameters)"[:500]
    if query:
        kept = [
            f"{name}={'***' if name in _SECRET_PARAMS else value}"
            for name in query
            for value in query.getlist(name)
        ]
        path = f"{path}?{'&'.join(kept)}"
    return path[:500]


def _clean(text: str) -> str:
    # Postgres text cannot hold NUL: a request carrying one must still leave its audit entry.
    return text.replace("\x00", "\\x00") if "\x00" in text else text


def _remote_addr(request: Any) -> str | None:
    addr = request.META.get("REMOTE_ADDR") or None
    return addr


def _mark_recorded(request: Any) -> None:
    # On Django's request under DRF's wrapper, so both see it.
    setattr(getattr(request, "_request", request), "_pa_audited", True)


def audit_recorded(request: Any) -> bool:
    """Return True once an audit event was recorded for ``request`` (a Django or DRF request)."""
    return bool(getattr(getattr(request, "_request", request), "_pa_audited", False))


def audit_record(
    *,
    action: str,
    outcome: str,
    client: Any = None,
    request: Any = None,
    patient_ids: Iterable[str] = (),
    resource_types: Iterable[str] = (),
    status_code: int | None = None,
    detail: str = "",
) -> AuditEvent:
    """Record one audit event and return it.

    ``client`` is a ``SmartClient`` (or None when the caller is unknown, e.g. a refused
    token request naming a client that does not exist: then put what it claimed in
    ``detail``). ``request`` is a Django or DRF request; only its path and remote address
    are kept. ``outcome`` is one of ``AuditEvent.Outcome``.
    """
    client_id = ""
    organization_npi = ""
    if client is not None:
        client_id = client.client_id
        organization = getattr(client, "organization", None)
        organization_npi = organization.npi if organization is not None else ""
    request_path = ""
    remote_addr = None
    if request is not None:
        request_path = _request_path(request)
        remote_addr = _remote_addr(request)
        _mark_recorded(request)
    return AuditEvent.objects.create(
        action=_clean(action)[:40],
        outcome=outcome,
        client_id=_clean(client_id),
        organization_npi=organization_npi,
        patient_ids=sorted({_clean(p) for p in patient_ids}),
        resource_types=sorted({_clean(t) for t in resource_types}),
        request_path=_clean(request_path)[:500],
        status_code=status_code,
        detail=_clean(detail)[:500],
        remote_addr=remote_addr,
    )
