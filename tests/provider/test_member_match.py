"""The client's PDex 2.2 ``$provider-member-match`` against a real HTTP payer (tests/provider/fake_payer.py):
the async kick-off, polling, the Group NDJSON manifest, the three outcome Groups, and the
fallback to the attribution Group when the payer does not declare the operation."""

import datetime as dt

import pytest
from django.core.management import call_command

from provider.bulk_client import (
    CONSENT_CONSTRAINED,
    MATCHED,
    NON_MATCHED,
    member_match_groups_parse,
)
from provider.models import LocalResource, PayerConnection, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import member_bundle_build, sync_job_progress, sync_job_run_inline, sync_job_start
from tests.provider.bulk_data import CLIENT_ID, patient

pytestmark = pytest.mark.django_db(transaction=True)

NOW = dt.datetime(2026, 1, 5, 9, 30, tzinfo=dt.UTC)


@pytest.fixture(autouse=True)
def fast_sync(settings, tmp_path):
    settings.PA_SYNC_POLL_CAP_SECONDS = 1
    settings.PA_SYNC_DIR = str(tmp_path / "sync")


@pytest.fixture
def connection(fake_payer, key_file) -> PayerConnection:
    fake_payer.member_match = True
    fake_payer.davinci = True
    # A new patient: a member of the plan on no attribution Group of this client.
    fake_payer.resources["Patient"].append({**patient("p9", "M900", "Okafor"), "birthDate": "1978-09-23"})
    fake_payer.resources["Encounter"].append(
        {"resourceType": "Encounter", "id": "e9-1", "status": "finished", "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/p9"}, "period": {"start": "2024-05-01T09:00:00Z"}})
    return payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=fake_payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=fake_payer.key_id,
    )


def bundle(*, member_id: str = "M900", family: str = "Okafor", birth_date: str = "1978-09-23") -> dict:
    return member_bundle_build(
        submitted_id="hosp-1", family=family, given="Jack", birth_date=birth_date, gender="male", member_id=member_id,
        payer_name="UnitedCare Health", practitioner_npi="1987654328", practitioner_name="Dr. James Smith",
        organization_npi="1345678902", organization_name="Grace Hospital", attested_at=NOW, period_start="2026-01-05",
    )


def run(connection, member_bundle: dict, member_id: str = "M900") -> SyncJob:
    job = sync_job_start(connection=connection, member_id=member_id, member_bundle=member_bundle, enqueue=False)
    return sync_job_run_inline(job=job, parallel=1)


def test_new_patient_is_matched_then_exported_through_the_matched_group(fake_payer, connection):
    job = run(connection, bundle())
    assert job.status == SyncJob.Status.COMPLETED, job.error
    kick = fake_payer.requests_to("/Group/$provider-member-match", "POST")
    assert len(kick) == 1
    # The asynchronous pattern (provider-access-api-v2.md): Prefer respond-async, FHIR JSON.
    assert kick[0].headers["Prefer"] == "respond-async"
    assert kick[0].headers["Content-Type"] == "application/fhir+json"
    parts = {p["name"]: p["resource"] for p in kick[0].body["parameter"][0]["part"]}
    assert set(parts) == {"MemberPatient", "CoverageToMatch", "Consent"}  # §pdex-255
    assert parts["CoverageToMatch"]["subscriberId"] == "M900"
    consent = parts["Consent"]
    assert consent["performer"][0]["identifier"]["value"] == "1987654328"
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"} in consent["provision"]["purpose"]
    # Each resource the client sends is valid FHIR (R4B models, the nearest to R4).
    from fhir.resources.R4B.consent import Consent
    from fhir.resources.R4B.coverage import Coverage
    from fhir.resources.R4B.patient import Patient

    Patient.model_validate(parts["MemberPatient"]), Coverage.model_validate(parts["CoverageToMatch"]), Consent.model_validate(consent)
    # §pdex-262: the export runs on the MatchedMembers Group's id.
    assert job.group_id.startswith("match-") and job.patient_ids == ["p9"]
    assert fake_payer.requests_to(f"/Group/{job.group_id}/$davinci-data-export", "POST")
    assert job.member_match["outcome"] == MATCHED
    assert LocalResource.objects.filter(resource_type="Encounter", patient_id="p9").count() == 1
    # The match's status URL is released once its Groups are read (Bulk Data req 119).
    assert any("/status/" in r.path for r in fake_payer.requests_to("/status/", "DELETE"))


def test_another_members_id_is_not_matched_and_says_why(fake_payer, connection):
    job = run(connection, bundle(member_id="M100"), member_id="M100")  # Jack Shaw's id, Okafor's name
    assert job.status == SyncJob.Status.NO_DATA
    assert job.member_match["outcome"] == NON_MATCHED
    assert "no member matching" in sync_job_progress(job=job)["no_data_reason"]
    assert not fake_payer.requests_to("$davinci-data-export")


def test_consent_constrained_member_gets_no_data_and_the_reason(fake_payer, connection):
    fake_payer.opted_out = {"p9"}
    job = run(connection, bundle())
    assert job.status == SyncJob.Status.NO_DATA
    assert job.member_match["outcome"] == "consentconstrained"
    assert "opted out" in sync_job_progress(job=job)["no_data_reason"]


def test_suppressed_opt_out_looks_like_no_match(fake_payer, connection):
    # §pdex-261a: a payer that suppresses ConsentConstrainedMembers reports NonMatched.
    fake_payer.opted_out, fake_payer.disclose_opt_out = {"p9"}, False
    job = run(connection, bundle())
    assert job.member_match["outcome"] == NON_MATCHED


def test_refused_attestation_says_so(fake_payer, connection):
    fake_payer.refuse_attestation = True
    job = run(connection, bundle())
    assert job.status == SyncJob.Status.NO_DATA
    assert job.member_match["outcome"] == "refused"
    assert "attestation" in sync_job_progress(job=job)["no_data_reason"]
    assert "practitioner is unknown" in job.error


def test_missing_attestation_422_is_no_data_with_the_payers_words(fake_payer, connection):
    member_bundle = bundle()
    member_bundle["part"] = [p for p in member_bundle["part"] if p["name"] != "Consent"]
    job = run(connection, member_bundle)
    assert job.status == SyncJob.Status.NO_DATA and job.member_match["outcome"] == "refused"
    assert "attestation" in job.error and "answered 422" in job.error
    # The payer's own words, for the clinician; the status code stays in the error, for IT.
    assert job.member_match["message"] == "MemberBundle part Consent (the treatment attestation) is required."


def test_payer_without_member_match_falls_back_to_the_attribution_group(fake_payer, connection):
    fake_payer.member_match = False
    job = run(connection, {**bundle(member_id="M100")}, member_id="M100")
    assert job.status == SyncJob.Status.COMPLETED
    assert job.group_id == "g1" and job.patient_ids == ["p1"]
    assert not fake_payer.requests_to("$provider-member-match")


def test_groups_are_told_apart_by_profile_then_code():
    pdex = "http://hl7.org/fhir/us/davinci-pdex"
    groups = [
        {"resourceType": "Group", "id": "m", "meta": {"profile": [f"{pdex}/StructureDefinition/pdex-provider-member-match"]},
         "contained": [{"resourceType": "Patient", "id": "x1"}],
         "member": [{"entity": {"reference": "Patient/p1", "extension": [{"url": "u", "valueReference": {"reference": "#x1"}}]}}]},
        {"resourceType": "Group", "id": "n", "code": {"coding": [{"system": f"{pdex}/CodeSystem/PdexMultiMemberMatchResultCS", "code": "nomatch"}]},
         "member": [{"entity": {"reference": "#x2"}}]},
        {"resourceType": "Group", "id": "c", "meta": {"profile": [f"{pdex}/StructureDefinition/pdex-member-opt-out"]},
         "member": [{"entity": {"reference": "Patient/p3", "extension": [{"url": "u", "valueReference": {"reference": "#x3"}}]}}]},
        {"resourceType": "Group", "id": "other"},
    ]
    result = member_match_groups_parse(groups)
    assert result.matched_group_id == "m"
    assert [(o.submitted_id, o.outcome, o.patient_id) for o in result.outcomes] == [
        ("x1", MATCHED, "p1"), ("x2", NON_MATCHED, None), ("x3", CONSENT_CONSTRAINED, "p3")]


def test_bulk_fetch_takes_demographics_and_attestation(fake_payer, connection, capsys):
    call_command(
        "bulk_fetch", "--connection", "unitedcare", "--member-id", "M900", "--family", "Okafor", "--given", "Jack",
        "--birth-date", "1978-09-23", "--gender", "male", "--attest-npi", "1987654328",
        "--attest-name", "Dr. James Smith", "--organization-npi", "1345678902", "--organization-name", "Grace Hospital",
    )
    job = SyncJob.objects.get()
    assert job.status == SyncJob.Status.COMPLETED and job.member_match["outcome"] == MATCHED
    assert "Completed" in capsys.readouterr().out
