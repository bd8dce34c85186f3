"""The opt-out page in a real headless Chromium: a member opts out and the payer FHIR API
stops releasing their data at once; then they opt back in.

Screenshots go to var/screenshots/opt-out-*.png.
"""

import pytest
import requests
from django.core.cache import cache
from django.db import connections
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.group import Group
from playwright.sync_api import expect

from payer.models import Member, OptOutEvent
from payer.services.access import member_visible, visible_patient_ids
from tests.factories import (
    attribution_create,
    clinical_resource_create,
    contract_create,
    member_create,
    organization_create,
)
from tests.browser import chromium, shot
from tests.payer.auth_helpers import bearer_token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def browser():
    with chromium() as launched:
        try:
            yield launched
        finally:
            # Connections opened by the test body while Playwright's loop was set are
            # not the ones pytest-django closes at teardown (asgiref locals follow the
            # context): close them here so the test database can be dropped.
            connections.close_all()


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    cache.clear()
    yield
    cache.clear()


def _fhir_get(live_server, token: str, path: str) -> requests.Response:
    return requests.get(
        f"{live_server.url}/payer/fhir/{path}",
        headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"},
        timeout=10,
    )


def _encounter_ids(live_server, token: str, patient_id: str) -> list[str]:
    response = _fhir_get(live_server, token, f"Encounter?patient={patient_id}")
    assert response.status_code == 200, response.text
    bundle = Bundle.model_validate(response.json())
    return [entry.resource.id for entry in bundle.entry or []]


def _group_patients(live_server, token: str, group_id: str) -> list[str]:
    response = _fhir_get(live_server, token, f"Group/{group_id}")
    assert response.status_code == 200, response.text
    group = Group.model_validate(response.json())
    return [m.entity.reference for m in group.member or []]


def _shot(page, name: str) -> None:
    shot(page, f"opt-out-{name}")


def _identify(page, *, member_id: str, family: str) -> None:
    page.get_by_label("Member ID").fill(member_id)
    page.get_by_label("Month").select_option("1")
    page.get_by_label("Day").fill("1")
    page.get_by_label("Year").fill("1970")
    page.get_by_label("Last name").fill(family)
    page.get_by_role("button", name="Continue").click()


def test_member_opts_out_in_a_real_browser_and_data_stops_at_once(live_server, browser):
    organization = organization_create(name="Grace Hospital")
    contract_create(organization=organization)
    jack = member_create(family="Shaw", given="Jack", member_id="UCH2024001")
    attribution_create(organization=organization, member=jack)
    encounter = clinical_resource_create(resource_type="Encounter", patient_id=jack.patient_id)
    group_id = organization.attribution_group.fhir_id
    token = bearer_token_for(organization)

    # Before: Grace Hospital sees Jack's encounter and Jack on its attribution list.
    assert _encounter_ids(live_server, token, jack.patient_id) == [encounter.resource_id]
    assert _group_patients(live_server, token, group_id) == [f"Patient/{jack.patient_id}"]
    # An export that is already running checks each batch just before writing it.
    assert visible_patient_ids(organization=organization, patient_ids=[jack.patient_id]) == {jack.patient_id}

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/payer/opt-out/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Sharing your health information with your doctors")
    # The stylesheet is served locally (no CDN) and applied.
    assert page.evaluate("getComputedStyle(document.querySelector('.pa-button')).backgroundColor") == "rgb(11, 92, 173)"
    _shot(page, "1-start")

    # Wrong last name: the same message as for an unknown member id, and focus moves to it.
    _identify(page, member_id="UCH2024001", family="Shore")
    summary = page.locator("#error-summary")
    expect(summary).to_contain_text("We could not find a member with that information")
    expect(summary).to_be_focused()
    _shot(page, "2-error")
    wrong_name_text = summary.inner_text()
    _identify(page, member_id="UCH0000000", family="Shaw")
    assert page.locator("#error-summary").inner_text() == wrong_name_text

    _identify(page, member_id="UCH2024001", family="shaw")
    expect(page.locator("#current-choice")).to_contain_text("Sharing is on")
    expect(page.get_by_label("Yes, share my health information with my providers")).to_be_checked()
    # Identification lives in the server session, not in the page.
    assert "UCH2024001" not in page.content()
    _shot(page, "3-identified")

    page.get_by_label("No, do not share my health information with my providers (opt out)").check()
    page.get_by_role("button", name="Save my choice").click()
    expect(page.locator("#confirmation")).to_contain_text("Your choice is saved: you have opted out")
    expect(page.locator("#current-choice")).to_contain_text("You have opted out")
    _shot(page, "4-opted-out")

    # After: the opt-out took effect the moment it was saved, for the next request and for
    # the running export's next batch.
    jack.refresh_from_db()
    assert jack.opted_out is True
    assert OptOutEvent.objects.filter(member=jack, opted_out=True, channel="web", changed_by="member").count() == 1
    assert member_visible(organization=organization, patient_id=jack.patient_id) is False
    assert visible_patient_ids(organization=organization, patient_ids=[jack.patient_id]) == set()
    assert _encounter_ids(live_server, token, jack.patient_id) == []
    assert _fhir_get(live_server, token, f"Encounter/{encounter.resource_id}").status_code == 404
    assert _group_patients(live_server, token, group_id) == []

    # Opt back in: the data is released again.
    page.get_by_label("Yes, share my health information with my providers").check()
    page.get_by_role("button", name="Save my choice").click()
    expect(page.locator("#confirmation")).to_contain_text("Your choice is saved: sharing is on")
    _shot(page, "5-opted-in")
    assert Member.objects.get(pk=jack.pk).opted_out is False
    assert _encounter_ids(live_server, token, jack.patient_id) == [encounter.resource_id]
    assert [e.opted_out for e in OptOutEvent.objects.filter(member=jack)] == [False, True]

    # Done: the session forgets the member.
    page.get_by_role("button", name="I am done").click()
    expect(page.locator("#confirmation")).to_contain_text("We have removed your details")
    expect(page.get_by_label("Member ID")).to_be_visible()


def test_opt_out_page_on_a_phone_and_providers_page(live_server, browser):
    member_create(family="Shaw", given="Jack", member_id="UCH2024002")
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=1, is_mobile=True)
    page = context.new_page()
    page.goto(f"{live_server.url}/payer/opt-out/")
    # Nothing wider than the screen on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= 390
    _shot(page, "6-phone")
    _identify(page, member_id="UCH2024002", family="Shaw")
    expect(page.locator("#current-choice")).to_contain_text("Sharing is on")
    _shot(page, "7-phone-identified")
    context.close()

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(f"{live_server.url}/payer/providers/")
    expect(page.get_by_role("heading", level=1)).to_contain_text("Getting your patients' health history")
    page.get_by_role("link", name="Read our CapabilityStatement (FHIR metadata) →").click()
    page.wait_for_url(f"{live_server.url}/payer/fhir/metadata")
    page.goto(f"{live_server.url}/payer/providers/")
    _shot(page, "8-providers")
