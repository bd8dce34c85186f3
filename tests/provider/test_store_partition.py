"""Two payers, two organizations, the same ids for different people: the local store keeps
each source apart (issue: "a local store partitioned by payer and organization").

Both payers are real HTTP servers (tests/provider/fake_payer.py) that number their
resources the same way, as sequential ids do without malice: Patient/p1 is Jack Shaw at
UnitedCare (Grace Hospital's connection) and Maria Lopez at the second payer (Oakview
Family Practice's connection), and both send Encounter/e1-1 and Practitioner/pr1.
"""

import datetime as dt
from collections.abc import Iterator

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client

from emr import selectors
from emr.models import HospitalPatient, PatientSync
from provider.models import LocalResource, PayerConnection, StoreReader, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import sync_job_run_inline, sync_job_start
from tests import factories
from tests.provider.bulk_data import CLIENT_ID, condition, dataset, encounter
from tests.provider.fake_payer import FakePayer

pytestmark = pytest.mark.django_db(transaction=True)

GRACE_NPI, OAKVIEW_NPI = "1345678902", "1244668806"
PASSWORD = "correct horse battery staple"


def _visit(resource: dict, text: str, practitioner: str = "pr1") -> dict:
    return {**resource, "type": [{"text": text}], "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}]}


def _practitioner(family: str, given: str, updated: str = "2025-01-01T00:00:00Z") -> dict:
    return {"resourceType": "Practitioner", "id": "pr1", "meta": {"lastUpdated": updated},
            "name": [{"family": family, "given": [given]}]}



@pytest.fixture
def unitedcare(fake_payer) -> FakePayer:
    """Grace Hospital's payer: Jack Shaw is Patient/p1, seen by Dr. Ada Grant (pr1)."""
    fake_payer.resources["Encounter"] = [
        _visit(e, "UnitedCare visit") for e in fake_payer.resources["Encounter"]
    ]
    fake_payer.resources["Practitioner"] = [_practitioner("Grant", "Ada")]
    return fake_payer


@pytest.fixture
def second_payer(rsa_keys) -> Iterator[FakePayer]:
    """Oakview's payer: the same ids for other people. Its p1 is Maria Lopez, its pr1 Dr. Evil,
    and its newer lastUpdated would have won the old shared store."""
    _, groups = dataset()
    newer = "2026-06-01T00:00:00Z"
    maria = {
        "resourceType": "Patient", "id": "p1", "meta": {"lastUpdated": newer},
        "identifier": [{"system": "https://second.example/member-id", "value": "S900"}],
        "name": [{"family": "Lopez", "given": ["Maria"]}], "gender": "female", "birthDate": "1988-11-20",
    }
    resources = {
        "Patient": [maria],
        "Encounter": [_visit(encounter(f"e1-{n}", "p1", f"2025-0{n}-15T09:00:00Z", updated=newer), "INJECTED by the second payer")
                      for n in range(1, 4)],
        "Condition": [condition("c1", "p1")],
        "Practitioner": [_practitioner("Evil", "Doctor", updated=newer)],
    }
    groups[0]["member"] = [{"entity": {"reference": "Patient/p1"}}]
    payer = FakePayer(client_id=CLIENT_ID, public_key=rsa_keys[1], resources=resources, groups=groups).start()
    yield payer
    payer.stop()


@pytest.fixture
def sources(unitedcare, second_payer, key_file) -> tuple[PayerConnection, PayerConnection]:
    grace = payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=unitedcare.base_url, client_id=CLIENT_ID,
        private_key_path=str(key_file), key_id=unitedcare.key_id, organization_npi=GRACE_NPI,
    )
    oakview = payer_connection_create(
        name="second-payer", display_name="Second Payer", fhir_base_url=second_payer.base_url, client_id=CLIENT_ID,
        private_key_path=str(key_file), key_id=second_payer.key_id, organization_npi=OAKVIEW_NPI,
    )
    return grace, oakview


def _fetch(patient: HospitalPatient, connection: PayerConnection) -> SyncJob:
    """What the EMR's Fetch button does, run to its end in this process over real HTTP."""
    job = sync_job_start(connection=connection, member_id=patient.member_id, enqueue=False)
    PatientSync.objects.create(patient=patient, job=job)
    job = sync_job_run_inline(job=job)
    from emr import services

    services.patient_sync_link(patient=patient, job=job)
    return job


@pytest.fixture
def people(sources):
    grace, oakview = sources
    smith = factories.clinician_create(username="jsmith", organization_npi=GRACE_NPI)
    rlee = factories.clinician_create(username="rlee", organization_npi=OAKVIEW_NPI, organization_name="Oakview Family Practice",
                                      display_name="Dr. Robert Lee")
    jack = factories.hospital_patient_create(organization_npi=GRACE_NPI, insurer=grace, member_id="M100",
                                             birth_date=dt.date(1970, 3, 4))
    maria = factories.hospital_patient_create(organization_npi=OAKVIEW_NPI, insurer=oakview, member_id="S900",
                                              family="Lopez", given="Maria", birth_date=dt.date(1988, 11, 20))
    HospitalPatient.objects.filter(pk=maria.pk).update(gender="female")
    maria.refresh_from_db()
    return smith, rlee, jack, maria


def _page(clinician, patient) -> str:
    client = Client()
    client.force_login(clinician.user)
    response = client.get(f"/emr/patients/{patient.pk}/")
    assert response.status_code == 200
    return response.content.decode()


def _encounter_page(clinician, patient, encounter_id: str) -> int:
    client = Client()
    client.force_login(clinician.user)
    return client.get(f"/emr/patients/{patient.pk}/encounters/{encounter_id}/").status_code


def test_same_ids_from_two_payers_are_both_kept_and_each_organization_sees_only_its_own(sources, people):
    grace, oakview = sources
    smith, rlee, jack, maria = people

    assert _fetch(jack, grace).status == SyncJob.Status.COMPLETED
    assert _fetch(maria, oakview).status == SyncJob.Status.COMPLETED

    # Both kept: each source holds its own Patient/p1, Encounter/e1-1 and Practitioner/pr1.
    for resource_type, resource_id in [("Patient", "p1"), ("Encounter", "e1-1"), ("Practitioner", "pr1")]:
        rows = LocalResource.objects.filter(resource_type=resource_type, resource_id=resource_id)
        assert sorted(rows.values_list("connection__name", flat=True)) == ["second-payer", "unitedcare"]
    assert LocalResource.objects.get(connection=grace, resource_type="Patient", resource_id="p1").resource["name"][0]["family"] == "Shaw"

    jack_page = _page(smith, jack)
    assert jack_page.count('data-encounter="') == 7 and "UnitedCare visit" in jack_page
    assert "INJECTED" not in jack_page and "Evil" not in jack_page
    maria_page = _page(rlee, maria)
    assert maria_page.count('data-encounter="') == 3 and "INJECTED by the second payer" in maria_page
    assert "UnitedCare visit" not in maria_page
    # The encounter detail resolves Practitioner/pr1 within its own source.
    client = Client()
    client.force_login(smith.user)
    detail = client.get(f"/emr/patients/{jack.pk}/encounters/e1-1/").content.decode()
    assert "Ada Grant" in detail and "Evil" not in detail
    # Jack's e1-5 exists only at UnitedCare; Oakview cannot open it under Maria.
    assert _encounter_page(rlee, maria, "e1-5") == 404
    # Neither organization reaches the other's patient at all.
    assert _encounter_page(rlee, jack, "e1-1") == 404 and _encounter_page(smith, maria, "e1-1") == 404


def test_a_deletion_or_a_newer_version_from_one_payer_touches_nothing_of_the_other(sources, people, second_payer):
    grace, oakview = sources
    smith, rlee, jack, maria = people
    _fetch(jack, grace)
    _fetch(maria, oakview)
    graces_e1_1 = LocalResource.objects.get(connection=grace, resource_type="Encounter", resource_id="e1-1").resource

    # The second payer deletes its e1-2 and sends a newer e1-1 (an incremental fetch).
    second_payer.deleted_refs = ["Encounter/e1-2"]
    second_payer.resources["Encounter"][0] = _visit(
        encounter("e1-1", "p1", "2025-01-15T09:00:00Z", updated="2099-01-01T00:00:00Z"), "Second payer, corrected"
    )
    job = _fetch(maria, oakview)
    assert job.status == SyncJob.Status.COMPLETED and job.since is not None

    assert not LocalResource.objects.filter(connection=oakview, resource_type="Encounter", resource_id="e1-2").exists()
    assert LocalResource.objects.filter(connection=grace, resource_type="Encounter", resource_id="e1-2").exists()
    assert LocalResource.objects.get(connection=grace, resource_type="Encounter", resource_id="e1-1").resource == graces_e1_1
    assert LocalResource.objects.get(connection=oakview, resource_type="Encounter", resource_id="e1-1").resource["type"][0]["text"] == "Second payer, corrected"
    assert _page(smith, jack).count('data-encounter="') == 7
    assert _page(rlee, maria).count('data-encounter="') == 2


def test_access_ending_marks_what_was_received_and_shows_nothing_newer(sources, people, unitedcare, settings):
    grace, oakview = sources
    smith, rlee, jack, maria = people
    _fetch(jack, grace)
    _fetch(maria, oakview)
    assert _page(smith, jack).count('data-encounter="') == 7

    # UnitedCare ends Grace's attribution of Jack: its next answer has nothing for him.
    unitedcare.groups[0]["member"] = [m for m in unitedcare.groups[0]["member"] if m["entity"]["reference"] != "Patient/p1"]
    assert _fetch(jack, grace).status == SyncJob.Status.NO_DATA
    link = selectors.payer_link(patient=jack)
    assert link.connection == grace and link.ended_at is not None

    # What Grace received before stays in its record (issue 14), marked as received then and
    # no longer shared; a row stored after the end (none should be) is never shown.
    late = LocalResource.objects.filter(connection=grace, resource_type="Encounter").first()
    LocalResource.objects.filter(pk=late.pk).update(ingested_at=link.ended_at + dt.timedelta(seconds=1))
    page = _page(smith, jack)
    assert "data-history-ended" in page and "UnitedCare Health no longer shares this patient" in page
    assert "no longer shared" in page and "is not updated any more" in page
    assert page.count('data-encounter="') == 6 and f'data-encounter="{late.resource_id}"' not in page
    assert _encounter_page(smith, jack, late.resource_id) == 404
    # The other organization's patient is untouched.
    assert _page(rlee, maria).count('data-encounter="') == 3

    # A hospital that chose to hide it: nothing from that source shows, and the page says so.
    settings.EMR_HISTORY_AFTER_SHARING_ENDS = "hide"
    page = _page(smith, jack)
    assert 'data-encounter="' not in page and "data-history-ended" in page
    assert "setting is to hide what was received" in page
    assert _encounter_page(smith, jack, "e1-1") == 404
    # The rows stay in the store (the hospital's copy of what it received), out of view.
    assert LocalResource.objects.filter(connection=grace, resource_type="Encounter").count() == 7

    # Access restored: the next fetch completes, and the whole history shows again.
    unitedcare.groups[0]["member"].append({"entity": {"reference": "Patient/p1"}})
    assert _fetch(jack, grace).status == SyncJob.Status.COMPLETED
    assert _page(smith, jack).count('data-encounter="') == 7


def _api_user(username: str, *, organization_npi: str | None = None, staff: bool = False):
    user = get_user_model().objects.create_user(username, password=PASSWORD)
    if staff:
        user.user_permissions.add(Permission.objects.get(codename="view_localresource", content_type__app_label="provider"))
    if organization_npi:
        StoreReader.objects.create(user=user, organization_npi=organization_npi)
    session = requests.Session()
    session.auth = (username, PASSWORD)
    return session


def test_local_fhir_api_answers_per_organization_and_names_sources_when_merged(live_server, sources, people, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    grace, oakview = sources
    smith, rlee, jack, maria = people
    _fetch(jack, grace)
    _fetch(maria, oakview)
    base = f"{live_server.url}/provider/fhir"

    # Grace's integration engine: only Grace's source, even holding the staff permission.
    grace_system = _api_user("grace-engine", organization_npi=GRACE_NPI, staff=True)
    patients = grace_system.get(f"{base}/Patient").json()
    assert [e["resource"]["name"][0]["family"] for e in patients["entry"]] == ["Shaw"]
    assert grace_system.get(f"{base}/Patient/p1").json()["name"][0]["family"] == "Shaw"
    encounters = grace_system.get(f"{base}/Encounter", params={"patient": "p1", "_include": "Encounter:practitioner"}).json()
    included = [e["resource"] for e in encounters["entry"] if e["search"]["mode"] == "include"]
    assert [p["name"][0]["family"] for p in included] == ["Grant"]
    # Another organization's source is not reachable, by its own base either.
    denied = grace_system.get(f"{base}/source/second-payer/Patient/p1")
    assert denied.status_code == 403 and denied.json()["resourceType"] == "OperationOutcome"

    # Staff read the merged view: an id two sources hold is never silently one of them.
    staff = _api_user("records-office", staff=True)
    ambiguous = staff.get(f"{base}/Patient/p1")
    assert ambiguous.status_code == 300 and ambiguous.json()["issue"][0]["code"] == "multiple-matches"
    assert f"{base}/source/unitedcare/Patient/p1" in ambiguous.json()["issue"][0]["diagnostics"]
    assert staff.get(f"{base}/source/second-payer/Patient/p1").json()["name"][0]["family"] == "Lopez"
    merged = staff.get(f"{base}/Patient", params={"_id": "p1"}).json()
    assert merged["total"] == 2
    assert sorted(e["fullUrl"] for e in merged["entry"]) == [
        f"{base}/source/second-payer/Patient/p1", f"{base}/source/unitedcare/Patient/p1",
    ]
    assert sorted(e["resource"]["meta"]["source"] for e in merged["entry"]) == sorted([grace.fhir_base_url, oakview.fhir_base_url])
    # A clinician's account holds neither grant nor permission: 403.
    clinician = requests.Session()
    smith.user.set_password(PASSWORD)
    smith.user.save()
    clinician.auth = ("jsmith", PASSWORD)
    assert clinician.get(f"{base}/Patient").status_code == 403
