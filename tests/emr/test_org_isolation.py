"""One EMR, several organizations: each fetches through its own payer client and sees only
the patients it fetched itself (the demo hosts Grace Hospital and Oakview Family Practice)."""

import pytest
from django.test import Client
from django.utils import timezone

from emr import history, selectors, services
from emr.models import HospitalPatient, LinkDecision, PatientSync
from provider.models import LocalResource, PayerConnection, SyncJob
from tests import factories
from tests.emr.history_data import ENCOUNTERS, FACILITIES, history_store

pytestmark = pytest.mark.django_db

GRACE_NPI, OAKVIEW_NPI = "1345678902", "1244668806"
JACK_MEMBER_ID = "UCH100000001"
PAYER_URL = "http://payer.example/fhir"


def connection_create(name: str, npi: str, display_name: str = "UnitedCare Health") -> PayerConnection:
    return PayerConnection.objects.create(
        name=name, display_name=display_name, fhir_base_url=PAYER_URL, client_id=f"{name}-client",
        private_key_path="/nonexistent.pem", key_id="k1", organization_npi=npi,
    )


@pytest.fixture
def grace_connection() -> PayerConnection:
    return connection_create("unitedcare", GRACE_NPI)


@pytest.fixture
def graces_jack(grace_connection) -> HospitalPatient:
    """Grace Hospital fetched Jack Shaw: his history is in the shared local store."""
    history_store(connection=grace_connection, patient_id="pat-jack", member_id=JACK_MEMBER_ID)
    return factories.hospital_patient_create(organization_npi=GRACE_NPI, insurer=grace_connection,
                                             member_id=JACK_MEMBER_ID, payer_patient_id="pat-jack")


@pytest.fixture
def rlee():
    return factories.clinician_create(username="rlee", organization_name="Oakview Family Practice",
                                      organization_npi=OAKVIEW_NPI, display_name="Dr. Robert Lee")


def _client(clinician) -> Client:
    client = Client()
    client.force_login(clinician.user)
    return client


def test_another_organization_cannot_fetch_through_graces_client_nor_read_jacks_history(graces_jack, grace_connection, rlee):
    # The reviewer's reproduction: Oakview holds a patient under Jack's member id with
    # Grace's connection as insurer (registration no longer offers it; older rows may) and
    # fetches. Grace's SMART client would get Jack's data from the payer; Oakview has none.
    client = _client(rlee)
    copy = factories.hospital_patient_create(organization_npi=OAKVIEW_NPI, insurer=grace_connection,
                                             member_id=JACK_MEMBER_ID)
    assert selectors.connections_for_fetch(patient=copy) == []

    page = client.get(f"/emr/patients/{copy.pk}/").content.decode()
    assert "Fetch history from" not in page and "no connection of its own to UnitedCare Health" in page
    jobs = SyncJob.objects.count()
    refused = client.post(f"/emr/patients/{copy.pk}/fetch/{grace_connection.pk}/", HTTP_ACCEPT="application/json")
    assert refused.status_code == 404 and "UnitedCare" not in refused.content.decode()
    with pytest.raises(services.PatientError):
        services.patient_fetch_start(patient=copy, connection=grace_connection, user=rlee.user)
    assert SyncJob.objects.count() == jobs

    # Even a link made some other way (an old link, an edit, Grace's job) shows nothing.
    HospitalPatient.objects.filter(pk=copy.pk).update(payer_patient_id="pat-jack")
    graces_job = PatientSync.objects.get(patient=graces_jack).job
    copy.refresh_from_db()
    assert selectors.payer_patient_find(patient=copy, job=graces_job) == ""
    assert selectors.linked_payer_patient_id(patient=copy) == ""
    page = client.get(f"/emr/patients/{copy.pk}/").content.decode()
    assert 'data-encounter="' not in page
    assert not any(name in page for _, name, _ in FACILITIES)
    assert client.get(f"/emr/patients/{copy.pk}/encounters/enc-3/").status_code == 404
    # Grace's own clinician still sees all of it.
    smith = factories.clinician_create(username="jsmith", organization_npi=GRACE_NPI)
    assert _client(smith).get(f"/emr/patients/{graces_jack.pk}/").content.decode().count('data-encounter="') == len(ENCOUNTERS)


def test_each_organization_fetches_through_its_own_connection(grace_connection, rlee, django_capture_on_commit_callbacks):
    oakview_connection = connection_create("unitedcare-oakview", OAKVIEW_NPI, display_name="UnitedCare Health (Oakview)")
    # The insurer picked is Grace's connection: it names the payer; Oakview fetches through its own client there.
    patient = factories.hospital_patient_create(organization_npi=OAKVIEW_NPI, insurer=grace_connection, member_id=JACK_MEMBER_ID)
    assert selectors.connections_for_fetch(patient=patient) == [oakview_connection]
    client = _client(rlee)
    assert "Fetch history from UnitedCare Health (Oakview)" in client.get(f"/emr/patients/{patient.pk}/").content.decode()

    with django_capture_on_commit_callbacks(execute=False):
        started = client.post(f"/emr/patients/{patient.pk}/fetch/{oakview_connection.pk}/", HTTP_ACCEPT="application/json")
    assert started.status_code == 202, started.content
    job = SyncJob.objects.get()
    assert job.connection == oakview_connection and job.member_id == JACK_MEMBER_ID
    # The incremental-fetch key names the connection, so never Grace's _since.
    assert str(oakview_connection.pk) == job.scope_key.split("|")[0]
    assert client.post(f"/emr/patients/{patient.pk}/fetch/{grace_connection.pk}/").status_code == 404
    assert SyncJob.objects.count() == 1


def test_payer_patient_is_linked_only_by_the_organizations_own_completed_fetch(grace_connection, rlee):
    oakview_connection = connection_create("unitedcare-oakview", OAKVIEW_NPI)
    # Jack's Patient resource is in the shared store (Grace fetched him) ...
    history_store(connection=grace_connection, patient_id="pat-jack", member_id=JACK_MEMBER_ID)
    assert LocalResource.objects.filter(resource_type="Patient", resource_id="pat-jack").exists()
    patient = factories.hospital_patient_create(organization_npi=OAKVIEW_NPI, insurer=oakview_connection, member_id=JACK_MEMBER_ID)

    def oakview_job(status: str, patient_ids: list[str]) -> SyncJob:
        job = SyncJob.objects.create(connection=oakview_connection, level="group", scope_key=f"k{status}", member_id=JACK_MEMBER_ID,
                                     status=status, patient_ids=patient_ids, finished_at=timezone.now())
        PatientSync.objects.create(patient=patient, job=job)
        return job

    # ... but the payer told Oakview's client nothing about him (not attributed to Oakview).
    no_data = oakview_job(SyncJob.Status.NO_DATA, [])
    assert services.patient_sync_link(patient=patient, job=no_data).payer_patient_id == ""
    # A completed job that did not resolve the member (e.g. a group fetch) never links by
    # searching the shared store for the member id.
    unresolved = oakview_job(SyncJob.Status.COMPLETED, [])
    assert selectors.payer_patient_find(patient=patient, job=unresolved) == ""
    assert services.patient_sync_link(patient=patient, job=unresolved).payer_patient_id == ""
    assert history.patient_history(patient=patient).total == 0

    # Once the payer answers Oakview's own client with Jack, the link holds, yet Oakview
    # still sees none of what Grace's connection fetched: the store is partitioned by source.
    resolved = oakview_job(SyncJob.Status.COMPLETED, ["pat-jack"])
    assert services.patient_sync_link(patient=patient, job=resolved).payer_patient_id == "pat-jack"
    # The link is checked against the Patient record of Oakview's own connection, and there
    # is none (Grace's connection stored it): nothing is shown (emr/linking.py).
    assert history.patient_history(patient=patient).total == 0
    assert patient.link_decisions.get().verdict == LinkDecision.Verdict.UNVERIFIED
    # What Oakview's own connection stored, it sees once the link is checked against it.
    history_store(connection=oakview_connection, patient_id="pat-jack", member_id=JACK_MEMBER_ID)
    assert len(history.patient_history(patient=patient).encounters) == len(ENCOUNTERS)
    assert patient.link_decisions.first().verdict == LinkDecision.Verdict.MATCH


def test_register_patient_offers_only_the_organizations_own_payer_connections(grace_connection, rlee):
    oakview_connection = connection_create("unitedcare-oakview", OAKVIEW_NPI, display_name="UnitedCare (Oakview)")
    client = _client(rlee)

    page = client.get("/emr/patients/add/").content.decode()
    chose_grace = client.post("/emr/patients/add/", {
        "given": "Ann", "family": "Lee", "birth_date": "1980-01-01", "gender": "female",
        "insurer": grace_connection.pk, "member_id": JACK_MEMBER_ID,
    })

    assert f'value="{oakview_connection.pk}"' in page and f'value="{grace_connection.pk}"' not in page
    assert chose_grace.status_code == 200 and "Select a valid choice" in chose_grace.content.decode()
    assert not HospitalPatient.objects.filter(family="Lee").exists()
