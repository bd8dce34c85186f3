"""Attribution lists: which members have a treatment relationship with which provider.

Da Vinci ATR / PDex STU2 PDexProviderGroup: one Group per provider organization. Entries
come from two places:

- the claims system (``source=claims``): a member with a claim rendered by one of the
  organization's practitioners, or billed by the organization, whose service ended in the
  last 24 months and whose coverage has not ended is attributed; the period starts at the first such claim and ends when
  the last one falls out of the 24-month look-back;
- payer staff (``source=manual``), who add or end a member by hand with a reason. The
  claims refresh never touches these entries;
- an accepted treatment attestation of ``$provider-member-match`` (``source=attestation``,
  payer/services/member_match.py), at once, until its treatment relationship expires or
  is revoked. A later claim turns the entry into a claims entry.
"""

import calendar
import dataclasses
import datetime
import uuid

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Max, Min, Q
from django.utils import timezone

from payer.models import AttributionGroup, AttributionMember, Claim, Member, ProviderOrganization
from payer.services.access import covered_q

LOOKBACK_MONTHS = 24


@dataclasses.dataclass
class AttributionRefreshSummary:
    organizations: int = 0
    added: int = 0
    reopened: int = 0
    ended: int = 0
    unchanged: int = 0
    manual_skipped: int = 0


def _months_before(day: datetime.date, months: int) -> datetime.date:
    """Return ``day`` moved back ``months`` months (forward if negative); 31 March - 1 is 28/29 February."""
    year, month = divmod(day.year * 12 + day.month - 1 - months, 12)
    month += 1
    return datetime.date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def attribution_group_ensure(*, organization: ProviderOrganization) -> AttributionGroup:
    """Return the organization's attribution Group, creating it with an opaque FHIR id."""
    group, _ = AttributionGroup.objects.get_or_create(
        organization=organization,
        defaults={
            # Opaque: the id reveals neither the organization's NPI nor its database id.
            "fhir_id": str(uuid.uuid4()),
            "name": f"Members attributed to {organization.name}",
        },
    )
    return group


def _organization_claims(organization: ProviderOrganization):
    practitioner_npis = organization.practitioners.values("npi")
    return Claim.objects.filter(Q(rendering_npi__in=practitioner_npis) | Q(billing_npi=organization.npi))


@transaction.atomic
def _organization_refresh(
    *, organization: ProviderOrganization, today: datetime.date, summary: AttributionRefreshSummary,
    member_pks: list[int] | None = None,
) -> None:
    window_start = _months_before(today, LOOKBACK_MONTHS)
    claims = _organization_claims(organization)
    if member_pks is not None:
        claims = claims.filter(member_id__in=member_pks)
    # Per member: the first and last qualifying claim inside the look-back window.
    current = {
        row["member_id"]: row
        for row in claims.filter(service_end__gte=window_start, service_end__lte=today)
        .filter(covered_q(on=today, prefix="member__"))
        .values("member_id")
        .annotate(first=Min("service_start"), last=Max("service_end"))
    }
    group = AttributionGroup.objects.filter(organization=organization).first()
    if group is None:
        if not current:
            return
        group = attribution_group_ensure(organization=organization)
    summary.organizations += 1
    entries = AttributionMember.objects.select_for_update().filter(group=group)
    if member_pks is not None:
        entries = entries.filter(member_id__in=member_pks)
    existing = {row.member_id: row for row in entries}

    for member_id, row in current.items():
        entry = existing.get(member_id)
        if entry is None:
            AttributionMember.objects.create(
                group=group,
                member_id=member_id,
                start=row["first"],
                source=AttributionMember.Source.CLAIMS,
                reason="Claim from the organization in the last 24 months.",
                changed_by="attribution_refresh",
            )
            summary.added += 1
        elif entry.source == AttributionMember.Source.MANUAL:
            summary.manual_skipped += 1
        elif entry.source == AttributionMember.Source.ATTESTATION:
            # Claims now prove the relationship on their own, beyond the attestation's expiry.
            entry.source, entry.end = AttributionMember.Source.CLAIMS, None
            entry.start = min(entry.start, row["first"])
            entry.reason = "Claim from the organization in the last 24 months."
            entry.changed_by = "attribution_refresh"
            entry.save(update_fields=["source", "start", "end", "reason", "changed_by"])
            summary.reopened += 1
        elif entry.end is not None and entry.end < today:
            # A new treatment relationship after the old one lapsed: a new period.
            entry.start, entry.end = row["first"], None
            entry.reason = "Claim from the organization in the last 24 months."
            entry.changed_by = "attribution_refresh"
            entry.save(update_fields=["start", "end", "reason", "changed_by"])
            summary.reopened += 1
        elif entry.end is not None:
            entry.end = None
            entry.save(update_fields=["end"])
            summary.unchanged += 1
        else:
            summary.unchanged += 1

    # Claims-derived entries whose member has no qualifying claim left: end the period on
    # the last day the most recent claim was inside the look-back window.
    lapsed = [
        entry
        for member_id, entry in existing.items()
        if member_id not in current and entry.source == AttributionMember.Source.CLAIMS and entry.end is None
    ]
    if lapsed:
        last_claims = dict(
            claims.filter(member_id__in=[entry.member_id for entry in lapsed], service_end__lte=today)
            .values("member_id")
            .annotate(last=Max("service_end"))
            .values_list("member_id", "last")
        )
        yesterday = today - datetime.timedelta(days=1)
        for entry in lapsed:
            last = last_claims.get(entry.member_id)
            end = min(_months_before(last, -LOOKBACK_MONTHS), yesterday) if last else yesterday
            entry.end = max(end, entry.start)
            entry.reason = "No claim from the organization in the last 24 months."
            entry.changed_by = "attribution_refresh"
            entry.save(update_fields=["end", "reason", "changed_by"])
            summary.ended += 1


def attribution_refresh(*, today: datetime.date | None = None) -> AttributionRefreshSummary:
    """Derive every organization's attribution list from the claims system.

    Safe to run twice a day or twice at once: each organization is refreshed in one
    transaction under row locks, and (group, member) is unique in the database.
    """
    today = today or timezone.localdate()
    summary = AttributionRefreshSummary()
    for organization in ProviderOrganization.objects.order_by("pk"):
        _organization_refresh(organization=organization, today=today, summary=summary)
    return summary


def attribution_refresh_members(*, member_pks: list[int], today: datetime.date | None = None) -> AttributionRefreshSummary:
    """Refresh the attribution of ``member_pks`` only (their claims changed), leaving everyone else's alone.

    The organizations looked at are those a claim of these members names (billing, or a
    rendering practitioner) and those that have them on their list already.
    """
    today = today or timezone.localdate()
    summary = AttributionRefreshSummary()
    if not member_pks:
        return summary
    claims = Claim.objects.filter(member_id__in=member_pks)
    organizations = ProviderOrganization.objects.filter(
        Q(npi__in=claims.values("billing_npi"))
        | Q(practitioners__npi__in=claims.values("rendering_npi"))
        | Q(attribution_group__members__member_id__in=member_pks)
    ).distinct().order_by("pk")
    for organization in organizations:
        _organization_refresh(organization=organization, today=today, summary=summary, member_pks=member_pks)
    return summary


def _reason_required(reason: str) -> str:
    reason = (reason or "").strip()
    if not reason:
        raise ValidationError("A reason is required when staff change an attribution list.")
    return reason


@transaction.atomic
def attribution_member_add(
    *, group: AttributionGroup, member: Member, start: datetime.date, reason: str, changed_by: str
) -> AttributionMember:
    """Put ``member`` on ``group`` from ``start`` by hand; the claims refresh leaves it alone."""
    reason = _reason_required(reason)
    entry, _ = AttributionMember.objects.update_or_create(
        group=group,
        member=member,
        defaults={
            "start": start,
            "end": None,
            "source": AttributionMember.Source.MANUAL,
            "reason": reason,
            "changed_by": changed_by,
        },
    )
    return entry


@transaction.atomic
def attribution_member_end(
    *, group: AttributionGroup, member: Member, end: datetime.date, reason: str, changed_by: str
) -> AttributionMember:
    """End ``member``'s period on ``group`` on ``end`` (inclusive) by hand.

    The entry becomes a staff entry, so the claims refresh does not reopen it.
    """
    reason = _reason_required(reason)
    entry = AttributionMember.objects.select_for_update().filter(group=group, member=member).first()
    if entry is None:
        raise ValidationError(f"{member} is not on {group}.")
    if end < entry.start:
        raise ValidationError(f"The end date {end} is before the start date {entry.start}.")
    entry.end = end
    entry.source = AttributionMember.Source.MANUAL
    entry.reason = reason
    entry.changed_by = changed_by
    entry.save(update_fields=["end", "source", "reason", "changed_by"])
    return entry
