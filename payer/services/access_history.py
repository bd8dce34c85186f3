"""Which provider organizations received a member's data, when, and what kinds: from the audit trail.

For payer staff (the member's admin page, "shared with") and for the member themself (the
access-history page). Read only through ``AuditSubject``, so a member's history never
includes a row that does not name that member.
"""

from dataclasses import dataclass, field
from datetime import datetime

from payer.models import AuditEvent, AuditSubject, Member, ProviderOrganization

# The audit actions that release a member's data to a provider system.
RELEASE_ACTIONS = ("export-data", "read", "search")
# Resource types in plain language (CARIN BB, PDex and US Core resources the server shares).
KIND_NAMES = {
    "Patient": "your name, date of birth and address",
    "Coverage": "your coverage",
    "ExplanationOfBenefit": "claims",
    "Encounter": "visits",
    "Condition": "diagnoses and health problems",
    "Observation": "test results and measurements",
    "Procedure": "procedures",
    "MedicationRequest": "medicines",
    "MedicationDispense": "medicines",
    "Immunization": "immunizations",
    "AllergyIntolerance": "allergies",
    "DiagnosticReport": "test reports",
    "DocumentReference": "clinical notes",
    "Claim": "prior authorizations",
    "ClaimResponse": "prior authorizations",
    "CarePlan": "care plans",
}
# Shared directory data, not the member's own.
NOT_MEMBER_DATA = frozenset({"Practitioner", "PractitionerRole", "Organization", "Location", "Group", "Provenance"})


@dataclass
class SharedWith:
    organization: str
    npi: str
    first: datetime
    last: datetime
    times: int = 0
    kinds: list[str] = field(default_factory=list)


def member_shared_with(*, member: Member) -> list[SharedWith]:
    """Return one row per provider organization that received ``member``'s data, latest first."""
    events = (AuditEvent.objects
              .filter(pk__in=AuditSubject.objects.filter(member=member).values("event_id"),
                      action__in=RELEASE_ACTIONS, outcome=AuditEvent.Outcome.SUCCESS)
              .exclude(organization_npi="")
              .order_by("created_at")
              .values_list("organization_npi", "created_at", "resource_types"))
    rows: dict[str, SharedWith] = {}
    for npi, created_at, types in events.iterator():
        row = rows.setdefault(npi, SharedWith(organization=npi, npi=npi, first=created_at, last=created_at))
        row.last, row.times = created_at, row.times + 1
        for resource_type in types:
            if resource_type in NOT_MEMBER_DATA:
                continue
            kind = KIND_NAMES.get(resource_type, resource_type)
            if kind not in row.kinds:
                row.kinds.append(kind)
    names = dict(ProviderOrganization.objects.filter(npi__in=list(rows)).values_list("npi", "name"))
    for row in rows.values():
        row.organization = names.get(row.npi, f"Provider organization (NPI {row.npi})")
        row.kinds.sort()
    return sorted(rows.values(), key=lambda r: r.last, reverse=True)
