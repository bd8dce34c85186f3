"""The audit trail: who accessed or tried to access which patients' data, and how it ended.

CMS-0057-F and the issue ask that every token issued or refused, every read, search,
export kick-off, download and denial be recorded. One INSERT per event keeps it cheap
enough to call on every request. Tokens, assertions and keys are never stored.
"""

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import SuspiciousOperation
from django.db import transaction
from django.utils import timezone

from payer.models import AuditEvent, AuditPurge, AuditSubject, Member

logger = logging.getLogger(__name__)

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
    members: Iterable[Member] = (),
) -> AuditEvent:
    """Record one audit event and return it.

    ``client`` is a ``SmartClient`` (or None when the caller is unknown, e.g. a refused
    token request naming a client that does not exist: then put what it claimed in
    ``detail``). ``request`` is a Django or DRF request; only its path and remote address
    are kept. ``outcome`` is one of ``AuditEvent.Outcome``. The members the event concerns
    are ``members`` plus those whose FHIR Patient id is in ``patient_ids`` (one indexed
    query), linked through ``AuditSubject`` so staff and members can ask "whose data".
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
    patient_ids = sorted({_clean(p) for p in patient_ids})
    event = AuditEvent.objects.create(
        action=_clean(action)[:40],
        outcome=outcome,
        client_id=_clean(client_id),
        organization_npi=organization_npi,
        patient_ids=patient_ids,
        resource_types=sorted({_clean(t) for t in resource_types}),
        request_path=_clean(request_path)[:500],
        status_code=status_code,
        detail=_clean(detail)[:500],
        remote_addr=remote_addr,
    )
    member_pks = {m.pk for m in members}
    if patient_ids:
        member_pks |= set(Member.objects.filter(patient_id__in=patient_ids).values_list("pk", flat=True))
    if member_pks:
        AuditSubject.objects.bulk_create([AuditSubject(event=event, member_id=pk) for pk in sorted(member_pks)])
    return event


@transaction.atomic
def audit_purge(*, run_by: str, retention_days: int | None = None) -> AuditPurge | None:
    """Delete audit events older than the retention period, after logging the purge.

    ``PA_AUDIT_RETENTION_DAYS`` (0, the default: keep everything) is the retention; the
    database triggers allow a DELETE of audit rows only below the cutoff of a logged
    ``AuditPurge``, so this is the one sanctioned way audit rows leave. Return the purge
    row, or None when retention is off.
    """
    days = settings.PA_AUDIT_RETENTION_DAYS if retention_days is None else retention_days
    if days <= 0:
        return None
    cutoff = timezone.now() - timedelta(days=days)
    old = AuditEvent.objects.filter(created_at__lt=cutoff)
    count = old.count()
    purge = AuditPurge.objects.create(cutoff=cutoff, retention_days=days, deleted=count, run_by=run_by[:150])
    AuditSubject.objects.filter(event__created_at__lt=cutoff).delete()
    old.delete()
    logger.warning("Audit retention purge by %s: %d audit events before %s deleted (retention %d days)",
                   run_by, count, cutoff.isoformat(), days)
    return purge
