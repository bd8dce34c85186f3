"""Issue 9 in real headless Chromium: Dr. Smith registers a new patient (no claims at Grace
Hospital) with his demographics, the insurance card's member id and an explicit treatment
attestation, and gets his history with one click on Fetch; then a patient registered with
another member's id, who sees nothing from that record and is told what differs.

The payer is tests/provider/fake_payer.py over real HTTP (PDex 2.2 $provider-member-match,
then $davinci-data-export), driven by a real Celery worker. Screenshots go to
var/screenshots/new-patient-*.png (copied to docs/screenshots/ for the README)."""

import time

import pytest

from emr.models import HospitalPatient, LinkDecision, TreatmentAttestation
from provider.models import SyncJob
from tests import factories
from tests.browser import chromium, login, shot
from tests.emr.test_new_patient import GRACE_NPI, SMITH_NPI, grace, payer  # noqa: F401  (fixtures)
from tests.provider.conftest import fake_payer, key_file, rsa_keys  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e, pytest.mark.browser]


def history_loaded(page, worker) -> None:
    """Wait until the page has loaded the history after a fetch; on a timeout, show why."""
    try:
        page.locator("#sync[data-history-loaded]").wait_for(timeout=30_000)
    except Exception:
        shot(page, "new-patient-debug")
        print(list(SyncJob.objects.values("member_id", "status", "error", "progress", "poll_count")),
              page.locator("#sync").evaluate("e => e.outerHTML")[:3000], worker.log()[-3000:])
        raise


def test_new_patient_flow_in_the_browser(live_server, celery_worker, payer, grace):  # noqa: F811
    smith = factories.clinician_create(username="jsmith", organization_npi=GRACE_NPI, password="grace-demo")
    smith.npi = SMITH_NPI
    smith.save(update_fields=["npi"])
    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        login(page, live_server.url, username="jsmith", password="grace-demo")

        page.get_by_role("link", name="Register patient", exact=True).click()
        page.get_by_label("Given name").fill("Daniel")
        page.get_by_label("Family name").fill("Okafor")
        page.get_by_label("Date of birth").fill("1978-09-23")
        page.get_by_label("Gender").select_option("male")
        page.get_by_label("Insurer").select_option(label="UnitedCare Health")
        page.get_by_label("Member id").fill("UCH100000070")
        attest = page.get_by_label("I, Dr. James Smith (NPI 1987654328), attest that Grace Hospital has a treatment relationship")
        attest.check()
        shot(page, "new-patient-1-register")
        page.get_by_role("button", name="Register").click()
        daniel = HospitalPatient.objects.get(family="Okafor")
        page.wait_for_url(f"{live_server.url}/emr/patients/{daniel.pk}/")
        assert TreatmentAttestation.objects.filter(patient=daniel, practitioner_npi=SMITH_NPI).exists()
        assert page.locator(".attestation").first.inner_text().startswith("Treatment relationship attested by Dr. James Smith")
        shot(page, "new-patient-2-registered")

        # One click.
        started = time.monotonic()
        page.get_by_role("button", name="Fetch history from UnitedCare Health").click()
        history_loaded(page, celery_worker)
        elapsed = time.monotonic() - started
        job = SyncJob.objects.get(member_id="UCH100000070")
        assert job.status == SyncJob.Status.COMPLETED, (job.error, celery_worker.log()[-3000:])
        print(f"\nNew patient in the browser: Fetch click to history on screen {elapsed:.2f} s "
              f"(member match + export, {job.poll_count} polls)")
        assert page.locator("#encounters-table tbody tr").count() == 4
        assert "Linked, name, birth date and sex checked" in page.locator("#payer-record").inner_text()
        shot(page, "new-patient-3-history")

        # Another member's id on the card: nothing from that record, and what differs.
        page.get_by_role("link", name="Register patient", exact=True).click()
        page.get_by_label("Given name").fill("Dana")
        page.get_by_label("Family name").fill("Rivera")
        page.get_by_label("Date of birth").fill("1970-05-05")
        page.get_by_label("Gender").select_option("female")
        page.get_by_label("Insurer").select_option(label="UnitedCare Health")
        page.get_by_label("Member id").fill("M100")
        page.get_by_role("button", name="Register").click()
        dana = HospitalPatient.objects.get(family="Rivera")
        page.wait_for_url(f"{live_server.url}/emr/patients/{dana.pk}/")
        page.get_by_role("button", name="Fetch history from UnitedCare Health").click()
        history_loaded(page, celery_worker)
        alert = page.get_by_role("alert").filter(has_text="another person")
        assert "The plan's record for member M100 has another name, birth date and sex." in alert.inner_text()
        assert page.locator("#encounters-table").count() == 0
        assert LinkDecision.objects.get(patient=dana).verdict == LinkDecision.Verdict.MISMATCH
        shot(page, "new-patient-4-mismatch")
        page.get_by_label("Correct the member id").fill("UCH100000099")
        page.get_by_role("button", name="Save member id").click()
        page.wait_for_url(f"{live_server.url}/emr/patients/{dana.pk}/")
        dana.refresh_from_db()
        assert dana.member_id == "UCH100000099"
        assert errors == []
