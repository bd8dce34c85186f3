"""Sync jobs driven by a REAL Celery worker process against the test Bulk Data server."""

import time
from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from config.celery_app import app as celery_app
from provider.models import IngestIssue, LocalResource, SyncFile, SyncJob
from provider.services.connections import payer_connection_create
from provider.services.sync import sync_job_progress, sync_job_start, sync_jobs_resume
from tests.conftest import wait_for
from tests.provider.bulk_data import CLIENT_ID, encounter

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.e2e]



def finished(job: SyncJob):
    job.refresh_from_db()
    return job.status in {SyncJob.Status.COMPLETED, SyncJob.Status.FAILED, SyncJob.Status.NO_DATA} and job


def test_worker_runs_a_member_sync_end_to_end(celery_worker, fake_payer, connection):
    fake_payer.poll_script = [(202, {"X-Progress": "Exporting", "Retry-After": "1"}), (429, {"Retry-After": "1"})]
    fake_payer.file_faults = {"Encounter": ["503"]}
    with transaction.atomic():
        job = sync_job_start(connection=connection, member_id="M100")  # enqueued on commit
    job = wait_for(lambda: finished(job), timeout=60, message=f"the sync job\n{celery_worker.log()}")
    assert job.status == SyncJob.Status.COMPLETED, job.error
    ids = sorted(LocalResource.objects.filter(resource_type="Encounter").values_list("resource_id", flat=True))
    assert ids == [f"e1-{n}" for n in range(1, 8)]
    assert LocalResource.objects.filter(sync_job=job, connection=connection).count() == 9  # provenance kept
    progress = sync_job_progress(job=job)
    assert progress["files_ingested"] == progress["files_total"] == 3 and progress["counts"]["Encounter"] == 7
    # Each poll was its own task (rescheduled with countdown): 202, 429, then the manifest.
    assert job.poll_count == 3 and len(fake_payer.requests_to("/status/", "GET")) == 3
    assert "Task provider.tasks.sync_file_advance_task" in celery_worker.log()


def test_worker_member_sync_survives_429_503_drop_expired_token_and_corrupt_line(celery_worker, fake_payer, connection):
    # The fault script of test_sync.py's inline run, here over real HTTP with a real worker:
    # each poll and each file is its own task, rescheduled with countdown, never a sleep.
    # Bulk Data reqs 17 and 18: the client requests and receives the files; req 201: each
    # file request carries a valid access token (requiresAccessToken is true), renewed
    # when it expires in the middle of the downloads.
    fake_payer.poll_script = [(202, {"X-Progress": "10%", "Retry-After": "1"}), (429, {"Retry-After": "1"}), (503, {}), (202, {"X-Progress": "90%"})]
    fake_payer.file_faults = {"Encounter": ["expire", "drop", "503", "corrupt"]}
    fake_payer.resources["Encounter"] += [encounter(f"e1-x{n:03d}", "p1", f"2023-01-{1 + n % 28:02d}T09:00:00Z") for n in range(1500)]
    jack = sorted([f"e1-{n}" for n in range(1, 8)] + [f"e1-x{n:03d}" for n in range(1500)])
    with transaction.atomic():
        job = sync_job_start(connection=connection, member_id="M100", types=["Patient", "Encounter", "Condition"])

    job = wait_for(lambda: finished(job), timeout=90, message=f"the sync job\n{celery_worker.log()[-3000:]}")

    assert job.status == SyncJob.Status.COMPLETED, job.error
    kick = fake_payer.requests_to("/Group/g1/$export", "POST")
    assert len(kick) == 1 and {"name": "patient", "valueReference": {"reference": "Patient/p1"}} in kick[0].body["parameter"]
    # Nothing lost, nothing doubled.
    stored = lambda kind: sorted(LocalResource.objects.filter(resource_type=kind).values_list("resource_id", flat=True))  # noqa: E731
    assert stored("Encounter") == jack and stored("Patient") == ["p1"] and stored("Condition") == ["c1"]
    assert job.counts == {"Patient": 1, "Encounter": 1507, "Condition": 1}
    issue = IngestIssue.objects.get(sync_file__job=job)
    assert issue.line_number == 754 and issue.file_name.endswith("-Encounter.ndjson")
    files = fake_payer.requests_to("/files/")
    assert [r.headers["Range"] for r in files if "Range" in r.headers]  # the dropped download resumed
    assert any(r.headers.get("Authorization") for r in files) and all(r.headers.get("Authorization") for r in files)
    assert len(fake_payer.assertion_claims) >= 2  # a new token after the old one expired
    assert job.poll_count == 5 and len(fake_payer.requests_to("/status/", "GET")) == 5
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 1  # done with the files (reqs 119-121)


def test_killed_worker_resumes_from_the_saved_status_url(start_worker, fake_payer, connection):
    fake_payer.poll_script = [(202, {"X-Progress": f"{n}0%", "Retry-After": "1"}) for n in range(1, 5)]
    worker = start_worker()
    job = sync_job_start(connection=connection, group_id="g1", types=["Encounter"])
    def between_polls() -> bool:
        # Polled once and waiting on its next poll, not inside a step: a step holds the
        # job for its lease (PA_SYNC_LEASE_SECONDS), and a worker killed there is resumed only after it.
        return SyncJob.objects.filter(
            pk=job.pk, poll_count__gte=1, next_step_at__lt=timezone.now() + timedelta(seconds=30)
        ).exists()

    wait_for(lambda: worker.kill_if(between_polls), timeout=30, interval=0.02, message="the first poll")
    celery_app.control.purge()  # the scheduled poll is lost with the worker, whatever the broker

    start_worker()
    # What celery beat's sweep does: pick up the job once its next poll is overdue.
    wait_for(lambda: sync_jobs_resume(stale_after=timedelta(seconds=2)) == 1, timeout=30, message="an overdue job")
    job = wait_for(lambda: finished(job), timeout=60, message="the resumed job")
    assert job.status == SyncJob.Status.COMPLETED, job.error
    # Resumed from the saved status URL: one kick-off only, each file downloaded once.
    assert len(fake_payer.requests_to("/Group/g1/$export")) == 1
    assert len(fake_payer.requests_to("/files/")) == 1
    assert LocalResource.objects.filter(resource_type="Encounter").count() == 8


def test_killed_worker_mid_download_is_taken_over_within_a_minute(start_worker, fake_payer, connection):
    # The file's claim is a 30 s lease renewed by a heartbeat while the download runs; a
    # killed worker stops beating, and the sweep (celery beat, every 15 s) hands the
    # file to another worker once the lease ran out.
    fake_payer.poll_script = []
    fake_payer.file_hostile = {"Encounter": ("trickle", 0.5)}  # 20 pieces, 10 s
    worker = start_worker()
    job = sync_job_start(connection=connection, group_id="g1", types=["Encounter"])

    def downloading() -> bool:
        return SyncFile.objects.filter(job=job, status=SyncFile.Status.PENDING, claimed_until__isnull=False, attempts=1).exists()

    wait_for(lambda: worker.kill_if(downloading), timeout=30, interval=0.05, message="the download")
    killed = time.monotonic()
    celery_app.control.purge()
    fake_payer.file_hostile = {}
    start_worker()

    def taken_over():
        sync_jobs_resume(stale_after=timedelta(minutes=5))  # what beat runs every 15 s
        return finished(job)

    job = wait_for(taken_over, timeout=90, interval=1, message="the taken-over file")
    assert time.monotonic() - killed < 60
    assert job.status == SyncJob.Status.COMPLETED, job.error
    assert SyncFile.objects.get(job=job).attempts == 2
    assert LocalResource.objects.filter(resource_type="Encounter").count() == 8


def test_big_file_chunks_are_ingested_by_two_workers(start_worker, fake_payer, connection):
    fake_payer.poll_script = []
    fake_payer.resources["Encounter"] += [encounter(f"e1-x{n:04d}", "p1", "2023-01-01T09:00:00Z") for n in range(3000)]
    workers = [start_worker(PA_SYNC_CHUNK_LINES="500"), start_worker(PA_SYNC_CHUNK_LINES="500")]
    with transaction.atomic():
        job = sync_job_start(connection=connection, group_id="g1", types=["Encounter"])
    job = wait_for(lambda: finished(job), timeout=120, message=f"the chunked job\n{workers[0].log()[-2000:]}")
    assert job.status == SyncJob.Status.COMPLETED, job.error
    assert job.counts == {"Encounter": 3008}
    assert SyncFile.objects.filter(job=job, parent__isnull=False, status=SyncFile.Status.INGESTED).count() == 7
    # Each worker ingested some of the chunks.
    assert all("Ingested http" in worker.log() for worker in workers), [w.log()[-1500:] for w in workers]


def test_worker_ends_a_job_whose_manifest_is_bad(celery_worker, fake_payer, connection):
    # On a real worker too: the crash of the issue (IntegrityError on a negative count)
    # is now a refused manifest and a failed job, not a job "kicked_off" for ever.
    fake_payer.poll_script = []
    fake_payer.manifest_hook = lambda manifest: {**manifest, "output": [{**manifest["output"][0], "count": -1}]}
    with transaction.atomic():
        job = sync_job_start(connection=connection, group_id="g1")
    job = wait_for(lambda: finished(job), timeout=60, message=f"the job\n{celery_worker.log()[-2000:]}")
    assert job.status == SyncJob.Status.FAILED and "count that is not a non-negative integer" in job.error
    assert not SyncFile.objects.filter(job=job).exists()
    assert len(fake_payer.requests_to("/status/", "DELETE")) == 1
