"""What Dr. Smith reads in the first 30 seconds (issue 14), in real headless Chromium over
real HTTP with a real Celery worker: the summary after the fetch, each tab in plain words,
the lists paged and filtered without a reload, the print view, and, after Jack opts out at
UnitedCare, the history marked as received then and no longer shared. The screenshots the
README shows go to docs/screenshots/."""

import re

import pytest

from emr.models import HospitalPatient
from payer.models import Member
from payer.services import demo as payer_demo
from payer.services.opt_out import opt_out_record
from provider.models import SyncJob
from tests.browser import DOCS_SCREENSHOTS, chromium, login, shot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.browser]

# What a clinician must never have to read: FHIR type names and raw status codes.
RAW = re.compile(r"\b(MedicationRequest|ExplanationOfBenefit|AllergyIntolerance|PractitionerRole|problem-list-item|"
                 r"encounter-diagnosis|queued|active complete)\b")


def _fetch(page) -> None:
    page.evaluate("document.getElementById('sync').removeAttribute('data-history-loaded')")
    page.get_by_role("button", name="Fetch history from UnitedCare Health").click()
    page.wait_for_function("['completed', 'no_data', 'failed'].some(s => (document.getElementById('sync')"
                           ".getAttribute('data-seen') || '').split(' ').includes(s))", timeout=60_000)


def _visible_text(page) -> str:
    return page.locator("#history").inner_text()


def test_summary_first_then_each_tab_in_plain_words_and_the_opt_out_notice(demo_connection, live_server, celery_worker):
    jack = HospitalPatient.objects.get(member_id=payer_demo.JACK_SHAW_MEMBER_ID)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, live_server.url, username="jsmith", password="grace-demo")
        page.goto(f"{live_server.url}/emr/patients/{jack.pk}/")
        _fetch(page)
        page.locator("#sync[data-history-loaded]").wait_for(timeout=30_000)
        job = SyncJob.objects.get(member_id=payer_demo.JACK_SHAW_MEMBER_ID)
        assert job.status == SyncJob.Status.COMPLETED, (job.status, job.error)

        # The summary opens first: allergies, problems, medications with their sig, labs and
        # vitals with units, ranges and trends, encounters, prior authorizations, vaccines.
        summary = page.locator("#panel-summary")
        assert page.get_by_role("tab", name="Summary").get_attribute("aria-selected") == "true" and summary.is_visible()
        allergies = summary.get_by_role("region", name="Allergies").inner_text()
        assert "Penicillin" in allergies and "High risk" in allergies and "Hives and facial swelling" in allergies
        meds = summary.get_by_role("region", name="Active medications").inner_text()
        assert "metformin" in meds and "by mouth" in meds and "Take as directed" not in meds
        assert "simvastatin" not in meds and "clopidogrel" not in meds  # stopped
        labs = summary.get_by_role("region", name="Latest labs").inner_text()
        assert "Hemoglobin A1c" in labs and "eGFR" in labs and "mL/min/1.73 m²" in labs and "High" in labs
        assert "4–5.6" in labs or "4.0–5.6" in labs
        assert summary.locator('svg.spark[aria-label^="Hemoglobin A1c: 7 results"]').count() == 1
        assert summary.locator('svg.spark[aria-label^="Blood pressure"] polyline').count() == 2
        assert summary.locator('svg.spark[aria-label^="Weight"]').count() == 1
        assert summary.get_by_role("region", name="Last encounters").get_by_role("link").count() == 5
        assert "Pending" in summary.get_by_role("region", name="Open or recent prior authorizations").inner_text()
        assert "UnitedCare Health, received" in summary.inner_text()  # each item's source and date
        assert not RAW.search(_visible_text(page)), RAW.search(_visible_text(page))
        shot(page, "summary", directory=DOCS_SCREENSHOTS)

        # Each tab, in words; the codes only on the secondary line.
        expectations = {
            "Problems": ["Type 2 diabetes mellitus", "Active", "Problem list", "ICD-10-CM E11.9"],
            "Medications": ["Active", "Past", "Stopped", "by mouth"],
            "Allergies": ["Penicillin", "High risk", "Severe"],
            "Immunizations": ["Influenza", "Given"],
            "Labs and vitals": ["Trends", "Every result", "Hemoglobin A1c", "Blood pressure", "mmHg"],
            "Prior authorizations": ["Approved", "Denied", "Pending", "Partly approved", "–"],
            "Encounters": ["Outpatient", "Emergency", "Inpatient", "Completed"],
            "Claims": ["Pharmacy", "Processed", "Claims 1–25 of"],
        }
        for tab, words in expectations.items():
            page.get_by_role("tab", name=tab).click()
            panel = page.locator("[role=tabpanel]:not([hidden])")
            assert panel.count() == 1
            text = panel.inner_text()
            for word in words:
                assert word in text, (tab, word)
            assert not RAW.search(text), (tab, RAW.search(text))
            assert f"tab={panel.get_attribute('data-section')}" in page.url  # a reload opens the same tab
            if tab in ("Medications", "Labs and vitals", "Prior authorizations"):
                shot(page, f"tab-{panel.get_attribute('data-section')}", full_page=False)
        # Prior authorizations: no service period left as a dash when the data has one.
        page.get_by_role("tab", name="Prior authorizations").click()
        assert page.locator("#panel-prior-auths td", has_text=re.compile(r"\w{3} \d+, \d{4} – ")).count() >= 3

        # Claims: 25 a page, the next page and a type filter without reloading the page.
        page.get_by_role("tab", name="Claims").click()
        page.evaluate("window.__noReload = true")
        claims = page.locator("#panel-claims")
        assert claims.locator("tbody tr").count() == 25
        claims.get_by_role("link", name="Older ›").click()
        page.wait_for_function("document.querySelector('#panel-claims [data-result-count]').textContent.includes('Claims 26–')")
        assert page.evaluate("document.activeElement.hasAttribute('data-result-count')")
        claims.get_by_text("Filter claims by date").click()
        claims.get_by_label("Type").select_option("Hospital or facility")
        claims.get_by_role("button", name="Apply").click()
        page.wait_for_function("document.querySelector('#panel-claims [data-result-count]').textContent.includes('matching')")
        rows = claims.locator("tbody tr")
        assert 0 < rows.count() < 25 and all("Hospital or facility" in rows.nth(i).inner_text() for i in range(rows.count()))
        assert page.evaluate("window.__noReload") is True

        # Printing the tab on screen prints that tab alone, and the print view one section whole.
        page.emulate_media(media="print")
        assert page.locator("#panel-claims").is_visible() and not page.locator("#panel-summary").is_visible()
        assert not page.locator("#sync").is_visible() and not page.locator("[role=tablist]").is_visible()
        page.emulate_media(media="screen")
        page.goto(f"{live_server.url}/emr/patients/{jack.pk}/print/summary/")
        assert page.get_by_role("heading", name="Jack Shaw — Summary").is_visible()
        assert page.locator("#encounters-table, #claims-table, [role=tablist]").count() == 0
        assert "Active medications" in page.inner_text("main")

        # Jack opts out at UnitedCare; the next fetch brings nothing, and the page says the
        # history shown was received on its date and is no longer shared.
        opt_out_record(member=Member.objects.get(member_id=payer_demo.JACK_SHAW_MEMBER_ID), opted_out=True,
                       channel="web", changed_by="member")
        page.goto(f"{live_server.url}/emr/patients/{jack.pk}/")
        _fetch(page)
        page.wait_for_function("document.querySelector('#sync').getAttribute('data-seen').includes('no_data')")
        page.reload()
        notice = page.locator("[data-history-ended]")
        assert "UnitedCare Health no longer shares this patient's data" in notice.inner_text()
        assert "received from it on" in notice.inner_text() and "not updated any more" in notice.inner_text()
        assert "no longer shared" in page.get_by_role("heading", name=re.compile("History from UnitedCare")).inner_text()
        assert "Penicillin" in page.locator("#panel-summary").inner_text()
        shot(page, "after-opt-out", directory=DOCS_SCREENSHOTS, full_page=False)
        assert errors == []
