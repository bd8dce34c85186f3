"""import_fhir: Bundles and NDJSON written here, imported with exact counts, then exported over HTTP."""

import datetime
import json
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from payer.models import ClinicalResource, ResourceTombstone
from payer.services.imports.fhir import SOURCE_LAST_UPDATED_URL, fhir_import
from payer.tasks import fhir_import_task
from tests.factories import attribution_create, clinical_resource_create, contract_create, member_create, organization_create
from tests.payer.auth_helpers import bearer_token_for
from tests.payer.test_export import _kick_off, _resources, _wait_complete

pytestmark = pytest.mark.django_db

SYSTEM = "https://unitedcare.example.org/fhir/sid/member-id"
P_UUID = "urn:uuid:0b6c2f7e-5f3c-4d7e-9a52-1f0d7b1c0a01"
E_UUID = "urn:uuid:0b6c2f7e-5f3c-4d7e-9a52-1f0d7b1c0a02"
C_UUID = "urn:uuid:0b6c2f7e-5f3c-4d7e-9a52-1f0d7b1c0a03"


def _patient(member_id: str, source_id: str | None = None) -> dict:
    resource = {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": member_id}],
                "name": [{"family": "Shaw", "given": ["Jack"]}], "gender": "male", "birthDate": "1970-01-01",
                "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}}
    if source_id:
        resource["id"] = source_id
    return resource


def _transaction(member_id: str) -> dict:
    """A Synthea-shaped transaction: POST entries with urn:uuid fullUrls, the Condition first
    (a forward reference to the Encounter), a Claim and an EOB, and a DELETE."""
    return {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"fullUrl": C_UUID, "request": {"method": "POST", "url": "Condition"},
             "resource": {"resourceType": "Condition", "subject": {"reference": P_UUID},
                          "encounter": {"reference": E_UUID}, "code": {"text": "Asthma"},
                          "onsetDateTime": "2024-02-01", "meta": {"lastUpdated": "2024-02-01T10:00:00Z"}}},
            {"fullUrl": P_UUID, "request": {"method": "POST", "url": "Patient"}, "resource": _patient(member_id)},
            {"fullUrl": E_UUID, "request": {"method": "POST", "url": "Encounter"},
             "resource": {"resourceType": "Encounter", "status": "finished",
                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                          "subject": {"reference": P_UUID}, "period": {"start": "2024-02-01T09:00:00Z"},
                          "meta": {"lastUpdated": "2024-02-01T10:00:00Z"}}},
            {"fullUrl": "urn:uuid:0b6c2f7e-5f3c-4d7e-9a52-1f0d7b1c0a04", "request": {"method": "POST", "url": "Claim"},
             "resource": {"resourceType": "Claim", "status": "active"}},
            {"fullUrl": "urn:uuid:0b6c2f7e-5f3c-4d7e-9a52-1f0d7b1c0a05",
             "request": {"method": "POST", "url": "ExplanationOfBenefit"},
             "resource": {"resourceType": "ExplanationOfBenefit", "status": "active"}},
            {"request": {"method": "DELETE", "url": "Observation/obs-old"}},
        ],
    }


def _observation(rid: str, patient_id: str, *, updated: str, value: float) -> dict:
    return {"resourceType": "Observation", "id": rid, "status": "final", "code": {"text": "Heart rate"},
            "subject": {"reference": f"Patient/{patient_id}"}, "effectiveDateTime": "2024-03-01T08:00:00Z",
            "valueQuantity": {"value": value, "unit": "/min"}, "meta": {"lastUpdated": updated}}


def _write(path: Path, data) -> Path:
    if isinstance(data, list):
        path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in data))
    else:
        path.write_text(json.dumps(data, indent=1))
    return path


def _files(tmp_path: Path, member, *, stranger_id: str = "UCNOBODY") -> list[str]:
    clinical_resource_create(resource_type="Observation", resource_id="obs-old", patient_id=member.patient_id)
    bundle = _write(tmp_path / "synthea.json", _transaction(member.member_id))
    ndjson = _write(tmp_path / "Observation.ndjson", [
        _observation("hr-1", "src-jack", updated="2024-03-02T00:00:00Z", value=70),  # newer, after the older one
        _observation("hr-1", "src-jack", updated="2024-03-01T00:00:00Z", value=60),  # older: skipped
        "this is not FHIR",
        {"resourceType": "Patient", "id": "who", "identifier": [{"system": SYSTEM, "value": stranger_id}]},
        {"resourceType": "Observation", "id": "bad", "status": "final", "code": {"text": "x"},
         "subject": {"reference": f"Patient/{member.patient_id}"}, "valueQuantity": {"value": "many"}},
    ])
    patients = _write(tmp_path / "Patient.ndjson", [_patient(member.member_id, "src-jack")])
    return [str(bundle), str(patients), str(ndjson)]


def test_import_bundle_and_ndjson_exact_counts(tmp_path):
    member = member_create(member_id="UCH1")
    report = fhir_import(paths=_files(tmp_path, member), report_path=str(tmp_path / "report.json"))

    # Transaction (6 entries): Condition, Patient, Encounter stored; Claim and EOB skipped; the
    # DELETE deleted. Patient.ndjson: the same Patient under its source id maps to the same member
    # and is unchanged. Observation.ndjson: hr-1 stored, its older version skipped, a non-JSON
    # line, a Patient of no member and an invalid Observation are errors.
    assert (report.read, report.stored, report.updated, report.unchanged, report.deleted) == (12, 4, 0, 1, 1)
    assert report.skipped_total == 3 and report.error_count == 3
    assert report.skipped["Claim: financial data comes from the claims system, not a clinical feed"] == 1
    assert report.skipped["ExplanationOfBenefit: financial data comes from the claims system, not a clinical feed"] == 1
    assert report.skipped["an older version of a resource read in the same run"] == 1
    messages = {(Path(e.file).name, e.line): e.message for e in report.errors}
    assert messages[("Observation.ndjson", 3)].startswith("not JSON")
    assert messages[("Observation.ndjson", 4)] == f"no member has identifier {SYSTEM}|UCNOBODY"
    assert "invalid Observation: Observation.valueQuantity.value" in messages[("Observation.ndjson", 5)]
    assert json.loads((tmp_path / "report.json").read_text())["errors"] == 3

    # The Patient is stored under the member's Patient id; urn:uuid and source ids rewritten.
    patient = ClinicalResource.objects.get(resource_type="Patient")
    assert patient.resource_id == member.patient_id == patient.patient_id
    condition = ClinicalResource.objects.get(resource_type="Condition")
    encounter = ClinicalResource.objects.get(resource_type="Encounter")
    assert condition.resource_id == C_UUID.removeprefix("urn:uuid:")
    assert condition.resource["subject"] == {"reference": f"Patient/{member.patient_id}"}
    assert condition.resource["encounter"] == {"reference": f"Encounter/{encounter.resource_id}"}
    assert condition.patient_id == encounter.patient_id == member.patient_id
    assert encounter.date == datetime.datetime(2024, 2, 1, 9, tzinfo=datetime.UTC) and encounter.status == "finished"
    hr = ClinicalResource.objects.get(resource_type="Observation", resource_id="hr-1")
    assert hr.resource["valueQuantity"]["value"] == 70 and hr.patient_id == member.patient_id
    assert {"url": SOURCE_LAST_UPDATED_URL, "valueInstant": "2024-03-02T00:00:00Z"} in hr.resource["meta"]["extension"]
    # The stored lastUpdated is the import time (column and JSON agree), so _since exports see it.
    assert hr.resource["meta"]["lastUpdated"] == hr.last_updated.isoformat().replace("+00:00", "Z")
    assert timezone.now() - hr.last_updated < datetime.timedelta(minutes=5)
    assert not ClinicalResource.objects.filter(resource_type__in=["Claim", "ExplanationOfBenefit"]).exists()
    tomb = ResourceTombstone.objects.get()
    assert (tomb.resource_type, tomb.resource_id, tomb.patient_id) == ("Observation", "obs-old", member.patient_id)


def test_rerun_changes_nothing_and_newer_version_replaces(tmp_path):
    member = member_create(member_id="UCH1")
    paths = _files(tmp_path, member)
    fhir_import(paths=paths)
    first = {(r.resource_type, r.resource_id): (r.version_id, r.last_updated) for r in ClinicalResource.objects.all()}

    again = fhir_import(paths=paths)
    # Everything stored before is unchanged; the deletion finds nothing (already deleted).
    assert (again.read, again.stored, again.updated, again.unchanged, again.deleted) == (12, 0, 0, 5, 0)
    assert again.skipped["DELETE of a resource not stored"] == 1 and again.skipped_total == 4
    assert again.error_count == 3
    assert {(r.resource_type, r.resource_id): (r.version_id, r.last_updated) for r in ClinicalResource.objects.all()} == first

    # A later feed: one older (skipped), one newer (replaces, version 2).
    later = _write(tmp_path / "later.ndjson", [
        _observation("hr-1", member.patient_id, updated="2024-03-01T12:00:00Z", value=1),
        _observation("hr-1", member.patient_id, updated="2024-04-01T00:00:00Z", value=99),
    ])
    result = fhir_import(paths=[str(later)])
    assert (result.read, result.updated, result.skipped_total) == (2, 1, 1)
    hr = ClinicalResource.objects.get(resource_type="Observation", resource_id="hr-1")
    assert hr.version_id == 2 and hr.resource["valueQuantity"]["value"] == 99
    older = fhir_import(paths=[str(_write(tmp_path / "old.ndjson", [
        _observation("hr-1", member.patient_id, updated="2024-03-05T00:00:00Z", value=5)]))])
    assert older.skipped["not newer than the stored version (meta.lastUpdated)"] == 1
    assert ClinicalResource.objects.get(resource_type="Observation", resource_id="hr-1").version_id == 2


def test_folder_searchset_batch_and_tombstone_list(tmp_path):
    member = member_create(member_id="UCH1")
    other = member_create(member_id="UCH2")
    clinical_resource_create(resource_type="Encounter", resource_id="enc-gone", patient_id=other.patient_id)
    folder = tmp_path / "feed"
    folder.mkdir()
    _write(folder / "Patient-search.json", {
        "resourceType": "Bundle", "type": "searchset", "entry": [
            {"fullUrl": "https://hie.example/fhir/Patient/p9", "resource": _patient("UCH2", "p9"), "search": {"mode": "match"}},
            {"resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]},
             "search": {"mode": "outcome"}},
        ]})
    _write(folder / "batch.json", {
        "resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "PUT", "url": "Observation/b1"},
             "resource": _observation("b1", "p9", updated="2024-01-01T00:00:00Z", value=1) | {"id": "b1"}},
            {"request": {"method": "GET", "url": "Patient/p9"}},
            {"request": {"method": "DELETE", "url": "Observation?code=1234"}},
        ]})
    # Patient files are read first in a folder, so batch.json's Patient/p9 is linked.
    # A Bulk Data deleted file: one transaction Bundle of DELETE entries per line.
    _write(folder / "Encounter.deleted.ndjson", [
        {"resourceType": "Bundle", "type": "transaction",
         "entry": [{"request": {"method": "DELETE", "url": "Encounter/enc-gone"}}]}])
    _write(folder / "document.json", {"resourceType": "Bundle", "type": "document", "entry": []})
    report = fhir_import(paths=[str(folder)])
    assert (report.read, report.stored, report.deleted, report.skipped_total, report.error_count) == (7, 2, 1, 2, 2)
    b1 = ClinicalResource.objects.get(resource_type="Observation", resource_id="b1")
    assert b1.patient_id == other.patient_id and b1.resource["subject"]["reference"] == f"Patient/{other.patient_id}"
    assert ResourceTombstone.objects.filter(resource_id="enc-gone", patient_id=other.patient_id).count() == 1
    assert not ClinicalResource.objects.filter(patient_id=member.patient_id).exists()


def test_command_and_task(tmp_path, capsys):
    member_create(member_id="UCH1")
    good = _write(tmp_path / "Patient.ndjson", [_patient("UCH1", "x1")])
    call_command("import_fhir", str(good), "--report", str(tmp_path / "r.json"))
    out = capsys.readouterr()
    assert "read 1, stored 1, updated 0, unchanged 0, deleted 0, skipped 0, errors 0" in out.out
    assert "100%" in out.err
    with pytest.raises(CommandError):
        call_command("import_fhir", str(tmp_path / "missing.json"))
    bad = _write(tmp_path / "bad.ndjson", ["{not json"])
    with pytest.raises(CommandError, match="1 items could not be imported"):
        call_command("import_fhir", str(bad), "--no-progress")
    assert fhir_import_task(paths=[str(good)])["unchanged"] == 1


@pytest.mark.django_db(transaction=True)
@pytest.mark.e2e
def test_export_after_import_returns_imported_data(tmp_path, live_server, celery_worker):
    org = organization_create(name="Grace Hospital")
    contract_create(organization=org)
    member = member_create(member_id="UCH1")
    attribution_create(organization=org, member=member)
    fhir_import(paths=_files(tmp_path, member))
    token = bearer_token_for(org)
    kick = _kick_off(live_server, token, f"Group/{org.attribution_group.fhir_id}/$export")
    assert kick.status_code == 202, kick.text
    manifest = _wait_complete(kick.headers["Content-Location"], token, worker=celery_worker).json()
    data = _resources(manifest, token)
    assert [p["id"] for p in data["Patient"]] == [member.patient_id]
    assert [e["subject"]["reference"] for e in data["Encounter"]] == [f"Patient/{member.patient_id}"]
    assert data["Condition"][0]["encounter"]["reference"] == f"Encounter/{data['Encounter'][0]['id']}"
    assert [o["id"] for o in data["Observation"]] == ["hr-1"] and data["Observation"][0]["valueQuantity"]["value"] == 70
    assert "ExplanationOfBenefit" not in data  # no claims; the feed's EOB was not stored

    # _since an instant before the import: the deletion is listed (Bulk Data req 182).
    since = (timezone.now() - datetime.timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    kick = _kick_off(live_server, token, f"Group/{org.attribution_group.fhir_id}/$export",
                     params={"_since": since, "_type": "Observation"})
    manifest = _wait_complete(kick.headers["Content-Location"], token, worker=celery_worker).json()
    deleted = _resources(manifest, token, kind="deleted")["Bundle"]
    assert [e["request"]["url"] for b in deleted for e in b["entry"]] == ["Observation/obs-old"]
    assert [o["id"] for o in _resources(manifest, token)["Observation"]] == ["hr-1"]


def test_an_id_of_another_patient_is_refused(tmp_path):
    jack, mary = member_create(member_id="UCH1"), member_create(member_id="UCH2")
    clinical_resource_create(resource_type="Observation", resource_id="1", patient_id=jack.patient_id)
    feed = _write(tmp_path / "other-hie.ndjson", [
        _observation("1", mary.patient_id, updated="2030-01-01T00:00:00Z", value=1)])
    report = fhir_import(paths=[str(feed)])
    assert (report.read, report.error_count, report.stored, report.updated) == (1, 1, 0, 0)
    assert report.errors[0].message == "Observation/1 is stored for another patient; ids must be unique per type"
    assert ClinicalResource.objects.get(resource_type="Observation", resource_id="1").patient_id == jack.patient_id
