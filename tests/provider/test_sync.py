"""Sync jobs against a real HTTP Bulk Data server: faults survived, incremental fetches, cancel, no data."""

import re
import threading

import pytest
from django.core.management import call_command
from django.db import connections
from django.core.management.base import CommandError
from django.test import override_settings

from provider.models import IngestIssue, LocalResource, PayerConnection, SyncFile, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import (
    NO_DATA_MESSAGE,
    sync_file_step,
    sync_job_cancel,
    sync_job_progress,
    sync_job_run_inline,
    sync_job_start,
    sync_job_step,
)
from tests.conftest import wait_for
from tests.provider.bulk_data import CLIENT_ID, encounter

pytestmark = pytest.mark.django_db




def stored(resource_type: str) -> list[str]:
    return sorted(LocalResource.objects.filter(resource_type=resource_type).values_list("resource_id", flat=True))


def test_member_sync_survives_429_503_drop_expired_token_and_corrupt_line(transactional_db, fake_payer, connection):
    # Bulk Data reqs 17 and 18: the client requests and receives the Bulk Data files;
    # req 201: with requiresAccessToken true every file request carries a valid token.
    # (tests/provider/test_sync_worker.py runs the same fault script on a real worker.)
    # Files download in a thread pool here, so the data must be committed: transactional_db.
    fake_payer.poll_script = [(202, {"X-Progress": "10%", "Retry-After": "1"}), (429, {"Retry-After": "1"}), (503, {}), (202, {"X-Progress": "90%"})]
    fake_payer.file_faults = {"Encounter": ["drop", "503", "corrupt"]}
    # Enough encounters that half of the gzip body decodes to some lines before the drop.
    fake_payer.resources["Encounter"] += [encounter(f"e1-x{n:03d}", "p1", f"2023-01-{1 + n % 28:02d}T09:00:00Z") for n in range(1500)]
    jack = sorted([f"e1-{n}" for n in range(1, 8)] + [f"e1-x{n:03d}" for n in range(1500)])
    seen: list[dict] = []
    job = sync_job_start(connection=connection, member_id="M100", types=["Patient", "Encounter", "Condition"], enqueue=False)

    def progress(report: dict) -> None:
        seen.append(report)
        if report["status"] == "downloading" and not fake_payer.tokens.get("expired-once"):
            fake_payer.expire_tokens()  # the token dies in the middle of the downloads
            fake_payer.tokens["expired-once"] = 0

    job = sync_job_run_inline(job=job, on_progress=progress)

    assert job.status == SyncJob.Status.COMPLETED, job.error
    # The member alone, found through the attribution Group (ATR) by identifier.
    kick = fake_payer.requests_to("/Group/g1/$export", "POST")[0]
    assert {"name": "patient", "valueReference": {"reference": "Patient/p1"}} in kick.body["parameter"]
    assert job.patient_ids == ["p1"] and job.group_id == "g1"
    # Nothing lost, nothing doubled: every one of Jack's encounters once, no one else's.
    assert stored("Encounter") == jack
    assert stored("Patient") == ["p1"] and stored("Condition") == ["c1"]
    assert job.counts == {"Patient": 1, "Encounter": 1507, "Condition": 1}
    # The corrupt line is recorded with its file and line number; the rest loaded.
    issue = IngestIssue.objects.get(sync_file__job=job)
    assert issue.line_number == 754 and issue.file_name.endswith("-Encounter.ndjson")
    ranged = [r.headers["Range"] for r in fake_payer.requests_to("/files/") if "Range" in r.headers]
    assert ranged and all(int(value[6:-1]) > 0 for value in ranged)  # resumed, not restarted
    assert [r["progress"] for r in seen if r["status"] == "kicked_off"][:2] == ["Accepted by the payer", "10%"]
    assert seen[-1]["done"] and seen[-1]["files_ingested"] == seen[-1]["files_total"] == 3
    assert job.poll_count == 5
    assert all(r.headers.get("Authorization", "").startswith("Bearer ") for r in fake_payer.requests_to("/files/"))  # req 201
    # reqs 119-121: once every file is downloaded, the client tells the server (once) it may drop them.
    deletes = fake_payer.requests_to("/status/", "DELETE")
    assert len(deletes) == 1 and job.status_url_deleted_at is not None
    assert fake_payer.log.index(deletes[0]) > max(fake_payer.log.index(r) for r in fake_payer.requests_to("/files/"))


def test_member_not_attributed_is_no_data(fake_payer, connection):
    job = sync_job_start(connection=connection, member_id="M300", enqueue=False)
    job = sync_job_run_inline(job=job, parallel=1)
    assert job.status == SyncJob.Status.NO_DATA
    assert sync_job_progress(job=job)["status_label"] == NO_DATA_MESSAGE
    assert not fake_payer.requests_to("$export")


def test_second_fetch_sends_since_and_applies_deletions(fake_payer, connection):
    first = sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    assert first.status == SyncJob.Status.COMPLETED and len(stored("Encounter")) == 7
    fake_payer.poll_script = []
    fake_payer.resources["Encounter"].append(encounter("e1-new", "p1", "2025-06-01T08:00:00Z", updated="2099-01-01T00:00:00Z"))
    fake_payer.deleted_refs = ["Encounter/e1-1"]

    second = sync_job_start(connection=connection, member_id="M100", enqueue=False)
    assert second.since == first.transaction_time
    second = sync_job_run_inline(job=second, parallel=1)

    assert second.status == SyncJob.Status.COMPLETED, second.error
    kick = fake_payer.requests_to("/Group/g1/$export", "POST")[-1]
    assert {"name": "_since", "valueInstant": first.transaction_time.isoformat().replace("+00:00", "Z")} in kick.body["parameter"]
    assert second.counts == {"Encounter": 1}  # only the change came
    assert "e1-new" in stored("Encounter") and "e1-1" not in stored("Encounter")
    assert sync_job_progress(job=second)["incremental"] is True


def test_pdex_provider_download_then_provider_delta_when_declared(fake_payer, connection):
    # PDex STU2 Provider Access: a payer declaring $davinci-data-export is asked through it
    # (so it records lastTransmitted): #provider-download first, #provider-delta + _since after.
    fake_payer.davinci = True
    first = sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    assert first.status == SyncJob.Status.COMPLETED and first.operation == "$davinci-data-export"
    assert not fake_payer.requests_to("/Group/g1/$export")
    kick = fake_payer.requests_to("/Group/g1/$davinci-data-export", "POST")[0]
    assert {"name": "exportType", "valueString": "hl7.fhir.us.davinci-pdex#provider-download"} in kick.body["parameter"]
    assert {"name": "patient", "valueReference": {"reference": "Patient/p1"}} in kick.body["parameter"]
    assert not [p for p in kick.body["parameter"] if p["name"] == "_since"]
    sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    kick = fake_payer.requests_to("/Group/g1/$davinci-data-export", "POST")[1]
    assert {"name": "exportType", "valueString": "hl7.fhir.us.davinci-pdex#provider-delta"} in kick.body["parameter"]
    assert {"name": "_since", "valueInstant": first.transaction_time.isoformat().replace("+00:00", "Z")} in kick.body["parameter"]


def test_count_mismatch_fails_the_job_but_keeps_the_data(fake_payer, connection):
    fake_payer.file_faults = {"Encounter": ["short"]}
    job = sync_job_run_inline(job=sync_job_start(connection=connection, group_id="g1", types=["Encounter"], enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.FAILED and job.failure == SyncJob.Failure.INCOMPLETE
    assert "the manifest says 9 resources, the file has 8" in job.error
    assert len(stored("Encounter")) == 8
    # A failed fetch is no base for an incremental one.
    assert sync_job_start(connection=connection, group_id="g1", types=["Encounter"], enqueue=False).since is None


def test_manifest_error_file_is_recorded(fake_payer, connection):
    fake_payer.error_outcomes = [{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "processing", "diagnostics": "Claim/9 could not be exported"}]}]
    job = sync_job_run_inline(job=sync_job_start(connection=connection, group_id="g1", types=["Condition"], enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.COMPLETED
    assert "Claim/9 could not be exported" in job.error
    issue = IngestIssue.objects.get(sync_file__kind=SyncFile.Kind.ERROR)
    assert issue.outcome["issue"][0]["code"] == "processing"


def test_failure_after_kick_off_sends_delete(fake_payer, connection):
    # Bulk Data req 119: the client cancels (DELETE) an export it will not collect.
    fake_payer.poll_script = [(400, {})]  # the export failed on the payer's side
    job = sync_job_run_inline(job=sync_job_start(connection=connection, group_id="g1", enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.FAILED and job.status_url_deleted_at is not None
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 1

    # Kept failing: the bounded retries end, and the DELETE goes out (best effort) too.
    fake_payer.poll_script = [(503, {"Retry-After": "0"})] * 3
    with override_settings(PA_SYNC_MAX_TRANSIENT_ERRORS=2):
        job = sync_job_run_inline(job=sync_job_start(connection=connection, group_id="g1", enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.FAILED and "kept failing" in job.error
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 2

    # A file that cannot be had fails the job after the downloads: DELETE then too.
    fake_payer.poll_script = []
    fake_payer.requires_access_token = False
    job = sync_job_start(connection=connection, group_id="g1", types=["Condition"], enqueue=False)
    sync_job_step(job_id=job.pk)
    step = sync_job_step(job_id=job.pk)  # the manifest
    fake_payer.exports.clear()  # the files are gone: 404
    for file_id in step.file_ids:
        sync_file_step(file_id=file_id)
    job.refresh_from_db()
    assert job.status == SyncJob.Status.FAILED
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 3


def test_cancel_sends_delete_and_stops_the_job(fake_payer, connection):
    fake_payer.poll_script = [(202, {"Retry-After": "1"})] * 5
    job = sync_job_start(connection=connection, group_id="g1", enqueue=False)
    sync_job_step(job_id=job.pk)  # kick-off
    job = sync_job_cancel(job=job)
    assert job.status == SyncJob.Status.CANCELLED
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 1  # req 119
    assert sync_job_cancel(job=job).status == SyncJob.Status.CANCELLED
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 1
    assert sync_job_step(job_id=job.pk).delay is None  # a late poll task does nothing
    assert len(fake_payer.requests_to("/status/", "GET")) == 0


def test_cancel_while_the_kick_off_is_in_flight_withdraws_the_new_export(transactional_db, fake_payer, connection):
    # The clinician cancels while the worker waits on a slow kick-off: the job stays
    # cancelled when the payer answers, and the export the payer just started is
    # cancelled there too (Bulk Data req 119: DELETE on its Content-Location).
    fake_payer.kickoff_hold = threading.Event()
    job = sync_job_start(connection=connection, group_id="g1", enqueue=False)
    steps: list = []

    def worker_step() -> None:
        try:
            steps.append(sync_job_step(job_id=job.pk))
        finally:
            connections.close_all()  # this thread's, so that the test database can be dropped

    worker = threading.Thread(target=worker_step)
    worker.start()
    wait_for(lambda: fake_payer.requests_to("$export"), message="the kick-off")
    job = sync_job_cancel(job=job)
    assert job.status == SyncJob.Status.CANCELLED and not fake_payer.requests_to("/status/", "DELETE")
    fake_payer.kickoff_hold.set()
    worker.join(timeout=30)

    job.refresh_from_db()
    assert job.status == SyncJob.Status.CANCELLED and job.kicked_off_at is None
    assert steps[0].delay is None  # no poll scheduled
    export_id = next(iter(fake_payer.exports))
    assert [r.path for r in fake_payer.requests_to("/status/", "DELETE")] == [f"/fhir/status/{export_id}"]
    assert fake_payer.exports[export_id].cancelled and job.status_url_deleted_at is not None
    assert sync_job_step(job_id=job.pk).delay is None and not fake_payer.requests_to("/status/", "GET")


def test_refused_credentials_are_told_apart_from_a_payer_error(fake_payer, connection):
    # SMART Backend Services: the token endpoint refuses an assertion from a client it does
    # not know (RFC 6749 §5.2 invalid_client). That is the hospital's registration, for IT.
    connection.client_id = "not-registered-here"
    connection.save(update_fields=["client_id"])
    job = sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.FAILED and job.failure == SyncJob.Failure.CREDENTIALS
    assert "The token request was refused (400): iss and sub must be the client id" in job.error


def test_the_payers_x_progress_is_kept_apart_from_our_own_words(fake_payer, connection):
    # Bulk Data req 135: the client MAY show X-Progress to the user; the EMR shows it as the
    # payer's words, so only what the payer sent is kept as such.
    fake_payer.poll_script = [(202, {"X-Progress": "Gathering claims (40%)", "Retry-After": "1"}), (202, {"Retry-After": "1"})]
    job = sync_job_start(connection=connection, group_id="g1", enqueue=False)
    sync_job_step(job_id=job.pk)  # kick-off
    job.refresh_from_db()
    assert (job.progress, job.payer_progress) == ("Accepted by the payer", "")
    sync_job_step(job_id=job.pk)
    assert sync_job_progress(job=job)["payer_progress"] == "Gathering claims (40%)"
    SyncJob.objects.filter(pk=job.pk).update(next_step_at=None)
    sync_job_step(job_id=job.pk)  # a 202 without X-Progress
    job.refresh_from_db()
    assert (job.progress, job.payer_progress) == ("In progress", "")


def test_bulk_fetch_command_prints_counts(transactional_db, fake_payer, connection, capsys):
    fake_payer.poll_script = [(202, {"X-Progress": "Working", "Retry-After": "1"})]
    call_command("bulk_fetch", "--connection", "unitedcare", "--group", "g1", "--type", "Encounter", "Condition")
    out = capsys.readouterr().out
    assert "Completed: 10 resources stored" in out
    assert re.search(r"Encounter +8 +0\n", out) and re.search(r"Condition +2 +0\n", out)  # stored, unchanged
    assert "The payer is preparing the data: Working" in out and "2/2 files, 10 resources" in out
    with pytest.raises(CommandError, match="No payer connection"):
        call_command("bulk_fetch", "--connection", "nope", "--system")

    # The same data again (an explicit --since before it all): had already, so unchanged, not stored.
    call_command("bulk_fetch", "--connection", "unitedcare", "--group", "g1", "--type", "Encounter", "Condition",
                 "--since", "2000-01-01")
    out = capsys.readouterr().out
    assert "Completed: 0 resources stored, 10 unchanged" in out
    assert re.search(r"Encounter +0 +8\n", out) and re.search(r"Condition +0 +2\n", out)
    job = SyncJob.objects.order_by("-pk").first()
    assert job.counts == {} and sync_job_progress(job=job)["resources_unchanged"] == 10


@pytest.mark.parametrize("value", ["2026-13-01", "2026-02-30", "yesterday", "2026-01-01T10:00:00"])
def test_bulk_fetch_refuses_a_bad_since(connection, value):
    with pytest.raises(CommandError, match="--since"):
        call_command("bulk_fetch", "--connection", "unitedcare", "--group", "g1", "--since", value)
    assert not SyncJob.objects.exists()


def test_type_filter_with_include_or_sort_is_refused(fake_payer, connection):
    # Bulk Data req 114: no search result parameters (_include, _sort, ...) in a _typeFilter.
    for bad in ("Encounter?_sort=date", "Encounter?_include=Encounter:location"):
        with pytest.raises(ValueError, match="SHALL NOT"):
            sync_job_start(connection=connection, group_id="g1", type_filters=[bad], enqueue=False)
        with pytest.raises(CommandError, match="SHALL NOT"):
            call_command("bulk_fetch", "--connection", "unitedcare", "--group", "g1", "--type-filter", bad)
    assert not SyncJob.objects.exists() and not fake_payer.requests_to("$export")


def test_incremental_key_is_per_connection(fake_payer, connection, key_file):
    # One deployment, two organizations, each its own SMART client at the same payer: one's
    # completed fetch is no _since for the other's (scope_key starts with the connection).
    other = payer_connection_create(
        name="unitedcare-oakview", display_name="UnitedCare Health", fhir_base_url=fake_payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=fake_payer.key_id, organization_npi="1244668806",
    )
    first = sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    assert first.status == SyncJob.Status.COMPLETED
    theirs = sync_job_start(connection=other, member_id="M100", enqueue=False)
    assert theirs.since is None and theirs.scope_key != first.scope_key
    assert sync_job_start(connection=connection, member_id="M100", enqueue=False).since == first.transaction_time


def test_add_payer_connection_command(key_file, tmp_path):
    call_command("add_payer_connection", "--name", "acme", "--display-name", "Acme", "--fhir-base-url", "https://acme.example/fhir/",
                 "--client-id", "c1", "--private-key-path", str(key_file), "--key-id", "k1", "--organization-npi", "1345678902")
    connection = PayerConnection.objects.get(name="acme")
    assert connection.fhir_base_url == "https://acme.example/fhir" and "BEGIN" not in str(connection.__dict__)
    assert connection.organization_npi == "1345678902"  # only that organization's clinicians fetch through it
    with pytest.raises(CommandError, match="An NPI is 10 digits"):
        call_command("add_payer_connection", "--name", "acme", "--display-name", "Acme", "--fhir-base-url", "https://acme.example/fhir",
                     "--client-id", "c1", "--private-key-path", str(key_file), "--key-id", "k1", "--organization-npi", "12345")
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(CommandError, match="is not an unencrypted PEM private key"):
        call_command("add_payer_connection", "--name", "bad", "--display-name", "Bad", "--fhir-base-url", "https://b.example/fhir",
                     "--client-id", "c1", "--private-key-path", str(tmp_path / "bad.pem"), "--key-id", "k1")
    with pytest.raises(CommandError, match="cannot sign ES384"):
        call_command("add_payer_connection", "--name", "bad", "--display-name", "Bad", "--fhir-base-url", "https://b.example/fhir",
                     "--client-id", "c1", "--private-key-path", str(key_file), "--key-id", "k1", "--algorithm", "ES384")
