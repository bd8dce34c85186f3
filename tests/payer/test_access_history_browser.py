"""The member access-history page (/payer/my-data/) in headless Chromium: a member sees which
provider organizations received their data, when and what kinds, from the audit trail;
a member never shared with, and one who opted out; never another member's rows.

Screenshots for the README go to docs/screenshots/access-history-*.png and
docs/screenshots/admin-shared-with.png.
"""

import pytest
import requests
from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connections
from playwright.sync_api import expect

from payer.services.opt_out import opt_out_record
from tests.browser import DOCS_SCREENSHOTS, chromium, shot
from tests.factories import (
    attribution_create,
    clinical_resource_create,
    contract_create,
    member_create,
    organization_create,
)
from tests.payer.auth_helpers import bearer_token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]
URL = "/payer/my-data/"


@pytest.fixture
def browser():
    with chromium() as launched:
        try:
            yield launched
        finally:
            connections.close_all()


@pytest.fixture(autouse=True)
def _clear_rate_limits():
    cache.clear()
    yield
    cache.clear()


def _identify(page, *, member_id: str, family: str) -> None:
    page.get_by_label("Member ID").fill(member_id)
    page.get_by_label("Month").select_option("1")
    page.get_by_label("Day").fill("1")
    page.get_by_label("Year").fill("1970")
    page.get_by_label("Last name").fill(family)
    page.get_by_role("button", name="Continue").click()


def _search(live_server, token: str, path: str) -> None:
    response = requests.get(f"{live_server.url}/payer/fhir/{path}", timeout=10,
                            headers={"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"})
    assert response.status_code == 200, response.text


def test_members_see_who_received_their_data_in_a_real_browser(live_server, browser):
    grace = organization_create(name="Grace Hospital")
    oakview = organization_create(name="Oakview Family Practice")
    for organization in (grace, oakview):
        contract_create(organization=organization)
    jack = member_create(family="Shaw", given="Jack", member_id="UCH300000001")
    bob = member_create(family="Stone", given="Bob", member_id="UCH300000002")
    jane = member_create(family="Doe", given="Jane", member_id="UCH300000003")
    oscar = member_create(family="Price", given="Oscar", member_id="UCH300000004")
    attribution_create(organization=grace, member=jack)
    attribution_create(organization=grace, member=oscar)
    attribution_create(organization=oakview, member=bob)
    attribution_create(organization=oakview, member=jane)
    for member in (jack, bob, oscar):
        clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id)
        clinical_resource_create(resource_type="Condition", patient_id=member.patient_id)
    # Real requests over HTTP: the FHIR views write the audit rows the page reads.
    grace_token, oak_token = bearer_token_for(grace), bearer_token_for(oakview)
    _search(live_server, grace_token, f"Encounter?patient={jack.patient_id}")
    _search(live_server, grace_token, f"Condition?patient={jack.patient_id}")
    _search(live_server, oak_token, f"Encounter?patient={bob.patient_id}")
    _search(live_server, grace_token, f"Encounter?patient={oscar.patient_id}")
    opt_out_record(member=oscar, opted_out=True, channel="web", changed_by="member")

    page = browser.new_page(viewport={"width": 1280, "height": 900})
    # Reached from the opt-out page, which promises a record of every time providers ask.
    page.goto(f"{live_server.url}/payer/opt-out/")
    page.get_by_role("link", name="see who received your information").click()
    page.wait_for_url(f"{live_server.url}{URL}")
    expect(page.get_by_role("heading", level=1)).to_have_text("Who received your health information")
    shot(page, "access-history-1-start", directory=DOCS_SCREENSHOTS)

    # Jack: Grace Hospital, with visits and diagnoses; not Oakview (that was Bob's data).
    _identify(page, member_id="UCH300000001", family="Shaw")
    table = page.locator("#shared-with")
    expect(table).to_contain_text("Grace Hospital")
    expect(table).to_contain_text("diagnoses and health problems, visits")
    expect(table).not_to_contain_text("Oakview")
    expect(page.locator("#current-choice")).to_contain_text("Sharing is on")
    expect(page.get_by_role("link", name="opt out")).to_have_attribute("href", "/payer/opt-out/")
    assert "UCH300000001" not in page.content()
    shot(page, "access-history-2-shared", directory=DOCS_SCREENSHOTS)
    page.get_by_role("button", name="I am done (remove my details from this page)").click()

    # Jane: attributed to Oakview but nothing was ever sent.
    _identify(page, member_id="UCH300000003", family="Doe")
    expect(page.locator("#never-shared")).to_have_text("No provider has received your health information from us.")
    assert page.locator("#shared-with").count() == 0
    shot(page, "access-history-3-never-shared", directory=DOCS_SCREENSHOTS)
    page.get_by_role("button", name="I am done (remove my details from this page)").click()

    # Oscar opted out after Grace read his visits: the page says sharing is off and still
    # shows what was received before.
    _identify(page, member_id="UCH300000004", family="price")
    expect(page.locator("#current-choice")).to_contain_text("You have opted out")
    expect(page.locator("#shared-with")).to_contain_text("Grace Hospital")
    expect(page.get_by_role("link", name="opt back in")).to_have_attribute("href", "/payer/opt-out/")
    shot(page, "access-history-4-opted-out", directory=DOCS_SCREENSHOTS)
    page.get_by_role("button", name="I am done (remove my details from this page)").click()

    # Payer staff: the member's admin page answers "which providers got Jack's data and when".
    get_user_model().objects.create_superuser("staff", password="staff-pass-123")
    page.goto(f"{live_server.url}/admin/login/?next=/admin/payer/member/{jack.pk}/change/")
    page.get_by_label("Username").fill("staff")
    page.get_by_label("Password").fill("staff-pass-123")
    page.get_by_role("button", name="Log in").click()
    shared = page.locator("table.shared-with")
    expect(shared).to_contain_text("Grace Hospital")
    expect(shared).not_to_contain_text("Oakview")
    shared.scroll_into_view_if_needed()
    shot(page, "admin-shared-with", directory=DOCS_SCREENSHOTS)
