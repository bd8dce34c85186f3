"""PDex 2.2 Group/$provider-member-match over real HTTP with a real Celery worker.

Sources: /work/shared/spec/profiles/pdex22/ (Operation-provider-member-match.fsh,
provider-access-api-v2.md); Bulk Data requirement numbers from
/work/shared/spec/bulkdata-2.0-requirements.tsv.
"""

import datetime
import json
import time
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from django.db.models import Q as models_q
from django.utils import timezone
from fhir.resources.R4B.group import Group
from fhir.resources.R4B.operationoutcome import OperationOutcome

from payer.models import (
    AttributionMember,
    AuditEvent,
    ExportJob,
    Member,
    MemberMatchDecision,
    MemberMatchGroup,
    TreatmentRelationship,
)
from payer.services.access import visible_members
from payer.services.member_match import name_normalize
from tests.factories import (
    attribution_create,
    clinical_resource_create,
    contract_create,
    member_create,
    opt_out_create,
    organization_create,
    practitioner_create,
)
from tests.payer.auth_helpers import bearer_token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

TODAY = datetime.date.today()


def _member(*, family: str, given: str, birth: datetime.date, gender: str = "male", member_id: str = "",
            subscriber_id: str = "", coverage_end: datetime.date | None = None, opted_out: bool = False) -> Member:
    member = member_create(family=family, given=given, member_id=member_id)
    member.birth_date, member.gender, member.subscriber_id = birth, gender, subscriber_id
    member.coverage_start, member.coverage_end = datetime.date(2016, 1, 1), coverage_end
    member.save()
    if opted_out:
        opt_out_create(member=member)
    clinical_resource_create(resource_type="Patient", resource_id=member.patient_id)
    clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id,
                             date=timezone.now() - datetime.timedelta(days=40))
    return member


def _bundle(*, family: str, given: list[str], birth: str, gender: str = "male", member_id: str = "",
            subscriber_id: str = "", payor: str = "UnitedCare Health", practitioner_npi: str = "",
            organization_npi: str = "", start: str | None = None, end: str | None = None,
            relationship: str | None = None, local_id: str = "p1") -> dict[str, Any]:
    patient = {"resourceType": "Patient", "id": local_id, "name": [{"use": "official", "family": family, "given": given}],
               "gender": gender, "birthDate": birth,
               "identifier": [{"system": "http://hospital.example/mrn", "value": f"MRN-{local_id}"}]}
    coverage: dict[str, Any] = {
        "resourceType": "Coverage", "id": f"cov-{local_id}", "status": "active",
        "beneficiary": {"reference": f"Patient/{local_id}"}, "payor": [{"display": payor}],
    }
    if member_id:
        coverage["identifier"] = [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                                                        "code": "MB"}]}, "value": member_id}]
    if subscriber_id:
        coverage["subscriberId"] = subscriber_id
    provision: dict[str, Any] = {
        "type": "permit", "period": {"start": start or (TODAY - datetime.timedelta(days=3)).isoformat()},
        "actor": [{"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                                        "code": "IRCP"}]},
                   "reference": {"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": practitioner_npi}}}],
        "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
    }
    if end:
        provision["period"]["end"] = end
    if relationship:
        provision["code"] = [{"coding": [{"system": "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/treatment-relationship-type",
                                          "code": relationship}]}]
    consent: dict[str, Any] = {
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "64292-6"}]}],
        "patient": {"reference": f"Patient/{local_id}"},
        "dateTime": timezone.now().isoformat(),
        "performer": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": practitioner_npi}}],
        "provision": provision,
    }
    if organization_npi:
        consent["organization"] = [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": organization_npi}}]
    return {"name": "MemberBundle", "part": [
        {"name": "MemberPatient", "resource": patient},
        {"name": "CoverageToMatch", "resource": coverage},
        {"name": "Consent", "resource": consent},
    ]}


def _parameters(*bundles: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(bundles)}


def _post(live_server, token: str, path: str, body: Any, **headers: str) -> requests.Response:
    return requests.post(f"{live_server.url}/payer/fhir/{path}",
                         data=body if isinstance(body, str | bytes) else json.dumps(body),
                         headers={"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json",
                                  "Accept": "application/fhir+json", "Prefer": "respond-async", **headers},
                         timeout=30)


def _wait(status_url: str, token: str, *, timeout: float = 60, worker=None) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(status_url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        if response.status_code != 202:
            assert response.status_code == 200, response.text
            assert response.headers["Content-Type"].startswith("application/json")
            return response.json()
        # The server accepts a poll after half its Retry-After (payer/services/export.py).
        time.sleep(float(response.headers["Retry-After"]) / 2)
    pytest.fail(f"job did not complete; worker log:\n{worker.log() if worker else ''}")


def _download(url: str, token: str) -> list[dict[str, Any]]:
    response = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+ndjson")
    return [json.loads(line) for line in response.text.splitlines() if line]


def _groups(manifest: dict[str, Any], token: str) -> dict[str, dict[str, Any]]:
    """Return the manifest's Groups by their result code (match, nomatch, consentconstraint)."""
    assert {item["type"] for item in manifest["output"]} == {"Group"}  # §pdex-288a
    out = {}
    for item in manifest["output"]:
        for group in _download(item["url"], token):
            Group.model_validate(group)
            out[group["code"]["coding"][0]["code"]] = group
    return out


def _setup():
    org = organization_create(name="Grace Hospital")
    contract_create(organization=org)
    smith = practitioner_create(organization=org)
    other = organization_create(name="St. Mary's")
    contract_create(organization=other)
    other_doc = practitioner_create(organization=other, family="Novak", given="Linda")
    return org, smith, other, other_doc


def _kick_off_and_wait(live_server, token: str, body: dict[str, Any], worker) -> tuple[dict[str, Any], float, str]:
    started = time.monotonic()
    kick = _post(live_server, token, "Group/$provider-member-match", body)
    assert kick.status_code == 202, kick.text
    OperationOutcome.model_validate(kick.json())
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith(f"{live_server.url}/payer/fhir/bulkstatus/")
    manifest = _wait(status_url, token, worker=worker)
    return manifest, time.monotonic() - started, status_url


def test_match_rules_groups_export_and_a_second_organization(live_server, celery_worker):
    org, smith, other, other_doc = _setup()
    token = bearer_token_for(org)
    jack = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14), member_id="UCH-A1")
    jose = _member(family="García-López", given="José María", birth=datetime.date(1980, 2, 2), member_id="UCH-B2")
    twin1 = _member(family="Rivera", given="Alex", birth=datetime.date(1990, 5, 5), subscriber_id="SUB-9")
    twin2 = _member(family="Rivera", given="Alex", birth=datetime.date(1990, 5, 5), subscriber_id="SUB-9")
    dana = _member(family="Sanchez", given="Kathleen", birth=datetime.date(1955, 1, 1), gender="female",
                   member_id="UCH-D4")
    ended = _member(family="Cole", given="Ann", birth=datetime.date(1970, 7, 7), gender="female", member_id="UCH-E5",
                    coverage_end=TODAY - datetime.timedelta(days=1))
    opted = _member(family="Burns", given="Mia", birth=datetime.date(1985, 8, 8), gender="female", member_id="UCH-F6",
                    opted_out=True)
    npi = smith.npi
    body = _parameters(
        _bundle(family="Shaw", given=["Jack"], birth="1961-03-14", member_id="uch-a1", practitioner_npi=npi, local_id="a"),
        # Name variants: case, accents, hyphen as space, a suffix.
        _bundle(family="GARCIA LOPEZ", given=["jose", "maria"], birth="1980-02-02", member_id="UCH-B2",
                practitioner_npi=npi, local_id="b"),
        _bundle(family="Rivera", given=["Alex"], birth="1990-05-05", subscriber_id="SUB-9", practitioner_npi=npi,
                local_id="c"),
        # The issue's case: another person's member id with Dana's own demographics.
        _bundle(family="Rivera", given=["Dana"], birth="1970-05-05", gender="female", member_id="UCH-D4",
                practitioner_npi=npi, local_id="d"),
        _bundle(family="Sanchez", given=["Karen"], birth="1955-01-01", gender="female", member_id="UCH-D4",
                practitioner_npi=npi, local_id="d2"),
        _bundle(family="Cole", given=["Ann"], birth="1970-07-07", gender="female", member_id="UCH-E5",
                practitioner_npi=npi, local_id="e"),
        _bundle(family="Burns", given=["Mia"], birth="1985-08-08", gender="female", member_id="UCH-F6",
                practitioner_npi=npi, local_id="f"),
        _bundle(family="Shaw", given=["Jack"], birth="1961-03-14", member_id="UCH-A1", payor="Other Health Plan",
                practitioner_npi=npi, local_id="g"),
    )
    manifest, elapsed, status_url = _kick_off_and_wait(live_server, token, body, celery_worker)
    print(f"\nmember-match kick-off to manifest: {elapsed * 1000:.0f} ms for 8 MemberBundles")
    assert manifest["request"] == f"{live_server.url}/payer/fhir/Group/$provider-member-match"
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    groups = _groups(manifest, token)
    # §pdex-261a default: the opted-out member is reported as not matched; no ConsentConstrained Group.
    assert set(groups) == {"match", "nomatch"}
    matched = groups["match"]
    assert matched["meta"]["profile"] == ["http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provider-member-match"]
    assert {m["entity"]["reference"] for m in matched["member"]} == {f"Patient/{jack.patient_id}", f"Patient/{jose.patient_id}"}
    # Each member links back to the contained submitted Patient, preserved as submitted.
    contained = {c["id"]: c for c in matched["contained"]}
    for entry in matched["member"]:
        local = entry["entity"]["extension"][0]["valueReference"]["reference"].removeprefix("#")
        assert contained[local]["name"][0]["family"] in ("Shaw", "GARCIA LOPEZ")
    nomatch = groups["nomatch"]
    assert nomatch["quantity"] == 6 and all(m["entity"]["reference"].startswith("#") for m in nomatch["member"])
    assert "Burns" not in json.dumps(matched)

    job = ExportJob.objects.get(operation="provider-member-match")
    rules = dict(MemberMatchDecision.objects.filter(job_ref=job.job_id).values_list("sequence", "rule"))
    assert rules == {0: "matched", 1: "matched", 2: "ambiguous", 3: "birth-date-conflict", 4: "name-mismatch",
                     5: "coverage-ended", 6: "opted-out", 7: "coverage-other-payer"}
    ambiguous = MemberMatchDecision.objects.get(job_ref=job.job_id, sequence=2)
    assert sorted(ambiguous.candidates) == sorted([twin1.member_id, twin2.member_id])
    assert MemberMatchDecision.objects.get(job_ref=job.job_id, sequence=6).reported_as == "nonmatched"
    # The audit keeps digests and rules, never the submitted demographics.
    for text in [json.dumps(list(AuditEvent.objects.values())  , default=str),
                 json.dumps(list(MemberMatchDecision.objects.values()), default=str)]:
        for secret in ("1970-05-05", "Dana", "GARCIA", "Karen"):
            assert secret not in text
    assert AuditEvent.objects.filter(action="member-match", outcome="success", status_code=202).count() == 1
    assert AuditEvent.objects.filter(action="member-match-result").count() == 1
    assert AuditEvent.objects.filter(action="export-status", outcome="success", status_code=200).exists()
    assert AuditEvent.objects.filter(action="download", outcome="success", resource_types=["Group"]).exists()
    # Accepted attestations: a treatment relationship and an attribution entry, at once.
    assert set(TreatmentRelationship.objects.values_list("member_id", flat=True)) == {jack.pk, jose.pk}
    assert AttributionMember.objects.get(member=jack).source == "attestation"
    assert not AttributionMember.objects.filter(member__in=[dana, ended, opted, twin1, twin2]).exists()

    # GET Group/{id} (§pdex-266) and $davinci-data-export of MatchedMembers (§pdex-262).
    read = requests.get(f"{live_server.url}/payer/fhir/Group/{matched['id']}",
                        headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert read.status_code == 200 and read.json()["id"] == matched["id"]
    kick = _post(live_server, token, f"Group/{matched['id']}/$davinci-data-export",
                 {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Patient,Encounter"}]})
    assert kick.status_code == 202, kick.text
    exported = _wait(kick.headers["Content-Location"], token, worker=celery_worker)
    patients = [r for item in exported["output"] if item["type"] == "Patient" for r in _download(item["url"], token)]
    assert {p["id"] for p in patients} == {jack.patient_id, jose.patient_id}

    # patient= naming a non-member: ignored and reported in the manifest's error (§pdex-360).
    kick = _post(live_server, token, f"Group/{matched['id']}/$davinci-data-export", {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{jack.patient_id}"}},
        {"name": "patient", "valueReference": {"reference": f"Patient/{dana.patient_id}"}}]})
    assert kick.status_code == 202, kick.text
    exported = _wait(kick.headers["Content-Location"], token, worker=celery_worker)
    ids = {r.get("id") or r["subject"]["reference"] for item in exported["output"] for r in _download(item["url"], token)}
    assert jack.patient_id in ids and not any(dana.patient_id in i for i in ids)
    errors = [r for item in exported["error"] for r in _download(item["url"], token)]
    assert any(dana.patient_id in issue["diagnostics"] for e in errors for issue in e["issue"])
    # All given patients out: nothing exported, never the whole Group.
    kick = _post(live_server, token, f"Group/{matched['id']}/$export", {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{opted.patient_id}"}}]})
    assert kick.status_code == 202, kick.text
    exported = _wait(kick.headers["Content-Location"], token, worker=celery_worker)
    assert exported["output"] == [] and len(exported["error"]) == 1

    # The match job's status and files expire with the exports (a day); its Groups and the
    # decisions stay (§pdex-264: the Group lives PA_MEMBER_MATCH_GROUP_DAYS).
    from payer.services.export import export_purge

    assert export_purge(now=timezone.now() + datetime.timedelta(days=2)) >= 1
    assert not ExportJob.objects.filter(operation="provider-member-match").exists()
    assert MemberMatchDecision.objects.filter(job_ref=job.job_id).count() == 8
    again = _post(live_server, token, f"Group/{matched['id']}/$davinci-data-export", {})
    assert again.status_code == 202, again.text
    export_purge(now=timezone.now() + datetime.timedelta(days=31))
    assert not MemberMatchGroup.objects.exists()
    assert _post(live_server, token, f"Group/{matched['id']}/$davinci-data-export", {}).status_code == 404
    assert MemberMatchDecision.objects.filter(job_ref=job.job_id).count() == 8

    # A second organization, and a second client of the same one, see nothing of it.
    for stranger in (bearer_token_for(other), bearer_token_for(org)):
        assert requests.get(status_url, headers={"Authorization": f"Bearer {stranger}"}, timeout=30).status_code == 404
        read = requests.get(f"{live_server.url}/payer/fhir/Group/{matched['id']}",
                            headers={"Authorization": f"Bearer {stranger}"}, timeout=30)
        assert read.status_code == 404
        OperationOutcome.model_validate(read.json())
        assert _post(live_server, stranger, f"Group/{matched['id']}/$davinci-data-export", {}).status_code == 404
        for item in manifest["output"]:
            assert requests.get(item["url"], headers={"Authorization": f"Bearer {stranger}"}, timeout=30).status_code == 404


def test_opted_out_member_is_consent_constrained_when_disclosure_is_on(live_server, start_worker, settings):
    worker = start_worker(PA_MEMBER_MATCH_DISCLOSE_OPT_OUT="1")
    org, smith, _, _ = _setup()
    token = bearer_token_for(org)
    opted = _member(family="Burns", given="Mia", birth=datetime.date(1985, 8, 8), gender="female", member_id="UCH-F6",
                    opted_out=True)
    manifest, _, _ = _kick_off_and_wait(live_server, token, _parameters(
        _bundle(family="Burns", given=["Mia"], birth="1985-08-08", gender="female", member_id="UCH-F6",
                practitioner_npi=smith.npi)), worker)
    groups = _groups(manifest, token)
    assert set(groups) == {"match", "consentconstraint"}
    assert "member" not in groups["match"] and groups["match"]["quantity"] == 0  # always emitted (1..1)
    constrained = groups["consentconstraint"]
    assert constrained["meta"]["profile"] == ["http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-member-opt-out"]
    assert constrained["member"][0]["entity"]["reference"] == f"Patient/{opted.patient_id}"
    assert not TreatmentRelationship.objects.exists()


def test_attestation_checks(live_server, celery_worker):
    org, smith, other, other_doc = _setup()
    token = bearer_token_for(org)
    jack = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14), member_id="UCH-A1")
    common = {"family": "Shaw", "given": ["Jack"], "birth": "1961-03-14", "member_id": "UCH-A1"}
    body = _parameters(
        _bundle(**common, practitioner_npi=other_doc.npi),  # another organization's practitioner
        _bundle(**common, practitioner_npi="1999999999"),  # unknown to the directory
        _bundle(**common, practitioner_npi=smith.npi, start=(TODAY - datetime.timedelta(days=100)).isoformat(),
                end=(TODAY - datetime.timedelta(days=2)).isoformat()),  # the period has ended
        _bundle(**common, practitioner_npi=smith.npi, start=(TODAY + datetime.timedelta(days=10)).isoformat()),
        _bundle(**common, practitioner_npi=smith.npi, relationship="past"),  # wrong relationship type
        # The body names another organization: ignored; the organization is the token's.
        _bundle(**common, practitioner_npi=smith.npi, organization_npi=other.npi, relationship="prospective"),
    )
    manifest, _, _ = _kick_off_and_wait(live_server, token, body, celery_worker)
    job = ExportJob.objects.get(operation="provider-member-match")
    rules = list(MemberMatchDecision.objects.filter(job_ref=job.job_id).order_by("sequence").values_list("rule", flat=True))
    assert rules == ["practitioner-not-in-organization", "practitioner-not-in-organization", "attestation-period",
                     "attestation-period", "attestation-relationship-type", "matched"]
    relationship = TreatmentRelationship.objects.get()
    assert relationship.organization == org and relationship.practitioner == smith
    assert relationship.relationship_type == "prospective"
    assert not TreatmentRelationship.objects.filter(organization=other).exists()
    assert not AttributionMember.objects.filter(group__organization=other).exists()
    assert visible_members(organization=org).filter(pk=jack.pk).exists()
    assert not visible_members(organization=other).filter(pk=jack.pk).exists()
    assert len(_groups(manifest, token)["match"]["member"]) == 1


def test_bad_input_gets_operation_outcomes_and_is_audited(live_server, settings):
    org, smith, _, _ = _setup()
    token = bearer_token_for(org)
    good = _bundle(family="Shaw", given=["Jack"], birth="1961-03-14", member_id="X", practitioner_npi=smith.npi)
    no_consent = {**good, "part": good["part"][:2]}
    bad_patient = json.loads(json.dumps(good))
    bad_patient["part"][0]["resource"]["birthDate"] = "not-a-date"
    settings.PA_MEMBER_MATCH_MAX_MEMBERS = 2
    cases = [
        ("{not json", 400),
        ({"resourceType": "Patient"}, 400),
        (_parameters(), 400),
        (_parameters({"name": "Other", "valueString": "x"}), 400),
        (_parameters(no_consent), 422),
        (_parameters(bad_patient), 400),
        (_parameters(good, good, good), 422),
        (json.dumps(_parameters(good)).replace("Shaw", "Sh\\u0000aw"), 400),
    ]
    for body, status in cases:
        response = _post(live_server, token, "Group/$provider-member-match", body)
        assert response.status_code == status, (body, response.text)
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        OperationOutcome.model_validate(response.json())
    too_many = _post(live_server, token, "Group/$provider-member-match", _parameters(good, good, good)).json()
    assert too_many["issue"][0]["code"] == "too-costly"
    # A body above Django's DATA_UPLOAD_MAX_MEMORY_SIZE: 413, not a 500 or an HTML page.
    huge = _post(live_server, token, "Group/$provider-member-match", json.dumps(_parameters(good)) + " " * 3_000_000)
    assert huge.status_code == 413, huge.text
    OperationOutcome.model_validate(huge.json())
    # Without Prefer: respond-async.
    response = _post(live_server, token, "Group/$provider-member-match", _parameters(good), Prefer="")
    assert response.status_code == 400
    # No token: 401 OperationOutcome.
    response = requests.post(f"{live_server.url}/payer/fhir/Group/$provider-member-match", json=_parameters(good), timeout=30)
    assert response.status_code == 401
    OperationOutcome.model_validate(response.json())
    assert not ExportJob.objects.exists()
    assert AuditEvent.objects.filter(action="member-match", outcome="error").count() == len(cases) + 3
    # Unknown paths and operations: 404 OperationOutcome for POST too (not the CSRF page).
    for path in ("Group/$no-such-operation", "NoSuchType", "Group/abc/$nope"):
        response = _post(live_server, token, path, {})
        assert response.status_code == 404, response.text
        assert response.headers["Content-Type"].startswith("application/fhir+json")
        OperationOutcome.model_validate(response.json())
    # The CapabilityStatement declares the operation with its canonical.
    statement = requests.get(f"{live_server.url}/payer/fhir/metadata", timeout=30).json()
    group = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Group")
    assert {"name": "provider-member-match",
            "definition": "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/ProviderMemberMatch"} in group["operation"]


@pytest.mark.django_db
def test_name_normalization():
    assert name_normalize("García-López Jr.") == "garcia lopez"
    assert name_normalize("O'BRIEN III") == "o brien"
    assert name_normalize("  Zoë  ") == "zoe"


def _relationship(org, smith, member, *, expires_in: datetime.timedelta = datetime.timedelta(days=30)):
    from payer.services.member_match import Attestation, treatment_relationship_record

    now = timezone.now()
    relationship = treatment_relationship_record(
        member=member, organization=org, client_id="c", job_id="j", now=now,
        attestation=Attestation(smith, "active", TODAY, None, now))
    TreatmentRelationship.objects.filter(pk=relationship.pk).update(expires_at=now + expires_in)
    return relationship


def test_revocation_in_admin_ends_access_at_once(client):
    org, smith, _, _ = _setup()
    member = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14))
    relationship = _relationship(org, smith, member)
    assert visible_members(organization=org).filter(pk=member.pk).exists()
    client.force_login(get_user_model().objects.create_superuser("staff", "s@example.org", "pw-staff-123"))
    listing = client.get("/admin/payer/treatmentrelationship/")
    assert listing.status_code == 200 and str(member) in listing.content.decode()
    url = "/admin/payer/treatmentrelationship/"
    page = client.post(url, {"action": "revoke_action", "_selected_action": [relationship.pk]})
    assert page.status_code == 200 and b"Revoke" in page.content  # the confirmation form
    done = client.post(url, {"action": "revoke_action", "_selected_action": [relationship.pk], "apply": "1",
                             "reason": "Attested in error"})
    assert done.status_code == 302
    relationship.refresh_from_db()
    assert relationship.revoked_at and relationship.revoked_by == "staff"
    assert not visible_members(organization=org).filter(pk=member.pk).exists()
    assert AttributionMember.objects.get(member=member).end < TODAY
    assert AuditEvent.objects.filter(action="treatment-revoke", outcome="success").exists()
    # Staff cannot edit a relationship's fields.
    change = client.post(f"/admin/payer/treatmentrelationship/{relationship.pk}/change/", {"expires_at": "2099-01-01"})
    relationship.refresh_from_db()
    assert relationship.expires_at.year != 2099 or change.status_code != 302


def test_treatment_relationship_expiry_and_ended_coverage():
    org, smith, _, _ = _setup()
    member = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14))
    _relationship(org, smith, member, expires_in=datetime.timedelta(seconds=-1))
    # The attribution entry is still on the list, but nothing backs it any more.
    assert AttributionMember.objects.filter(member=member, source="attestation").exists()
    assert not visible_members(organization=org).filter(pk=member.pk).exists()

    covered_until_yesterday = _member(family="Cole", given="Ann", birth=datetime.date(1970, 7, 7),
                                      coverage_end=TODAY - datetime.timedelta(days=1))
    attribution_create(organization=org, member=covered_until_yesterday)
    assert not visible_members(organization=org).filter(pk=covered_until_yesterday.pk).exists()
    Member.objects.filter(pk=covered_until_yesterday.pk).update(coverage_end=None)
    assert visible_members(organization=org).filter(pk=covered_until_yesterday.pk).exists()



def test_patient_level_export_of_an_unknown_patient_is_still_400(live_server):
    # Bulk Data req 86: at the Patient level a patient not on the server is an error
    # response; only Group-level kick-offs ignore and report (PDex §pdex-360).
    org, _, _, _ = _setup()
    token = bearer_token_for(org)
    response = _post(live_server, token, "Patient/$export", {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": "Patient/nobody"}}]})
    assert response.status_code == 400, response.text
    assert OperationOutcome.model_validate(response.json()).issue[0].code == "not-found"
    assert not ExportJob.objects.exists()


def test_demo_new_patient_is_found_by_member_match_and_exported(live_server, celery_worker, tmp_path):
    # The seeded demo's new patient: covered by UnitedCare, no claim at Grace Hospital, so on
    # no Grace list until Grace attests; then his history exports at once.
    from payer.models import Claim, ProviderOrganization
    from payer.services import demo
    from payer.services.auth import access_token_issue

    demo.seed_demo(create_admin=False)
    client = demo.demo_access_seed(key_dir=tmp_path)
    grace = ProviderOrganization.objects.get(npi=demo.GRACE_HOSPITAL_NPI)
    daniel = Member.objects.get(member_id=demo.NEW_PATIENT_MEMBER_ID)
    assert (daniel.given, daniel.family, daniel.birth_date) == ("Daniel", "Okafor", datetime.date(1978, 9, 23))
    assert daniel.coverage_start and daniel.coverage_end is None
    grace_npis = {grace.npi, *grace.practitioners.values_list("npi", flat=True)}
    assert not Claim.objects.filter(member=daniel).filter(
        models_q(billing_npi__in=grace_npis) | models_q(rendering_npi__in=grace_npis)).exists()
    assert not visible_members(organization=grace).filter(pk=daniel.pk).exists()

    raw, _ = access_token_issue(client=client, scopes=["system/*.read"])
    manifest, elapsed, _ = _kick_off_and_wait(live_server, raw, _parameters(_bundle(
        family="Okafor", given=["Daniel"], birth="1978-09-23", member_id=demo.NEW_PATIENT_MEMBER_ID,
        practitioner_npi=demo.DR_SMITH_NPI, organization_npi=demo.GRACE_HOSPITAL_NPI)), celery_worker)
    matched = _groups(manifest, raw)["match"]
    assert [m["entity"]["reference"] for m in matched["member"]] == [f"Patient/{daniel.patient_id}"]
    kick = _post(live_server, raw, f"Group/{matched['id']}/$davinci-data-export", {"resourceType": "Parameters", "parameter": [
        {"name": "exportType", "valueString": "hl7.fhir.us.davinci-pdex#provider-download"}]})
    assert kick.status_code == 202, kick.text
    exported = _wait(kick.headers["Content-Location"], raw, worker=celery_worker)
    types = {item["type"] for item in exported["output"]}
    assert {"Patient", "Encounter", "Condition", "ExplanationOfBenefit"} <= types


def test_ended_coverage_is_not_attributed_read_or_searched(live_server):
    from payer.services.attribution import attribution_refresh
    from tests.factories import claim_create

    org, smith, _, _ = _setup()
    token = bearer_token_for(org)
    ended = _member(family="Cole", given="Ann", birth=datetime.date(1970, 7, 7),
                    coverage_end=TODAY - datetime.timedelta(days=1))
    current = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14))
    for member in (ended, current):
        claim_create(member=member, rendering_npi=smith.npi)
    attribution_refresh()
    # Claims after the coverage ended do not attribute the member.
    assert set(AttributionMember.objects.values_list("member_id", flat=True)) == {current.pk}
    attribution_create(organization=org, member=ended)  # even a staff entry does not show him
    headers = {"Authorization": f"Bearer {token}"}
    base = f"{live_server.url}/payer/fhir"
    assert requests.get(f"{base}/Patient/{ended.patient_id}", headers=headers, timeout=30).status_code == 404
    assert requests.get(f"{base}/Patient/{current.patient_id}", headers=headers, timeout=30).status_code == 200
    search = requests.get(f"{base}/Encounter", params={"patient": ended.patient_id}, headers=headers, timeout=30).json()
    assert search.get("total", 0) == 0 and not search.get("entry")
    group_id = AttributionMember.objects.get(member=current).group.fhir_id
    group = requests.get(f"{base}/Group/{group_id}", headers=headers, timeout=30).json()
    assert {m["entity"]["reference"] for m in group["member"]} == {f"Patient/{current.patient_id}"}


def test_providers_page_documents_the_matching_rules(client, settings):
    settings.PA_MEMBER_MATCH_MAX_MEMBERS = 37
    page = client.get("/payer/providers/").content.decode()
    assert "Group/$provider-member-match" in page and "up to 37" in page
    assert "A different birth date is never a match" in page and "reported as" in page
    settings.PA_MEMBER_MATCH_DISCLOSE_OPT_OUT = True
    assert "ConsentConstrainedMembers" in client.get("/payer/providers/").content.decode()


def test_a_new_attestation_after_revocation_is_a_new_relationship():
    from payer.services.member_match import treatment_relationship_revoke

    org, smith, _, _ = _setup()
    member = _member(family="Shaw", given="Jack", birth=datetime.date(1961, 3, 14))
    first = _relationship(org, smith, member)
    renewed = _relationship(org, smith, member)
    assert renewed.pk == first.pk  # an attestation renews the live relationship
    treatment_relationship_revoke(relationship=first, revoked_by="staff", reason="error")
    assert not visible_members(organization=org).filter(pk=member.pk).exists()
    again = _relationship(org, smith, member)
    assert again.pk != first.pk and TreatmentRelationship.objects.count() == 2
    assert visible_members(organization=org).filter(pk=member.pk).exists()
    entry = AttributionMember.objects.get(member=member)
    assert entry.source == "attestation" and entry.end >= TODAY and entry.start <= TODAY
