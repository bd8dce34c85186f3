"""The EMR's pages through Django's test client, over history stored in the local store."""

import datetime as dt

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django.utils.html import escape

from emr.models import AccessEvent, HospitalPatient, PatientSync
from provider.models import LocalResource, SyncJob
from tests import factories
from tests.emr.history_data import ENCOUNTERS, FACILITIES, history_store

pytestmark = pytest.mark.django_db

from tests.emr.conftest import JACK_MEMBER_ID


def _client(clinician, **kwargs) -> Client:
    client = Client(**kwargs)
    client.force_login(clinician.user)
    return client


def test_login_page_and_sign_in():
    factories.clinician_create(username="jsmith", password="grace-demo")
    client = Client()
    assert client.get("/emr/").status_code == 302
    page = client.get("/emr/login/")
    assert page.status_code == 200 and b'id="id_username"' in page.content
    bad = client.post("/emr/login/", {"username": "jsmith", "password": "wrong"})
    assert b"didn't match" in bad.content
    good = client.post("/emr/login/", {"username": "jsmith", "password": "grace-demo"})
    assert good.status_code == 302 and good["Location"] == "/emr/"


def test_user_without_clinician_profile_is_refused():
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.create_user(username="payer-admin", password="x")
    client = Client()
    client.force_login(user)
    assert client.get("/emr/").status_code == 403


def test_patient_list_search_and_isolation(smith, jack, connection):
    factories.hospital_patient_create(family="Lopez", given="Maria", birth_date=dt.date(1990, 5, 1))
    other = factories.hospital_patient_create(organization_npi="9999999991", family="Shawcross", given="Other")
    client = _client(smith)

    page = client.get("/emr/").content.decode()
    assert "Shaw</strong>, Jack" in page and "Lopez" in page and "Shawcross" not in page

    by_name = client.get("/emr/", {"name": "shaw"}).content.decode()
    assert "Jack" in by_name and "Lopez" not in by_name and "Shawcross" not in by_name
    by_dob = client.get("/emr/", {"birth_date": "1990-05-01"}).content.decode()
    assert "Lopez" in by_dob and "Jack" not in by_dob
    by_member = client.get("/emr/", {"member_id": JACK_MEMBER_ID}).content.decode()
    assert "Jack" in by_member and "Lopez" not in by_member and "UnitedCare Health" in by_member

    # Another organization's patient, its page, its encounters and its fetch: 404, never data.
    assert client.get(f"/emr/patients/{other.pk}/").status_code == 404
    assert client.get(f"/emr/patients/{other.pk}/encounters/enc-1/").status_code == 404
    assert client.post(f"/emr/patients/{other.pk}/fetch/{connection.pk}/").status_code == 404


def test_clinician_of_another_hospital_sees_none_of_graces_patients(jack):
    mercy = factories.clinician_create(username="mercy", organization_name="Mercy Clinic", organization_npi="9999999991",
                                       display_name="Dr. Ana Ruiz")
    client = _client(mercy)
    assert "Shaw" not in client.get("/emr/").content.decode()
    assert client.get(f"/emr/patients/{jack.pk}/").status_code == 404
    assert client.get(f"/emr/patients/{jack.pk}/encounters/enc-3/").status_code == 404
    assert not AccessEvent.objects.filter(patient=jack).exists()


def test_patient_page_shows_history_with_timeline_table_tabs_and_sources(smith, jack):
    page = _client(smith).get(f"/emr/patients/{jack.pk}/").content.decode()
    for _, name, _ in FACILITIES:
        assert escape(name) in page
    # One dot per encounter on the timeline and one row per encounter in the table.
    assert page.count('data-encounter="') == len(ENCOUNTERS)
    assert page.count(f'href="/emr/patients/{jack.pk}/encounters/enc-') >= 2 * len(ENCOUNTERS)
    assert "Non-ST elevation myocardial infarction" in page and "Dr. Wei Chen" in page and "Emergency" in page
    assert "Fetch history from UnitedCare Health" in page
    assert "UnitedCare Health, received Jun 13, 2025" in page  # provenance on every row
    assert "MRI lumbar spine without contrast" in page and "PA-2024-0042" in page  # prior authorization
    assert "Atorvastatin 40 mg tablet" in page and "Hyperlipidemia" in page
    assert "987.65" not in page  # no cost data
    assert AccessEvent.objects.filter(patient=jack, action="view", user=smith.user).count() == 1


def test_encounter_detail_shows_everything_linked_and_the_claim(smith, jack):
    page = _client(smith).get(f"/emr/patients/{jack.pk}/encounters/enc-3/").content.decode()
    assert "Inpatient admission" in page
    assert "Non-ST elevation myocardial infarction" in page and "I21.4" in page
    assert "Dr. Wei Chen" in page and "Riverside Community Hospital" in page and "100 Main Street" in page
    assert "Left heart catheterization" in page and "Troponin I" in page and "2.4 ng/mL" in page
    assert "Atorvastatin 40 mg tablet" in page and "1 tablet by mouth nightly" in page
    assert "CLM-ENC-3" in page and "Office visit, established patient" in page
    assert "987.65" not in page
    assert AccessEvent.objects.filter(patient=jack, action="view_encounter", detail="Encounter/enc-3").exists()


def test_encounter_of_another_patient_is_404(smith, jack, connection):
    LocalResource.objects.create(
        resource_type="Encounter", resource_id="enc-elsewhere", patient_id="pat-other", connection=connection, resource={
            "resourceType": "Encounter", "id": "enc-elsewhere", "status": "finished", "class": {"code": "AMB"},
            "subject": {"reference": "Patient/pat-other"}}, ingested_at=timezone.now(),
    )
    assert _client(smith).get(f"/emr/patients/{jack.pk}/encounters/enc-elsewhere/").status_code == 404


def test_resource_text_is_escaped_and_narrative_never_rendered(smith, jack, connection):
    script = "<script>alert('xss')</script>"
    LocalResource.objects.create(
        resource_type="Encounter", resource_id="enc-xss", patient_id="pat-jack", connection=connection,
        date=dt.datetime(2022, 2, 2, tzinfo=dt.UTC), status="finished", ingested_at=timezone.now(),
        resource={
            "resourceType": "Encounter", "id": "enc-xss", "status": "finished",
            "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">NARRATIVE{script}</div>'},
            "class": {"code": "AMB", "display": f"Class {script}"},
            "type": [{"text": f"Visit {script}"}],
            "subject": {"reference": "Patient/pat-jack"},
            "period": {"start": "2022-02-02T10:00:00Z"},
            "reasonCode": [{"text": "Reason <img src=x onerror=alert(1)>"}],
            "location": [{"location": {"display": f"Clinic {script}"}}],
        },
    )
    client = _client(smith)
    for url in (f"/emr/patients/{jack.pk}/", f"/emr/patients/{jack.pk}/encounters/enc-xss/"):
        page = client.get(url).content.decode()
        assert "<script>alert" not in page and "<img src=x" not in page
        assert "&lt;script&gt;alert(&#x27;xss&#x27;)&lt;/script&gt;" in page
        assert "NARRATIVE" not in page


def test_fetch_requires_csrf_and_post(smith, jack, connection):
    client = _client(smith, enforce_csrf_checks=True)
    url = f"/emr/patients/{jack.pk}/fetch/{connection.pk}/"
    before = SyncJob.objects.count()  # jack's fixture has one completed fetch
    assert client.post(url).status_code == 403
    assert client.get(url).status_code == 405
    assert SyncJob.objects.count() == before


def test_fetch_starts_a_sync_job_and_progress_reports_it(smith, jack, connection, django_capture_on_commit_callbacks):
    client = _client(smith, enforce_csrf_checks=True)
    page = client.get(f"/emr/patients/{jack.pk}/")
    token = page.cookies["csrftoken"].value
    earlier = list(SyncJob.objects.values_list("pk", flat=True))  # jack's fixture has one completed fetch
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            f"/emr/patients/{jack.pk}/fetch/{connection.pk}/", HTTP_X_CSRFTOKEN=token, HTTP_ACCEPT="application/json"
        )
    assert response.status_code == 202, response.content
    assert len(callbacks) == 1  # the sync job is enqueued after commit
    job = SyncJob.objects.exclude(pk__in=earlier).get()
    assert job.member_id == JACK_MEMBER_ID and job.requested_by == smith.user and job.connection == connection
    assert PatientSync.objects.get(job=job).patient == jack
    body = response.json()
    assert body["progress_url"].endswith(f"/emr/patients/{jack.pk}/syncs/{job.pk}/")
    assert body["done"] is False and body["steps"][0] == "Kick-off"
    assert AccessEvent.objects.filter(patient=jack, action="fetch").exists()

    # The payer answers "no data" and no more (not on its attribution list): said so, and
    # the usual causes listed, without guessing which (tests/emr/test_fetch_panel.py has more).
    SyncJob.objects.filter(pk=job.pk).update(status=SyncJob.Status.NO_DATA, finished_at=timezone.now())
    progress = client.get(body["progress_url"]).json()
    assert progress["done"] is True and progress["ok"] is False
    said = ("UnitedCare Health returned no data for this patient and gave no reason: the patient is not on the list "
            "of patients it shares with your organization.")
    assert progress["message"] == said and progress["causes"]
    assert said in client.get(f"/emr/patients/{jack.pk}/").content.decode()

    SyncJob.objects.filter(pk=job.pk).update(status=SyncJob.Status.FAILED, error="Connection refused",
                                             failure=SyncJob.Failure.UNREACHABLE)
    failed = client.get(body["progress_url"]).json()
    assert "could not be reached" in failed["message"] and failed["error"] == "Connection refused"


def test_completed_sync_links_the_payer_patient_and_shows_history(smith, connection):
    history_store(connection=connection, patient_id="pat-77", member_id="UC-77")
    patient = factories.hospital_patient_create(insurer=connection, member_id="UC-77")
    job = SyncJob.objects.create(
        connection=connection, level="group", scope_key="k", member_id="UC-77", status=SyncJob.Status.COMPLETED,
        counts={"Encounter": 7}, finished_at=timezone.now(), patient_ids=["pat-77"],
    )
    PatientSync.objects.create(patient=patient, job=job)
    client = _client(smith)
    progress = client.get(f"/emr/patients/{patient.pk}/syncs/{job.pk}/").json()
    assert progress["ok"] is True and progress["message"] == "Fetched 7 records from UnitedCare Health."
    patient.refresh_from_db()
    assert patient.payer_patient_id == "pat-77"
    assert "Lakeview Cardiology Clinic" in client.get(f"/emr/patients/{patient.pk}/").content.decode()
    listing = client.get("/emr/").content.decode()
    assert "Synced" in listing


def test_sync_of_another_patient_is_404(smith, jack, connection):
    other = factories.hospital_patient_create(family="Lopez", insurer=connection, member_id="UC-2")
    job = SyncJob.objects.create(connection=connection, level="group", scope_key="k", member_id="UC-2")
    PatientSync.objects.create(patient=other, job=job)
    assert _client(smith).get(f"/emr/patients/{jack.pk}/syncs/{job.pk}/").status_code == 404


def test_register_patient(smith, connection):
    client = _client(smith)
    assert client.get(reverse("emr:patient_add")).status_code == 200
    bad = client.post(reverse("emr:patient_add"), {"given": "Ann", "family": "Lee", "birth_date": "2999-01-01",
                                                    "gender": "female", "member_id": "UC-9"})
    assert bad.status_code == 200 and "in the future" in bad.content.decode()
    response = client.post(reverse("emr:patient_add"), {
        "given": "Ann", "family": "Lee", "birth_date": "1980-01-01", "gender": "female",
        "insurer": connection.pk, "member_id": "UC-9",
    })
    patient = HospitalPatient.objects.get(family="Lee")
    assert response.status_code == 302 and response["Location"] == f"/emr/patients/{patient.pk}/"
    assert patient.organization_npi == smith.organization_npi and patient.mrn.startswith("MRN")
    assert patient.created_by == smith.user


def test_static_assets_are_served_by_the_project(smith, jack):
    page = _client(smith).get(f"/emr/patients/{jack.pk}/").content.decode()
    assert '<link rel="stylesheet" href="/static/emr/emr.css">' in page
    assert '<script src="/static/emr/emr.js" defer></script>' in page
    assert "http://" not in page.split("<body>")[0] and "https://" not in page.split("<body>")[0]
