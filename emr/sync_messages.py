"""What the EMR's fetch panel says to a clinician, in plain words: the step a fetch is at,
what a slow one is waiting on, why a failed one failed, and why a payer sent nothing.

The words come from the sync job's state (``provider.models.SyncJob``: status, ``failure``,
``member_match``, the worker's claim ``next_step_at``). The job's own error text is for IT:
the page shows it only behind "Technical detail". Only the ``announce`` sentence is read
out by screen readers (the panel's live region), so it changes with the step and not with
each count.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from django.utils import timezone

from emr.terms import record_kind
from provider.models import SyncJob
from provider.services.sync import TERMINAL, sync_job_no_data_reason

# A step due this long ago that no worker has taken: the hospital's worker is stopped or
# busy. (A step that runs holds a claim a heartbeat renews, so it is never "overdue".)
OVERDUE = dt.timedelta(seconds=10)

FAILURES: dict[str, str] = {
    SyncJob.Failure.UNREACHABLE: "{payer} could not be reached, or kept answering that it was busy. Try again later.",
    SyncJob.Failure.CREDENTIALS: (
        "{payer} did not accept this hospital's credentials, so nothing was fetched. Tell your IT team: "
        "trying again will not help until they have fixed it."
    ),
    SyncJob.Failure.PAYER_ERROR: "{payer} reported an error and did not send the history.",
    SyncJob.Failure.TIMEOUT: "{payer} did not finish preparing the history in time, so the fetch was stopped.",
    SyncJob.Failure.MALFORMED: (
        "{payer} sent an answer this hospital cannot use (malformed, or larger than it accepts). Tell your IT team."
    ),
    SyncJob.Failure.INCOMPLETE: (
        "Some of the files from {payer} could not be downloaded in full, so the history was not completed."
    ),
    SyncJob.Failure.HOSPITAL: "The hospital's own system failed while fetching from {payer}. Tell your IT team.",
}
FAILURE_UNKNOWN = "The fetch from {payer} failed."

OPTED_OUT_SILENTLY = "The patient has opted out of sharing their data with providers (a plan need not say so)."
# Why a payer that gave no reason may have sent nothing.
NOT_LISTED_CAUSES = (
    "The patient is new to your organization: the plan has no claim or treatment relationship linking them to it yet.",
    "The member id on file is wrong, or the coverage has ended.",
    OPTED_OUT_SILENTLY,
)
EMPTY_EXPORT_CAUSES = (
    OPTED_OUT_SILENTLY,
    "The plan holds no claims or clinical records for the patient yet.",
    "The plan has not yet sent the patient the notice it must send before it shares their data.",
)
NOT_MATCHED_CAUSES = (
    "The name, birth date, sex or member id on file differ from the plan's records: check them against the insurance card.",
    "The coverage has ended, or is with another plan.",
    # PDex 2.2 §pdex-261a: a plan may report an opted-out member as not matched.
    OPTED_OUT_SILENTLY,
)
ATTEST_HINT = (
    "Attest your treatment relationship (the box above Fetch) and fetch again: the plan can then match the patient "
    "by name, birth date and member id."
)


def sync_failure_message(*, failure: str, payer: str) -> str:
    """Return one sentence a clinician understands for a failed fetch (``SyncJob.Failure``)."""
    return FAILURES.get(failure, FAILURE_UNKNOWN).format(payer=payer)


def sync_no_data_explain(*, job: SyncJob, payer: str) -> tuple[str, list[str]]:
    """Return why the payer sent nothing, as it said it, and the usual causes when it gave no reason."""
    match = job.member_match or {}
    if reason := sync_job_no_data_reason(job=job):
        # The payer's member match said why (PDex 2.2 §pdex-261), maybe in its own words too.
        message = f"{payer} returned no data for this patient: {reason}."
        if said := (match.get("message") or "").strip():
            message += f" {payer} said: “{said}”"
        causes = list(NOT_MATCHED_CAUSES) if match.get("outcome") == "nonmatched" else []
        return message, causes
    if job.kicked_off_at is None:
        # Da Vinci ATR: the member is in none of the attribution Groups the payer shares
        # with this organization, and a Group says no more than that.
        message = (f"{payer} returned no data for this patient and gave no reason: the patient is not on the list "
                   f"of patients it shares with your organization.")
        causes = list(NOT_LISTED_CAUSES)
        if not match.get("request"):
            causes.append(ATTEST_HINT)
        return message, causes
    return f"{payer} sent an empty answer for this patient and gave no reason.", list(EMPTY_EXPORT_CAUSES)


def _member_matching(job: SyncJob) -> bool:
    state = job.member_match or {}
    return job.status == SyncJob.Status.PENDING and bool(state.get("status_url")) and not state.get("outcome")


def sync_waiting_on(*, job: SyncJob, payer: str, now: dt.datetime) -> str:
    """Return what a running fetch is waiting on, in one sentence (the slow notice)."""
    waiting = job.status in (SyncJob.Status.PENDING, SyncJob.Status.KICKED_OFF)
    if waiting and (job.next_step_at is None or job.next_step_at < now - OVERDUE):
        # Nobody took the step that was due: what a stopped worker looks like from here.
        return ("The hospital's background worker has not picked this fetch up: it may be stopped or busy. "
                "Tell your IT team if this keeps happening.")
    if waiting and job.transient_errors:
        return f"{payer} is not answering, or answers that it is busy; the hospital keeps trying."
    if _member_matching(job):
        return f"{payer} is still matching this patient to its members."
    return {
        SyncJob.Status.PENDING: f"{payer} has not accepted the request yet.",
        SyncJob.Status.KICKED_OFF: f"{payer} is still preparing the data.",
        SyncJob.Status.DOWNLOADING: f"The files from {payer} are still downloading.",
    }.get(job.status, "The hospital is still storing the records.")


def sync_step_announcement(*, job: SyncJob, payer: str) -> str:
    """Return the sentence the live region reads for a running fetch: the step, never a count."""
    if _member_matching(job):
        return f"Matching the patient at {payer}…"
    return {
        SyncJob.Status.PENDING: f"Contacting {payer}…",
        SyncJob.Status.KICKED_OFF: f"{payer} is preparing the data…",
        SyncJob.Status.DOWNLOADING: "Downloading the files…",
    }.get(job.status, "Storing the records…")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 60} min {seconds % 60} s" if seconds >= 60 else f"{seconds} s"


def sync_detail(*, job: SyncJob, progress: dict[str, Any], payer: str, payer_says: str = "") -> str:
    """Return the running fetch's figures in one line (not read out: they change with each poll)."""
    parts = [f"{payer} says: “{payer_says}”"] if payer_says else []
    if job.transient_errors:
        problem = job.progress.removeprefix("Retrying: ")
        parts.append(f"{job.transient_errors} attempt{'s' if job.transient_errors != 1 else ''} failed (last: {problem})")
    if progress["files_total"]:
        parts.append(f"{progress['files_downloaded']} of {progress['files_total']} files downloaded, "
                     f"{progress['files_ingested']} stored")
    if progress["resources_ingested"]:
        parts.append(f"{progress['resources_ingested']} records stored")
    if job.poll_count:
        parts.append(f"{job.poll_count} status check{'s' if job.poll_count != 1 else ''}")
    parts.append(f"started {_duration(progress['elapsed_seconds'])} ago")
    return " · ".join(parts)


def _cancelled_message(job: SyncJob, payer: str) -> str:
    if not job.status_url and not (job.member_match or {}).get("status_url"):
        return f"The fetch was cancelled before it reached {payer}."
    if job.progress.startswith("Cancelled here"):
        return (f"The fetch was cancelled here, but {payer} did not confirm that it stopped; "
                f"what it prepared expires there on its own.")
    return f"The fetch was cancelled, and {payer} was told to stop."


def _completed_message(progress: dict[str, Any], counts: dict[str, int], payer: str) -> str:
    total, unchanged = sum(counts.values()), progress.get("resources_unchanged") or 0
    if unchanged:
        # Stored and unchanged are told apart: a record already held is not news.
        return (f"Fetched {total} new or updated record{'s' if total != 1 else ''} from {payer}; "
                f"{unchanged} already up to date.")
    return f"Fetched {total} record{'s' if total != 1 else ''} from {payer}."


def sync_panel_words(
    *, job: SyncJob, progress: dict[str, Any], counts: dict[str, int], slow_after: float, now: dt.datetime | None = None
) -> dict[str, Any]:
    """Return everything the fetch panel says about a job, JSON-serializable.

    ``announce``: the live region's one sentence; ``message`` (with ``causes`` and the
    technical ``error``, or the records stored by kind in ``counts_in_words``) once the fetch
    ended; ``slow``, ``waiting_on`` and ``detail`` while it runs.
    """
    payer = job.connection.display_name
    now = now or timezone.now()
    words: dict[str, Any] = {
        "announce": "", "message": "", "alert": "", "causes": [], "error": "", "counts_in_words": [],
        "slow": False, "slow_after": slow_after, "waiting_on": "", "payer_says": "", "detail": "",
    }
    if job.status not in TERMINAL:
        slow = progress["elapsed_seconds"] >= slow_after
        waiting_on = sync_waiting_on(job=job, payer=payer, now=now)
        step = sync_step_announcement(job=job, payer=payer)
        waiting = job.status in (SyncJob.Status.PENDING, SyncJob.Status.KICKED_OFF)
        # Bulk Data req 135: the client MAY show the payer's X-Progress; it goes with the slow
        # notice once there is one, in the figures before.
        payer_says = job.payer_progress if waiting else ""
        detail = sync_detail(job=job, progress=progress, payer=payer, payer_says="" if slow else payer_says)
        return {
            **words, "slow": slow, "waiting_on": waiting_on, "payer_says": payer_says, "detail": detail,
            "announce": f"This is taking longer than usual. {waiting_on}" if slow else step,
        }
    if job.status == SyncJob.Status.COMPLETED:
        message = _completed_message(progress, counts, payer)
        # The page moves focus to the history itself: the live region carries the result.
        return {**words, "message": message, "alert": "alert-success", "announce": message,
                "counts_in_words": [(n, record_kind(resource_type, n)) for resource_type, n in counts.items()]}
    # Otherwise focus moves to the message, which is read then: the live region only names the end.
    if job.status == SyncJob.Status.NO_DATA:
        message, causes = sync_no_data_explain(job=job, payer=payer)
        return {**words, "message": message, "causes": causes, "alert": "alert-warning",
                "announce": f"No data from {payer}.", "error": job.error[:2000]}
    if job.status == SyncJob.Status.CANCELLED:
        return {**words, "message": _cancelled_message(job, payer), "alert": "alert-info",
                "announce": "The fetch was cancelled."}
    return {**words, "message": sync_failure_message(failure=job.failure, payer=payer), "alert": "alert-error",
            "announce": "The fetch failed.", "error": job.error[:2000]}
