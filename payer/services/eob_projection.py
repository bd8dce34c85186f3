"""Keep the ExplanationOfBenefit projection of the claims system up to date.

Issue 11: claims become EOBs in Python, so an export mapping them at every run streams them
~30 times slower than the clinical data it COPYs. The projection (``EobProjection``) holds
each claim's and prior authorization's EOB as payer/mapping.py maps it — the mapping stays
the one place deciding EOB content — and the export COPYs it like any stored resource.

A refresh is incremental by last update: a source whose ``updated_at`` differs from the one
its row was mapped from (or that has no row) is mapped again; a row whose source is gone
becomes a tombstone. Safe to run twice or at once: rows are upserted on their source.
"""

import dataclasses
import time

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from payer.mapping import (
    claim_to_eob,
    eob_id_for_claim,
    eob_id_for_prior_auth,
    prior_auth_to_eob,
    provider_directory_load,
)
from payer.models import Claim, EobProjection, PriorAuthorization

REFRESH_BATCH = 2000


@dataclasses.dataclass
class ProjectionRefresh:
    mapped: int = 0
    deleted: int = 0
    seconds: float = 0.0


def eob_projection_refresh(*, full: bool = False, batch_size: int = REFRESH_BATCH) -> ProjectionRefresh:
    """Map the claims and prior authorizations changed since their row was written.

    ``full`` maps every source again: needed when what an EOB holds changes without its
    source changing (the provider directory, network contracts, or the mapping itself).
    """
    started = time.monotonic()
    result = ProjectionRefresh()
    directory = provider_directory_load()
    for kind, model, to_eob, id_for, number, service_date in (
        (EobProjection.Kind.CLAIM, Claim, claim_to_eob, eob_id_for_claim, "claim_number", "service_start"),
        (EobProjection.Kind.PRIOR_AUTHORIZATION, PriorAuthorization, prior_auth_to_eob, eob_id_for_prior_auth,
         "auth_number", "requested_date"),
    ):
        sources = model.objects.all()
        if not full:
            current = EobProjection.objects.filter(kind=kind, source_pk=OuterRef("pk"), deleted_at__isnull=True,
                                                   source_updated_at=OuterRef("updated_at"))
            sources = sources.filter(~Exists(current))
        sources = sources.select_related("member").order_by("pk")
        if kind == EobProjection.Kind.CLAIM:
            sources = sources.prefetch_related("lines", "diagnoses")
        batch: list[EobProjection] = []
        for source in sources.iterator(chunk_size=batch_size):
            batch.append(EobProjection(
                kind=kind, source_pk=source.pk, resource_id=id_for(getattr(source, number)), member_id=source.member_id,
                patient_id=source.member.patient_id, source_updated_at=source.updated_at,
                service_date=getattr(source, service_date), resource=to_eob(source, directory=directory), deleted_at=None,
            ))
            if len(batch) >= batch_size:
                result.mapped += _upsert(batch)
                batch = []
        if batch:
            result.mapped += _upsert(batch)
        # Tombstones: rows whose source left the claims system.
        gone = EobProjection.objects.filter(kind=kind, deleted_at__isnull=True).exclude(
            Exists(model.objects.filter(pk=OuterRef("source_pk"))))
        result.deleted += gone.update(deleted_at=timezone.now(), resource=None)
    result.seconds = time.monotonic() - started
    return result


def _upsert(rows: list[EobProjection]) -> int:
    with transaction.atomic():
        # A number reused by a new source after a deletion: the new EOB replaces the tombstone
        # (Bulk Data req 186: a resource stored again is in output, not deleted).
        EobProjection.objects.filter(resource_id__in=[r.resource_id for r in rows], deleted_at__isnull=False).delete()
        EobProjection.objects.bulk_create(
            rows, update_conflicts=True, unique_fields=["kind", "source_pk"],
            update_fields=["resource_id", "member", "patient_id", "source_updated_at", "service_date", "resource",
                           "deleted_at"],
        )
    return len(rows)
