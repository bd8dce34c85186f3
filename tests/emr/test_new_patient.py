"""Issue 9, hospital side, over real HTTP with a real Celery worker: a new patient with no
claims at the hospital, registered with his demographics and the clinician's attestation,
gets his history in one click (PDex 2.2 ``$provider-member-match``, then
``$davinci-data-export`` on the MatchedMembers Group); one registered with another member's
id sees nothing from that record and is told what differs; a second organization sees
none of the first's links. The payer is tests/provider/fake_payer.py (a real HTTP server)."""

import time

import pytest
from django.test import Client

from emr.models import AccessEvent, HospitalPatient, LinkDecision, TreatmentAttestation
from provider.models import LocalResource, PayerConnection, SyncJob
from provider.services.connections import payer_connection_create
from tests import factories
from tests.conftest import wait_for
from tests.provider.bulk_data import CLIENT_ID, patient
from tests.provider.conftest import fake_payer, key_file, rsa_keys  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

GRACE_NPI = "1345678902"
OAKVIEW_NPI = "1244668806"
SMITH_NPI = "1987654328"


@pytest.fixture
def payer(fake_payer):  # noqa: F811
    fake_payer.member_match = fake_payer.davinci = True
    fake_payer.poll_script = []
    # Daniel Okafor: a member with a history elsewhere, on no attribution Group of Grace.
    okafor = {**patient("p9", "UCH100000070", "Okafor"), "name": [{"family": "Okafor", "given": ["Daniel"]}],
              "birthDate": "1978-09-23"}
    fake_payer.resources["Patient"].append(okafor)
    fake_payer.resources["Encounter"] += [
        {"resourceType": "Encounter", "id": f"e9-{n}", "status": "finished", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/p9"}, "period": {"start": f"202{n}-05-01T09:00:00Z", "end": f"202{n}-05-01T10:00:00Z"}}
        for n in range(1, 5)
    ]
    return fake_payer


def connection_for(payer, key_file, name: str, npi: str) -> PayerConnection:  # noqa: F811
    connection = payer_connection_create(
        name=name, display_name="UnitedCare Health", fhir_base_url=payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=payer.key_id,
    )
    connection.organization_npi = npi
    connection.save(update_fields=["organization_npi"])
    return connection


@pytest.fixture
def grace(payer, key_file):  # noqa: F811
    return connection_for(payer, key_file, "unitedcare", GRACE_NPI)


@pytest.fixture
def smith():
    clinician = factories.clinician_create(username="jsmith", organization_npi=GRACE_NPI)
    clinician.npi = SMITH_NPI
    clinician.save(update_fields=["npi"])
    return clinician


def client_for(clinician) -> Client:
    client = Client()
    client.force_login(clinician.user)
    return client


def register(client: Client, connection: PayerConnection, **fields) -> HospitalPatient:
    data = {"given": "Daniel", "family": "Okafor", "birth_date": "1978-09-23", "gender": "male",
            "insurer": connection.pk, "member_id": "UCH100000070", "attest": "on", **fields}
    response = client.post("/emr/patients/add/", data)
    assert response.status_code == 302, response.content.decode()[:2000]
    return HospitalPatient.objects.get(pk=int(response["Location"].rstrip("/").rsplit("/", 1)[-1]))


def fetch(client: Client, patient: HospitalPatient, connection: PayerConnection, worker, **data) -> tuple[SyncJob, float]:
    started = time.monotonic()
    response = client.post(f"/emr/patients/{patient.pk}/fetch/{connection.pk}/", data, HTTP_ACCEPT="application/json")
    assert response.status_code == 202, response.content
    progress_url = response.json()["progress_url"]
    body = wait_for(lambda: (b := client.get(progress_url).json())["done"] and b, timeout=60,
                    message=f"the fetch\n{worker.log()[-3000:]}")
    return SyncJob.objects.get(pk=body["id"]), time.monotonic() - started


def test_new_patient_with_no_claims_gets_his_history_in_one_click(celery_worker, payer, grace, smith):
    client = client_for(smith)
    daniel = register(client, grace)
    # The attestation is explicit and stored: who, when, what was attested.
    attestation = TreatmentAttestation.objects.get(patient=daniel)
    assert attestation.practitioner_npi == SMITH_NPI and attestation.user == smith.user
    assert "Dr. James Smith" in attestation.statement and "Daniel Okafor" in attestation.statement
    assert AccessEvent.objects.filter(patient=daniel, action=AccessEvent.Action.ATTEST).exists()

    job, elapsed = fetch(client, daniel, grace, celery_worker)
    assert job.status == SyncJob.Status.COMPLETED, (job.error, celery_worker.log()[-3000:])
    print(f"\nNew patient: fetch click to history ready {elapsed:.2f} s (member match + export, {job.poll_count} polls)")
    # The member was found by $provider-member-match with his demographics and the attestation ...
    match = payer.requests_to("/Group/$provider-member-match", "POST")[0].body["parameter"][0]["part"]
    sent = {p["name"]: p["resource"] for p in match}
    assert sent["MemberPatient"]["name"][0] == {"use": "official", "family": "Okafor", "given": ["Daniel"]}
    assert sent["MemberPatient"]["birthDate"] == "1978-09-23" and sent["MemberPatient"]["gender"] == "male"
    assert sent["CoverageToMatch"]["subscriberId"] == "UCH100000070"
    assert sent["Consent"]["performer"][0]["identifier"]["value"] == SMITH_NPI
    assert sent["Consent"]["dateTime"].startswith(attestation.attested_at.date().isoformat())
    # ... and the export ran on the MatchedMembers Group.
    assert job.group_id.startswith("match-") and job.patient_ids == ["p9"]

    page = client.get(f"/emr/patients/{daniel.pk}/")
    html = page.content.decode()
    assert page.context["history"].total >= 4 and len(page.context["history"].encounters) == 4
    assert "Linked, name, birth date and sex checked" in html
    decision = LinkDecision.objects.get(patient=daniel)
    assert decision.verdict == LinkDecision.Verdict.MATCH and decision.decided_by == smith.user
    assert (decision.name_matches, decision.birth_date_matches, decision.sex_matches) == (True, True, True)


def test_another_members_id_shows_nothing_and_says_what_differs(celery_worker, payer, grace, smith):
    # Attributed, so the fetch returns data; but M100 is Jack Shaw (born 1970-03-04), not
    # the Dana Rivera registered with it. Without an attestation: the attribution Group path.
    client = client_for(smith)
    dana = register(client, grace, given="Dana", family="Rivera", birth_date="1970-05-05", gender="female",
                    member_id="M100", attest="")
    job, _ = fetch(client, dana, grace, celery_worker)
    assert job.status == SyncJob.Status.COMPLETED, job.error
    assert not payer.requests_to("$provider-member-match")  # no attestation: v1 lookup
    assert LocalResource.objects.filter(resource_type="Encounter", patient_id="p1").count() == 7

    page = client.get(f"/emr/patients/{dana.pk}/")
    html = page.content.decode()
    assert page.context["history"].total == 0
    assert "The plan&#x27;s record for member M100 has another name, birth date and sex." in html
    assert "e1-1" not in html and "Shaw" not in html
    decision = LinkDecision.objects.get(patient=dana)
    assert decision.verdict == LinkDecision.Verdict.MISMATCH and decision.decided_by == smith.user
    assert (decision.name_matches, decision.birth_date_matches, decision.sex_matches) == (False, False, False)
    # Nor does an encounter of that record open.
    assert client.get(f"/emr/patients/{dana.pk}/encounters/e1-1/").status_code == 404

    # The way out: correct the member id; the old link goes.
    response = client.post(f"/emr/patients/{dana.pk}/member-id/", {"member_id": "UCH100000099"})
    assert response.status_code == 302
    dana.refresh_from_db()
    assert dana.member_id == "UCH100000099" and dana.payer_patient_id == ""
    assert AccessEvent.objects.filter(patient=dana, action=AccessEvent.Action.CORRECT).exists()


def test_birth_date_alone_differing_is_named(celery_worker, payer, grace, smith):
    client = client_for(smith)
    jack = register(client, grace, given="JACK", family="Shaw Jr.", birth_date="1970-03-05", gender="male",
                    member_id="M100", attest="")
    fetch(client, jack, grace, celery_worker)
    html = client.get(f"/emr/patients/{jack.pk}/").content.decode()
    # Case and the suffix are normalized away; the birth date is not.
    assert "The plan&#x27;s record for member M100 has another birth date." in html


def test_not_matched_says_why(celery_worker, payer, grace, smith):
    client = client_for(smith)
    wrong = register(client, grace, birth_date="1978-09-24")  # the payer matches no one
    job, _ = fetch(client, wrong, grace, celery_worker)
    assert job.status == SyncJob.Status.NO_DATA
    body = client.get(f"/emr/patients/{wrong.pk}/syncs/{job.pk}/").json()
    assert body["message"] == ("UnitedCare Health returned no data for this patient: the payer found no member "
                               "matching this patient's demographics and member id.")


def test_consent_constrained_and_refused_attestation_say_why(celery_worker, payer, grace, smith):
    client = client_for(smith)
    payer.opted_out = {"p9"}
    daniel = register(client, grace)
    job, _ = fetch(client, daniel, grace, celery_worker)
    assert "opted out of sharing data with providers" in client.get(f"/emr/patients/{daniel.pk}/syncs/{job.pk}/").json()["message"]
    payer.opted_out, payer.refuse_attestation = set(), True
    job, _ = fetch(client, daniel, grace, celery_worker)
    message = client.get(f"/emr/patients/{daniel.pk}/syncs/{job.pk}/").json()["message"]
    assert "did not accept the treatment relationship attestation" in message


def test_second_organization_sees_none_of_the_firsts_links(celery_worker, payer, grace, smith, key_file):  # noqa: F811
    client = client_for(smith)
    daniel = register(client, grace)
    fetch(client, daniel, grace, celery_worker)
    assert client.get(f"/emr/patients/{daniel.pk}/").context["history"].total > 0

    oakview = connection_for(payer, key_file, "unitedcare-oakview", OAKVIEW_NPI)
    lee = factories.clinician_create(username="rlee", organization_npi=OAKVIEW_NPI, organization_name="Oakview")
    other = client_for(lee)
    # Oakview cannot open Grace's patient, its attestations or its link decisions ...
    assert other.get(f"/emr/patients/{daniel.pk}/").status_code == 404
    assert other.post(f"/emr/patients/{daniel.pk}/member-id/", {"member_id": "X"}).status_code == 404
    # ... and its own registration of the same member shows nothing until its own fetch.
    response = other.post("/emr/patients/add/", {"given": "Daniel", "family": "Okafor", "birth_date": "1978-09-23",
                                                  "gender": "male", "insurer": oakview.pk, "member_id": "UCH100000070"})
    mine = HospitalPatient.objects.get(organization_npi=OAKVIEW_NPI)
    page = other.get(f"/emr/patients/{mine.pk}/")
    assert page.context["history"].total == 0 and page.context["link"] is None
    assert not LinkDecision.objects.filter(patient=mine).exists()
    assert "Patient/p9" not in page.content.decode()
    # Lee has no NPI: no attestation can be given in his name.
    assert TreatmentAttestation.objects.filter(patient=mine).count() == 0
    assert response.status_code == 302


def test_attestation_needs_an_npi(payer, grace):
    patel = factories.clinician_create(username="apatel", organization_npi=GRACE_NPI, display_name="Dr. Anika Patel")
    client = client_for(patel)
    response = client.post("/emr/patients/add/", {"given": "Daniel", "family": "Okafor", "birth_date": "1978-09-23",
                                                  "gender": "male", "insurer": grace.pk, "member_id": "UCH100000070",
                                                  "attest": "on"})
    assert response.status_code == 200 and "has no NPI" in response.content.decode()
    assert not HospitalPatient.objects.exists()
