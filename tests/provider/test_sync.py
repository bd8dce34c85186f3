"""Sync jobs against a real HTTP Bulk Data server: faults survived, incremental fetches, cancel, no data."""

import re

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from provider.models import IngestIssue, LocalResource, PayerConnection, SyncFile, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import NO_DATA_MESSAGE, sync_job_cancel, sync_job_progress, sync_job_run_inline, sync_job_start, sync_job_step
from tests.provider.bulk_data import CLIENT_ID, encounter

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_sync(settings, tmp_path):
    settings.PA_SYNC_POLL_CAP_SECONDS = 2
    settings.PA_SYNC_DIR = str(tmp_path / "sync")


@pytest.fixture
def connection(fake_payer, key_file) -> PayerConnection:
    return payer_connection_create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url=fake_payer.base_url,
        client_id=CLIENT_ID, private_key_path=str(key_file), key_id=fake_payer.key_id,
    )


def stored(resource_type: str) -> list[str]:
    return sorted(LocalResource.objects.filter(resource_type=resource_type).values_list("resource_id", flat=True))


def test_member_sync_survives_429_503_drop_expired_token_and_corrupt_line(transactional_db, fake_payer, connection):
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
    # req 121: once done, the client tells the server it may delete the files.
    assert fake_payer.requests_to("/status/", "DELETE")


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


def test_incremental_uses_pdex_provider_delta_when_declared(fake_payer, connection):
    fake_payer.davinci = True
    first = sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    assert fake_payer.requests_to("/Group/g1/$export")  # a full fetch is plain $export
    sync_job_run_inline(job=sync_job_start(connection=connection, member_id="M100", enqueue=False), parallel=1)
    kick = fake_payer.requests_to("/Group/g1/$davinci-data-export", "POST")[0]
    assert {"name": "exportType", "valueString": "hl7.fhir.us.davinci-pdex#provider-delta"} in kick.body["parameter"]
    assert {"name": "_since", "valueInstant": first.transaction_time.isoformat().replace("+00:00", "Z")} in kick.body["parameter"]


def test_count_mismatch_fails_the_job_but_keeps_the_data(fake_payer, connection):
    fake_payer.file_faults = {"Encounter": ["short"]}
    job = sync_job_run_inline(job=sync_job_start(connection=connection, group_id="g1", types=["Encounter"], enqueue=False), parallel=1)
    assert job.status == SyncJob.Status.FAILED
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


def test_cancel_sends_delete_and_stops_the_job(fake_payer, connection):
    fake_payer.poll_script = [(202, {"Retry-After": "1"})] * 5
    job = sync_job_start(connection=connection, group_id="g1", enqueue=False)
    sync_job_step(job_id=job.pk)  # kick-off
    job = sync_job_cancel(job=job)
    assert job.status == SyncJob.Status.CANCELLED
    assert fake_payer.requests_to("/status/", "DELETE")
    assert sync_job_step(job_id=job.pk).delay is None  # a late poll task does nothing
    assert len(fake_payer.requests_to("/status/", "GET")) == 0


def test_bulk_fetch_command_prints_counts(transactional_db, fake_payer, connection, capsys):
    fake_payer.poll_script = [(202, {"X-Progress": "Working", "Retry-After": "1"})]
    call_command("bulk_fetch", "--connection", "unitedcare", "--group", "g1", "--type", "Encounter", "Condition")
    out = capsys.readouterr().out
    assert "Completed: 10 resources stored" in out
    assert re.search(r"Encounter +8\n", out) and re.search(r"Condition +2\n", out)
    assert "The payer is preparing the data: Working" in out and "2/2 files, 10 resources" in out
    with pytest.raises(CommandError, match="No payer connection"):
        call_command("bulk_fetch", "--connection", "nope", "--system")


def test_add_payer_connection_command(key_file, tmp_path):
    call_command("add_payer_connection", "--name", "acme", "--display-name", "Acme", "--fhir-base-url", "https://acme.example/fhir/",
                 "--client-id", "c1", "--private-key-path", str(key_file), "--key-id", "k1")
    connection = PayerConnection.objects.get(name="acme")
    assert connection.fhir_base_url == "https://acme.example/fhir" and "BEGIN" not in str(connection.__dict__)
    (tmp_path / "bad.pem").write_text("not a key")
    with pytest.raises(CommandError, match="is not an unencrypted PEM private key"):
        call_command("add_payer_connection", "--name", "bad", "--display-name", "Bad", "--fhir-base-url", "https://b.example/fhir",
                     "--client-id", "c1", "--private-key-path", str(tmp_path / "bad.pem"), "--key-id", "k1")
    with pytest.raises(CommandError, match="cannot sign ES384"):
        call_command("add_payer_connection", "--name", "bad", "--display-name", "Bad", "--fhir-base-url", "https://b.example/fhir",
                     "--client-id", "c1", "--private-key-path", str(key_file), "--key-id", "k1", "--algorithm", "ES384")
