"""Member opt-out: the service, the member page (Django test client) and the staff admin."""

import datetime
import re

import pytest
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.test import Client
from django.urls import reverse

from payer.models import AttributionMember, AuditEvent, Member, OptOutEvent, ProviderOrganization
from payer.services.attribution import attribution_group_ensure
from payer.services.opt_out import member_identify, opt_out_record
from payer.views.pages import LOCKED_MESSAGE, NO_MATCH_MESSAGE
from tests.factories import claim_create, contract_create, member_create, organization_create, practitioner_create

pytestmark = pytest.mark.django_db

URL = "/payer/opt-out/"


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    # The failure counters live in the cache, which outlives a test.
    cache.clear()
    yield
    cache.clear()


def member_make(**overrides) -> Member:
    return member_create(**{"member_id": "UCH1000001", "family": "Shaw", "given": "Jack", **overrides})


def identify_data(**overrides) -> dict:
    data = {
        "step": "identify",
        "member_id": "UCH1000001",
        "birth_month": "1",
        "birth_day": "1",
        "birth_year": "1970",
        "family": "Shaw",
    }
    data.update(overrides)
    return data


def error_summary(html: str) -> str:
    match = re.search(r'<div class="pa-notice pa-notice--error".*?</div>', html, re.S)
    assert match, "no error summary on the page"
    return match.group(0)


# --- service ----------------------------------------------------------------------------


def test_opt_out_record_changes_state_and_keeps_history():
    member = member_make()

    first = opt_out_record(member=member, opted_out=True, channel="web", changed_by="member")
    member.refresh_from_db()
    assert member.opted_out is True
    second = opt_out_record(member=member, opted_out=False, channel="phone", changed_by="alice", note="call 42")
    member.refresh_from_db()
    assert member.opted_out is False

    history = list(member.opt_out_events.all())
    assert [e.pk for e in history] == [second.pk, first.pk]  # newest first, nothing overwritten
    assert [(e.opted_out, e.channel, e.changed_by, e.note) for e in history] == [
        (False, "phone", "alice", "call 42"),
        (True, "web", "member", ""),
    ]


def test_opt_out_record_same_state_is_recorded_as_a_confirmation():
    member = member_make()
    opt_out_record(member=member, opted_out=True, channel="web", changed_by="member")
    opt_out_record(member=member, opted_out=True, channel="mail", changed_by="bob", note="letter confirms")
    member.refresh_from_db()
    assert member.opted_out is True
    assert member.opt_out_events.count() == 2


def test_opt_out_record_refuses_unknown_channel_without_writing():
    member = member_make()
    with pytest.raises(ValueError):
        opt_out_record(member=member, opted_out=True, channel="carrier-pigeon", changed_by="member")
    member.refresh_from_db()
    assert member.opted_out is False
    assert not OptOutEvent.objects.exists()


def test_member_identify_matches_only_all_three():
    member = member_make()
    dob = datetime.date(1970, 1, 1)
    assert member_identify(member_id="UCH1000001", birth_date=dob, family="Shaw") == member
    # Last name: case-insensitive, surrounding spaces ignored. Member id: case-insensitive.
    assert member_identify(member_id=" uch1000001 ", birth_date=dob, family="  sHAW ") == member
    assert member_identify(member_id="UCH1000001", birth_date=datetime.date(1970, 1, 2), family="Shaw") is None
    assert member_identify(member_id="UCH1000001", birth_date=dob, family="Shore") is None
    assert member_identify(member_id="UCH9999999", birth_date=dob, family="Shaw") is None
    assert member_identify(member_id="", birth_date=dob, family="Shaw") is None


# --- member page ------------------------------------------------------------------------


def test_page_explains_in_plain_language():
    response = Client().get(URL)
    assert response.status_code == 200
    html = response.content.decode()
    for phrase in [
        "What we share",
        "Claims",
        "Visits",
        "Prior approvals",
        "We do not share cost information",
        "in our network",
        "treat you",
        "Why it helps you",
        "opt back in",
        "does not change",
        'href="/static/payer/site.css"',
        "<legend",
        'aria-live="polite"',
    ]:
        assert phrase in html, phrase
    assert "cdn" not in html.lower()


def test_identify_then_see_current_choice_kept_in_session_only():
    member = member_make()
    client = Client()
    response = client.post(URL, identify_data(family="SHAW"))
    assert response.status_code == 302
    assert client.session["payer_opt_out_member"] == member.pk

    html = client.get(URL).content.decode()
    assert "Sharing is on" in html
    assert 'name="choice"' in html
    # The member's identity is never in a hidden field of the choice form.
    hidden = re.findall(r'<input type="hidden" name="([^"]+)"', html)
    assert set(hidden) <= {"csrfmiddlewaretoken", "step"}
    assert "UCH1000001" not in html


def test_wrong_id_dob_or_name_get_the_same_answer():
    member_make()
    answers = []
    for data in [
        identify_data(member_id="UCH0000000"),
        identify_data(birth_day="2"),
        identify_data(family="Shore"),
    ]:
        client = Client()
        response = client.post(URL, data)
        assert response.status_code == 400
        assert "payer_opt_out_member" not in client.session
        answers.append(error_summary(response.content.decode()))
    assert NO_MATCH_MESSAGE in answers[0]
    assert answers[0] == answers[1] == answers[2]
    assert AuditEvent.objects.filter(action="opt-out-identify", outcome="denied").count() == 3


def test_invalid_form_shows_field_errors_with_links():
    client = Client()
    response = client.post(URL, identify_data(birth_month="2", birth_day="30", family=""))
    assert response.status_code == 400
    html = response.content.decode()
    assert "That date does not exist" in html
    assert "Enter your last name." in html
    assert 'aria-invalid="true"' in html
    assert 'href="#id_family"' in html


def test_csrf_is_required():
    member = member_make()
    client = Client(enforce_csrf_checks=True)
    assert client.post(URL, identify_data()).status_code == 403

    client.get(URL)
    token = client.cookies["csrftoken"].value
    response = client.post(URL, {**identify_data(), "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    token = client.cookies["csrftoken"].value
    assert client.post(URL, {"step": "choose", "choice": "opt_out"}).status_code == 403
    member.refresh_from_db()
    assert member.opted_out is False
    response = client.post(URL, {"step": "choose", "choice": "opt_out", "csrfmiddlewaretoken": token})
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.opted_out is True


def test_member_opts_out_and_back_in_with_history_and_audit():
    member = member_make()
    client = Client()
    client.post(URL, identify_data())

    response = client.post(URL, {"step": "choose", "choice": "opt_out"}, follow=True)
    html = response.content.decode()
    assert "Your choice is saved: you have opted out" in html
    assert "You have opted out." in html
    member.refresh_from_db()
    assert member.opted_out is True

    response = client.post(URL, {"step": "choose", "choice": "share"}, follow=True)
    assert "Your choice is saved: sharing is on" in response.content.decode()
    member.refresh_from_db()
    assert member.opted_out is False

    events = list(member.opt_out_events.all())
    assert [(e.opted_out, e.channel, e.changed_by) for e in events] == [(False, "web", "member"), (True, "web", "member")]
    audits = AuditEvent.objects.filter(action="opt-out", outcome="success").order_by("id")
    assert [a.patient_ids for a in audits] == [[member.patient_id], [member.patient_id]]
    assert all(a.request_path.startswith(URL) for a in audits)


def test_choose_without_identification_changes_nothing():
    member = member_make()
    response = Client().post(URL, {"step": "choose", "choice": "opt_out"})
    assert response.status_code == 400
    assert "we need to check who you are again" in response.content.decode()
    member.refresh_from_db()
    assert member.opted_out is False
    assert not OptOutEvent.objects.exists()


def test_choice_is_required():
    member_make()
    client = Client()
    client.post(URL, identify_data())
    response = client.post(URL, {"step": "choose"})
    assert response.status_code == 400
    assert "Choose one of the two options." in response.content.decode()
    assert not OptOutEvent.objects.exists()


def test_done_forgets_the_member():
    member_make()
    client = Client()
    client.post(URL, identify_data())
    response = client.post(URL, {"step": "forget"}, follow=True)
    assert "payer_opt_out_member" not in client.session
    assert "We have removed your details" in response.content.decode()
    assert client.post(URL, {"step": "choose", "choice": "opt_out"}).status_code == 400


def test_repeated_failures_lock_the_form_even_for_right_details():
    member_make()
    client = Client()
    for _ in range(5):
        assert client.post(URL, identify_data(family="Wrong")).status_code == 400
    response = client.post(URL, identify_data())
    assert response.status_code == 429
    assert LOCKED_MESSAGE in response.content.decode()
    assert "payer_opt_out_member" not in client.session

    # A fresh session from the same address still counts against the address limit.
    fresh = Client()
    for _ in range(15):
        fresh.cookies.clear()
        fresh.post(URL, identify_data(family="Wrong"))
    fresh.cookies.clear()
    assert fresh.post(URL, identify_data()).status_code == 429


def test_identified_session_expires():
    member_make()
    client = Client()
    client.post(URL, identify_data())
    session = client.session
    session["payer_opt_out_identified_at"] -= 16 * 60
    session.save()
    html = client.get(URL).content.decode()
    assert "Sharing is on" not in html
    assert 'name="member_id"' in html


def test_providers_page():
    response = Client().get("/payer/providers/")
    assert response.status_code == 200
    html = response.content.decode()
    # Providers are told what they do, never the payer's own commands.
    assert "manage.py" not in html and "register_client" not in html
    for phrase in [
        "openssl genpkey",
        '"kty": "RSA", "kid": "provider-access-2026"',
        "POST [base]/Group/$provider-member-match",
        "MemberPatient", "CoverageToMatch", "MatchedMembers",
        "POST [base]/Group/{id}/$davinci-data-export",
        "<strong>POST only</strong>",
        "Files expire <strong>24 hours</strong>",
        "application/fhir+json",
        "Retry-After",
        "JWKS",
        "system/*.read",
        "system/*.rs",
        "http://testserver/payer/auth/token",
        "http://testserver/payer/fhir/.well-known/smart-configuration",
        'href="http://testserver/payer/fhir/metadata"',
        "Patient/$export",
        "last 24 months",
        "Ask for a correction",
    ]:
        assert phrase in html, phrase


# --- staff admin ------------------------------------------------------------------------


@pytest.fixture
def staff_client() -> Client:
    user = get_user_model().objects.create_superuser("alice", "alice@unitedcare.example", "pw-alice-123")
    client = Client()
    client.force_login(user)
    return client


def test_admin_opt_out_action_asks_then_records_with_staff_user(staff_client):
    member = member_make()
    other = member_make(member_id="UCH1000002", family="Lee", given="Ann")
    changelist = reverse("admin:payer_member_changelist")
    selection = {"action": "opt_out_action", "_selected_action": [member.pk, other.pk]}

    # First the intermediate page with the note; nothing is recorded yet.
    response = staff_client.post(changelist, selection)
    assert response.status_code == 200
    assert b"Opt out of provider data sharing" in response.content
    assert not OptOutEvent.objects.exists()

    response = staff_client.post(changelist, {**selection, "apply": "1", "channel": "phone", "note": "call ref 7"})
    assert response.status_code == 302
    for m in (member, other):
        m.refresh_from_db()
        assert m.opted_out is True
        event = m.opt_out_events.get()
        assert (event.channel, event.changed_by, event.note) == ("phone", "alice", "call ref 7")

    response = staff_client.post(
        changelist, {"action": "opt_in_action", "_selected_action": [member.pk], "apply": "1", "channel": "admin", "note": ""}
    )
    assert response.status_code == 302
    member.refresh_from_db()
    assert member.opted_out is False
    assert [(e.opted_out, e.channel, e.changed_by) for e in member.opt_out_events.all()] == [
        (False, "admin", "alice"),
        (True, "phone", "alice"),
    ]

    audit = AuditEvent.objects.filter(action="opt-out", outcome="success").order_by("id").first()
    assert audit.patient_ids == sorted([member.patient_id, other.patient_id])
    assert "alice" in audit.detail

    # The change page shows the history and does not let staff edit the flag directly.
    page = staff_client.get(reverse("admin:payer_member_change", args=[member.pk])).content.decode()
    assert 'name="opted_out"' not in page
    assert "call ref 7" in page


def test_admin_member_change_cannot_set_opted_out(staff_client):
    member = member_make()
    url = reverse("admin:payer_member_change", args=[member.pk])
    data = {
        "member_id": member.member_id,
        "patient_id": member.patient_id,
        "family": "Shaw",
        "given": "Jack",
        "birth_date": "1970-01-01",
        "gender": "male",
        "opted_out": "on",
        "opt_out_events-TOTAL_FORMS": "0",
        "opt_out_events-INITIAL_FORMS": "0",
    }
    response = staff_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:2000]
    member.refresh_from_db()
    assert member.opted_out is False


def test_opt_out_event_admin_is_read_only(staff_client):
    member = member_make()
    event = opt_out_record(member=member, opted_out=True, channel="web", changed_by="member")
    assert staff_client.get(reverse("admin:payer_optoutevent_changelist")).status_code == 200
    assert staff_client.get(reverse("admin:payer_optoutevent_add")).status_code == 403
    assert staff_client.post(reverse("admin:payer_optoutevent_delete", args=[event.pk]), {"post": "yes"}).status_code == 403
    assert OptOutEvent.objects.filter(pk=event.pk).exists()


def _organization() -> ProviderOrganization:
    organization = organization_create(name="Grace Hospital")
    contract_create(organization=organization)
    return organization


def test_admin_attribution_add_end_and_refresh(staff_client):
    member = member_make()
    organization = _organization()
    group = attribution_group_ensure(organization=organization)
    changelist = reverse("admin:payer_attributiongroup_changelist")

    response = staff_client.post(
        changelist,
        {"action": "member_add_action", "_selected_action": [group.pk], "apply": "1",
         "member_id": "uch1000001", "start": "2025-06-01", "reason": ""},
    )
    assert response.status_code == 200  # the reason is required: the form comes back
    assert not AttributionMember.objects.exists()

    response = staff_client.post(
        changelist,
        {"action": "member_add_action", "_selected_action": [group.pk], "apply": "1",
         "member_id": "uch1000001", "start": "2025-06-01", "reason": "New patient, visit on 2025-06-20"},
    )
    assert response.status_code == 302
    entry = AttributionMember.objects.get(group=group, member=member)
    assert (entry.source, entry.changed_by, entry.start, entry.end) == ("manual", "alice", datetime.date(2025, 6, 1), None)

    response = staff_client.post(
        changelist,
        {"action": "member_end_action", "_selected_action": [group.pk], "apply": "1",
         "member_id": "UCH1000001", "end": "2025-07-01", "reason": "Moved out of state"},
    )
    assert response.status_code == 302
    entry.refresh_from_db()
    assert (entry.end, entry.reason, entry.changed_by) == (datetime.date(2025, 7, 1), "Moved out of state", "alice")

    # The group page lists its members read-only.
    page = staff_client.get(reverse("admin:payer_attributiongroup_change", args=[group.pk])).content.decode()
    assert "Moved out of state" in page
    assert 'name="members-0-reason"' not in page

    # Refresh from claims: a claim rendered by the organization's practitioner attributes the member.
    practitioner = practitioner_create(organization=organization)
    other = member_make(member_id="UCH1000002", family="Lee", given="Ann")
    claim_create(member=other, rendering_npi=practitioner.npi)
    response = staff_client.post(changelist, {"action": "refresh_action", "_selected_action": [group.pk]}, follow=True)
    assert "Refreshed 1 list(s) from claims: 1 added" in response.content.decode()
    assert AttributionMember.objects.get(group=group, member=other).source == "claims"


def test_admin_attribution_end_unknown_entry_reports_error(staff_client):
    member_make()
    group = attribution_group_ensure(organization=_organization())
    response = staff_client.post(
        reverse("admin:payer_attributiongroup_changelist"),
        {"action": "member_end_action", "_selected_action": [group.pk], "apply": "1",
         "member_id": "UCH1000001", "end": "2025-07-01", "reason": "Not a patient"},
        follow=True,
    )
    assert response.status_code == 200
    assert "is not on" in response.content.decode()
    assert not AttributionMember.objects.exists()



def test_admin_refresh_button_builds_lists_on_a_fresh_system(staff_client):
    organization = _organization()
    practitioner = practitioner_create(organization=organization)
    member = member_make()
    claim_create(member=member, rendering_npi=practitioner.npi)
    changelist = reverse("admin:payer_attributiongroup_changelist")
    assert "Refresh all lists from claims" in staff_client.get(changelist).content.decode()

    assert staff_client.get(reverse("admin:payer_attributiongroup_refresh")).status_code == 405
    response = staff_client.post(reverse("admin:payer_attributiongroup_refresh"), follow=True)
    assert "Refreshed 1 list(s) from claims: 1 added" in response.content.decode()
    assert AttributionMember.objects.get(group__organization=organization, member=member).source == "claims"
