"""The EMR demo seed: Grace Hospital's clinicians and patients, idempotent."""

import pytest
from django.core.management import call_command
from django.test import Client

from emr import demo
from emr.models import Clinician, HospitalPatient
from payer.services import demo as payer_demo
from provider.models import PayerConnection

pytestmark = pytest.mark.django_db


def test_seed_matches_the_payers_demo():
    # The hospital's code never imports the payer's: the shared facts are kept equal here.
    assert demo.JACK_SHAW_MEMBER_ID == payer_demo.JACK_SHAW_MEMBER_ID
    assert demo.GRACE_NPI == payer_demo.GRACE_HOSPITAL_NPI
    assert demo.OAKVIEW_NPI == payer_demo.OAKVIEW_NPI


def test_seed_emr_is_idempotent_and_links_the_connection():
    call_command("seed_emr")
    assert HospitalPatient.objects.filter(insurer__isnull=False).count() == 0
    connection = PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="http://payer.example/fhir",
        client_id="grace", private_key_path="/nonexistent.pem", key_id="k1",
    )
    call_command("seed_emr")
    assert Clinician.objects.count() == len(demo.CLINICIANS)
    assert HospitalPatient.objects.count() == len(demo.PATIENTS)
    jack = HospitalPatient.objects.get(family="Shaw", given="Jack")
    assert jack.organization_npi == demo.GRACE_NPI and jack.member_id == demo.JACK_SHAW_MEMBER_ID
    assert jack.insurer == connection
    # The demo's connection is Grace Hospital's SMART client: bound to Grace's NPI.
    connection.refresh_from_db()
    assert connection.organization_npi == demo.GRACE_NPI

    client = Client()
    assert client.post("/emr/login/", {"username": "jsmith", "password": "grace-demo"}).status_code == 302
    listing = client.get("/emr/").content.decode()
    assert "Shaw</strong>, Jack" in listing and "Helen" not in listing  # Helen Shaw is Oakview's patient
    assert listing.count("<tr>") - 1 == sum(1 for p in demo.PATIENTS if p[0] == demo.GRACE_NPI)


def test_emr_banner_prints_the_emr_and_every_login():
    import io

    out = io.StringIO()
    call_command("emr_banner", "--port", "8123", stdout=out)
    text = out.getvalue()
    assert "http://127.0.0.1:8123/emr/" in text
    for username, display_name, _, _, password, _ in demo.CLINICIANS:
        assert display_name in text and f"{username} / {password}" in text


def test_seeded_patients_are_the_payers_members():
    # Issue 9: the EMR seed once gave 10 of 11 other Grace patients another member's id
    # (Sarah Kim, F 1992, showed James Wright's history). Each seeded patient with a member
    # id must be that member as the demo payer seeds him: same name, birth date and sex, so
    # the link check (emr/linking.py) passes on every one.
    from emr.linking import demographics_compare

    builders = {b.member_id: b for b in payer_demo.demo_builders(today=payer_demo.demo_today())}
    checked = 0
    for npi, mrn, given, family, birth_date, gender, member_id in demo.PATIENTS:
        if not member_id:
            continue
        resource = next(r.resource for r in builders[member_id].rows if r.resource["resourceType"] == "Patient")
        patient = HospitalPatient(given=given, family=family, birth_date=birth_date, gender=gender)
        comparison = demographics_compare(patient=patient, resource=resource)
        assert (comparison.name, comparison.birth_date, comparison.sex) == (True, True, True), (mrn, resource["name"])
        checked += 1
    assert checked == len([p for p in demo.PATIENTS if p[-1]])
    assert demo.DR_SMITH_NPI == payer_demo.DR_SMITH_NPI


def test_new_patient_is_the_payers():
    # The new patient the README registers (needs the payer's seed of issue 9, branch i9payer).
    new = demo.NEW_PATIENT
    assert (new["member_id"], new["given"], new["family"], new["birth_date"], new["gender"]) == (
        payer_demo.NEW_PATIENT_MEMBER_ID, payer_demo.NEW_PATIENT_GIVEN, payer_demo.NEW_PATIENT_FAMILY,
        payer_demo.NEW_PATIENT_BIRTH_DATE, payer_demo.NEW_PATIENT_GENDER)
