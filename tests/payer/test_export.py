"""Bulk Data $export and PDex $davinci-data-export over real HTTP with a real Celery worker.

Requirement numbers refer to /work/shared/spec/bulkdata-2.0-requirements.tsv.
"""

import datetime
import gzip
import json
import time
from typing import Any

import pytest
import requests
from django.utils import timezone
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit
from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from payer.models import AttributionMember, AuditEvent, ExportJob, ExportWorkUnit
from payer.services.export import export_purge, export_reconcile
from storage.models import ExportFile
from tests.conftest import wait_for
from tests.factories import (
    attribution_create,
    claim_create,
    clinical_resource_create,
    contract_create,
    member_create,
    opt_out_create,
    organization_create,
)
from tests.payer.auth_helpers import bearer_token_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]

MODELS = {"Patient": Patient, "Encounter": Encounter, "Observation": Observation,
          "ExplanationOfBenefit": ExplanationOfBenefit, "OperationOutcome": OperationOutcome}
KICKOFF_HEADERS = {"Accept": "application/fhir+json", "Prefer": "respond-async"}


def _population(*, members: int = 2, org=None, encounters: int = 2, observations: int = 1) -> dict[str, Any]:
    """An in-network organization with attributed members, each with a Patient and data."""
    org = org or organization_create(name="Grace Hospital")
    contract_create(organization=org)
    people = []
    for index in range(members):
        member = member_create(given=f"Jack{index}")
        attribution_create(organization=org, member=member)
        clinical_resource_create(resource_type="Patient", resource_id=member.patient_id)
        for day in range(encounters):
            clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id,
                                     date=timezone.now() - datetime.timedelta(days=30 + day))
        for _ in range(observations):
            clinical_resource_create(resource_type="Observation", patient_id=member.patient_id,
                                     date=timezone.now() - datetime.timedelta(days=5))
        people.append(member)
    return {"org": org, "members": people, "group_id": org.attribution_group.fhir_id,
            "token": bearer_token_for(org)}


def _auth(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def _kick_off(live_server, token: str, path: str, *, params=None, headers=None, method: str = "GET", body=None):
    url = f"{live_server.url}/payer/fhir/{path}"
    headers = _auth(token, **(KICKOFF_HEADERS if headers is None else headers))
    if body is not None:
        headers["Content-Type"] = "application/fhir+json"
    return requests.request(method, url, params=params, data=None if body is None else json.dumps(body),
                            headers=headers, timeout=30)


def _wait_complete(status_url: str, token: str, *, timeout: float = 60, worker=None) -> requests.Response:
    """Poll as the server asks (Retry-After) until the job is no longer in progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = requests.get(status_url, headers=_auth(token, Accept="application/json"), timeout=30)
        if response.status_code != 202:
            return response
        # Req 132/133/125: in progress is 202 with X-Progress and Retry-After; no body,
        # so no (misleading text/html) Content-Type.
        assert response.headers["X-Progress"] and len(response.headers["X-Progress"]) < 100
        assert response.content == b"" and "Content-Type" not in response.headers
        time.sleep(float(response.headers["Retry-After"]))
    pytest.fail(f"export did not complete; worker log:\n{worker.log() if worker else ''}")


def _download(url: str, token: str, **headers: str) -> list[dict[str, Any]]:
    response = requests.get(url, headers=_auth(token, **headers), timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+ndjson")  # req 207/208
    return [json.loads(line) for line in response.text.splitlines() if line]


def _resources(manifest: dict[str, Any], token: str, kind: str = "output") -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[kind]:
        rows = _download(item["url"], token)
        assert len(rows) == item["count"]  # req 178: count is the number of resources
        assert {row["resourceType"] for row in rows} == {item["type"]}  # req 170: one type per file
        for row in rows:
            if row["resourceType"] in MODELS:
                MODELS[row["resourceType"]].model_validate(row)
        out.setdefault(item["type"], []).extend(rows)
    return out


def test_group_export_end_to_end(live_server, celery_worker):
    pop = _population(members=2)
    outsider = member_create()  # not attributed: never exported
    clinical_resource_create(resource_type="Patient", resource_id=outsider.patient_id)
    clinical_resource_create(resource_type="Encounter", patient_id=outsider.patient_id)

    # Bulk Data req 29: GET kick-off; req 250: [base]/Group/[id]/$export; req 224/249/227:
    # the asynchronous request pattern (202 + Content-Location, polling, manifest).
    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export")
    # Req 300/301: 202 with an absolute Content-Location.
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    assert status_url.startswith(live_server.url + "/payer/fhir/bulkstatus/")
    OperationOutcome.model_validate(kick.json())  # req 302

    done = _wait_complete(status_url, pop["token"], worker=celery_worker)
    # Req 144-146: 200, application/json, Expires.
    assert done.status_code == 200, done.text
    assert done.headers["Content-Type"].startswith("application/json")
    expires = datetime.datetime.strptime(done.headers["Expires"], "%a, %d %b %Y %H:%M:%S GMT")
    assert 23 <= (expires - datetime.datetime.utcnow()).total_seconds() / 3600 <= 24.1
    manifest = done.json()
    # Req 150-168: required fields. Bulk Data req 147: a JSON body with metadata and links.
    job = ExportJob.objects.get()
    assert manifest["transactionTime"] == job.transaction_time.isoformat().replace("+00:00", "Z")
    assert manifest["request"] == f"{live_server.url}/payer/fhir/Group/{pop['group_id']}/$export"
    assert manifest["requiresAccessToken"] is True
    # Bulk Data req 191/192: "error" is required, an array (empty: nothing went wrong).
    assert isinstance(manifest["error"], list) and manifest["error"] == []
    assert "deleted" not in manifest  # no _since
    for item in manifest["output"]:
        assert item["url"].startswith(live_server.url + "/storage/files/")  # req 175: absolute
        assert isinstance(item["count"], int)

    # Bulk Data req 148/204: every file is accessible with GET at the advertised URL.
    data = _resources(manifest, pop["token"])
    wanted = {m.patient_id for m in pop["members"]}
    # Bulk Data req 27/226: only resources the client is authorized for (its attributed
    # members; the outsider's data never goes out). Req 63: _type omitted, every
    # supported type with data is exported.
    assert {p["id"] for p in data["Patient"]} == wanted
    assert len(data["Encounter"]) == 4 and len(data["Observation"]) == 2
    assert all(e["subject"]["reference"].removeprefix("Patient/") in wanted for e in data["Encounter"])
    # Req 173: no output item for types without data.
    assert {item["type"] for item in manifest["output"]} == {"Patient", "Encounter", "Observation"}
    # Every kick-off and download is audited.
    assert AuditEvent.objects.filter(action="export", outcome="success").count() == 1
    assert AuditEvent.objects.filter(action="download", outcome="success").count() == len(manifest["output"])


def test_eob_export_has_no_financial_data_and_respects_service_date_floor(live_server, celery_worker):
    pop = _population(members=1, encounters=0, observations=0)
    member = pop["members"][0]
    claim_create(member=member)
    claim_create(member=member, service_end=datetime.date(2015, 6, 1))  # before 2016: CMS-0057-F
    # Bulk Data req 273: [base]/Patient/$export; req 225/272: asynchronous request pattern.
    kick = _kick_off(live_server, pop["token"], "Patient/$export", params={"_type": "ExplanationOfBenefit"})
    manifest = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=celery_worker).json()
    eobs = _resources(manifest, pop["token"])["ExplanationOfBenefit"]
    assert len(eobs) == 1
    assert "total" not in eobs[0] and "payment" not in eobs[0]


def _bulk_observations(member, count: int, *, category: str = "vital-signs") -> None:
    from payer.models import ClinicalResource

    now = timezone.now()
    ClinicalResource.objects.bulk_create(
        ClinicalResource(
            resource_type="Observation", resource_id=f"obs-{member.patient_id}-{n}", patient_id=member.patient_id,
            last_updated=now, date=now - datetime.timedelta(days=1), status="final",
            resource={"resourceType": "Observation", "id": f"obs-{member.patient_id}-{n}", "status": "final",
                      "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                                "code": category}]}],
                      "code": {"text": "Heart rate"}, "subject": {"reference": f"Patient/{member.patient_id}"},
                      "valueQuantity": {"value": 60 + n % 40, "unit": "/min"}},
        )
        for n in range(count)
    )


def test_worker_killed_mid_job_completes_with_exact_counts(live_server, start_worker, settings):
    # Issue: a worker killed in the middle must not leave the job stuck; every resource
    # appears exactly once after the reconciler re-queues the expired units.
    settings.PA_EXPORT_BATCH_PATIENTS = 1
    settings.PA_EXPORT_LEASE_SECONDS = 2
    pop = _population(members=12, encounters=1, observations=0)
    for member in pop["members"]:
        _bulk_observations(member, 400)
    worker = start_worker(PA_EXPORT_LEASE_SECONDS="2")
    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export", params={"_type": "Observation,Encounter"})
    assert kick.status_code == 202
    job = ExportJob.objects.get()

    def running_after_some_done():
        units = job.units.all()
        done = sum(u.status == ExportWorkUnit.Status.DONE for u in units)
        running = [u for u in units if u.status == ExportWorkUnit.Status.RUNNING and u.resource_type == "Observation"]
        return running if done >= 2 and running else None

    # Frozen before the check: a unit of 400 rows can finish between a look at the database and the kill.
    wait_for(lambda: worker.kill_if(running_after_some_done), timeout=60, interval=0.01,
             message="a unit running after others finished")
    stuck = list(job.units.filter(status=ExportWorkUnit.Status.RUNNING))
    assert stuck, "the worker was killed while a unit was running"
    assert job.units.exclude(status=ExportWorkUnit.Status.DONE).exists()

    replacement = start_worker(PA_EXPORT_LEASE_SECONDS="2")
    time.sleep(2.5)  # the killed unit's lease runs out
    assert export_reconcile()["requeued"] >= 1
    done = _wait_complete(kick.headers["Content-Location"], pop["token"], timeout=90, worker=replacement)
    assert done.status_code == 200, done.text
    data = _resources(done.json(), pop["token"])
    observation_ids = [o["id"] for o in data["Observation"]]
    assert len(observation_ids) == 12 * 400 == len(set(observation_ids))
    assert len(data["Encounter"]) == 12
    assert all(u.status == ExportWorkUnit.Status.DONE for u in job.units.all())
    assert any(u.attempts >= 2 for u in job.units.all())


def test_opt_out_saved_after_kick_off_keeps_member_out(live_server, start_worker):
    # Issue: opt-outs are re-checked when each unit runs (Bulk Data req 10).
    pop = _population(members=2)
    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export")
    assert kick.status_code == 202
    leaving = pop["members"][0]
    opt_out_create(member=leaving)  # saved after the job was created, before any unit ran
    worker = start_worker()
    manifest = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=worker).json()
    data = _resources(manifest, pop["token"])
    exported = {p["id"] for p in data["Patient"]} | {e["subject"]["reference"][8:] for e in data["Encounter"]}
    assert exported == {pop["members"][1].patient_id}


def test_delete_cancels_the_job_and_removes_its_files(live_server, celery_worker):
    # Req 305-307, 119-122: DELETE answers 202; later polls answer 404 + OperationOutcome.
    pop = _population(members=1)
    # Bulk Data req 223/229: system level $export by the asynchronous request pattern.
    kick = _kick_off(live_server, pop["token"], "$export")
    status_url = kick.headers["Content-Location"]
    manifest = _wait_complete(status_url, pop["token"], worker=celery_worker).json()
    file_url = manifest["output"][0]["url"]
    names = list(ExportFile.objects.values_list("name", flat=True))
    from storage.services import export_storage

    assert names and all(export_storage().exists(name) for name in names)

    deleted = requests.delete(status_url, headers=_auth(pop["token"]), timeout=30)
    assert deleted.status_code == 202
    OperationOutcome.model_validate(deleted.json())
    again = requests.get(status_url, headers=_auth(pop["token"]), timeout=30)
    assert again.status_code == 404 and again.headers["Content-Type"].startswith("application/fhir+json")
    assert OperationOutcome.model_validate(again.json()).issue[0].code == "not-found"
    assert requests.get(file_url, headers=_auth(pop["token"]), timeout=30).status_code == 404
    assert not any(export_storage().exists(name) for name in names)
    assert requests.delete(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 404  # req 308/309


def test_delete_while_in_progress_stops_the_job(live_server, start_worker):
    pop = _population(members=2)
    kick = _kick_off(live_server, pop["token"], "$export")
    assert requests.delete(kick.headers["Content-Location"], headers=_auth(pop["token"]), timeout=30).status_code == 202
    worker = start_worker()
    job = ExportJob.objects.get()
    wait_for(lambda: "export_unit_run_task" in worker.log() and "succeeded" in worker.log(), timeout=60)
    job.refresh_from_db()
    assert job.status == ExportJob.Status.CANCELLED
    assert not ExportFile.objects.filter(job=job).exists()
    assert requests.get(kick.headers["Content-Location"], headers=_auth(pop["token"]), timeout=30).status_code == 404


def test_concurrent_job_limit_and_polling_too_fast_get_429(live_server, transactional_db):
    # Req 118: a client over its limit of concurrent exports gets 429 + Retry-After.
    pop = _population(members=1)
    from payer.models import SmartClient

    client = SmartClient.objects.get(organization=pop["org"])
    client.max_concurrent_exports = 1
    client.save()
    first = _kick_off(live_server, pop["token"], "$export")  # no worker: stays in progress
    assert first.status_code == 202
    second = _kick_off(live_server, pop["token"], "$export")
    assert second.status_code == 429 and int(second.headers["Retry-After"]) > 0
    assert OperationOutcome.model_validate(second.json()).issue[0].code == "throttled"

    # Req 127/128: polling faster than Retry-After asks may get 429 + Retry-After.
    status_url = first.headers["Content-Location"]
    poll = requests.get(status_url, headers=_auth(pop["token"]), timeout=30)
    assert poll.status_code == 202 and poll.headers["Retry-After"] == "1"  # small job: 1 s
    # Bulk Data 2.0 in-progress status: 202, no body, hence no Content-Type.
    assert poll.content == b"" and "Content-Type" not in poll.headers
    assert poll.headers["X-Progress"].startswith("0%")
    too_fast = requests.get(status_url, headers=_auth(pop["token"]), timeout=30)
    assert too_fast.status_code == 429 and int(too_fast.headers["Retry-After"]) >= 1
    OperationOutcome.model_validate(too_fast.json())
    time.sleep(1)
    assert requests.get(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 202

    # Two clients sending the same request get separate jobs.
    other_token = bearer_token_for(pop["org"])
    assert _kick_off(live_server, other_token, "$export").status_code == 202
    assert ExportJob.objects.count() == 2


def test_other_clients_never_see_a_job_its_files_or_group(live_server, celery_worker):
    # Req 6: status and files limited to the client that started the export.
    pop = _population(members=1)
    other = _population(members=1, org=organization_create(name="Other Clinic"))
    kick = _kick_off(live_server, pop["token"], "$export")
    status_url = kick.headers["Content-Location"]
    manifest = _wait_complete(status_url, pop["token"], worker=celery_worker).json()
    same_org_other_client = bearer_token_for(pop["org"])
    for token in (other["token"], same_org_other_client):
        assert requests.get(status_url, headers=_auth(token), timeout=30).status_code == 404
        assert requests.delete(status_url, headers=_auth(token), timeout=30).status_code == 404
        for item in manifest["output"]:
            response = requests.get(item["url"], headers=_auth(token), timeout=30)
            assert response.status_code == 404
            OperationOutcome.model_validate(response.json())
    # Another organization's Group does not exist for this client.
    foreign = _kick_off(live_server, other["token"], f"Group/{pop['group_id']}/$export")
    assert foreign.status_code == 404
    OperationOutcome.model_validate(foreign.json())
    # Req 5/201: without a token, 401 everywhere.
    assert requests.get(status_url, timeout=30).status_code == 401
    assert requests.get(manifest["output"][0]["url"], timeout=30).status_code == 401
    assert _kick_off(live_server, "not-a-token", "$export").status_code == 401
    # Only the caller's own data went out.
    patients = _resources(manifest, pop["token"])["Patient"]
    assert [p["id"] for p in patients] == [pop["members"][0].patient_id]


def test_expiry_and_purge_spare_a_download_in_progress(live_server, celery_worker, settings):
    # Req 146: Expires; req 8: files being downloaded are not deleted.
    pop = _population(members=1, observations=0)
    _bulk_observations(pop["members"][0], 3000)
    kick = _kick_off(live_server, pop["token"], "Patient/$export", params={"_type": "Observation"})
    status_url = kick.headers["Content-Location"]
    manifest = _wait_complete(status_url, pop["token"], worker=celery_worker).json()
    url = manifest["output"][0]["url"]
    job = ExportJob.objects.get()
    names = list(job.files.values_list("name", flat=True))
    from storage.services import export_storage

    stream = requests.get(url, headers=_auth(pop["token"]), stream=True, timeout=30)
    assert stream.status_code == 200
    first = next(stream.iter_content(8192))
    # Time passes: the job expires while the download is in progress.
    past = timezone.now() - datetime.timedelta(seconds=settings.PA_EXPORT_PURGE_GRACE_SECONDS + 60)
    ExportJob.objects.filter(pk=job.pk).update(expires_at=past)
    job.files.update(expires_at=past)
    assert export_purge() == 0  # a download started within the grace period
    rest = b"".join(stream.iter_content(65536))
    assert len((first + rest).splitlines()) == 3000
    # Expired: status and new downloads answer 404.
    assert requests.get(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 404
    assert requests.get(url, headers=_auth(pop["token"]), timeout=30).status_code == 404
    later = timezone.now() + datetime.timedelta(seconds=settings.PA_EXPORT_PURGE_GRACE_SECONDS + 60)
    assert export_purge(now=later) == 1
    assert not ExportJob.objects.exists() and not ExportFile.objects.exists()
    assert not any(export_storage().exists(name) for name in names)


def test_failed_job_answers_500_with_operation_outcome(live_server, transactional_db):
    # Req 131/136/137: a failed export answers 4xx/5xx with an OperationOutcome.
    pop = _population(members=1)
    kick = _kick_off(live_server, pop["token"], "$export")
    ExportJob.objects.update(status=ExportJob.Status.FAILED, error="storage unavailable")
    failed = requests.get(kick.headers["Content-Location"], headers=_auth(pop["token"]), timeout=30)
    assert failed.status_code == 500 and failed.headers["Content-Type"].startswith("application/fhir+json")
    assert OperationOutcome.model_validate(failed.json()).issue[0].code == "exception"


def test_davinci_data_export_updates_last_transmitted(live_server, celery_worker):
    # PDex STU 2.1: a completed $davinci-data-export records lastTransmitted on the group.
    pop = _population(members=2)
    opt_out_create(member=pop["members"][1])
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "exportType", "valueCode": "hl7.fhir.us.davinci-pdex#provider-download"},
        {"name": "_type", "valueString": "Patient,Encounter"},
    ]}
    kick = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$davinci-data-export", method="POST", body=body)
    assert kick.status_code == 202, kick.text
    manifest = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=celery_worker).json()
    assert manifest["request"] == f"{live_server.url}/payer/fhir/Group/{pop['group_id']}/$davinci-data-export"
    job = ExportJob.objects.get()
    sent = AttributionMember.objects.get(member=pop["members"][0])
    assert sent.last_transmitted == job.transaction_time
    assert AttributionMember.objects.get(member=pop["members"][1]).last_transmitted is None
    # GET is not defined for $davinci-data-export; provider-delta needs _since.
    assert _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$davinci-data-export").status_code == 405
    delta = {"resourceType": "Parameters", "parameter": [
        {"name": "exportType", "valueCode": "hl7.fhir.us.davinci-pdex#provider-delta"}]}
    refused = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$davinci-data-export", method="POST", body=delta)
    assert refused.status_code == 400
    OperationOutcome.model_validate(refused.json())


def _run(live_server, token: str, path: str, worker, **kwargs) -> dict[str, Any]:
    kick = _kick_off(live_server, token, path, **kwargs)
    assert kick.status_code == 202, kick.text
    done = _wait_complete(kick.headers["Content-Location"], token, worker=worker)
    assert done.status_code == 200, done.text
    return done.json()


def test_kick_off_parameters(live_server, celery_worker):
    pop = _population(members=2, encounters=0, observations=0)
    from payer.models import SmartClient

    SmartClient.objects.filter(organization=pop["org"]).update(max_concurrent_exports=50)
    jack, jill = pop["members"]
    old, new = timezone.now().replace(year=2020), timezone.now()
    for member in pop["members"]:
        clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id, last_updated=old,
                                 date=old, resource_id=f"old-{member.patient_id}")
        clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id, last_updated=new,
                                 date=new - datetime.timedelta(days=3), resource_id=f"new-{member.patient_id}")
        _bulk_observations(member, 2, category="laboratory")
        clinical_resource_create(resource_type="Observation", patient_id=member.patient_id, date=new,
                                 resource_id=f"vs-{member.patient_id}",
                                 resource={"status": "final", "code": {"text": "Pulse"},
                                           "category": [{"coding": [{"code": "vital-signs"}]}],
                                           "subject": {"reference": f"Patient/{member.patient_id}"}})
        clinical_resource_create(resource_type="Provenance", patient_id=member.patient_id,
                                 resource={"target": [{"reference": f"Encounter/new-{member.patient_id}"}],
                                           "recorded": new.isoformat(), "agent": [{"who": {"display": "EHR"}}]})
    token, group = pop["token"], f"Group/{pop['group_id']}/$export"

    # _type (req 62) given twice = one comma-joined value (req 31/32).
    manifest = _run(live_server, token, group, celery_worker, params=[("_type", "Patient"), ("_type", "Encounter")])
    assert {item["type"] for item in manifest["output"]} == {"Patient", "Encounter"}

    # _since (req 59) filters on last update; the manifest then has "deleted" (req 182/183).
    # Bulk Data req 53/254: _since at the group level; req 234: at the system level.
    for path in (group, "$export"):
        manifest = _run(live_server, token, path, celery_worker, params={"_type": "Encounter", "_since": "2023-01-01T00:00:00Z"})
        assert sorted(e["id"] for e in _resources(manifest, token)["Encounter"]) == sorted(f"new-{m.patient_id}" for m in pop["members"])
        assert manifest["deleted"] == []

    # _until (Bulk Data STU3 addition): resources changed up to that instant.
    manifest = _run(live_server, token, group, celery_worker, params={"_type": "Encounter", "_until": "2021-01-01T00:00:00Z"})
    assert {e["id"] for e in _resources(manifest, token)["Encounter"]} == {f"old-{m.patient_id}" for m in pop["members"]}

    # _typeFilter (req 103, 117): JSON-level token (category) and SQL column (date, _lastUpdated).
    manifest = _run(live_server, token, group, celery_worker, params=[
        ("_type", "Observation,Encounter"), ("_typeFilter", "Observation%3Fcategory%3Dlaboratory"),
        ("_typeFilter", f"Encounter?date=ge{(new - datetime.timedelta(days=10)).date().isoformat()}&_lastUpdated=ge2022")])
    data = _resources(manifest, token)
    assert len(data["Observation"]) == 4 and all(o["category"][0]["coding"][0]["code"] == "laboratory" for o in data["Observation"])
    assert {e["id"][:4] for e in data["Encounter"]} == {"new-"}

    # _elements (req 75-80): only listed root elements plus mandatory ones, tagged SUBSETTED.
    manifest = _run(live_server, token, group, celery_worker, params={"_type": "Encounter,Patient", "_elements": "Encounter.subject,gender"})
    data = _resources(manifest, token)
    encounter = data["Encounter"][0]
    assert set(encounter) == {"resourceType", "id", "meta", "status", "class", "subject"}
    assert encounter["meta"]["tag"][-1]["code"] == "SUBSETTED"
    assert set(data["Patient"][0]) == {"resourceType", "id", "meta", "gender"}

    # patient (POST Parameters, req 85): only listed patients.
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "patient", "valueReference": {"reference": f"Patient/{jill.patient_id}"}},
        {"name": "_type", "valueString": "Patient,Encounter"}]}
    manifest = _run(live_server, token, group, celery_worker, method="POST", body=body)
    assert manifest["request"] == f"{live_server.url}/payer/fhir/{group}"  # req 158: no parameters
    data = _resources(manifest, token)
    assert {p["id"] for p in data["Patient"]} == {jill.patient_id}
    assert {e["subject"]["reference"] for e in data["Encounter"]} == {f"Patient/{jill.patient_id}"}

    # includeAssociatedData (req 92, 99): Provenance of the exported patients.
    manifest = _run(live_server, token, group, celery_worker,
                    params={"_type": "Encounter", "includeAssociatedData": "RelevantProvenanceResources"})
    assert len(_resources(manifest, token)["Provenance"]) == 2

    # _outputFormat: the full and abbreviated NDJSON types (req 51/52). Bulk Data req 251:
    # supported at the group level, req 231 at the system level, req 274 at the patient level.
    for output_format in ("application/fhir+ndjson", "application/ndjson", "ndjson"):
        manifest = _run(live_server, token, group, celery_worker, params={"_type": "Patient", "_outputFormat": output_format})
        assert len(_resources(manifest, token)["Patient"]) == 2
    for path in ("$export", "Patient/$export"):
        manifest = _run(live_server, token, path, celery_worker,
                        params={"_type": "Patient", "_outputFormat": "application/fhir+ndjson"})
        assert len(_resources(manifest, token)["Patient"]) == 2

    # Prefer: handling=lenient (req 72, 197): bad parameters are ignored and listed in error.
    manifest = _run(live_server, token, group, celery_worker,
                    params={"_type": "Patient,Unknown", "_outputFormat": "text/csv", "_elements": "a.b.c", "bogus": "1"},
                    headers={**KICKOFF_HEADERS, "Prefer": "respond-async, handling=lenient"})
    assert len(_resources(manifest, token)["Patient"]) == 2
    errors = _resources(manifest, token, kind="error")["OperationOutcome"]
    diagnostics = " ".join(issue["diagnostics"] for outcome in errors for issue in outcome["issue"])
    assert "Unknown" in diagnostics and "text/csv" in diagnostics and "a.b.c" in diagnostics and "bogus" in diagnostics


@pytest.mark.parametrize(
    ("params", "status", "code"),
    [
        ({"_outputFormat": "text/csv"}, 400, "not-supported"),  # req 47-52
        ({"_type": "Unknown"}, 400, "not-supported"),  # req 70
        ({"_since": "yesterday"}, 400, "invalid"),
        ({"_since": "2024-01-01T00:00:00"}, 400, "invalid"),  # an instant needs a time zone
        ({"_since": "2024-02-01T00:00:00Z", "_until": "2024-01-01T00:00:00Z"}, 400, "invalid"),
        # Well formed, but no such day: once a ValueError and a 500.
        ({"_since": "2020-13-45T00:00:00Z"}, 400, "invalid"),
        ({"_since": "2020-02-30"}, 400, "invalid"),
        ({"_until": "2021-02-29T10:00:00Z"}, 400, "invalid"),
        ({"_typeFilter": "Encounter?date=ge2020-13-45"}, 400, "invalid"),
        ({"_typeFilter": "Encounter?date=2021-02-29"}, 400, "invalid"),
        ({"_typeFilter": "Encounter?patient=Group/1"}, 400, "invalid"),
        ({"_typeFilter": "Patient?patient=Patient/1"}, 400, "not-supported"),
        ({"_typeFilter": "Observation?_sort=date"}, 400, "invalid"),  # req 104
        ({"_typeFilter": "Observation?value-quantity=5"}, 400, "not-supported"),  # req 105
        ({"_typeFilter": "Observation"}, 400, "invalid"),
        ({"_elements": "Encounter.period.start"}, 400, "invalid"),  # req 77: root elements only
        ({"includeAssociatedData": "_everything"}, 400, "not-supported"),  # req 93
        # patient= naming a non-member is no error at the Group level: PDex §pdex-296/360 SHALL
        # ignore it (over Bulk Data req 86/87's SHOULD), reported in the manifest's error
        # (tests/payer/test_member_match.py); at the Patient level it stays 400 (test below).
        ({"exportType": "x"}, 400, "not-supported"),  # only for $davinci-data-export
    ],
)
def test_bad_parameters_answer_400_with_operation_outcome(live_server, transactional_db, params, status, code):
    # Req 303/304: errored kick-off is 4xx with an OperationOutcome.
    pop = _population(members=1)
    response = _kick_off(live_server, pop["token"], f"Group/{pop['group_id']}/$export", params=params)
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert OperationOutcome.model_validate(response.json()).issue[0].code == code
    assert not ExportJob.objects.exists()
    assert AuditEvent.objects.filter(action="export", outcome="error").exists()


def test_kick_off_headers_and_scopes(live_server, transactional_db):
    pop = _population(members=1)
    path = f"Group/{pop['group_id']}/$export"
    # Bulk Data 2.0: Prefer: respond-async is required (req 45/46).
    missing_prefer = _kick_off(live_server, pop["token"], path, headers={"Accept": "application/fhir+json"})
    assert missing_prefer.status_code == 400
    OperationOutcome.model_validate(missing_prefer.json())
    # handling=lenient relaxes parameters, not the header: still 400 without respond-async.
    lenient_only = _kick_off(live_server, pop["token"], path,
                             headers={"Accept": "application/fhir+json", "Prefer": "handling=lenient"})
    assert lenient_only.status_code == 400, lenient_only.text
    assert OperationOutcome.model_validate(lenient_only.json()).issue[0].code == "required"
    assert not ExportJob.objects.exists()
    # A missing Accept is processed as application/fhir+json (req 44); an unsupported one is 406.
    assert _kick_off(live_server, pop["token"], path, headers={"Prefer": "respond-async"}).status_code == 202
    assert _kick_off(live_server, pop["token"], path, headers={"Prefer": "respond-async", "Accept": "text/html"}).status_code == 406
    # Req 9, Bulk Data req 27/226: only types the scopes grant; asking for others is 403.
    narrow = bearer_token_for(pop["org"], scopes="system/Encounter.read")
    forbidden = _kick_off(live_server, narrow, path, params={"_type": "Patient"})
    assert forbidden.status_code == 403
    assert OperationOutcome.model_validate(forbidden.json()).issue[0].code == "forbidden"
    assert _kick_off(live_server, narrow, path).status_code == 202
    job = ExportJob.objects.filter(scopes="system/Encounter.read").get()
    # Bulk Data req 63: _type omitted, all supported types within the client's authorization.
    assert job.params["types"] == ["Encounter"]
    # System level takes no patient parameter.
    assert _kick_off(live_server, pop["token"], "$export", params={"patient": f"Patient/{pop['members'][0].patient_id}"}).status_code == 400


def test_files_are_split_at_the_configured_size(live_server, start_worker):
    pop = _population(members=1, encounters=0, observations=0)
    _bulk_observations(pop["members"][0], 50)
    worker = start_worker(PA_EXPORT_FILE_MAX_BYTES="4000")
    manifest = _run(live_server, pop["token"], "Patient/$export", worker, params={"_type": "Observation"})
    assert len(manifest["output"]) >= 4  # req 171: several files for one type
    assert sum(item["count"] for item in manifest["output"]) == 50
    assert all(f.size <= 4000 for f in ExportFile.objects.all())
    ids = [o["id"] for o in _resources(manifest, pop["token"])["Observation"]]
    assert len(ids) == len(set(ids)) == 50


def test_since_lists_deleted_resources_as_transaction_bundles(live_server, celery_worker):
    # Bulk Data req 179-190: with _since, "deleted" lists files of transaction Bundles whose
    # entries DELETE the resources removed after _since, limited like "output" to visible
    # members and the requested, granted types.
    from fhir.resources.R4B.bundle import Bundle

    from payer.models import ClinicalResource, ResourceTombstone
    from payer.services.clinical import clinical_resource_delete

    pop = _population(members=2, encounters=3, observations=1)
    kept, leaving = pop["members"]
    outsider = member_create()
    outsider_encounter = clinical_resource_create(resource_type="Encounter", patient_id=outsider.patient_id)

    def encounter_ids(member) -> list[str]:
        return sorted(ClinicalResource.objects.filter(resource_type="Encounter", patient_id=member.patient_id)
                      .values_list("resource_id", flat=True))

    before_since, gone, again = encounter_ids(kept)
    clinical_resource_delete(resource_type="Encounter", resource_id=before_since)
    since = timezone.now()
    time.sleep(0.01)
    tombstone = clinical_resource_delete(resource_type="Encounter", resource_id=gone)
    assert tombstone.patient_id == kept.patient_id and tombstone.deleted_at > since
    assert not ClinicalResource.objects.filter(resource_type="Encounter", resource_id=gone).exists()
    assert clinical_resource_delete(resource_type="Encounter", resource_id=gone) is None  # already gone
    # Deleted, then stored again: it belongs in "output", never in "deleted" (req 186).
    clinical_resource_delete(resource_type="Encounter", resource_id=again)
    clinical_resource_create(resource_type="Encounter", resource_id=again, patient_id=kept.patient_id,
                             date=timezone.now() - datetime.timedelta(days=3))
    # Not exported: another type, an unattributed member, a member who opted out.
    observation = ClinicalResource.objects.get(resource_type="Observation", patient_id=kept.patient_id)
    clinical_resource_delete(resource_type="Observation", resource_id=observation.resource_id)
    clinical_resource_delete(resource_type="Encounter", resource_id=outsider_encounter.resource_id)
    clinical_resource_delete(resource_type="Encounter", resource_id=encounter_ids(leaving)[0])
    opt_out_create(member=leaving)
    clinical_resource_delete(resource_type="Patient", resource_id=kept.patient_id)
    assert ResourceTombstone.objects.count() == 7

    manifest = _run(live_server, pop["token"], f"Group/{pop['group_id']}/$export", celery_worker,
                    params={"_type": "Patient,Encounter", "_since": since.isoformat()})
    assert manifest["deleted"], manifest
    for item in manifest["deleted"]:
        assert item["type"] == "Bundle" and item["url"].startswith(live_server.url + "/storage/files/")  # req 181
    bundles = _resources(manifest, pop["token"], kind="deleted")["Bundle"]
    deleted_urls = []
    for bundle in bundles:
        Bundle.model_validate(bundle)
        assert bundle["type"] == "transaction"  # req 187
        assert bundle["entry"]  # req 188
        for entry in bundle["entry"]:
            assert entry["request"]["method"] == "DELETE"  # req 189/190
            deleted_urls.append(entry["request"]["url"])
    assert sorted(deleted_urls) == sorted([f"Encounter/{gone}", f"Patient/{kept.patient_id}"])
    output = _resources(manifest, pop["token"])
    assert [e["id"] for e in output["Encounter"]] == [again]  # req 186: stored again, so in output
    assert "Patient" not in output

    # Without _since the manifest lists no deletions (req 184).
    manifest = _run(live_server, pop["token"], f"Group/{pop['group_id']}/$export", celery_worker,
                    params={"_type": "Encounter"})
    assert "deleted" not in manifest


def test_stored_json_is_exported_verbatim_whatever_its_characters(live_server, celery_worker):
    # On Postgres the rows stream through COPY (CSV with \x01 quote, \x02 delimiter): text
    # holding quotes, backslashes, escaped control characters, delimiters of other formats
    # and non-ASCII must come out as stored, one resource per line (req 209: NDJSON).
    pop = _population(members=1, encounters=0, observations=0)
    patient_id = pop["members"][0].patient_id
    tricky = 'say "hi" \\ back\\slash\ttab\nnew\rline \x01\x02\x7f, ; | 😀 Zoë \u2028 {"k": [1]}'
    stored = clinical_resource_create(resource_type="Observation", patient_id=patient_id, resource={
        "resourceType": "Observation", "status": "final", "code": {"text": tricky},
        "subject": {"reference": f"Patient/{patient_id}"}, "note": [{"text": "\\N"}, {"text": "\\."}]})
    manifest = _run(live_server, pop["token"], "Patient/$export", celery_worker, params={"_type": "Observation"})
    (item,) = manifest["output"]
    response = requests.get(item["url"], headers=_auth(pop["token"]), timeout=30)
    lines = response.content.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 2
    exported = json.loads(lines[0])
    Observation.model_validate(exported)
    assert exported == stored.resource


def _mentions(rows: list[dict[str, Any]], patient_id: str) -> bool:
    return any(row.get("id") == patient_id or json.dumps(row).find(f'"Patient/{patient_id}"') >= 0 for row in rows)


def test_opt_out_between_units_reruns_the_units_that_already_ran(live_server, start_worker, settings):
    # Issue 3 (CMS-0057-F): "An opt-out applies from the moment it is saved: ... any export
    # still running must not release that member's data." Units that finished before the
    # opt-out run again without the member, so files and manifest counts leave them out.
    settings.PA_EXPORT_BATCH_PATIENTS = 1
    pop = _population(members=2)
    token = pop["token"]
    kick = _kick_off(live_server, token, f"Group/{pop['group_id']}/$export", params={"_type": "Patient,Encounter,Observation"})
    assert kick.status_code == 202
    job = ExportJob.objects.get()
    leaving, staying = sorted(pop["members"], key=lambda m: m.patient_id)
    from payer.services.export import _unit_run

    # The leaving member's units finish first (run here, as a worker runs them) ...
    first = [u for u in job.units.all() if leaving.patient_id in u.patient_ids]
    for unit in first:
        _unit_run(unit_id=unit.pk)
    assert all(u.status == ExportWorkUnit.Status.DONE and u.count for u in job.units.filter(pk__in=[u.pk for u in first]))
    opt_out_create(member=leaving)  # ... then the member opts out, before the job completes.
    worker = start_worker()
    done = _wait_complete(kick.headers["Content-Location"], token, worker=worker)
    assert done.status_code == 200, done.text
    data = _resources(done.json(), token)  # checks every manifest count against its file
    for rows in data.values():
        assert not _mentions(rows, leaving.patient_id)
    assert [p["id"] for p in data["Patient"]] == [staying.patient_id] and len(data["Encounter"]) == 2
    rerun = job.units.filter(pk__in=[u.pk for u in first])
    assert all(u.attempts == 2 and u.count == 0 and u.exported_patient_ids == [] for u in rerun)


def test_opt_out_after_completion_withholds_the_members_lines_at_download(live_server, celery_worker):
    # Issue 3: the opt-out also reaches files written before it. Their download leaves the
    # member's lines out, the denial is audited, and Range is ignored (200, whole filtered body).
    pop = _population(members=2, encounters=2, observations=1)
    token = pop["token"]
    leaving, staying = pop["members"]
    kick = _kick_off(live_server, token, f"Group/{pop['group_id']}/$export", params={"_type": "Patient,Encounter,Observation"})
    manifest = _wait_complete(kick.headers["Content-Location"], token, worker=celery_worker).json()
    assert _mentions(_resources(manifest, token)["Encounter"], leaving.patient_id)
    opt_out_create(member=leaving)

    for item in manifest["output"]:
        plain = requests.get(item["url"], headers=_auth(token, **{"Accept-Encoding": "identity", "Range": "bytes=0-9"}), timeout=30)
        assert plain.status_code == 200 and "Content-Range" not in plain.headers
        assert plain.headers["Content-Type"].startswith("application/fhir+ndjson")
        rows = [json.loads(line) for line in plain.content.splitlines()]
        assert rows and not _mentions(rows, leaving.patient_id) and _mentions(rows, staying.patient_id)
        for row in rows:
            MODELS[row["resourceType"]].model_validate(row)
        packed = requests.get(item["url"], headers=_auth(token, **{"Accept-Encoding": "gzip"}), stream=True, timeout=30)
        assert packed.status_code == 200 and packed.headers["Content-Encoding"] == "gzip"
        assert gzip.decompress(packed.raw.read(decode_content=False)) == plain.content
    denials = AuditEvent.objects.filter(action="download", outcome="denied")
    assert denials.count() == 2 * len(manifest["output"])
    assert all(event.patient_ids == [leaving.patient_id] and event.status_code == 200 for event in denials)
    released = AuditEvent.objects.filter(action="download", outcome="success", detail__endswith="(filtered)")
    assert all(event.patient_ids == [staying.patient_id] for event in released) and released.exists()

    # A contract that ended releases nothing more from the files.
    from payer.models import NetworkContract

    NetworkContract.objects.filter(organization=pop["org"]).update(end=timezone.localdate() - datetime.timedelta(days=1))
    for item in manifest["output"]:
        emptied = requests.get(item["url"], headers=_auth(token), timeout=30)
        assert emptied.status_code == 200 and emptied.content == b""


def test_directory_files_are_refused_once_the_contract_ends(live_server, celery_worker):
    # Issue "hardening": Practitioner, Location and Organization files of a finished export
    # still downloaded while a search for them answered 403. A file is downloadable only
    # while the client could still search what it holds.
    pop = _population(members=1, encounters=1, observations=0)
    token = pop["token"]
    clinical_resource_create(resource_type="Practitioner")
    manifest = _run(live_server, token, f"Group/{pop['group_id']}/$export", celery_worker,
                    params={"_type": "Practitioner,Encounter"})
    files = {item["type"]: item["url"] for item in manifest["output"]}
    assert _download(files["Practitioner"], token)[0]["resourceType"] == "Practitioner"

    from payer.models import NetworkContract

    NetworkContract.objects.filter(organization=pop["org"]).update(end=timezone.localdate() - datetime.timedelta(days=1))
    refused = requests.get(files["Practitioner"], headers=_auth(token), timeout=30)
    assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "forbidden"
    assert requests.get(f"{live_server.url}/payer/fhir/Practitioner", headers=_auth(token), timeout=30).status_code == 403
    assert AuditEvent.objects.filter(action="download", outcome="denied", status_code=403).count() == 1
    # The member's files release nothing either (as before).
    assert requests.get(files["Encounter"], headers=_auth(token), timeout=30).content == b""


def test_nul_in_kick_off_parameters_is_400_and_audited(live_server, transactional_db):
    # Postgres jsonb holds no NUL (the job stores its parameters): once a 500.
    pop = _population(members=1)
    path = f"Group/{pop['group_id']}/$export"
    got = _kick_off(live_server, pop["token"], path, params={"_typeFilter": "Encounter?status=\x00"})
    assert got.status_code == 400 and OperationOutcome.model_validate(got.json()).issue[0].code == "invalid"
    body = {"resourceType": "Parameters", "parameter": [{"name": "_typeFilter", "valueString": "Encounter?status=a\x00"}]}
    posted = _kick_off(live_server, pop["token"], path, method="POST", body=body)
    assert posted.status_code == 400 and OperationOutcome.model_validate(posted.json()).issue[0].code == "invalid"
    lenient = _kick_off(live_server, pop["token"], path, method="POST", body=body,
                        headers={**KICKOFF_HEADERS, "Prefer": "respond-async, handling=lenient"})
    assert lenient.status_code == 202, lenient.text
    assert "NUL" in ExportJob.objects.get().issues[0]["diagnostics"]
    assert AuditEvent.objects.filter(action="export", outcome="error", status_code=400).count() == 2


def test_status_denials_are_audited(live_server, transactional_db):
    # Issue 3: every denial leaves an audit entry: another client's job, a cancelled one
    # (404), polling faster than asked (429).
    pop = _population(members=1)
    kick = _kick_off(live_server, pop["token"], "$export")  # no worker: stays in progress
    status_url = kick.headers["Content-Location"]
    job_id = status_url.rsplit("/", 1)[1]
    assert requests.get(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 202
    assert requests.get(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 429
    stranger = bearer_token_for(organization_create(name="Other Clinic"))
    assert requests.get(status_url, headers=_auth(stranger), timeout=30).status_code == 404
    assert requests.delete(status_url, headers=_auth(stranger), timeout=30).status_code == 404
    assert requests.delete(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 202
    assert requests.get(status_url, headers=_auth(pop["token"]), timeout=30).status_code == 404
    denied = AuditEvent.objects.filter(outcome="denied", action__in=["export-status", "export-cancel"])
    assert sorted((e.action, e.status_code) for e in denied) == [
        ("export-cancel", 404), ("export-status", 404), ("export-status", 404), ("export-status", 429)]
    assert all(job_id in e.detail for e in denied)


# --- Review fixes: dates, _typeFilter decoding and parameters, associated Provenance,
# failures, PDex export types -------------------------------------------------------------


def test_type_filter_dates_keep_offsets_and_reach_year_9999(live_server, celery_worker):
    # A _typeFilter value is one URL-encoded FHIR query (Bulk Data export.html#_typefilter):
    # decoded once, so "+02:00" stays an offset (it once became a space and a 400).
    pop = _population(members=1, encounters=0, observations=0)
    patient_id = pop["members"][0].patient_id
    inside = datetime.datetime(2019, 12, 31, 23, 30, tzinfo=datetime.UTC)  # after 2020-01-01T01:00+02:00
    outside = datetime.datetime(2019, 12, 31, 22, 30, tzinfo=datetime.UTC)  # before it
    clinical_resource_create(resource_type="Encounter", patient_id=patient_id, resource_id="enc-inside", date=inside)
    clinical_resource_create(resource_type="Encounter", patient_id=patient_id, resource_id="enc-outside", date=outside)
    token, path = pop["token"], "Patient/$export"
    query = "Encounter?date=ge2020-01-01T01:00:00+02:00"
    # GET: requests encodes "+" as %2B in the kick-off URL.
    manifest = _run(live_server, token, path, celery_worker, params={"_type": "Encounter", "_typeFilter": query})
    assert [e["id"] for e in _resources(manifest, token)["Encounter"]] == ["enc-inside"]
    # POST Parameters: the query as it is, no URL encoding around it.
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "_type", "valueString": "Encounter"}, {"name": "_typeFilter", "valueString": query}]}
    manifest = _run(live_server, token, path, celery_worker, method="POST", body=body)
    assert [e["id"] for e in _resources(manifest, token)["Encounter"]] == ["enc-inside"]
    # A value encoded inside the query (%2B) is decoded once, to the same offset.
    manifest = _run(live_server, token, path, celery_worker,
                    params={"_type": "Encounter", "_typeFilter": "Encounter?date=ge2020-01-01T01:00:00%2B02:00"})
    assert [e["id"] for e in _resources(manifest, token)["Encounter"]] == ["enc-inside"]
    # The end of December 9999 is past what datetime holds: once a 500, now "everything".
    manifest = _run(live_server, token, path, celery_worker,
                    params={"_type": "Encounter", "_typeFilter": "Encounter?date=le9999-12"})
    assert sorted(e["id"] for e in _resources(manifest, token)["Encounter"]) == ["enc-inside", "enc-outside"]


def test_malformed_dates_under_lenient_handling_are_ignored_and_reported(live_server, celery_worker):
    # Prefer: handling=lenient (req 72, 197): the impossible dates are ignored and listed.
    pop = _population(members=1)
    manifest = _run(live_server, pop["token"], "Patient/$export", celery_worker,
                    params={"_type": "Encounter", "_since": "2020-02-30", "_typeFilter": "Encounter?date=ge2020-13-45"},
                    headers={**KICKOFF_HEADERS, "Prefer": "respond-async, handling=lenient"})
    assert len(_resources(manifest, pop["token"])["Encounter"]) == 2
    errors = _resources(manifest, pop["token"], kind="error")["OperationOutcome"]
    diagnostics = " ".join(issue["diagnostics"] for outcome in errors for issue in outcome["issue"])
    assert "2020-02-30" in diagnostics and "2020-13-45" in diagnostics


def test_type_filter_takes_every_search_parameter_of_the_payer_fhir_api(live_server, celery_worker):
    # Issue 4: _typeFilter supports "at least the search parameters the payer FHIR API
    # supports for each type" (payer/services/fhir.py), e.g. Patient?identifier= and
    # Encounter?patient= (once both 400).
    from payer.services.export_params import SUPPORTED_TYPES, supported_search_params
    from payer.services.fhir import READABLE_TYPES, allowed_search_params

    for resource_type in READABLE_TYPES:
        api = set(allowed_search_params(resource_type)) - {"_count", "_offset"}  # result/paging parameters (req 104)
        assert resource_type in SUPPORTED_TYPES
        assert api <= set(supported_search_params(resource_type)), resource_type

    pop = _population(members=2, encounters=2, observations=0)
    first, second = pop["members"]
    from payer.models import ClinicalResource

    for member in pop["members"]:
        row = ClinicalResource.objects.get(resource_type="Patient", resource_id=member.patient_id)
        row.resource = {**row.resource, "identifier": [{"system": "https://unitedcare.example/member", "value": member.member_id}]}
        row.save()
    token = pop["token"]
    filters = [("_type", "Patient,Encounter"),
               ("_typeFilter", f"Patient?identifier=https://unitedcare.example/member|{first.member_id}"),
               ("_typeFilter", f"Encounter?patient=Patient/{second.patient_id}")]
    manifest = _run(live_server, token, f"Group/{pop['group_id']}/$export", celery_worker, params=filters)
    data = _resources(manifest, token)
    assert [p["id"] for p in data["Patient"]] == [first.patient_id]
    assert {e["subject"]["reference"] for e in data["Encounter"]} == {f"Patient/{second.patient_id}"}
    assert len(data["Encounter"]) == 2
    # The bare id and a JSON-level criterion beside it (parsed-row path) work too.
    manifest = _run(live_server, token, f"Group/{pop['group_id']}/$export", celery_worker, params=[
        ("_type", "Encounter"), ("_typeFilter", f"Encounter?patient={first.patient_id}&class=AMB")])
    assert {e["subject"]["reference"] for e in _resources(manifest, token)["Encounter"]} == {f"Patient/{first.patient_id}"}
    # A system that does not match finds no Patient.
    manifest = _run(live_server, token, f"Group/{pop['group_id']}/$export", celery_worker, params=[
        ("_type", "Patient"), ("_typeFilter", f"Patient?identifier=urn:other|{first.member_id}")])
    assert manifest["output"] == []


def _provenance(patient_id: str, resource_id: str, target: str, recorded: str):
    return clinical_resource_create(resource_type="Provenance", patient_id=patient_id, resource_id=resource_id, resource={
        "target": [{"reference": target}], "recorded": recorded, "agent": [{"who": {"display": "EHR"}}]})


def test_include_associated_data_latest_and_relevant_provenance(live_server, celery_worker):
    # Bulk Data 2.0 includeAssociatedData: Provenance associated with the non-Provenance
    # resources being returned, nothing of other types or of resources not exported.
    from fhir.resources.R4B.provenance import Provenance

    pop = _population(members=1, encounters=0, observations=0)
    patient_id = pop["members"][0].patient_id
    for encounter_id in ("enc-1", "enc-2"):
        clinical_resource_create(resource_type="Encounter", patient_id=patient_id, resource_id=encounter_id,
                                 date=timezone.now() - datetime.timedelta(days=3))
    clinical_resource_create(resource_type="Observation", patient_id=patient_id, resource_id="obs-1")
    _provenance(patient_id, "prov-old", "Encounter/enc-1", "2023-01-01T00:00:00Z")
    _provenance(patient_id, "prov-new", "Encounter/enc-1", "2024-01-01T02:00:00+02:00")
    _provenance(patient_id, "prov-enc-2", "Encounter/enc-2", "2024-05-01T00:00:00Z")
    _provenance(patient_id, "prov-obs", "Observation/obs-1", "2024-05-01T00:00:00Z")
    _provenance(patient_id, "prov-patient", f"Patient/{patient_id}", "2024-05-01T00:00:00Z")
    token, path = pop["token"], "Patient/$export"
    only_enc_1 = {"_type": "Encounter", "_typeFilter": "Encounter?_id=enc-1"}

    def provenance_ids(**params) -> list[str]:
        manifest = _run(live_server, token, path, celery_worker, params=params)
        rows = _resources(manifest, token).get("Provenance", [])
        for row in rows:
            Provenance.model_validate(row)
        return sorted(row["id"] for row in rows)

    # Bulk Data req 99: Relevant: all Provenance of the exported resources. Not that of
    # enc-2 (filtered out), of obs-1 or of the Patient (types not requested).
    assert provenance_ids(**only_enc_1, includeAssociatedData="RelevantProvenanceResources") == ["prov-new", "prov-old"]
    # Bulk Data req 97/98: Latest: only the most recent per exported resource, no other.
    assert provenance_ids(**only_enc_1, includeAssociatedData="LatestProvenanceResources") == ["prov-new"]
    assert provenance_ids(_type="Encounter,Observation", includeAssociatedData="LatestProvenanceResources") == [
        "prov-enc-2", "prov-new", "prov-obs"]
    # Bulk Data req 96: conflicting values: the least restrictive (Relevant) applies.
    assert provenance_ids(**only_enc_1, includeAssociatedData="LatestProvenanceResources,RelevantProvenanceResources") == [
        "prov-new", "prov-old"]
    # Without includeAssociatedData: Provenance is a type like the others. Bulk Data req
    # 109/110: _type omitted, all Provenance of the patient compartment; req 111/112: a
    # _type without Provenance, none.
    everything = ["prov-enc-2", "prov-new", "prov-obs", "prov-old", "prov-patient"]
    assert provenance_ids() == everything
    assert provenance_ids(_type="Encounter") == []
    # A _type naming Provenance asks for all of it (the least restrictive reading).
    assert provenance_ids(_type="Encounter,Provenance", includeAssociatedData="LatestProvenanceResources") == everything


def test_unit_failing_in_a_real_worker_fails_the_job_with_transient_outcome(live_server, start_worker, tmp_path):
    # The export files directory is a path under a regular file: every write of the real
    # worker fails (NotADirectoryError), the unit is retried until PA_EXPORT_MAX_ATTEMPTS,
    # and the job fails. Req 131/136/137: the status answers 5xx with an OperationOutcome;
    # storage out of reach may pass, so the issue code is "transient".
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file, not a directory")
    pop = _population(members=1)
    worker = start_worker(PA_FILES_DIR=str(blocker / "files"), PA_EXPORT_MAX_ATTEMPTS="2")
    kick = _kick_off(live_server, pop["token"], "Patient/$export", params={"_type": "Patient"})
    assert kick.status_code == 202, kick.text
    failed = _wait_complete(kick.headers["Content-Location"], pop["token"], worker=worker)
    assert failed.status_code == 500, failed.text
    assert failed.headers["Content-Type"].startswith("application/fhir+json")
    issue = OperationOutcome.model_validate(failed.json()).issue[0]
    assert issue.code == "transient" and issue.severity == "error"
    job = ExportJob.objects.get()
    assert job.status == ExportJob.Status.FAILED and job.error_transient
    (unit,) = job.units.all()
    assert unit.status == ExportWorkUnit.Status.FAILED and unit.attempts == 2
    assert "NotADirectoryError" in unit.error or "FileExistsError" in unit.error
    assert not ExportFile.objects.exists()


def test_resources_that_fail_go_to_error_files_and_the_export_still_succeeds(live_server, celery_worker):
    # Bulk Data req 142/143: a resource that cannot be exported (here a stored row that is
    # not a JSON object, which _elements cannot subset) is left out and reported in an
    # error file of OperationOutcome NDJSON (req 193/196); the status is still 200.
    from payer.models import ClinicalResource

    pop = _population(members=1, encounters=0, observations=1)
    patient_id = pop["members"][0].patient_id
    ClinicalResource.objects.create(resource_type="Observation", resource_id="obs-broken", patient_id=patient_id,
                                    last_updated=timezone.now(), resource=["not", "a", "resource"])
    manifest = _run(live_server, pop["token"], "Patient/$export", celery_worker,
                    params={"_type": "Observation", "_elements": "status"})
    output = _resources(manifest, pop["token"])["Observation"]
    assert len(output) == 1 and output[0]["id"] != "obs-broken"
    assert [item["type"] for item in manifest["error"]] == ["OperationOutcome"]
    (outcome,) = _resources(manifest, pop["token"], kind="error")["OperationOutcome"]
    assert "Observation/obs-broken" in outcome["issue"][0]["diagnostics"]
    assert outcome["issue"][0]["code"] == "processing"


def _pdex(live_server, token: str, group_id: str, worker, export_type: str, **extra: str) -> dict[str, Any]:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "exportType", "valueCode": f"hl7.fhir.us.davinci-pdex#{export_type}"},
        *({"name": name, "valueString": value} for name, value in extra.items())]}
    return _run(live_server, token, f"Group/{group_id}/$davinci-data-export", worker, method="POST", body=body)


def test_davinci_snapshot_and_delta_with_deletions(live_server, celery_worker):
    # PDex STU2 $davinci-data-export: #provider-snapshot sends everything, #provider-delta
    # what changed since _since (with Bulk Data "deleted"), and each completed export
    # records lastTransmitted on the members it sent.
    from fhir.resources.R4B.bundle import Bundle

    from payer.models import ClinicalResource
    from payer.services.clinical import clinical_resource_delete

    pop = _population(members=2, encounters=2, observations=0)
    token, group_id = pop["token"], pop["group_id"]
    jack, jill = pop["members"]
    snapshot = _pdex(live_server, token, group_id, celery_worker, "provider-snapshot", _type="Patient,Encounter")
    assert snapshot["extension"] == {"exportType": "hl7.fhir.us.davinci-pdex#provider-snapshot"}
    assert "deleted" not in snapshot
    data = _resources(snapshot, token)
    assert len(data["Patient"]) == 2 and len(data["Encounter"]) == 4
    first_job = ExportJob.objects.get()
    assert {m.last_transmitted for m in AttributionMember.objects.all()} == {first_job.transaction_time}

    # Changes after the snapshot: one encounter updated, one deleted.
    time.sleep(0.01)
    updated, gone = ClinicalResource.objects.filter(resource_type="Encounter", patient_id=jack.patient_id).order_by("resource_id")
    ClinicalResource.objects.filter(pk=updated.pk).update(last_updated=timezone.now())
    clinical_resource_delete(resource_type="Encounter", resource_id=gone.resource_id)
    opt_out_create(member=jill)  # jill is no longer sent: her lastTransmitted stays

    since = snapshot["transactionTime"]
    delta = _pdex(live_server, token, group_id, celery_worker, "provider-delta", _type="Patient,Encounter", _since=since)
    assert delta["extension"] == {"exportType": "hl7.fhir.us.davinci-pdex#provider-delta"}
    output = _resources(delta, token)
    assert list(output) == ["Encounter"] and [e["id"] for e in output["Encounter"]] == [updated.resource_id]
    bundles = _resources(delta, token, kind="deleted")["Bundle"]
    for bundle in bundles:
        Bundle.model_validate(bundle)
    assert [entry["request"] for b in bundles for entry in b["entry"]] == [
        {"method": "DELETE", "url": f"Encounter/{gone.resource_id}"}]
    delta_job = ExportJob.objects.latest("created_at")
    assert AttributionMember.objects.get(member=jack).last_transmitted == delta_job.transaction_time
    assert AttributionMember.objects.get(member=jill).last_transmitted == first_job.transaction_time


def test_only_the_latest_version_of_a_resource_is_exported(live_server, celery_worker):
    # Bulk Data req 202: only the most recent version of each exported resource. The
    # repository keeps one row per (type, id) (UniqueConstraint); a new version replaces it.
    from payer.models import ClinicalResource

    pop = _population(members=1, encounters=0, observations=0)
    patient_id = pop["members"][0].patient_id
    row = clinical_resource_create(resource_type="Observation", patient_id=patient_id, resource_id="obs-versioned")
    ClinicalResource.objects.filter(pk=row.pk).update(
        version_id=2, last_updated=timezone.now(), resource={**row.resource, "status": "amended"})
    manifest = _run(live_server, pop["token"], "Patient/$export", celery_worker, params={"_type": "Observation"})
    rows = _resources(manifest, pop["token"])["Observation"]
    assert [(o["id"], o["status"]) for o in rows] == [("obs-versioned", "amended")]


def test_hostile_kick_offs_answer_400_never_500_and_lenient_never_widens(live_server, celery_worker):
    # Issue "hardening": a lone surrogate in a Parameters body was a 500 on Postgres (and on
    # SQLite a unit that failed forever); 5,000 _typeFilter alternatives built a query tree
    # the database refused; lenient handling with only malformed patients exported everyone.
    pop = _population(members=2)
    token, group = pop["token"], pop["group_id"]
    surrogate = '{"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Encounter\\ud800"}]}'
    response = requests.post(f"{live_server.url}/payer/fhir/Group/{group}/$export", data=surrogate.encode(),
                             headers=_auth(token, **KICKOFF_HEADERS, **{"Content-Type": "application/fhir+json"}), timeout=30)
    assert response.status_code == 400, response.text
    OperationOutcome.model_validate(response.json())
    response = _kick_off(live_server, token, f"Group/{group}/$export", method="POST", body={
        "resourceType": "Parameters",
        "parameter": [{"name": "_typeFilter", "valueString": f"Encounter?status=s{n}"} for n in range(5000)]})
    assert response.status_code == 400 and response.json()["issue"][0]["code"] == "too-costly"
    response = _kick_off(live_server, token, f"Group/{group}/$export", method="POST", body={
        "resourceType": "Parameters",
        "parameter": [{"name": "patient", "valueReference": {"reference": f"Patient/p{n}"}} for n in range(1500)]})
    assert response.status_code == 400 and response.json()["issue"][0]["code"] == "too-costly"
    # A body past DATA_UPLOAD_MAX_MEMORY_SIZE (DRF reads past Django's own bound) is 413.
    huge = {"resourceType": "Parameters", "parameter": [{"name": "_type", "valueString": "Encounter" + " " * 3_000_000}]}
    response = _kick_off(live_server, token, f"Group/{group}/$export", method="POST", body=huge)
    assert response.status_code == 413 and response.json()["resourceType"] == "OperationOutcome"
    assert AuditEvent.objects.filter(status_code=413).exists()
    assert ExportJob.objects.count() == 0

    manifest = _run(live_server, token, f"Group/{group}/$export", celery_worker,
                    params={"_type": "Encounter", "patient": "not a reference,Patient/$$$"},
                    headers={**KICKOFF_HEADERS, "Prefer": "respond-async, handling=lenient"})
    assert manifest["output"] == []
    diagnostics = " ".join(i["diagnostics"] for o in _resources(manifest, token, kind="error")["OperationOutcome"] for i in o["issue"])
    assert "not a Patient reference" in diagnostics


def test_eobs_come_from_the_projection_with_changes_and_deletions_since(live_server, celery_worker):
    # Issue 11: EOBs are streamed from the projection, brought up to date at kick-off: a
    # claim changed after _since is in output, a deleted one is a DELETE entry (Bulk Data
    # req 179-190), and an unchanged one is in neither.
    from payer.mapping import claim_to_eob, eob_id_for_claim
    from payer.models import Claim

    pop = _population(members=1, encounters=0, observations=0)
    member = pop["members"][0]
    long_ago = timezone.now() - datetime.timedelta(days=20)
    unchanged, changed, deleted = (claim_create(member=member, updated_at=long_ago) for _ in range(3))
    params = {"_type": "ExplanationOfBenefit"}
    first = _resources(_run(live_server, pop["token"], f"Group/{pop['group_id']}/$export", celery_worker, params=params),
                       pop["token"])
    assert sorted(e["id"] for e in first["ExplanationOfBenefit"]) == sorted(
        eob_id_for_claim(c.claim_number) for c in (unchanged, changed, deleted))
    since = timezone.now()
    time.sleep(0.05)
    Claim.objects.filter(pk=changed.pk).update(status=Claim.Status.DENIED, updated_at=timezone.now())
    deleted_id = eob_id_for_claim(deleted.claim_number)
    deleted.delete()
    manifest = _run(live_server, pop["token"], f"Group/{pop['group_id']}/$export", celery_worker,
                    params={**params, "_since": since.isoformat()})
    output = _resources(manifest, pop["token"])["ExplanationOfBenefit"]
    assert [e["id"] for e in output] == [eob_id_for_claim(changed.claim_number)]
    assert output[0] == claim_to_eob(Claim.objects.get(pk=changed.pk))  # the mapping decides the content
    bundles = _resources(manifest, pop["token"], kind="deleted")["Bundle"]
    assert [e["request"] for b in bundles for e in b["entry"]] == [
        {"method": "DELETE", "url": f"ExplanationOfBenefit/{deleted_id}"}]
