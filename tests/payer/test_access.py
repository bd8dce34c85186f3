"""The access policy: in network, attributed, not opted out, re-read on every call."""

import datetime

import pytest
from django.utils import timezone

from payer.models import ClinicalResource
from payer.services.access import member_visible, organization_in_network, visible_members, visible_patient_ids
from tests.factories import (
    attribution_create,
    clinical_resource_create,
    contract_create,
    member_create,
    opt_out_create,
    organization_create,
)

pytestmark = pytest.mark.django_db

TODAY = datetime.date(2025, 6, 15)


def _day(delta: int) -> datetime.date:
    return timezone.localdate() + datetime.timedelta(days=delta)


def test_in_network_only_while_a_contract_covers_the_day():
    org = organization_create()
    assert not organization_in_network(organization=org)
    contract_create(organization=org, start=datetime.date(2025, 1, 1), end=datetime.date(2025, 6, 30))
    assert organization_in_network(organization=org, on=TODAY)
    assert organization_in_network(organization=org, on=datetime.date(2025, 6, 30))  # end is inclusive
    assert not organization_in_network(organization=org, on=datetime.date(2025, 7, 1))
    assert not organization_in_network(organization=org, on=datetime.date(2024, 12, 31))
    contract_create(organization=org, start=datetime.date(2025, 7, 1))  # open-ended renewal
    assert organization_in_network(organization=org, on=datetime.date(2030, 1, 1))


def test_visible_members_needs_contract_attribution_and_no_opt_out():
    org, other = organization_create(), organization_create()
    contract_create(organization=org)
    contract_create(organization=other)
    attributed = member_create()
    attribution_create(organization=org, member=attributed)
    not_attributed = member_create()
    elsewhere = member_create()
    attribution_create(organization=other, member=elsewhere)
    opted_out = member_create()
    attribution_create(organization=org, member=opted_out)
    opt_out_create(member=opted_out)
    ended = member_create()
    attribution_create(organization=org, member=ended, start=_day(-100), end=_day(-1))
    future = member_create()
    attribution_create(organization=org, member=future, start=_day(+5))

    assert list(visible_members(organization=org)) == [attributed]
    assert list(visible_members(organization=other)) == [elsewhere]
    for member in (not_attributed, elsewhere, opted_out, ended, future):
        assert not member_visible(organization=org, patient_id=member.patient_id)
    assert member_visible(organization=org, patient_id=attributed.patient_id)
    assert not member_visible(organization=org, patient_id="")


def test_contract_ended_hides_every_member():
    org = organization_create()
    contract = contract_create(organization=org, start=_day(-400), end=_day(-1))
    member = member_create()
    attribution_create(organization=org, member=member)
    assert not member_visible(organization=org, patient_id=member.patient_id)
    assert visible_patient_ids(organization=org, patient_ids=[member.patient_id]) == set()
    contract.end = None
    contract.save()
    assert member_visible(organization=org, patient_id=member.patient_id)


def test_opt_out_applies_at_the_next_call_and_opt_in_restores():
    org = organization_create()
    contract_create(organization=org)
    member = member_create()
    attribution_create(organization=org, member=member)
    assert member_visible(organization=org, patient_id=member.patient_id)
    opt_out_create(member=member, opted_out=True)
    assert not member_visible(organization=org, patient_id=member.patient_id)
    opt_out_create(member=member, opted_out=False)
    assert member_visible(organization=org, patient_id=member.patient_id)


def test_visible_patient_ids_filters_large_batches():
    org = organization_create()
    contract_create(organization=org)
    members = [member_create() for _ in range(3)]
    for member in members[:2]:
        attribution_create(organization=org, member=member)
    # More ids than one IN (...) batch, with unknown ids, duplicates and blanks mixed in.
    wanted = [f"unknown-{i}" for i in range(1200)] + [m.patient_id for m in members] * 2 + [""]
    assert visible_patient_ids(organization=org, patient_ids=wanted) == {members[0].patient_id, members[1].patient_id}


def test_visible_members_is_one_query_usable_as_a_subquery(django_assert_num_queries):
    org = organization_create()
    contract_create(organization=org)
    seen, unseen = member_create(), member_create()
    attribution_create(organization=org, member=seen)
    clinical_resource_create(resource_type="Encounter", patient_id=seen.patient_id)
    clinical_resource_create(resource_type="Encounter", patient_id=unseen.patient_id)
    with django_assert_num_queries(1):
        rows = list(
            ClinicalResource.objects.filter(
                resource_type="Encounter", patient_id__in=visible_members(organization=org).values("patient_id")
            )
        )
    assert [row.patient_id for row in rows] == [seen.patient_id]
