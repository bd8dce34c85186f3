"""Who may see whose data: the single access policy of the payer's Provider Access API.

CMS-0057-F (42 CFR 422.121(a), the Provider Access API, and its parallels) lets a payer share a member's data with a
provider only while all of these hold:

- the provider organization is in network: one of its contracts covers the day;
- the member is attributed to the organization (a treatment relationship): an active
  period on the organization's attribution list (PDex STU2 PDexProviderGroup);
- the member has not opted out (PDex STU2 "Provider Access API", member opt-out);
- the member is covered: ``Member.coverage_start``/``coverage_end`` hold the day (a
  disenrolled member's data is never shared).

An attribution entry from a treatment attestation (``$provider-member-match``) counts
only while its ``TreatmentRelationship`` is live: not revoked, not expired. Staff
revocation and expiry therefore apply to the very next request.

Read, search, Group and export all ask this module and nothing else. Nothing is cached:
every call re-reads the contract, the list and ``Member.opted_out``, so an opt-out or an
ended contract applies to the very next request and to an export that is still running.
"""

import datetime
from collections.abc import Iterable

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from payer.models import AttributionMember, Member, NetworkContract, ProviderOrganization, TreatmentRelationship

# Keep each IN (...) list well under SQLite's bound-parameter limit.
_BATCH = 500


def _day(on: datetime.date | None) -> datetime.date:
    return on or timezone.localdate()


def _contracts_in_force(*, organization: ProviderOrganization, on: datetime.date) -> QuerySet[NetworkContract]:
    # NetworkContract: the organization is in network while ``on`` is in [start, end];
    # an empty end is open-ended.
    return NetworkContract.objects.filter(organization=organization, start__lte=on).filter(
        Q(end__isnull=True) | Q(end__gte=on)
    )


def organization_in_network(*, organization: ProviderOrganization, on: datetime.date | None = None) -> bool:
    """Return True when one of the organization's contracts covers ``on`` (default today)."""
    return _contracts_in_force(organization=organization, on=_day(on)).exists()


def visible_members(*, organization: ProviderOrganization, on: datetime.date | None = None) -> QuerySet[Member]:
    """Return the members whose data ``organization`` may see on ``on`` (default today).

    One query: use it as a subquery (``patient_id__in=visible_members(...).values("patient_id")``)
    to filter resources in bulk without loading the member list.
    """
    on = _day(on)
    live_relationship = TreatmentRelationship.objects.filter(
        member=OuterRef("member"), organization=organization, revoked_at__isnull=True, expires_at__gt=timezone.now()
    )
    attributed = (
        AttributionMember.objects.filter(member=OuterRef("pk"), group__organization=organization, start__lte=on)
        .filter(Q(end__isnull=True) | Q(end__gte=on))
        .filter(~Q(source=AttributionMember.Source.ATTESTATION) | Exists(live_relationship))
    )
    return Member.objects.filter(
        covered_q(on=on),
        Exists(attributed),
        Exists(_contracts_in_force(organization=organization, on=on)),
        opted_out=False,
    )


def covered_q(*, on: datetime.date | None = None, prefix: str = "") -> Q:
    """Return the filter of members whose coverage holds ``on`` (default today)."""
    on = _day(on)
    return (Q(**{f"{prefix}coverage_start__isnull": True}) | Q(**{f"{prefix}coverage_start__lte": on})) & (
        Q(**{f"{prefix}coverage_end__isnull": True}) | Q(**{f"{prefix}coverage_end__gte": on})
    )


def member_visible(*, organization: ProviderOrganization, patient_id: str) -> bool:
    """Return True when ``organization`` may see the data of the Patient ``patient_id`` today."""
    if not patient_id:
        return False
    return visible_members(organization=organization).filter(patient_id=patient_id).exists()


def visible_patient_ids(*, organization: ProviderOrganization, patient_ids: Iterable[str]) -> set[str]:
    """Return the subset of ``patient_ids`` (FHIR Patient ids) ``organization`` may see today.

    Exports call this per batch of rows just before writing them, so that an opt-out saved
    while the export runs keeps the member's later rows out of the files.
    """
    wanted = sorted({pid for pid in patient_ids if pid})
    visible: set[str] = set()
    members = visible_members(organization=organization)
    for index in range(0, len(wanted), _BATCH):
        chunk = wanted[index : index + _BATCH]
        visible.update(members.filter(patient_id__in=chunk).values_list("patient_id", flat=True))
    return visible
