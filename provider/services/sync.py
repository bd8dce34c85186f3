"""Sync jobs: fetch a patient's (or a group's) data from a payer's Bulk Data server.

A job moves pending → kicked_off → downloading → ingesting → completed (or no_data,
failed, cancelled). Each step is a short call that never waits on the payer: it returns
when to run next, and Celery reschedules with ``countdown`` (``sync_job_advance``), or the
``bulk_fetch`` command sleeps in its own process (``sync_job_run_inline``).

Idempotency (tasks are ``acks_late`` and may run twice): a job step claims the job with
``next_step_at``, a file step claims the file with ``claimed_until``, and every state
change is a conditional UPDATE on the expected status, so a redelivered task finds the
work done or taken. Ingest itself upserts by (type, id). A job cancelled while a step runs
stays cancelled: a step writes nothing to a job that has ended, and a kick-off in flight
sends DELETE for the export it has just started.

Every job ends: claims are short leases (``PA_SYNC_LEASE_SECONDS``) renewed by a heartbeat
thread while a step runs, so a killed worker's step or file is taken over by the
``sync_jobs_resume`` sweep within a minute; the manifest is checked whole before a file is
recorded; polling has a deadline per connection and transient errors a time budget; a
step that crashes fails the job with a message rather than ending the chain unseen. Big
output files are cut into chunks (``ingest.ndjson_chunk_plan``), each a SyncFile of its
own, ingested in parallel by as many workers as there are.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from contextlib import contextmanager
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests
from django.conf import settings
from django.db import DatabaseError, OperationalError, connections, transaction
from django.db.models import Count, F, Q, Sum
from django.utils import timezone
from django.utils.dateparse import parse_datetime

from provider.bulk_client import (
    TRANSIENT_NETWORK_ERRORS,
    CONSENT_CONSTRAINED,
    MATCHED,
    MEMBER_MATCH_OPERATION,
    PDEX,
    PDEX_PROVIDER_DELTA,
    SUBMITTED_ID_SYSTEM,
    PDEX_PROVIDER_DOWNLOAD,
    BulkDataError,
    CountMismatch,
    LimitExceeded,
    ManifestError,
    OriginRefused,
    TokenRefused,
    TransientError,
    manifest_check,
    outcome_diagnostics,
    poll_delay,
    type_filters_check,
)
from provider.models import IngestIssue, PayerConnection, SyncFile, SyncJob
from provider.services import ingest
from provider.services.connections import bulk_client_for

logger = logging.getLogger(__name__)

NO_DATA_MESSAGE = "The payer returned no data for this patient"
TERMINAL = (SyncJob.Status.COMPLETED, SyncJob.Status.NO_DATA, SyncJob.Status.FAILED, SyncJob.Status.CANCELLED)
ACTIVE = (SyncJob.Status.PENDING, SyncJob.Status.KICKED_OFF, SyncJob.Status.DOWNLOADING, SyncJob.Status.INGESTING)
# How long a claimed step or file may go without a heartbeat before another task may take
# it over; the heartbeat renews it every third of that while the step runs.
LEASE_SECONDS = 30
# The first status request, before the server has said anything (no Retry-After yet).
# Bulk Data 2.0 leaves its timing to the client; later polls follow Retry-After (req 126)
# or back off (req 124). A one-member export on a server with idle workers is ready in
# well under a second, and the EMR's clinician is waiting for it.
FIRST_POLL_SECONDS = 0.5
# How many tasks start on a manifest's files at most (each goes on with the job's next
# file until none is left); more workers than this sit idle on one job.
FILE_TASKS = 4


def _setting(name: str, default: Any) -> Any:
    return getattr(settings, name, default)


def _lease() -> timedelta:
    return timedelta(seconds=_setting("PA_SYNC_LEASE_SECONDS", LEASE_SECONDS))


@contextmanager
def _heartbeat(model: type, pk: int, field_name: str, until: datetime) -> Iterator[None]:
    """Renew a claim (``field_name`` = ``until``) every third of the lease while the block runs.

    The renewal is conditional on the value the heartbeat itself set: once the step
    writes its own (the next poll's time, a released claim), the heartbeat stops. A
    worker that dies stops beating, and its claim runs out within one lease.
    """
    stop = threading.Event()
    lease = _lease()

    def beat() -> None:
        current = until
        try:
            while not stop.wait(lease.total_seconds() / 3):
                renewed = timezone.now() + lease
                if not model.objects.filter(pk=pk, **{field_name: current}).update(**{field_name: renewed}):
                    return
                current = renewed
        except DatabaseError as error:  # the step goes on; its lease may run out
            logger.warning("Heartbeat of %s %s failed: %s", model.__name__, pk, error)
        finally:
            connections.close_all()  # this thread's connections only

    thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{model.__name__}-{pk}")
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)


@dataclass
class SyncStep:
    """What a job step asks for next: run again after ``delay`` seconds, and/or fetch these files.

    ``new_files``: the files are a manifest's, none started yet, largest first.
    """

    delay: float | None = None
    file_ids: list[int] = field(default_factory=list)
    new_files: bool = False


# --- Starting, cancelling, reading progress ------------------------------------------


def scope_key_for(
    *, connection: PayerConnection, level: str, group_id: str = "", member_id: str = "",
    patient_ids: list[str] | None = None, types: list[str] | None = None,
) -> str:
    """Return the key naming what a job fetches; the next job with the same key is incremental.

    The key starts with the connection, and a connection is one organization's SMART
    client (``PayerConnection.organization_npi``): two organizations fetching the same
    member never share a ``_since``, since each payer client sees its own attribution.
    """
    who = f"member:{member_id}" if member_id else f"group:{group_id}" if level == "group" and not patient_ids else ""
    if patient_ids:
        who += "patients:" + ",".join(sorted(patient_ids))
    return f"{connection.pk}|{level}|{who}|{','.join(sorted(types or [])) or '*'}"[:300]


def sync_job_start(
    *,
    connection: PayerConnection,
    member_id: str | None = None,
    group_id: str | None = None,
    patient_ids: list[str] | None = None,
    level: str = "group",
    types: list[str] | None = None,
    since: datetime | None = None,
    type_filters: list[str] | None = None,
    requested_by: Any = None,
    enqueue: bool = True,
    panel: bool = False,
    member_bundle: dict | None = None,
) -> SyncJob:
    """Create a sync job and, once committed, start it on a worker.

    ``member_id`` (the payer's member id from the patient's coverage) fetches one member
    through their attribution group. With no explicit ``since``, a job whose scope was
    fetched before asks only for changes since that export's ``transactionTime`` (PDex
    Provider Access ``#provider-delta``).

    ``member_bundle`` (from ``member_bundle_build``: the patient's demographics, coverage and
    the clinician's treatment attestation) makes the job find the member by PDex 2.2
    ``$provider-member-match`` when the payer declares it, and by the attribution Group
    otherwise.
    """
    if level not in SyncJob.Level.values:
        raise ValueError(f"Unknown level {level!r}.")
    if member_id:
        level = SyncJob.Level.GROUP
    elif level == SyncJob.Level.GROUP and not group_id:
        raise ValueError("A group fetch needs a group id or a member id.")
    elif level == SyncJob.Level.PATIENT and not patient_ids:
        raise ValueError("A patient fetch needs at least one patient id.")
    type_filters_check(type_filters or [])
    scope_key = scope_key_for(
        connection=connection, level=level, group_id=group_id or "", member_id=member_id or "",
        patient_ids=patient_ids, types=types,
    )
    if since is None:
        previous = (
            SyncJob.objects.filter(
                connection=connection, scope_key=scope_key, status=SyncJob.Status.COMPLETED,
                transaction_time__isnull=False,
            )
            .order_by("-transaction_time")
            .first()
        )
        since = previous.transaction_time if previous else None
    job = SyncJob.objects.create(
        connection=connection,
        requested_by=requested_by if getattr(requested_by, "pk", None) else None,
        level=level,
        scope_key=scope_key,
        group_id=group_id or "",
        member_id=member_id or "",
        patient_ids=list(patient_ids or []),
        types=list(types or []),
        type_filters=list(type_filters or []),
        since=since,
        panel=panel,
        progress="Waiting to start",
        member_match={"request": member_bundle} if member_bundle and member_id else {},
    )
    if enqueue:
        from provider.tasks import sync_job_advance_task

        transaction.on_commit(lambda: sync_job_advance_task.delay(job.pk))
    return job


def sync_job_cancel(*, job: SyncJob) -> SyncJob:
    """Cancel a running job: stop its steps, then ``DELETE`` its status URL (Bulk Data req 119).

    The job is marked cancelled first, so that a step running meanwhile writes nothing more
    (``_update``) and a kick-off that was in flight DELETEs the export it has just started
    (``_kick_off``). A job that has ended already is left as it is.
    """
    now = timezone.now()
    cancelled = SyncJob.objects.filter(pk=job.pk, status__in=ACTIVE).update(
        status=SyncJob.Status.CANCELLED, progress="Cancelled", finished_at=now, next_step_at=None, updated_at=now
    )
    job.refresh_from_db()
    if not cancelled:
        return job
    confirmed = _status_url_delete(job) if job.status_url else _member_match_delete(job)
    if not confirmed:
        _job_progress_note(job, "Cancelled here; the payer did not confirm")
    return job


def sync_job_progress(*, job: SyncJob) -> dict[str, Any]:
    """Return a job's live progress for the EMR: status, step, the payer's X-Progress, files, counts, errors."""
    job.refresh_from_db()
    # Chunks (parent set) are a file's parts: counted in resources, not as files.
    whole = Q(parent__isnull=True)
    files = job.files.aggregate(
        total=Count("id", filter=whole),
        downloaded=Count("id", filter=whole & Q(status__in=[SyncFile.Status.DOWNLOADED, SyncFile.Status.INGESTED])),
        ingested=Count("id", filter=whole & Q(status=SyncFile.Status.INGESTED)),
        failed=Count("id", filter=Q(status=SyncFile.Status.FAILED)),
        bytes=Sum("bytes_downloaded"),
        resources=Sum("ingested_count", filter=Q(kind=SyncFile.Kind.OUTPUT)),
        unchanged=Sum("unchanged_count", filter=Q(kind=SyncFile.Kind.OUTPUT)),
    )
    counts = job.counts or _output_counts(job)
    step = {
        SyncJob.Status.PENDING: "Contacting the payer",
        SyncJob.Status.KICKED_OFF: "The payer is preparing the data",
        SyncJob.Status.DOWNLOADING: f"Downloading files ({files['downloaded']} of {files['total']})",
        SyncJob.Status.INGESTING: f"Storing records ({files['ingested']} of {files['total']} files)",
    }.get(job.status, job.get_status_display())
    end = job.finished_at or timezone.now()
    return {
        "id": job.pk,
        "status": job.status,
        "status_label": job.get_status_display(),
        "step": step,
        "progress": job.progress,
        "done": job.status in TERMINAL,
        "poll_count": job.poll_count,
        "since": job.since.isoformat() if job.since else None,
        "incremental": job.since is not None,
        "files_total": files["total"],
        "files_downloaded": files["downloaded"],
        "files_ingested": files["ingested"],
        "files_failed": files["failed"],
        "bytes_downloaded": files["bytes"] or 0,
        # Stored: new resources or newer versions; unchanged: already held, left as they were.
        "resources_ingested": files["resources"] or 0,
        "resources_unchanged": files["unchanged"] or 0,
        # Removed because the manifest's deleted files listed them (Bulk Data _since).
        "resources_deleted": job.deleted_count or _deleted_count(job),
        "panel": job.panel,
        "deadline_at": job.deadline_at.isoformat() if job.deadline_at else None,
        "counts": counts,
        "issues": IngestIssue.objects.filter(sync_file__job=job).count(),
        "error": job.error,
        "failure": job.failure,
        # The payer's own words (X-Progress, req 135), apart from our step in ``progress``.
        "payer_progress": job.payer_progress,
        "created_at": job.created_at.isoformat(),
        "kicked_off_at": job.kicked_off_at.isoformat() if job.kicked_off_at else None,
        "manifest_at": job.manifest_at.isoformat() if job.manifest_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "elapsed_seconds": round((end - job.created_at).total_seconds(), 1),
        # PDex 2.2 member match: matched, nonmatched, consentconstrained or refused.
        "member_match": (job.member_match or {}).get("outcome", ""),
        "no_data_reason": sync_job_no_data_reason(job=job),
    }


# --- The job's steps -------------------------------------------------------------------


def _update(job: SyncJob, **fields: Any) -> bool:
    """Write a step's fields unless the job has ended meanwhile (cancelled from the EMR while
    the step ran); return whether they were written."""
    for name, value in fields.items():
        setattr(job, name, value)
    return bool(SyncJob.objects.filter(pk=job.pk).exclude(status__in=TERMINAL).update(**fields, updated_at=timezone.now()))


def _job_progress_note(job: SyncJob, note: str) -> None:
    job.progress = note
    SyncJob.objects.filter(pk=job.pk).update(progress=note)


def _claim_step(job: SyncJob) -> bool:
    """Take the job's next step for this task; False if another task has it or it is not due."""
    now = timezone.now()
    # A second early: Celery's countdown is not exact to the millisecond.
    due = Q(next_step_at__isnull=True) | Q(next_step_at__lte=now + timedelta(seconds=1))
    return bool(
        SyncJob.objects.filter(due, pk=job.pk, status=job.status).update(next_step_at=_claim_time(job, now), updated_at=now)
    )


def _claim_time(job: SyncJob, now: datetime) -> datetime:
    job.next_step_at = now + _lease()
    return job.next_step_at


def _fail(job: SyncJob, message: str, failure: str) -> SyncStep:
    """End the job as failed: ``message`` for whoever fixes it, ``failure`` (a ``SyncJob.Failure``)
    for the EMR to say in plain words."""
    _update(job, status=SyncJob.Status.FAILED, error=message[:5000], failure=failure, progress="Failed",
            finished_at=timezone.now(), next_step_at=None)
    if job.status_url:
        # Kicked off already: the payer may stop working on (or drop the files of) an
        # export nobody will collect (Bulk Data "Delete Request", req 119).
        _status_url_delete(job)
    return SyncStep()


def _status_url_delete(job: SyncJob) -> bool:
    """Send ``DELETE`` on the job's status URL once, best effort; return whether the payer accepted it.

    Bulk Data 2.0 "Bulk Data Delete Request": a client MAY cancel a request it started
    (req 119), and after completion the server MAY take the DELETE as the signal that the
    client is done with the files and remove them (reqs 120, 121). Sent when a job is
    cancelled, fails after the kick-off, or has downloaded every file. A failure here never
    fails the job: the payer's files expire anyway.
    """
    claimed = SyncJob.objects.filter(pk=job.pk, status_url_deleted_at__isnull=True).exclude(status_url="").update(
        status_url_deleted_at=timezone.now()
    )
    if not claimed:
        return True
    try:
        bulk_client_for(connection=job.connection).cancel(job.status_url)
    except (BulkDataError, requests.RequestException) as error:
        logger.info("The payer did not accept the DELETE of job %s's status URL: %s", job.pk, error)
        return False
    return True


def _member_match_delete(job: SyncJob) -> bool:
    """Send ``DELETE`` on the status URL of a member match still running, best effort; return
    whether the payer accepted it (True when there is none)."""
    state = job.member_match or {}
    if not state.get("status_url") or state.get("outcome"):
        return True
    try:
        bulk_client_for(connection=job.connection).cancel(state["status_url"])
    except (BulkDataError, requests.RequestException, *TRANSIENT_NETWORK_ERRORS) as error:
        logger.info("The payer did not accept the DELETE of job %s's member match: %s", job.pk, error)
        return False
    return True


def _again(job: SyncJob, delay: float, **fields: Any) -> SyncStep:
    """Schedule the job's next step in ``delay`` seconds; none when the job ended meanwhile."""
    if not _update(job, next_step_at=timezone.now() + timedelta(seconds=delay), **fields):
        return SyncStep()
    return SyncStep(delay=delay)


def _failure_of(error: BulkDataError) -> str:
    """Return what a payer's refusal means for the clinician (a ``SyncJob.Failure``)."""
    if isinstance(error, TokenRefused) or error.status in (401, 403):
        return SyncJob.Failure.CREDENTIALS
    if isinstance(error, (ManifestError, LimitExceeded, OriginRefused, CountMismatch)):
        return SyncJob.Failure.MALFORMED
    return SyncJob.Failure.PAYER_ERROR


def _transient(
    job: SyncJob, message: str, retry_after: float | None, *, failure: str = SyncJob.Failure.UNREACHABLE
) -> SyncStep:
    """Count one transient failure; give up after a count and a time budget rather than retry forever."""
    errors = job.transient_errors + 1
    now = timezone.now()
    since = job.transient_since or now
    if errors > _setting("PA_SYNC_MAX_TRANSIENT_ERRORS", 10):
        return _fail(job, f"The payer kept failing ({errors} times in a row): {message}", failure)
    budget = timedelta(seconds=_setting("PA_SYNC_TRANSIENT_BUDGET_SECONDS", 3600))
    if now - since > budget:
        return _fail(job, f"The payer kept failing for more than {budget}: {message}", failure)
    if job.deadline_at and now > job.deadline_at:
        return _fail(job, _deadline_message(job), SyncJob.Failure.TIMEOUT)
    delay = poll_delay(attempt=errors, retry_after=retry_after, cap=_setting("PA_SYNC_POLL_CAP_SECONDS", 120))
    return _again(job, delay, transient_errors=errors, transient_since=since, progress=f"Retrying: {message}"[:200])


def _deadline_message(job: SyncJob) -> str:
    return (f"The payer did not finish the export within {job.connection.poll_deadline} of the kick-off "
            f"(the connection's poll deadline); the job was stopped.")


def sync_job_step(*, job_id: int) -> SyncStep:
    """Run the job's next step (kick-off, one status request, or hand out its files) and say what comes next."""
    job = SyncJob.objects.select_related("connection").get(pk=job_id)
    if job.status in TERMINAL:
        return SyncStep()
    if job.status in (SyncJob.Status.DOWNLOADING, SyncJob.Status.INGESTING):
        # Resuming: hand out the files not done yet; their own claims stop duplicates.
        return SyncStep(file_ids=list(job.files.exclude(status__in=[SyncFile.Status.INGESTED, SyncFile.Status.FAILED]).values_list("pk", flat=True)))
    if not _claim_step(job):
        return SyncStep()
    try:
        with _heartbeat(SyncJob, job.pk, "next_step_at", job.next_step_at):
            if job.status == SyncJob.Status.KICKED_OFF and job.deadline_at and timezone.now() > job.deadline_at:
                return _fail(job, _deadline_message(job), SyncJob.Failure.TIMEOUT)
            if job.status == SyncJob.Status.PENDING:
                return _kick_off(job)
            return _poll(job)
    except (requests.RequestException, *TRANSIENT_NETWORK_ERRORS) as error:
        return _transient(job, f"Network error: {error.__class__.__name__}", None)
    except TransientError as error:
        return _transient(job, str(error), error.retry_after)
    except BulkDataError as error:
        return _fail(job, str(error), _failure_of(error))
    except OperationalError as error:  # the database was briefly away: try the step again
        logger.warning("Sync job %s step hit a database error: %s", job.pk, error)
        return _transient(job, "A database error on the hospital's side", None, failure=SyncJob.Failure.HOSPITAL)
    except Exception as error:
        # A bug, or an answer nothing above foresaw: fail the job where people see it,
        # rather than leave it waiting forever on a chain that stopped.
        logger.exception("Sync job %s step crashed", job.pk)
        return _fail(job, f"The step failed on the hospital's side ({error.__class__.__name__}); see the worker log.",
                     SyncJob.Failure.HOSPITAL)


def _kick_off(job: SyncJob) -> SyncStep:
    client = bulk_client_for(connection=job.connection)
    match_state = job.member_match or {}
    if job.member_id and not job.patient_ids and match_state.get("request") and (
        match_state.get("status_url") or client.supports_operation(MEMBER_MATCH_OPERATION)
    ):
        # PDex 2.2 Provider Access v2: match the member (with the treatment attestation)
        # first; the MatchedMembers Group is what the export then asks for (§pdex-241, 262).
        step = _member_match_step(job, client)
        if step is not None:
            return step
    elif job.member_id and not job.patient_ids:
        # Da Vinci ATR: find the member in our attribution Group by their payer member id.
        match = client.group_find_member(member_identifier=job.member_id, group_id=job.group_id or None)
        if not match.patient_id:
            _update(job, status=SyncJob.Status.NO_DATA, progress=NO_DATA_MESSAGE, finished_at=timezone.now(), next_step_at=None,
                    error=f"{NO_DATA_MESSAGE}: member {job.member_id} is not in the attribution list.")
            return SyncStep()
        _update(job, group_id=match.group_id, patient_ids=[match.patient_id])
    if not SyncJob.objects.filter(pk=job.pk, status=SyncJob.Status.PENDING).exists():
        return SyncStep()  # cancelled while the member was looked up: no export to start
    operation, export_type = "$export", ""
    if job.level == SyncJob.Level.GROUP and client.supports_operation("davinci-data-export"):
        # PDex STU2 Provider Access: a payer declaring Group/$davinci-data-export is asked
        # through it, so that it records the transmission (the member's lastTransmitted):
        # exportType #provider-download the first time, #provider-delta with _since after.
        # A payer that does not declare it gets plain Group/$export (+ _since).
        operation = "$davinci-data-export"
        export_type = PDEX_PROVIDER_DELTA if job.since else PDEX_PROVIDER_DOWNLOAD
    status_url = client.kick_off(
        level=job.level,
        group_id=job.group_id or None,
        types=job.types or None,
        since=job.since.isoformat().replace("+00:00", "Z") if job.since else None,
        type_filters=job.type_filters or None,
        export_type=export_type or None,
        patients=job.patient_ids or None,
        operation=operation,
    )
    # The payer holds an export at status_url from now on: record it before anything else,
    # so that a cancel that came while the kick-off was in flight finds it to DELETE.
    SyncJob.objects.filter(pk=job.pk).update(status_url=status_url)
    now = timezone.now()
    step = _again(
        job, _setting("PA_SYNC_FIRST_POLL_SECONDS", FIRST_POLL_SECONDS),
        status=SyncJob.Status.KICKED_OFF, status_url=status_url, kicked_off_at=now, operation=operation,
        export_type=export_type, transient_errors=0, transient_since=None, progress="Accepted by the payer",
        deadline_at=now + job.connection.poll_deadline,
    )
    if step.delay is None:
        # Cancelled meanwhile: the payer need not prepare what nobody will collect (req 119).
        _status_url_delete(job)
    return step


# --- PDex 2.2 $provider-member-match --------------------------------------------------

MATCH_NOT_MATCHED = "nonmatched"
MATCH_CONSENT_CONSTRAINED = "consentconstrained"
MATCH_REFUSED = "refused"
NO_DATA_REASONS = {
    MATCH_NOT_MATCHED: "the payer found no member matching this patient's demographics and member id",
    MATCH_CONSENT_CONSTRAINED: "the member has opted out of sharing data with providers",
    MATCH_REFUSED: "the payer did not accept the treatment relationship attestation",
}
# Bulk Data and FHIR codes an attestation refusal comes with (OperationOutcome.issue.code).
_REFUSAL_CODES = frozenset({"forbidden", "security", "business-rule", "required"})


def member_bundle_build(
    *,
    submitted_id: str,
    family: str,
    given: str,
    birth_date: str,
    gender: str,
    member_id: str,
    payer_name: str,
    practitioner_npi: str,
    practitioner_name: str,
    organization_npi: str,
    organization_name: str,
    attested_at: datetime,
    period_start: str,
) -> dict:
    """Return one ``MemberBundle`` of ``$provider-member-match`` for a patient.

    MemberPatient follows HRex Patient demographics; CoverageToMatch HRex Coverage (the
    member id from the card as ``subscriberId`` and an MB identifier; the payer by name);
    Consent the PDex Provider Treatment Attestation (ExampleProviderTreatmentAttestation.fsh):
    the practitioner and the organization by NPI (logical references the payer matches to
    its directory), purpose TREAT, provision.period from the start of the relationship.
    """
    from provider.bulk_client import member_bundle_parameter

    npi = "http://hl7.org/fhir/sid/us-npi"
    member_type = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]}
    patient_ref = {"reference": f"Patient/{submitted_id}"}
    patient = {
        "resourceType": "Patient", "id": submitted_id,
        "identifier": [
            {"system": SUBMITTED_ID_SYSTEM, "value": submitted_id},
            {"type": member_type, "value": member_id},
        ],
        "name": [{"use": "official", "family": family, "given": [given]}],
        "gender": gender, "birthDate": birth_date,
    }
    coverage = {
        "resourceType": "Coverage", "id": f"{submitted_id}-coverage", "status": "active",
        "identifier": [{"type": member_type, "value": member_id}],
        "subscriberId": member_id, "beneficiary": patient_ref, "subscriber": patient_ref,
        "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
        "payor": [{"display": payer_name}],
    }
    practitioner = {"identifier": {"system": npi, "value": practitioner_npi}, "display": practitioner_name}
    organization = {"identifier": {"system": npi, "value": organization_npi}, "display": organization_name}
    consent = {
        "resourceType": "Consent", "id": f"{submitted_id}-attestation", "status": "active",
        # The IG's example: scope patient-privacy (information disclosure), category IDSCL + LOINC 64292-6.
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IDSCL"}]},
            {"coding": [{"system": "http://loinc.org", "code": "64292-6"}]},
        ],
        "patient": patient_ref,
        "dateTime": attested_at.isoformat().replace("+00:00", "Z"),
        "performer": [practitioner],
        # R4 Consent.organization is 0..*.
        "organization": [organization],
        # ppc-1: a policy or a policyRule; the HIPAA treatment disclosure rule.
        "policy": [{"uri": "https://www.hhs.gov/hipaa/for-professionals/privacy/guidance/disclosures-treatment-payment-health-care-operations/index.html"}],
        "provision": {
            "type": "permit",
            "period": {"start": period_start},
            "actor": [
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]},
                 "reference": practitioner},
                {"role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleClass", "code": "PROV"}]},
                 "reference": organization},
            ],
            "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
            "code": [{"coding": [{"system": f"{PDEX}/CodeSystem/treatment-relationship-type", "code": "active"}]}],
        },
    }
    return member_bundle_parameter(patient=patient, coverage=coverage, consent=consent)


def _no_data(job: SyncJob, state: dict, outcome: str, detail: str = "", technical: str = "") -> SyncStep:
    """End the job with no data, as the member match decided: ``detail`` is the payer's own
    words (its OperationOutcome diagnostics, shown to the clinician), ``technical`` our account
    of the answer for IT (default: the payer's words)."""
    reason = NO_DATA_REASONS[outcome]
    state = {**state, "outcome": outcome, "message": detail[:1000]}
    technical = technical or (f"The payer said: {detail}" if detail else "")
    _update(job, member_match=state, status=SyncJob.Status.NO_DATA, progress=NO_DATA_MESSAGE, finished_at=timezone.now(),
            next_step_at=None, error=f"{NO_DATA_MESSAGE}: {reason}." + (f" {technical}" if technical else ""))
    return SyncStep()


def _member_match_step(job: SyncJob, client: Any) -> SyncStep | None:
    """Run one step of the member match: kick it off, poll it, or read its Groups.

    Return the next step, or None once the member matched (``group_id`` and ``patient_ids``
    are then set and the export's kick-off follows at once).
    """
    state = dict(job.member_match or {})
    first_poll = _setting("PA_SYNC_FIRST_POLL_SECONDS", FIRST_POLL_SECONDS)
    if not state.get("status_url"):
        try:
            state["status_url"] = client.member_match_kick_off(member_bundles=[state["request"]])
        except TransientError:
            raise
        except BulkDataError as error:
            # A 4xx with an OperationOutcome is the payer refusing this request (422: the
            # attestation is missing or invalid; 403: not in network): no data, and why.
            if error.status and 400 <= error.status < 500 and error.status not in (401, 404, 405):
                return _no_data(job, state, MATCH_REFUSED, outcome_diagnostics(error.outcome), technical=str(error))
            raise
        step = _again(job, first_poll, member_match=state, transient_errors=0, progress="Matching the member at the payer")
        if step.delay is None:
            # Cancelled while the match was being kicked off: withdraw it too (req 119).
            job.member_match = state
            _member_match_delete(job)
        return step
    result = client.poll(state["status_url"])
    _update(job, poll_count=job.poll_count + 1)
    if result.state == "retry":
        return _transient(job, result.message or f"status {result.status}", result.retry_after)
    if result.state == "error":
        return _fail(job, f"The member match failed: {result.message}", _status_failure(result.status))
    if result.state == "in_progress":
        delay = poll_delay(attempt=job.poll_count, retry_after=result.retry_after, cap=_setting("PA_SYNC_POLL_CAP_SECONDS", 120))
        return _again(job, delay, progress=(result.progress or "Matching the member")[:200],
                      payer_progress=result.progress[:200], transient_errors=0)
    folder = Path(_setting("PA_SYNC_DIR", Path(settings.VAR_DIR) / "sync")) / f"job{job.pk}-match-{uuid.uuid4().hex[:8]}"
    match = client.member_match_result(result.manifest or {}, work_dir=folder)
    try:
        # The match's files are read: the payer may drop them (Bulk Data req 119-121).
        client.cancel(state["status_url"])
    except (BulkDataError, requests.RequestException):
        pass
    submitted_id = next(
        (i.get("value") for i in state["request"]["part"][0]["resource"].get("identifier", [])
         if i.get("system") == SUBMITTED_ID_SYSTEM), "",
    )
    outcome = match.for_submitted(submitted_id) or (match.outcomes[0] if len(match.outcomes) == 1 else None)
    detail = " ".join(match.errors)
    if outcome is not None and outcome.outcome == MATCHED and outcome.patient_id and match.matched_group_id:
        state.update(outcome=MATCHED, group_id=match.matched_group_id, message="")
        _update(job, member_match=state, group_id=match.matched_group_id, patient_ids=[outcome.patient_id])
        return None
    if outcome is not None and outcome.outcome == CONSENT_CONSTRAINED:
        return _no_data(job, state, MATCH_CONSENT_CONSTRAINED, detail)
    if match.errors:
        # §pdex-261: a refused attestation lands in NonMatchedMembers too; the payer's
        # OperationOutcome (manifest ``error``) says which it was.
        return _no_data(job, state, MATCH_REFUSED, detail)
    return _no_data(job, state, MATCH_NOT_MATCHED, detail)


def _status_failure(status: int | None) -> str:
    """Return what a status request's error answer means: refused access, or the payer's own error."""
    return SyncJob.Failure.CREDENTIALS if status in (401, 403) else SyncJob.Failure.PAYER_ERROR


def sync_job_no_data_reason(*, job: SyncJob) -> str:
    """Return why the payer sent nothing, when its member match said so ("" otherwise)."""
    if job.status != SyncJob.Status.NO_DATA:
        return ""
    return NO_DATA_REASONS.get((job.member_match or {}).get("outcome", ""), "")


def _poll(job: SyncJob) -> SyncStep:
    result = bulk_client_for(connection=job.connection).poll(job.status_url)
    _update(job, poll_count=job.poll_count + 1)
    if result.state == "retry":
        return _transient(job, result.message or f"status {result.status}", result.retry_after)
    if result.state == "error":
        return _fail(job, result.message, _status_failure(result.status))
    if result.state == "in_progress":
        delay = poll_delay(attempt=job.poll_count, retry_after=result.retry_after, cap=_setting("PA_SYNC_POLL_CAP_SECONDS", 120))
        # req 135: the client MAY show X-Progress to the user.
        if job.deadline_at:
            # The last poll at the deadline, not an hour after it.
            delay = max(0.0, min(delay, (job.deadline_at - timezone.now()).total_seconds() + 0.5))
        return _again(job, delay, progress=(result.progress or "In progress")[:200], payer_progress=result.progress[:200],
                      transient_errors=0, transient_since=None)
    return _manifest_accept(job, result.manifest or {})


def _manifest_accept(job: SyncJob, manifest: dict) -> SyncStep:
    """Check the manifest whole, then record its files (output, deleted, error) and move on to downloading them."""
    connection = job.connection
    client = bulk_client_for(connection=connection)
    try:
        entries = manifest_check(manifest, policy=client.policy, max_files=connection.max_manifest_files)
    except ManifestError as error:
        return _fail(job, f"The payer's manifest was refused: {error}", SyncJob.Failure.MALFORMED)
    announced = sum(entry["count"] or 0 for kind, entry in entries if kind == "output")
    if announced > connection.max_job_resources:
        return _fail(job, f"The manifest announces {announced} resources, more than this connection's limit of "
                          f"{connection.max_job_resources} per job.", SyncJob.Failure.MALFORMED)
    requires_token = bool(manifest.get("requiresAccessToken"))
    folder = Path(_setting("PA_SYNC_DIR", Path(settings.VAR_DIR) / "sync")) / f"job{job.pk}-{uuid.uuid4().hex[:8]}"
    kinds = {"output": SyncFile.Kind.OUTPUT, "deleted": SyncFile.Kind.DELETED, "error": SyncFile.Kind.ERROR}
    with transaction.atomic():
        # Bulk Data 2.0 "Response - Complete Status": `deleted` lists Bundles of deleted
        # resources (for _since requests); `error` lists OperationOutcome files.
        SyncFile.objects.bulk_create(
            [
                SyncFile(
                    job=job, url=entry["url"], kind=kinds[kind], resource_type=entry["type"],
                    expected_count=entry["count"],
                    local_path=str(folder / f"{index:05d}-{kinds[kind]}-{entry['type']}.ndjson"),
                )
                for index, (kind, entry) in enumerate(entries)
            ],
            ignore_conflicts=True,  # a redelivered step finds them recorded
            batch_size=1000,
        )
        transaction_time = parse_datetime(manifest.get("transactionTime") or "") or None
        # Kept for the admin: the manifest's own fields and the checked entries, not unknown extras.
        stored = {
            "transactionTime": manifest.get("transactionTime"), "request": str(manifest.get("request") or "")[:2000],
            "requiresAccessToken": requires_token,
            **{kind: [entry for k, entry in entries if k == kind] for kind in kinds},
        }
        if not entries:
            empty = NO_DATA_MESSAGE if job.member_id and not job.since else "No changes since the last fetch" if job.since else "The export is empty"
            status = SyncJob.Status.NO_DATA if job.member_id and not job.since else SyncJob.Status.COMPLETED
            _update(job, manifest=stored, manifest_at=timezone.now(), transaction_time=transaction_time, status=status,
                    progress=empty, finished_at=timezone.now(), next_step_at=None, transient_errors=0, counts={})
            return SyncStep()
        if not _update(job, manifest=stored, manifest_at=timezone.now(), transaction_time=transaction_time,
                       status=SyncJob.Status.DOWNLOADING, progress=f"{len(entries)} files to download", next_step_at=None,
                       transient_errors=0, transient_since=None):
            return SyncStep()  # cancelled meanwhile
    return SyncStep(file_ids=list(job.files.order_by(*LARGEST_FIRST).values_list("pk", flat=True)), new_files=True)


# --- Files -------------------------------------------------------------------------------

# The biggest files first, so that parallel tasks end together (longest processing time first).
LARGEST_FIRST = (F("expected_count").desc(nulls_last=True), "pk")
UNSETTLED = Q(status__in=[SyncFile.Status.PENDING, SyncFile.Status.DOWNLOADED])
# Lines per chunk of a big output file (each chunk one task, on any worker).
CHUNK_LINES = 50_000


def sync_file_next(*, job_id: int) -> int | None:
    """Return the job's next file no task has started yet (largest first), or None.

    Files not downloaded and not tried yet, and chunks of a downloaded file. Files that
    were tried already are left to their own task: one rescheduled with ``countdown``
    after a transient error, or the ``sync_jobs_resume`` sweep.
    """
    now = timezone.now()
    fresh = Q(status=SyncFile.Status.PENDING, attempts=0) | Q(status=SyncFile.Status.DOWNLOADED, parent__isnull=False)
    return (
        SyncFile.objects.filter(
            fresh, Q(claimed_until__isnull=True) | Q(claimed_until__lt=now), job_id=job_id,
            job__status__in=[SyncJob.Status.DOWNLOADING, SyncJob.Status.INGESTING],
        )
        .order_by(*LARGEST_FIRST)
        .values_list("pk", flat=True)
        .first()
    )


def _claim_file(file: SyncFile) -> bool:
    now = timezone.now()
    file.claimed_until = now + _lease()
    # A second early: a retry's countdown may fire just before the claim it left runs out.
    return bool(
        SyncFile.objects.filter(
            Q(claimed_until__isnull=True) | Q(claimed_until__lt=now + timedelta(seconds=1)), pk=file.pk, status=file.status
        ).update(claimed_until=file.claimed_until)
    )


def _file_update(file: SyncFile, **fields: Any) -> None:
    for name, value in fields.items():
        setattr(file, name, value)
    SyncFile.objects.filter(pk=file.pk).update(**fields)


def _job_note(job_id: int, message: str) -> None:
    """Append a line to the job's error text (concurrent file tasks each add theirs)."""
    with transaction.atomic():
        job = SyncJob.objects.select_for_update().get(pk=job_id)
        job.error = "\n".join(filter(None, [job.error, message]))[:20000]
        job.save(update_fields=["error", "updated_at"])


def sync_file_step(*, file_id: int, enqueue_chunks: bool = True) -> float | None:
    """Download one manifest file (resuming) and ingest it once, or one chunk of it; return a retry delay, or None.

    A file of more than ``PA_SYNC_CHUNK_LINES`` lines is cut into chunks after its
    download; each chunk is a SyncFile handed to its own task (``enqueue_chunks``) or,
    inline, picked up by the caller's loop.
    """
    file = SyncFile.objects.select_related("job__connection").get(pk=file_id)
    job = file.job
    if job.status in TERMINAL or file.status in (SyncFile.Status.INGESTED, SyncFile.Status.FAILED):
        return None
    if file.parent_id is None and file.status == SyncFile.Status.DOWNLOADED and file.chunks.exists():
        return None  # its chunks are ingested on their own
    if not _claim_file(file):
        return None
    delay: float | None = None
    chunk_ids: list[int] = []
    try:
        with _heartbeat(SyncFile, file.pk, "claimed_until", file.claimed_until):
            delay, chunk_ids = _file_work(file)
    except Exception as error:
        # Not foreseen (a bug, a full disk): the file fails where people see it and the
        # job can end, rather than wait on a chain that stopped.
        logger.exception("Sync file %s crashed", file.pk)
        _file_update(file, status=SyncFile.Status.FAILED, error=f"Failed on the hospital's side: {error.__class__.__name__}")
        _job_note(job.pk, f"{file.resource_type} file: failed on the hospital's side ({error.__class__.__name__}).")
        _parent_settle(file)
    finally:
        # A retry keeps the file claimed until it is due, so the sweep does not start it early.
        until = timezone.now() + timedelta(seconds=delay) if delay is not None else None
        SyncFile.objects.filter(pk=file.pk).update(claimed_until=until)
    if delay is not None:
        return delay
    if chunk_ids and enqueue_chunks:
        from provider.tasks import sync_file_advance_task

        for chunk_id in chunk_ids:
            transaction.on_commit(lambda chunk_id=chunk_id: sync_file_advance_task.delay(chunk_id))
    # Also after a failed download: it may have been the job's last file.
    sync_job_finish_if_done(job_id=job.pk)
    return None


def _file_work(file: SyncFile) -> tuple[float | None, list[int]]:
    job = file.job
    if file.status == SyncFile.Status.PENDING:
        delay = _file_download(file)
        if delay is not None:
            return delay, []
        if file.status == SyncFile.Status.FAILED:
            return None, []
        if not _job_resources_within_limit(job):
            return None, []
        if not job.files.filter(status=SyncFile.Status.PENDING).exists():
            if SyncJob.objects.filter(pk=job.pk, status=SyncJob.Status.DOWNLOADING).update(
                status=SyncJob.Status.INGESTING, progress="Storing records", updated_at=timezone.now()
            ):
                # Every file is here: the payer may drop them (reqs 120, 121).
                _status_url_delete(job)
    job.refresh_from_db(fields=["status"])
    if job.status in TERMINAL or file.status == SyncFile.Status.FAILED:
        return None, []
    if file.parent_id is None and file.kind == SyncFile.Kind.OUTPUT and file.line_count > _setting("PA_SYNC_CHUNK_LINES", CHUNK_LINES):
        chunk_ids = _file_split(file)
        if chunk_ids:
            return None, chunk_ids
    _file_ingest(file)
    return None, []


def _job_resources_within_limit(job: SyncJob) -> bool:
    """Fail the job once its downloaded files hold more resources than the connection allows."""
    limit = job.connection.max_job_resources
    total = job.files.filter(parent__isnull=True, kind=SyncFile.Kind.OUTPUT).aggregate(n=Sum("line_count"))["n"] or 0
    if total <= limit:
        return True
    _fail(job, f"The payer sent more than {limit} resources, this connection's limit per job; the job was stopped.",
          SyncJob.Failure.MALFORMED)
    return False


def _file_split(file: SyncFile) -> list[int]:
    """Cut a downloaded output file into chunks of whole lines, each a SyncFile; return their ids."""
    plan = ingest.ndjson_chunk_plan(path=file.local_path, lines_per_chunk=_setting("PA_SYNC_CHUNK_LINES", CHUNK_LINES))
    if len(plan) < 2:
        return []
    SyncFile.objects.bulk_create(
        [
            SyncFile(
                job_id=file.job_id, parent=file, kind=file.kind, resource_type=file.resource_type,
                url=f"{file.url}#chunk{index}", local_path=file.local_path, status=SyncFile.Status.DOWNLOADED,
                chunk_start=chunk.start_byte, chunk_end=chunk.end_byte, chunk_first_line=chunk.first_line,
            )
            for index, chunk in enumerate(plan)
        ],
        ignore_conflicts=True,  # a redelivered task finds them made
    )
    return list(file.chunks.order_by("pk").values_list("pk", flat=True))


def _file_download(file: SyncFile) -> float | None:
    job = file.job
    client = bulk_client_for(connection=job.connection)
    requires_token = bool((job.manifest or {}).get("requiresAccessToken"))
    attempts = file.attempts + 1
    _file_update(file, attempts=attempts)
    expected = file.expected_count if file.kind == SyncFile.Kind.OUTPUT else None
    try:
        try:
            size = client.download(file.url, file.local_path, requires_token=requires_token, expected_count=expected)
        except CountMismatch:
            # A short file may be a truncated copy: download it again from scratch once.
            size = client.download(file.url, file.local_path, requires_token=requires_token, resume=False)
            found = _line_count(file.local_path)
            if found != expected:
                message = f"{file.resource_type} file: the manifest says {expected} resources, the file has {found}."
                _file_update(file, error=message)
                _job_note(job.pk, message)
    except TransientError as error:
        if attempts >= _setting("PA_SYNC_FILE_ATTEMPTS", 6):
            _file_update(file, status=SyncFile.Status.FAILED, error=str(error)[:2000])
            _job_note(job.pk, f"{file.resource_type} file: {error}")
            return None
        return poll_delay(attempt=attempts, retry_after=error.retry_after, cap=_setting("PA_SYNC_POLL_CAP_SECONDS", 120))
    except (BulkDataError, requests.RequestException, *TRANSIENT_NETWORK_ERRORS, OSError) as error:
        Path(file.local_path).unlink(missing_ok=True)
        _file_update(file, status=SyncFile.Status.FAILED, error=str(error)[:2000])
        _job_note(job.pk, f"{file.resource_type} file: {error}"[:2000])
        return None
    _file_update(file, status=SyncFile.Status.DOWNLOADED, bytes_downloaded=size, line_count=_line_count(file.local_path))
    return None


def _line_count(path: str) -> int:
    from provider.bulk_client import ndjson_line_count

    return ndjson_line_count(Path(path))


def _file_ingest(file: SyncFile) -> None:
    """Store a downloaded file, or one chunk of it, once: resources, deletions, or the server's OperationOutcomes."""
    job = file.job
    path = Path(file.local_path)
    # A redelivered task re-ingests a file whose ingest was cut short: the upsert makes
    # the resources idempotent, and the file's issues are written afresh.
    IngestIssue.objects.filter(sync_file=file).delete()
    ingested, unchanged, errors = 0, 0, 0
    file_name = file.parent.url if file.parent_id else file.url
    if file.kind == SyncFile.Kind.OUTPUT and file.parent_id:
        result = ingest.ndjson_ingest_chunk(
            path=str(path),
            chunk=ingest.NDJSONChunk(start_byte=file.chunk_start, end_byte=file.chunk_end, first_line=file.chunk_first_line),
            file_name=file_name, expected_type=file.resource_type, connection=job.connection, sync_job=job,
            sync_file=file, export_time=job.transaction_time, validation_level=job.connection.validation_level,
        )
        ingested, unchanged, errors = result.stored, result.unchanged, result.errors
    else:
        with open(path, "rb") as stream:
            if file.kind == SyncFile.Kind.OUTPUT:
                result = ingest.ndjson_ingest(
                    stream=stream, file_name=file_name, expected_type=file.resource_type, connection=job.connection,
                    sync_job=job, sync_file=file, export_time=job.transaction_time,
                    validation_level=job.connection.validation_level,
                )
                ingested, unchanged, errors = result.stored, result.unchanged, result.errors
            elif file.kind == SyncFile.Kind.DELETED:
                result = ingest.deleted_apply(stream=stream, file_name=file_name, connection=job.connection, sync_file=file)
                ingested, unchanged, errors = result.stored, result.unchanged, result.errors
            else:
                ingested, errors = _error_file_record(file, stream)
    updated = SyncFile.objects.filter(pk=file.pk, status=SyncFile.Status.DOWNLOADED).update(
        status=SyncFile.Status.INGESTED, ingested_count=ingested, unchanged_count=unchanged, error_count=errors
    )
    if not updated:
        return
    file.status = SyncFile.Status.INGESTED
    if file.parent_id is None:
        path.unlink(missing_ok=True)
        return
    _parent_settle(file)


def _parent_settle(chunk: SyncFile) -> None:
    """Once a file's last chunk is settled, settle the file (failed if a chunk failed) and remove its local copy."""
    if chunk.parent_id is None or SyncFile.objects.filter(UNSETTLED, parent_id=chunk.parent_id).exists():
        return
    failed = SyncFile.objects.filter(parent_id=chunk.parent_id, status=SyncFile.Status.FAILED).exists()
    status = SyncFile.Status.FAILED if failed else SyncFile.Status.INGESTED
    if SyncFile.objects.filter(pk=chunk.parent_id, status=SyncFile.Status.DOWNLOADED).update(status=status):
        Path(chunk.local_path).unlink(missing_ok=True)


def _error_file_record(file: SyncFile, stream: Any) -> tuple[int, int]:
    """Keep each OperationOutcome of a manifest ``error`` file as an IngestIssue and a job note.

    Bulk Data 2.0 "Response - Complete Status": ``error`` files hold OperationOutcomes
    for resources the server could not export; the export itself still succeeded.
    """
    issues, notes = [], []
    for number, raw in enumerate(stream, start=1):
        if not raw.strip():
            continue
        try:
            outcome = json.loads(raw)
        except ValueError:
            outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "structure", "diagnostics": "Not JSON."}]}
        issues.append(IngestIssue(sync_file=file, file_name=file.url, line_number=number, outcome=outcome))
        texts = [i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code", "") for i in outcome.get("issue", [])]
        notes.append("The payer reported: " + "; ".join(filter(None, texts)))
    IngestIssue.objects.bulk_create(issues, ignore_conflicts=True)
    if notes:
        _job_note(file.job_id, "\n".join(notes))
    return 0, len(issues)


def _output_counts(job: SyncJob) -> dict[str, int]:
    """Return the resources stored per type (new, or a newer version than the store held)."""
    rows = job.files.filter(kind=SyncFile.Kind.OUTPUT).values("resource_type").annotate(n=Sum("ingested_count"))
    return {row["resource_type"]: row["n"] or 0 for row in rows if row["n"]}


def sync_job_unchanged_counts(*, job: SyncJob) -> dict[str, int]:
    """Return the valid resources per type the store already held in that or a later version."""
    rows = job.files.filter(kind=SyncFile.Kind.OUTPUT).values("resource_type").annotate(n=Sum("unchanged_count"))
    return {row["resource_type"]: row["n"] or 0 for row in rows if row["n"]}


def _deleted_count(job: SyncJob) -> int:
    """Return the resources removed because the job's ``deleted`` files listed them."""
    return job.files.filter(kind=SyncFile.Kind.DELETED).aggregate(n=Sum("ingested_count"))["n"] or 0


def stored_summary(*, stored: int, unchanged: int, deleted: int = 0) -> str:
    """Return "N resources stored" and, when some were already up to date or removed, ", M unchanged, D deleted"."""
    text = f"{stored} resource{'s' if stored != 1 else ''} stored"
    if unchanged:
        text += f", {unchanged} unchanged"
    return f"{text}, {deleted} deleted" if deleted else text


def sync_job_finish_if_done(*, job_id: int) -> SyncJob:
    """Close the job once every file is settled: completed, or failed if a file could not be had in full."""
    with transaction.atomic():
        # The job's row only: locking the joined connection too deadlocked two files of a job
        # finishing at once on Postgres (each thread held one row and waited on the other).
        job = SyncJob.objects.select_for_update(of=("self",)).select_related("connection").get(pk=job_id)
        if job.status not in (SyncJob.Status.DOWNLOADING, SyncJob.Status.INGESTING):
            return job
        if job.files.exclude(status__in=[SyncFile.Status.INGESTED, SyncFile.Status.FAILED]).exists():
            return job
        incomplete = job.files.filter(parent__isnull=True).filter(
            Q(status=SyncFile.Status.FAILED) | (Q(kind=SyncFile.Kind.OUTPUT) & ~Q(error=""))
        )
        counts = _output_counts(job)
        if incomplete.exists():
            # Not "completed": an incomplete fetch must not be the base of the next
            # incremental one, or the missing resources would never come.
            job.status, job.progress = SyncJob.Status.FAILED, f"{incomplete.count()} file(s) incomplete"
            job.failure = SyncJob.Failure.INCOMPLETE
        else:
            job.status = SyncJob.Status.COMPLETED
            unchanged = sum(sync_job_unchanged_counts(job=job).values())
            job.progress = stored_summary(stored=sum(counts.values()), unchanged=unchanged, deleted=_deleted_count(job))
        job.counts, job.finished_at, job.next_step_at = counts, timezone.now(), None
        job.deleted_count = _deleted_count(job)
        job.save(update_fields=["status", "progress", "failure", "counts", "deleted_count", "finished_at", "next_step_at",
                                "updated_at"])
    if job.status_url:
        # Normally sent when the last file was downloaded; here for a job whose last
        # download failed (req 119), or one resumed from before that step existed.
        _status_url_delete(job)
    return job


# --- Drivers: Celery, and in-process for the command ---------------------------------------


def sync_job_advance(*, job_id: int) -> None:
    """Run the job's next step and schedule what follows on Celery (``countdown``, never a sleep)."""
    from provider.tasks import sync_file_advance_task, sync_job_advance_task

    step = sync_job_step(job_id=job_id)
    if step.delay is not None:
        transaction.on_commit(lambda: sync_job_advance_task.apply_async((job_id,), countdown=step.delay))
    # A manifest's files: a few tasks, each going on with the job's next file (see
    # sync_file_advance), rather than a task and a broker round trip per file. A resumed
    # job's files each get their own task: some may wait on a countdown.
    file_ids = step.file_ids[: _setting("PA_SYNC_FILE_TASKS", FILE_TASKS)] if step.new_files else step.file_ids
    for file_id in file_ids:
        transaction.on_commit(lambda file_id=file_id: sync_file_advance_task.delay(file_id))


def sync_file_advance(*, file_id: int) -> None:
    """Download and ingest the file, then the job's other files no task has started yet,
    one after another; retry a transient failure later with ``countdown``.

    Several of these run side by side on one job; each file's claim keeps them apart.
    """
    from provider.tasks import sync_file_advance_task

    job_id = SyncFile.objects.filter(pk=file_id).values_list("job_id", flat=True).first()
    next_id: int | None = file_id
    # Ends: each file handed on is claimed, by this task or another, or settled, and so
    # is never handed on again. (Downloading the next file on a thread meanwhile was
    # slower: its gzip decoding and line counts hold the GIL the validation needs.)
    while next_id is not None:
        delay = sync_file_step(file_id=next_id)
        if delay is not None:
            transaction.on_commit(
                lambda retry_id=next_id, delay=delay: sync_file_advance_task.apply_async((retry_id,), countdown=delay)
            )
        next_id = sync_file_next(job_id=job_id) if job_id else None


def sync_jobs_resume(*, stale_after: timedelta = timedelta(minutes=5)) -> int:
    """Re-enqueue active jobs whose tasks were lost (a killed worker); return how many.

    Run by celery beat every 15 s. A step or file whose lease ran out (its heartbeat
    stopped: the worker died) is taken over at once; a job or file with no claim at all
    and no change for ``stale_after`` (a lost message) too. Safe to run any time:
    duplicate tasks find the job's or the file's claim taken, or the work done.
    """
    from provider.tasks import sync_file_advance_task, sync_job_advance_task

    now = timezone.now()
    grace = min(stale_after, timedelta(seconds=5))
    jobs = SyncJob.objects.filter(status__in=ACTIVE).filter(
        Q(next_step_at__lt=now - grace) | Q(next_step_at__isnull=True, updated_at__lt=now - stale_after)
        | Q(status__in=[SyncJob.Status.DOWNLOADING, SyncJob.Status.INGESTING])
    )
    resumed = 0
    for job in jobs:
        if job.status in (SyncJob.Status.PENDING, SyncJob.Status.KICKED_OFF):
            resumed += 1
            SyncJob.objects.filter(pk=job.pk, next_step_at=job.next_step_at).update(next_step_at=None)
            transaction.on_commit(lambda job_id=job.pk: sync_job_advance_task.delay(job_id))
            continue
        split = SyncFile.objects.filter(job=job, parent__isnull=False).values("parent_id")
        unsettled = job.files.filter(UNSETTLED).exclude(pk__in=split)  # a split file waits on its chunks
        if not unsettled.exists():
            sync_job_finish_if_done(job_id=job.pk)  # a worker died between its last file and the close
            continue
        # Expired leases: each a file a dead worker held. Unclaimed files of a job idle for
        # stale_after: a lost message; a few tasks suffice, each goes on with the next file.
        file_ids = list(unsettled.filter(claimed_until__lt=now - grace).values_list("pk", flat=True))
        if job.updated_at < now - stale_after:
            idle = unsettled.filter(claimed_until__isnull=True).order_by(*LARGEST_FIRST)
            file_ids += list(idle.values_list("pk", flat=True)[: _setting("PA_SYNC_FILE_TASKS", FILE_TASKS)])
            SyncJob.objects.filter(pk=job.pk).update(updated_at=now)  # not again before stale_after
        if file_ids:
            resumed += 1
        for file_id in file_ids:
            transaction.on_commit(lambda file_id=file_id: sync_file_advance_task.delay(file_id))
    return resumed


def sync_job_run_inline(
    *, job: SyncJob, on_progress: Callable[[dict[str, Any]], None] | None = None, parallel: int = 4
) -> SyncJob:
    """Run a job to its end in this process, without a broker (the ``bulk_fetch`` command).

    The same steps as on Celery; here waiting is a plain sleep, and files (and the chunks
    of big ones) run in a bounded thread pool.
    """
    report = on_progress or (lambda progress: None)
    while True:
        step = sync_job_step(job_id=job.pk)
        report(sync_job_progress(job=job))
        if step.file_ids:
            pending = list(step.file_ids)
            while pending:
                if parallel > 1:
                    with ThreadPoolExecutor(max_workers=parallel) as pool:
                        delays = list(pool.map(_file_step_in_thread, pending))
                else:
                    delays = [sync_file_step(file_id=file_id, enqueue_chunks=False) for file_id in pending]
                retry = [(fid, d) for fid, d in zip(pending, delays) if d is not None]
                report(sync_job_progress(job=job))
                if retry:
                    time.sleep(max(d for _, d in retry))
                # Retries, and the chunks big files were cut into.
                chunks = job.files.filter(status=SyncFile.Status.DOWNLOADED, parent__isnull=False)
                pending = [fid for fid, _ in retry] + list(chunks.values_list("pk", flat=True))
                job.refresh_from_db(fields=["status"])
                if job.status in TERMINAL:
                    break
            sync_job_finish_if_done(job_id=job.pk)
        else:
            time.sleep(step.delay if step.delay is not None else 1.0)
        job.refresh_from_db()
        if job.status in TERMINAL:
            report(sync_job_progress(job=job))
            return job


def _file_step_in_thread(file_id: int) -> float | None:
    try:
        return sync_file_step(file_id=file_id, enqueue_chunks=False)
    finally:
        connections.close_all()  # this thread's connections only


# --- Panel sync: the organization's whole attribution Group, on a schedule ------------------


def panel_sync_due_since(*, connection: PayerConnection, now: datetime) -> datetime:
    """Return the start of the connection's current panel-sync slot (every ``panel_sync_hours``, anchored on ``panel_sync_hour`` UTC)."""
    hours, anchor = max(1, connection.panel_sync_hours), connection.panel_sync_hour
    epoch_hours = int(now.timestamp() // 3600)
    slot = (epoch_hours - anchor) // hours * hours + anchor
    return datetime.fromtimestamp(slot * 3600, tz=UTC)


def panel_sync_start(*, connection: PayerConnection, requested_by: Any = None, enqueue: bool = True) -> SyncJob:
    """Start a sync of the connection's attribution Group: everything the first time, then changes only.

    The job's scope is the Group, so ``sync_job_start`` sends ``_since`` = the last
    complete panel fetch's transactionTime, and a payer declaring
    ``$davinci-data-export`` is asked for ``#provider-delta`` (PDex STU2 Provider Access).
    """
    if not connection.panel_group_id:
        raise ValueError(f"{connection} has no panel group.")
    return sync_job_start(connection=connection, group_id=connection.panel_group_id, requested_by=requested_by,
                          enqueue=enqueue, panel=True)


def panel_syncs_run(*, now: datetime | None = None, enqueue: bool = True) -> list[SyncJob]:
    """Start each connection's panel sync that is due and not running; return the jobs started (celery beat)."""
    now = now or timezone.now()
    started = []
    for connection in PayerConnection.objects.exclude(panel_group_id=""):
        panel_jobs = SyncJob.objects.filter(connection=connection, panel=True)
        if panel_jobs.filter(status__in=ACTIVE).exists():
            continue
        last = panel_jobs.order_by("-created_at").values_list("created_at", flat=True).first()
        if last is None or last < panel_sync_due_since(connection=connection, now=now):
            started.append(panel_sync_start(connection=connection, enqueue=enqueue))
    return started
