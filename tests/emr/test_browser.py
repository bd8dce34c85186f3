"""The EMR in real headless Chromium over a live server, on history already in the local store."""

import pytest

from provider.models import PayerConnection
from tests import factories
from tests.browser import chromium, login, shot
from tests.emr.history_data import ENCOUNTERS, FACILITIES, history_store

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


def test_clinician_reads_the_history_in_the_browser(live_server):
    connection = PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="http://payer.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1", organization_npi="1234567893",
    )
    factories.clinician_create(username="jsmith", password="grace-demo")
    history_store(connection=connection, patient_id="pat-jack", member_id="UCH100000001")
    jack = factories.hospital_patient_create(insurer=connection, member_id="UCH100000001", payer_patient_id="pat-jack",
                                             mrn="GH-100231")
    factories.hospital_patient_create(family="Gonzalez", given="Maria", insurer=connection, member_id="UCH100000003")

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{live_server.url}/emr/")
        shot(page, "local-01-login")
        login(page, live_server.url, username="jsmith", password="grace-demo")
        shot(page, "local-02-patients")

        page.get_by_label("Name or MRN").fill("shaw")
        page.get_by_role("button", name="Search").click()
        page.get_by_role("link", name="Shaw, Jack").click()
        page.wait_for_url(f"{live_server.url}/emr/patients/{jack.pk}/")

        # The summary opens first; the encounters are a tab away.
        assert page.get_by_role("tab", name="Summary").get_attribute("aria-selected") == "true"
        page.get_by_role("tab", name="Encounters").click()
        # Timeline: a dot per encounter, a row per facility; table: a row per encounter.
        assert page.locator("svg.timeline a[data-encounter]").count() == len(ENCOUNTERS)
        assert page.locator("svg.timeline text.facility").count() == len(FACILITIES)
        table = page.locator("#encounters-table tbody tr")
        assert table.count() == len(ENCOUNTERS)
        shot(page, "local-03-patient-history")

        # Sorting by date ascending puts the oldest first; filtering by facility narrows the rows.
        page.get_by_role("button", name="Date").click()
        assert "Mar 14, 2018" in table.first.inner_text()
        # Filtering by facility (on the server, the panel swapped in without a reload) narrows the rows.
        page.evaluate("window.__noReload = true")
        page.locator("#panel-encounters").get_by_text("Filter encounters by date").click()
        page.locator("#panel-encounters").get_by_label("Facility", exact=True).select_option("Lakeview Cardiology Clinic")
        page.locator("#panel-encounters").get_by_role("button", name="Apply").click()
        page.wait_for_function("document.querySelector('#panel-encounters [data-result-count]').textContent.includes('matching')")
        assert page.locator("#encounters-table tbody tr").count() == 2
        assert "Encounters 1–2 of 2 matching (of 7 in all)" in page.locator("#panel-encounters [data-result-count]").inner_text()
        assert page.evaluate("window.__noReload") is True and "enc-facility=Lakeview" in page.url
        page.locator("#panel-encounters").get_by_role("link", name="Clear").click()
        page.wait_for_function("document.querySelectorAll('#encounters-table tbody tr').length === 7")

        # Tabs work with the keyboard.
        page.get_by_role("tab", name="Encounters").focus()
        page.keyboard.press("ArrowRight")
        assert page.get_by_role("tab", name="Problems").get_attribute("aria-selected") == "true"
        assert page.locator("#panel-problems").is_visible() and not page.locator("#panel-encounters").is_visible()
        page.get_by_role("tab", name="Prior authorizations").click()
        assert "MRI lumbar spine" in page.locator("#panel-prior-auths").inner_text()
        shot(page, "local-04-prior-auths", full_page=False)
        page.get_by_role("tab", name="Encounters").click()

        # Keyboard: the timeline is one Tab stop (arrow keys move between its dots, in time
        # order), and a skip link jumps past it; from the tab list to the first encounter
        # takes few Tab presses (issue 14 counted 39 from Fetch, the dots first).
        dots = page.locator("svg.timeline a[data-encounter]")
        assert page.locator('svg.timeline a[data-encounter][tabindex="0"]').count() == 1
        page.locator('svg.timeline a[tabindex="0"]').focus()
        assert page.evaluate("document.activeElement.dataset.encounter") == "enc-7"
        page.keyboard.press("ArrowLeft")
        assert page.evaluate("document.activeElement.dataset.encounter") == "enc-6"
        page.keyboard.press("Home")
        assert page.evaluate("document.activeElement.dataset.encounter") == "enc-1" and dots.count() == 7
        first_row_link = f"/emr/patients/{jack.pk}/encounters/enc-7/"
        page.get_by_role("tab", name="Encounters").focus()
        presses = 0
        while page.evaluate("document.activeElement.getAttribute('href')") != first_row_link or \
                page.evaluate("!document.activeElement.closest('table')"):
            page.keyboard.press("Tab")
            presses += 1
            assert presses < 40, page.evaluate("document.activeElement.outerHTML")
        print(f"\nTab presses from the Encounters tab to the first encounter in the table: {presses}")
        assert presses <= 14
        # With the skip link: Tab to it, Enter, and the list is next.
        page.get_by_role("tab", name="Encounters").focus()
        for _ in range(3):  # the panel, its Print button, the skip link
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.textContent") == "Skip the timeline"
        page.keyboard.press("Enter")
        assert page.evaluate("document.activeElement.id") == "encounters-list"

        # Open the 2019 inpatient stay from its dot on the timeline.
        page.locator('svg.timeline a[data-encounter="enc-3"]').click()
        page.wait_for_url(f"{live_server.url}/emr/patients/{jack.pk}/encounters/enc-3/")
        diagnoses = page.get_by_role("region", name="Diagnoses").inner_text()
        assert "Non-ST elevation myocardial infarction" in diagnoses
        claim = page.get_by_role("region", name="Claim").inner_text()
        assert "CLM-ENC-3" in claim and "Riverside Community Hospital" in claim
        shot(page, "local-05-encounter")

        # A tablet in portrait: no horizontal scrolling of the page itself.
        page.set_viewport_size({"width": 768, "height": 1024})
        page.goto(f"{live_server.url}/emr/patients/{jack.pk}/")
        assert page.evaluate("document.documentElement.scrollWidth") <= 768
        shot(page, "local-06-tablet")
        assert errors == []
