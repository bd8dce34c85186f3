"""The fetch panel's server side (issue 14): a slow fetch says what it waits on and can be
cancelled (at the payer too) or retried; a failed or empty one says why in plain words,
with the technical detail one click away. The payer is tests/provider/fake_payer.py over
real HTTP where the payer takes part; the browser side is tests/emr/test_fetch_panel_browser.py."""

import datetime as dt
from urllib.parse import urlsplit

import pytest
from django.test import Client
from django.utils import timezone

from emr import selectors, services
from emr.models import AccessEvent, HospitalPatient, PatientSync, TreatmentAttestation
from provider.models import PayerConnection, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import sync_job_step
from tests import factories
from tests.emr.test_new_patient import GRACE_NPI, OAKVIEW_NPI, SMITH_NPI, smith  # noqa: F401  (fixture)
from tests.provider.bulk_data import CLIENT_ID
from tests.provider.conftest import fake_payer, key_file, rsa_keys  # noqa: F401  (fixtures)

pytestmark = pytest.mark.django_db


@pytest.fixture
def grace(fake_payer, key_file) -> PayerConnection:  # noqa: F811
    """Grace Hospital's connection to the fake payer (which answers at once: no poll script)."""
    fake_payer.poll_script = []
    connection = payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=fake_payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=fake_payer.key_id,
    )
    connection.organization_npi = GRACE_NPI
    connection.save(update_fields=["organization_npi"])
    return connection


@pytest.fixture
def jack(grace) -> HospitalPatient:
    """Jack Shaw, member M100, on Grace Hospital's attribution Group g1 at the fake payer."""
    return factories.hospital_patient_create(organization_npi=GRACE_NPI, insurer=grace, member_id="M100",
                                             birth_date=dt.date(1970, 3, 4))


def client_for(clinician, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(clinician.user)
    return client


def fetch_started(client: Client, patient: HospitalPatient, connection: PayerConnection) -> SyncJob:
    response = client.post(f"/emr/patients/{patient.pk}/fetch/{connection.pk}/", HTTP_ACCEPT="application/json")
    assert response.status_code == 202, response.content
    return SyncJob.objects.get(pk=response.json()["id"])


def job_for(patient: HospitalPatient, connection: PayerConnection, **fields) -> SyncJob:
    job = SyncJob.objects.create(connection=connection, level="group", scope_key="k", member_id=patient.member_id, **fields)
    PatientSync.objects.create(patient=patient, job=job)
    return job


def events(patient: HospitalPatient, action: str) -> list[str]:
    return list(AccessEvent.objects.filter(patient=patient, action=action).order_by("pk").values_list("detail", flat=True))


# --- Cancel ---------------------------------------------------------------------------------


def test_cancel_stops_the_fetch_at_the_payer_too_and_is_recorded(fake_payer, grace, smith, jack):  # noqa: F811
    fake_payer.poll_forever = True
    client = client_for(smith)
    job = fetch_started(client, jack, grace)
    sync_job_step(job_id=job.pk)  # the worker's kick-off: the payer now prepares an export
    job.refresh_from_db()
    assert job.status == SyncJob.Status.KICKED_OFF

    response = client.post(f"/emr/patients/{jack.pk}/syncs/{job.pk}/cancel/", HTTP_ACCEPT="application/json")

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled" and body["done"] is True and body["ok"] is False
    assert body["message"] == "The fetch was cancelled, and UnitedCare Health was told to stop."
    assert body["retry_url"].endswith(f"/emr/patients/{jack.pk}/syncs/{job.pk}/retry/")
    # Bulk Data req 119: DELETE on the export's status URL (its Content-Location).
    assert [r.path for r in fake_payer.requests_to("/status/", "DELETE")] == [urlsplit(job.status_url).path]
    assert events(jack, AccessEvent.Action.CANCEL_FETCH) == [f"UnitedCare Health, fetch {job.pk}: cancelled"]
    # The job goes no further: a poll task that comes late does nothing.
    polls = len(fake_payer.requests_to("/status/", "GET"))
    assert sync_job_step(job_id=job.pk).delay is None
    assert len(fake_payer.requests_to("/status/", "GET")) == polls
    job.refresh_from_db()
    assert job.status == SyncJob.Status.CANCELLED


def test_cancel_by_a_clinician_of_another_organization_is_404(grace, smith, jack):
    job = job_for(jack, grace)
    lee = factories.clinician_create(username="rlee", organization_npi=OAKVIEW_NPI, organization_name="Oakview")
    for action in ("cancel", "retry"):
        assert client_for(lee).post(f"/emr/patients/{jack.pk}/syncs/{job.pk}/{action}/").status_code == 404
    # Nor through one of their own patients: the job must be that patient's.
    mine = factories.hospital_patient_create(organization_npi=OAKVIEW_NPI, family="Lopez")
    assert client_for(lee).post(f"/emr/patients/{mine.pk}/syncs/{job.pk}/cancel/").status_code == 404
    job.refresh_from_db()
    assert job.status == SyncJob.Status.PENDING and SyncJob.objects.count() == 1
    assert not AccessEvent.objects.filter(action=AccessEvent.Action.CANCEL_FETCH).exists()


def test_cancel_of_a_finished_fetch_is_harmless(fake_payer, grace, smith, jack):  # noqa: F811
    job = job_for(jack, grace, status=SyncJob.Status.COMPLETED, finished_at=timezone.now(),
                  status_url=f"{fake_payer.base_url}/status/gone")
    body = client_for(smith).post(f"/emr/patients/{jack.pk}/syncs/{job.pk}/cancel/", HTTP_ACCEPT="application/json").json()
    assert body["status"] == "completed" and body["ok"] is True
    job.refresh_from_db()
    assert job.status == SyncJob.Status.COMPLETED and not fake_payer.requests_to("/status/")
    assert events(jack, AccessEvent.Action.CANCEL_FETCH) == [f"UnitedCare Health, fetch {job.pk}: had ended (Completed)"]


def test_cancel_and_retry_work_without_javascript(grace, smith, jack):
    client = client_for(smith, enforce_csrf_checks=True)
    token = client.get(f"/emr/patients/{jack.pk}/").cookies["csrftoken"].value
    job = job_for(jack, grace)
    url = f"/emr/patients/{jack.pk}/syncs/{job.pk}/cancel/"
    assert client.post(url).status_code == 403  # CSRF
    assert client.get(url).status_code == 405
    response = client.post(url, {"csrfmiddlewaretoken": token})
    assert response.status_code == 302 and response["Location"] == f"/emr/patients/{jack.pk}/"
    page = client.get(f"/emr/patients/{jack.pk}/").content.decode()
    assert "The fetch was cancelled before it reached UnitedCare Health." in page
    assert f'action="/emr/patients/{jack.pk}/syncs/{job.pk}/retry/"' in page and ">Try again</button>" in page

    response = client.post(f"/emr/patients/{jack.pk}/syncs/{job.pk}/retry/", {"csrfmiddlewaretoken": token})
    assert response.status_code == 302
    assert SyncJob.objects.exclude(pk=job.pk).get().status == SyncJob.Status.PENDING


# --- Retry ------------------------------------------------------------------------------------


def test_retry_cancels_the_running_fetch_and_starts_a_new_one(grace, smith, jack, django_capture_on_commit_callbacks):
    client = client_for(smith)
    stuck = job_for(jack, grace)  # no worker ever took it
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(f"/emr/patients/{jack.pk}/syncs/{stuck.pk}/retry/", HTTP_ACCEPT="application/json")
    assert response.status_code == 202, response.content
    assert len(callbacks) == 1  # the new job is enqueued after commit
    body = response.json()
    new = SyncJob.objects.get(pk=body["id"])
    assert new.pk != stuck.pk and new.connection == grace and new.member_id == "M100"
    assert PatientSync.objects.get(job=new).patient == jack
    assert body["progress_url"].endswith(f"/syncs/{new.pk}/") and body["cancel_url"].endswith(f"/syncs/{new.pk}/cancel/")
    stuck.refresh_from_db()
    assert stuck.status == SyncJob.Status.CANCELLED
    assert events(jack, AccessEvent.Action.CANCEL_FETCH) == [f"UnitedCare Health, fetch {stuck.pk}: cancelled"]
    assert events(jack, AccessEvent.Action.FETCH) == [f"UnitedCare Health (again, after fetch {stuck.pk})"]


def test_try_again_after_a_failure_starts_a_new_fetch_with_the_attestation_on_file(grace, smith, jack):
    failed = job_for(jack, grace, status=SyncJob.Status.FAILED, failure=SyncJob.Failure.UNREACHABLE,
                     finished_at=timezone.now())
    services.treatment_attestation_record(patient=jack, clinician=smith, user=smith.user)
    new = services.patient_fetch_retry(patient=jack, job=failed, user=smith.user, clinician=smith)
    assert new.pk != failed.pk and new.status == SyncJob.Status.PENDING
    # The same rules as any fetch: a current attestation is sent (PDex $provider-member-match).
    consent = next(p for p in new.member_match["request"]["part"] if p["name"] == "Consent")
    assert consent["resource"]["performer"][0]["identifier"]["value"] == SMITH_NPI
    assert not AccessEvent.objects.filter(patient=jack, action=AccessEvent.Action.CANCEL_FETCH).exists()
    assert TreatmentAttestation.objects.filter(patient=jack).count() == 1


def test_retry_keeps_to_the_patients_organization(grace, smith, jack):
    # The job's connection is the only one retried through; it must still be the patient's
    # organization's (an admin may have moved it since).
    job = job_for(jack, grace, status=SyncJob.Status.FAILED, finished_at=timezone.now())
    PayerConnection.objects.filter(pk=grace.pk).update(organization_npi=OAKVIEW_NPI)
    response = client_for(smith).post(f"/emr/patients/{jack.pk}/syncs/{job.pk}/retry/", HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and "not a connection of this patient's organization" in response.json()["error"]
    assert SyncJob.objects.count() == 1


# --- What the panel says ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failure", "words"),
    [
        (SyncJob.Failure.UNREACHABLE, "UnitedCare Health could not be reached, or kept answering that it was busy."),
        (SyncJob.Failure.CREDENTIALS, "UnitedCare Health did not accept this hospital's credentials, so nothing was fetched. Tell your IT team"),
        (SyncJob.Failure.PAYER_ERROR, "UnitedCare Health reported an error and did not send the history."),
        (SyncJob.Failure.TIMEOUT, "UnitedCare Health did not finish preparing the history in time"),
        (SyncJob.Failure.MALFORMED, "UnitedCare Health sent an answer this hospital cannot use"),
        (SyncJob.Failure.INCOMPLETE, "Some of the files from UnitedCare Health could not be downloaded in full"),
        (SyncJob.Failure.HOSPITAL, "The hospital's own system failed while fetching from UnitedCare Health."),
        ("", "The fetch from UnitedCare Health failed."),  # a job failed before failures had a category
    ],
)
def test_each_failure_is_said_in_plain_words_with_the_detail_behind_a_click(grace, smith, jack, failure, words):
    error = "Kick-off answered 500. The payer said: <b>Busy</b>"
    job = job_for(jack, grace, status=SyncJob.Status.FAILED, failure=failure, error=error, finished_at=timezone.now())
    body = client_for(smith).get(f"/emr/patients/{jack.pk}/syncs/{job.pk}/").json()
    assert body["message"].startswith(words) and "Kick-off" not in body["message"]
    assert body["error"] == error and body["announce"] == "The fetch failed." and body["alert"] == "alert-error"
    # Rendered on page load too: the sentence, and the detail in a closed disclosure (escaped).
    page = client_for(smith).get(f"/emr/patients/{jack.pk}/").content.decode()
    assert words.replace("'", "&#x27;") in page
    assert ('<details class="sync-technical" ><summary>Technical detail</summary>'
            "<pre>Kick-off answered 500. The payer said: &lt;b&gt;Busy&lt;/b&gt;</pre></details>") in page


def test_no_data_gives_the_reason_the_payer_gave(grace, jack):
    def said(**fields) -> dict:
        SyncJob.objects.all().delete()
        return selectors.sync_progress(job=job_for(jack, grace, status=SyncJob.Status.NO_DATA, **fields))

    # PDex 2.2 member match: the outcome, and the payer's OperationOutcome diagnostics.
    refused = said(member_match={"request": {}, "outcome": "refused", "message": "The practitioner is unknown."})
    assert refused["message"] == ("UnitedCare Health returned no data for this patient: the payer did not accept the "
                                  "treatment relationship attestation. UnitedCare Health said: “The practitioner is unknown.”")
    assert refused["causes"] == [] and refused["announce"] == "No data from UnitedCare Health."
    opted_out = said(member_match={"request": {}, "outcome": "consentconstrained", "message": ""})
    assert opted_out["message"] == ("UnitedCare Health returned no data for this patient: the member has opted out of "
                                    "sharing data with providers.")
    not_matched = said(member_match={"request": {}, "outcome": "nonmatched", "message": ""})
    assert any("check them against the insurance card" in cause for cause in not_matched["causes"])

    # No reason given: the patient is on none of the payer's attribution lists for this
    # organization (Da Vinci ATR), which is all a Group search can tell.
    unlisted = said(error="The payer returned no data for this patient: member M100 is not in the attribution list.")
    assert unlisted["message"] == ("UnitedCare Health returned no data for this patient and gave no reason: the patient "
                                   "is not on the list of patients it shares with your organization.")
    assert [c.split(":")[0] for c in unlisted["causes"]] == [
        "The patient is new to your organization", "The member id on file is wrong, or the coverage has ended.",
        "The patient has opted out of sharing their data with providers (a plan need not say so).",
        "Attest your treatment relationship (the box above Fetch) and fetch again",
    ]
    assert "member M100 is not in the attribution list" in unlisted["error"]
    # Attested already, and still on no list: attesting again would not help.
    attested = said(member_match={"request": {"name": "MemberBundle"}})
    assert not any(cause.startswith("Attest") for cause in attested["causes"])
    empty = said(kicked_off_at=timezone.now(), manifest_at=timezone.now())
    assert empty["message"] == "UnitedCare Health sent an empty answer for this patient and gave no reason."
    assert "The plan holds no claims or clinical records for the patient yet." in empty["causes"]


def test_a_completed_fetch_counts_the_records_as_a_clinician_names_them(grace, smith, jack):
    job = job_for(jack, grace, status=SyncJob.Status.COMPLETED, finished_at=timezone.now(),
                  counts={"Encounter": 7, "AllergyIntolerance": 1, "ExplanationOfBenefit": 12})
    body = client_for(smith).get(f"/emr/patients/{jack.pk}/syncs/{job.pk}/").json()
    assert body["message"] == body["announce"] == "Fetched 20 records from UnitedCare Health."
    assert body["counts_in_words"] == [[1, "allergy"], [7, "encounters"], [12, "claims and authorizations"]]
    assert "<li><b>12</b> claims and authorizations</li>" in client_for(smith).get(f"/emr/patients/{jack.pk}/").content.decode()


def test_a_slow_fetch_says_what_it_waits_on(grace, smith, jack, settings):
    job = job_for(jack, grace)
    running = selectors.sync_progress(job=job)
    assert running["slow"] is False and running["announce"] == "Contacting UnitedCare Health…"

    settings.EMR_FETCH_SLOW_SECONDS = 0
    # Pending, and no worker took it: what a stopped worker looks like.
    stopped = selectors.sync_progress(job=job)
    assert stopped["slow"] is True
    assert stopped["waiting_on"].startswith("The hospital's background worker has not picked this fetch up")
    assert stopped["announce"] == f"This is taking longer than usual. {stopped['waiting_on']}"
    page = client_for(smith).get(f"/emr/patients/{jack.pk}/").content.decode()
    assert 'data-slow-seconds="0"' in page and '<div class="sync-slow" >' in page  # shown: Cancel and Retry without JS
    assert f'action="/emr/patients/{jack.pk}/syncs/{job.pk}/cancel/"' in page and ">Cancel fetch</button>" in page

    # The payer works on it, and says how far it got (X-Progress, Bulk Data req 135).
    SyncJob.objects.filter(pk=job.pk).update(
        status=SyncJob.Status.KICKED_OFF, kicked_off_at=timezone.now(), poll_count=7, payer_progress="Gathering claims (40%)",
        next_step_at=timezone.now() + dt.timedelta(seconds=2),
    )
    preparing = selectors.sync_progress(job=job)
    assert preparing["waiting_on"] == "UnitedCare Health is still preparing the data."
    assert preparing["payer_says"] == "Gathering claims (40%)"  # with the slow notice
    assert preparing["detail"].startswith("7 status checks · started ")
    page = client_for(smith).get(f"/emr/patients/{jack.pk}/").content.decode()
    assert '<p class="sync-payer-says" >UnitedCare Health says: “Gathering claims (40%)”</p>' in page
    settings.EMR_FETCH_SLOW_SECONDS = 60
    assert selectors.sync_progress(job=job)["detail"].startswith("UnitedCare Health says: “Gathering claims (40%)” · 7 status")
    settings.EMR_FETCH_SLOW_SECONDS = 0
    # The live region's sentence is the same whatever the payer's figures: no re-reading.
    SyncJob.objects.filter(pk=job.pk).update(poll_count=8, payer_progress="Gathering claims (60%)")
    assert selectors.sync_progress(job=job)["announce"] == preparing["announce"]

    SyncJob.objects.filter(pk=job.pk).update(transient_errors=3, progress="Retrying: Network error: ConnectionError")
    retrying = selectors.sync_progress(job=job)
    assert retrying["waiting_on"] == "UnitedCare Health is not answering, or answers that it is busy; the hospital keeps trying."
    assert "3 attempts failed (last: Network error: ConnectionError)" in retrying["detail"]
    # A poll long overdue: the worker stopped in the middle of the job.
    SyncJob.objects.filter(pk=job.pk).update(next_step_at=timezone.now() - dt.timedelta(minutes=1))
    assert "background worker" in selectors.sync_progress(job=job)["waiting_on"]
