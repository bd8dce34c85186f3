"""The seed article's scenario end to end, in real headless Chromium: Dr. James Smith logs
in to EHealth, opens Jack Shaw, fetches his history from UnitedCare (the project's payer,
over real HTTP, driven by a real Celery worker), watches the progress, and reads his
encounters, one encounter's diagnoses and its claim. Screenshots of each step go to
var/screenshots/ (CI keeps them as artifacts)."""

import time

import pytest

from emr import history as history_reads
from emr.models import HospitalPatient
from payer.services import demo as payer_demo
from provider.models import LocalResource, SyncJob
from tests.browser import DOCS_SCREENSHOTS, chromium, login, shot

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.browser]


def test_dr_smith_fetches_and_reads_jack_shaws_history(demo_connection, live_server, celery_worker):
    jack = HospitalPatient.objects.get(member_id=payer_demo.JACK_SHAW_MEMBER_ID)
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))

        page.goto(f"{live_server.url}/emr/login/")
        shot(page, "01-login")
        login(page, live_server.url, username="jsmith", password="grace-demo")
        shot(page, "02-patient-list", directory=DOCS_SCREENSHOTS)

        page.get_by_role("link", name="Shaw, Jack").click()
        page.wait_for_url(f"{live_server.url}/emr/patients/{jack.pk}/")
        assert page.get_by_text("No history from a payer yet").is_visible()
        shot(page, "03-patient-before-fetch")

        page.evaluate("window.__noReload = true")
        started = time.monotonic()
        page.get_by_role("button", name="Fetch history from UnitedCare Health").click()
        # The progress panel moves without a reload (aria-live), then the history appears.
        page.locator("#sync[data-seen]").wait_for(timeout=10_000)
        shot(page, "04-fetch-progress", full_page=False)
        page.locator("#sync[data-history-loaded]").wait_for(timeout=60_000)
        elapsed = time.monotonic() - started
        assert page.evaluate("window.__noReload") is True

        job = SyncJob.objects.get(member_id=payer_demo.JACK_SHAW_MEMBER_ID)
        assert job.status == SyncJob.Status.COMPLETED, (job.status, job.error, celery_worker.log()[-3000:])
        seen = page.locator("#sync").get_attribute("data-seen").split()
        assert seen[-1] == "completed" and len(seen) >= 2, seen
        assert "alert-success" in page.locator(".sync-message").get_attribute("class")
        steps = {
            "kick-off": job.kicked_off_at - job.created_at,
            "payer export (manifest)": job.manifest_at - job.kicked_off_at,
            "download + ingest": job.finished_at - job.manifest_at,
        }
        print(f"\nFetch click to history on screen: {elapsed:.2f} s (statuses seen: {' > '.join(seen)}; "
              + ", ".join(f"{k} {v.total_seconds():.2f} s" for k, v in steps.items()) + f", {job.poll_count} polls)")
        jack.refresh_from_db()
        assert jack.payer_patient_id == payer_demo.JACK_SHAW_PATIENT_ID
        encounters = LocalResource.objects.filter(resource_type="Encounter", patient_id=jack.payer_patient_id).count()
        assert encounters > 0
        page.get_by_role("tab", name="Encounters").click()
        shot(page, "05-history", directory=DOCS_SCREENSHOTS)
        # Paged by 25, newest first; every encounter has its dot on the timeline.
        assert page.locator("#encounters-table tbody tr").count() == min(encounters, 25)
        assert f"of {encounters}" in page.locator("#panel-encounters [data-result-count]").inner_text()
        assert page.locator("svg.timeline a[data-encounter]").count() == encounters
        assert page.locator("svg.timeline text.facility").count() >= 4
        assert "Fetched" in page.locator(".sync-message").inner_text()

        # Open, from its dot on the timeline, an encounter with diagnoses and a claim (EOB).
        history = history_reads.patient_history(patient=jack)
        details = (history_reads.encounter_detail(patient=jack, encounter_id=e.id) for e in history.encounters)
        chosen = next(d for d in details if d.claims and d.diagnoses)
        # By keyboard: the timeline's dots are links.
        page.locator(f'svg.timeline a[data-encounter="{chosen.encounter.id}"]').focus()
        page.keyboard.press("Enter")
        page.wait_for_url(f"{live_server.url}/emr/patients/{jack.pk}/encounters/{chosen.encounter.id}/")
        assert chosen.diagnoses[0].title in page.get_by_role("region", name="Diagnoses").inner_text()
        diagnoses = page.get_by_role("region", name="Diagnoses")
        assert "No diagnoses recorded" not in diagnoses.inner_text()
        claim = page.get_by_role("region", name="Claim")
        assert "No claim for this encounter" not in claim.inner_text()
        shot(page, "06-encounter", directory=DOCS_SCREENSHOTS)

        page.go_back()
        page.get_by_role("tab", name="Prior authorizations").click()
        shot(page, "07-prior-authorizations", full_page=False, directory=DOCS_SCREENSHOTS)
        page.get_by_role("tab", name="Problems").click()
        shot(page, "08-problems", full_page=False)
        assert errors == []
