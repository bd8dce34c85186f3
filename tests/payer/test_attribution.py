"""Attribution lists derived from claims, staff changes, and the daily task."""

import datetime

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError

from payer.models import AttributionGroup, AttributionMember
from payer.services.attribution import (
    _months_before,
    attribution_group_ensure,
    attribution_member_add,
    attribution_member_end,
    attribution_refresh,
)
from payer.tasks import attribution_refresh_task
from tests.factories import claim_create, member_create, organization_create, practitioner_create

pytestmark = pytest.mark.django_db

TODAY = datetime.date(2025, 6, 15)
WINDOW_START = datetime.date(2023, 6, 15)  # 24 months before TODAY


@pytest.fixture
def org():
    return organization_create(name="Grace Hospital")


@pytest.fixture
def doctor(org):
    return practitioner_create(organization=org)


def _entry(org, member) -> AttributionMember | None:
    return AttributionMember.objects.filter(group__organization=org, member=member).first()


def test_claim_rendered_by_a_practitioner_attributes_the_member(org, doctor):
    member = member_create()
    claim_create(member=member, rendering_npi=doctor.npi, service_end=datetime.date(2024, 3, 1))
    claim_create(member=member, rendering_npi=doctor.npi, service_end=datetime.date(2025, 5, 1))
    summary = attribution_refresh(today=TODAY)
    entry = _entry(org, member)
    assert entry.source == AttributionMember.Source.CLAIMS
    assert entry.start == datetime.date(2024, 3, 1)  # the first qualifying claim
    assert entry.end is None
    assert summary.added == 1


def test_claim_billed_by_the_organization_attributes_the_member(org):
    member = member_create()
    claim_create(member=member, billing_npi=org.npi, service_end=datetime.date(2025, 1, 10))
    attribution_refresh(today=TODAY)
    assert _entry(org, member).start == datetime.date(2025, 1, 10)


def test_claims_older_than_24_months_or_from_other_providers_do_not_attribute(org, doctor):
    old, stranger = member_create(), member_create()
    claim_create(member=old, rendering_npi=doctor.npi, service_end=WINDOW_START - datetime.timedelta(days=1))
    other = practitioner_create(organization=organization_create())
    claim_create(member=stranger, rendering_npi=other.npi, service_end=datetime.date(2025, 5, 1))
    attribution_refresh(today=TODAY)
    assert _entry(org, old) is None
    assert _entry(org, stranger) is None
    boundary = member_create()
    claim_create(member=boundary, rendering_npi=doctor.npi, service_end=WINDOW_START)
    attribution_refresh(today=TODAY)
    assert _entry(org, boundary) is not None


def test_lapsed_member_gets_an_end_date_and_a_new_claim_reopens(org, doctor):
    member = member_create()
    claim_create(member=member, rendering_npi=doctor.npi, service_end=datetime.date(2024, 1, 1))
    attribution_refresh(today=TODAY)
    assert _entry(org, member).end is None
    # Two years and a day after the last claim the relationship has lapsed.
    later = datetime.date(2026, 1, 2)
    summary = attribution_refresh(today=later)
    entry = _entry(org, member)
    assert summary.ended == 1
    assert entry.end == datetime.date(2026, 1, 1)  # the last day the claim was in the look-back
    claim_create(member=member, rendering_npi=doctor.npi, service_end=datetime.date(2026, 2, 1))
    summary = attribution_refresh(today=datetime.date(2026, 2, 10))
    entry = _entry(org, member)
    assert summary.reopened == 1
    assert (entry.start, entry.end) == (datetime.date(2026, 2, 1), None)


def test_refresh_twice_changes_nothing(org, doctor):
    member = member_create()
    claim_create(member=member, rendering_npi=doctor.npi, service_end=datetime.date(2025, 1, 1))
    attribution_refresh(today=TODAY)
    summary = attribution_refresh(today=TODAY)
    assert (summary.added, summary.ended, summary.reopened, summary.unchanged) == (0, 0, 0, 1)
    assert AttributionMember.objects.count() == 1
    assert AttributionGroup.objects.count() == 1


def test_refresh_never_touches_staff_entries(org, doctor):
    group = attribution_group_ensure(organization=org)
    by_hand = member_create()
    attribution_member_add(
        group=group, member=by_hand, start=datetime.date(2025, 1, 1), reason="New patient letter", changed_by="ann"
    )
    ended_by_staff = member_create()
    claim_create(member=ended_by_staff, rendering_npi=doctor.npi, service_end=datetime.date(2025, 5, 1))
    attribution_refresh(today=TODAY)
    attribution_member_end(
        group=group, member=ended_by_staff, end=datetime.date(2025, 6, 1), reason="Moved away", changed_by="ann"
    )
    summary = attribution_refresh(today=TODAY)
    assert summary.manual_skipped == 1
    entry = _entry(org, ended_by_staff)
    assert (entry.source, entry.end, entry.reason, entry.changed_by) == ("manual", datetime.date(2025, 6, 1), "Moved away", "ann")
    kept = _entry(org, by_hand)
    assert (kept.source, kept.end, kept.reason) == ("manual", None, "New patient letter")


def test_staff_changes_need_a_reason_and_a_sane_end(org):
    group = attribution_group_ensure(organization=org)
    member = member_create()
    with pytest.raises(ValidationError):
        attribution_member_add(group=group, member=member, start=TODAY, reason="  ", changed_by="ann")
    attribution_member_add(group=group, member=member, start=TODAY, reason="Referral", changed_by="ann")
    with pytest.raises(ValidationError):
        attribution_member_end(group=group, member=member, end=TODAY - datetime.timedelta(days=1), reason="x", changed_by="ann")
    with pytest.raises(ValidationError):
        attribution_member_end(group=group, member=member_create(), end=TODAY, reason="x", changed_by="ann")


def test_group_ensure_is_idempotent_with_an_opaque_id(org):
    group = attribution_group_ensure(organization=org)
    assert attribution_group_ensure(organization=org) == group
    assert org.npi not in group.fhir_id and str(org.pk) != group.fhir_id
    assert AttributionGroup.objects.count() == 1


def test_months_before_clamps_to_the_end_of_month():
    assert _months_before(datetime.date(2024, 2, 29), 24) == datetime.date(2022, 2, 28)
    assert _months_before(datetime.date(2025, 3, 31), 1) == datetime.date(2025, 2, 28)
    assert _months_before(datetime.date(2024, 1, 1), -24) == datetime.date(2026, 1, 1)


def test_task_runs_the_refresh_and_is_scheduled_daily(org, doctor):
    member = member_create()
    claim_create(member=member, rendering_npi=doctor.npi)
    summary = attribution_refresh_task()
    assert summary["added"] == 1 and _entry(org, member) is not None
    entry = settings.CELERY_BEAT_SCHEDULE["attribution-refresh-daily"]
    assert entry["task"] == "payer.tasks.attribution_refresh_task"
    assert entry["schedule"] == 24 * 60 * 60
