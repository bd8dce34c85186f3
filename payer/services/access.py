"""Who may see whose data: the single access policy of the payer's Provider Access API.

CMS-0057-F (42 CFR 422.121(a), the Provider Access API, and its parallels) lets a payer share a member's data with a
provider only while all of these hold:

- the provider organization is in network: one of its contracts covers the day;
- the member is attributed to the organization (a treatment relationship): an active
  period on the organization's attribution list (PDex STU2 PDexProviderGroup);
- the member has not opted out (PDex STU2 "Provider Access API", member opt-out).

Read, search, Group and export all ask this module and nothing else. Nothing is cached:
every call re-reads the contract, the list and ``Member.opted_out``, so an opt-out or an
ended contract applies to the very next request and to an export that is still running.
"""

import datetime
from collections.abc import Iterable

from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from payer.models import AttributionMember, Member, NetworkContract, ProviderOrganization

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
    attributed = AttributionMember.objects.filter(
        member=OuterRef("pk"), group__organization=organization, start__lte=on
    ).filter(Q(end__isnull=True) | Q(end__gte=on))
    return Member.objects.filter(
        Exists(attributed),
        Exists(_contracts_in_force(organization=organization, on=on)),
        opted_out=False,
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
