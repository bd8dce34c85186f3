"""Changes to the clinical repository that exports must know about."""

from django.db import transaction
from django.utils import timezone

from payer.models import ClinicalResource, ResourceTombstone


def clinical_resource_delete(*, resource_type: str, resource_id: str) -> ResourceTombstone | None:
    """Delete a stored resource and record its tombstone; return it (None if not stored).

    Bulk Data 2.0 (export.html, complete status, ``deleted``): an export with ``_since``
    lists the resources deleted after it, so a client holding an earlier copy removes it.
    The row and its tombstone go in one transaction: an export sees either the resource or
    its deletion, never both nor neither.
    """
    with transaction.atomic():
        row = (
            ClinicalResource.objects.select_for_update()
            .filter(resource_type=resource_type, resource_id=resource_id)
            .first()
        )
        if row is None:
            return None
        patient_id = row.resource_id if resource_type == "Patient" else row.patient_id
        row.delete()
        return ResourceTombstone.objects.create(
            resource_type=resource_type, resource_id=resource_id, patient_id=patient_id, deleted_at=timezone.now()
        )
