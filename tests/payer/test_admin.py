"""Payer staff's admin pages: histories and the audit trail are shown, never edited."""

import pytest
from django.contrib.auth import get_user_model

from payer.models import AuditEvent, OptOutEvent
from payer.services.attribution import attribution_group_ensure
from tests.factories import attribution_create, member_create, opt_out_create, organization_create

pytestmark = pytest.mark.django_db


@pytest.fixture
def staff_client(client):
    client.force_login(get_user_model().objects.create_superuser("staff", "staff@example.org", "pw-staff-123"))
    return client


def test_member_page_shows_the_opt_out_history_read_only(staff_client):
    member = member_create(member_id="UC-ADMIN-1")
    opt_out_create(member=member, opted_out=True, channel="phone")

    page = staff_client.get(f"/admin/payer/member/{member.pk}/change/").content.decode()

    assert "Phone call to member services" in page and 'name="opt_out_events-TOTAL_FORMS"' in page
    assert 'name="opt_out_events-0-channel"' not in page  # shown, not an editable field
    assert "opt_out_events-__prefix__" not in page  # no "add another" row


def test_attribution_group_page_lists_members_read_only(staff_client):
    organization = organization_create(name="Grace Hospital")
    member = member_create(family="Shaw", member_id="UC-ADMIN-2")
    attribution_create(organization=organization, member=member)
    group = attribution_group_ensure(organization=organization)

    page = staff_client.get(f"/admin/payer/attributiongroup/{group.pk}/change/").content.decode()

    assert "UC-ADMIN-2" in page and 'name="members-TOTAL_FORMS"' in page
    assert 'name="members-0-start"' not in page


@pytest.mark.parametrize("model", [AuditEvent, OptOutEvent])
def test_audit_trail_and_history_cannot_be_added_changed_or_deleted(staff_client, model):
    member = member_create(member_id="UC-ADMIN-3")
    opt_out_create(member=member)
    AuditEvent.objects.create(action="read", outcome="success", client_id="c1")
    row = model.objects.first()
    base = f"/admin/payer/{model._meta.model_name}/"

    assert staff_client.get(base).status_code == 200
    assert staff_client.get(f"{base}add/").status_code == 403
    assert staff_client.post(f"{base}{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert model.objects.filter(pk=row.pk).exists()
    change = staff_client.post(f"{base}{row.pk}/change/", {}).status_code
    assert change == 403
