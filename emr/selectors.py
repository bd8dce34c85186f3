"""Reads for the EMR pages: the organization's patients, their fetches, and which payer
Patient (of which source) a patient's page may show. The history itself is built in
``emr.history``."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db.models import OuterRef, Q, QuerySet, Subquery

from emr import linking
from emr.models import Clinician, HospitalPatient, PatientSync
from emr.sync_messages import sync_panel_words
from provider.models import PayerConnection, SyncJob
from provider.services.sync import MATCH_REFUSED

TERMINAL_STATUSES = {
    SyncJob.Status.COMPLETED,
    SyncJob.Status.NO_DATA,
    SyncJob.Status.FAILED,
    SyncJob.Status.CANCELLED,
}
SYNC_STEPS = [
    (SyncJob.Status.PENDING, "Kick-off"),
    (SyncJob.Status.KICKED_OFF, "Waiting on the payer"),
    (SyncJob.Status.DOWNLOADING, "Downloading"),
    (SyncJob.Status.INGESTING, "Ingesting"),
    (SyncJob.Status.COMPLETED, "Done"),
]


# --- Patients ---------------------------------------------------------------------------


def clinician_for_user(*, user) -> Clinician | None:
    """Return the user's clinician profile, or None for users who are not clinicians."""
    if not user.is_authenticated:
        return None
    return Clinician.objects.filter(user=user).first()


def patient_queryset(*, clinician: Clinician) -> QuerySet[HospitalPatient]:
    """Return the patients of the clinician's organization, and no one else's."""
    last_sync = PatientSync.objects.filter(patient=OuterRef("pk")).order_by("-created_at")
    return (
        HospitalPatient.objects.filter(organization_npi=clinician.organization_npi)
        .select_related("insurer")
        .annotate(
            last_sync_status=Subquery(last_sync.values("job__status")[:1]),
            last_sync_at=Subquery(last_sync.values("job__finished_at")[:1]),
            last_sync_started=Subquery(last_sync.values("created_at")[:1]),
        )
    )


def patient_search(
    *, clinician: Clinician, name: str = "", birth_date: dt.date | None = None, member_id: str = ""
) -> QuerySet[HospitalPatient]:
    """Return the organization's patients matching every given criterion."""
    patients = patient_queryset(clinician=clinician)
    for word in name.split():
        patients = patients.filter(
            Q(family__icontains=word) | Q(given__icontains=word) | Q(mrn__iexact=word)
        )
    if birth_date:
        patients = patients.filter(birth_date=birth_date)
    if member_id.strip():
        patients = patients.filter(member_id__icontains=member_id.strip())
    return patients


def sync_latest(*, patient: HospitalPatient) -> SyncJob | None:
    """Return the most recent sync job started for the patient."""
    sync = PatientSync.objects.filter(patient=patient).select_related("job__connection").first()
    return sync.job if sync else None


def sync_progress(*, job: SyncJob) -> dict[str, Any]:
    """Return what the progress panel shows about a sync job, JSON-serializable: the
    client's own progress report plus the step list and what to say to the clinician
    (emr/sync_messages.py)."""
    from provider.services.sync import sync_job_progress

    data = sync_job_progress(job=job)
    payer = job.connection.display_name
    counts = {k: v for k, v in sorted((data.get("counts") or {}).items()) if v}
    step_index = next((i for i, (status, _) in enumerate(SYNC_STEPS) if status == job.status), len(SYNC_STEPS) - 1)
    if job.status in (SyncJob.Status.FAILED, SyncJob.Status.CANCELLED, SyncJob.Status.NO_DATA):
        step_index = 1 if job.kicked_off_at or job.status == SyncJob.Status.NO_DATA else 0
        if job.manifest_at:
            step_index = 3
    words = sync_panel_words(job=job, progress=data, counts=counts, slow_after=settings.EMR_FETCH_SLOW_SECONDS)
    return {
        **data,
        "payer": payer,
        "steps": [label for _, label in SYNC_STEPS],
        "step_index": step_index,
        "done": job.status in TERMINAL_STATUSES,
        "ok": job.status == SyncJob.Status.COMPLETED,
        "counts": counts,
        **words,
    }


def payer_patient_find(*, patient: HospitalPatient, job: SyncJob) -> str:
    """Return the payer's FHIR Patient id a completed fetch of the patient's own
    organization resolved their member id to ("" if none).

    The local store is shared by every organization of the deployment, so the link never
    comes from searching it by member id: only the payer, answering this organization's
    own SMART client from its attribution list (Da Vinci ATR), may say who the patient is.
    The job must be this patient's (a ``PatientSync``), completed, and run through a
    connection of the patient's organization.
    """
    if (
        job.status != SyncJob.Status.COMPLETED
        or job.connection.organization_npi != patient.organization_npi
        or not PatientSync.objects.filter(patient=patient, job=job).exists()
    ):
        return ""
    # The client resolves the member id to the payer's Patient id before the kick-off.
    ids = [str(p).removeprefix("Patient/") for p in job.patient_ids or []]
    return ids[0] if len(ids) == 1 else ""


@dataclass(frozen=True)
class PayerLink:
    """Whose history a hospital patient's page shows: one payer Patient of one source.

    ``connection`` is the payer connection whose completed fetch of this patient named
    ``patient_id``; only that source's resources are read, since another payer (or another
    organization's client) may use the same id for someone else. ``ended_at`` is set when
    a later fetch through the same connection found the payer no longer sharing the
    patient (no longer attributed, opted out, coverage ended): the history is then hidden.
    """

    connection: PayerConnection
    patient_id: str
    ended_at: dt.datetime | None = None


def _patient_ids(job: SyncJob) -> list[str]:
    return [str(p).removeprefix("Patient/") for p in job.patient_ids or []]


def payer_link(*, patient: HospitalPatient) -> PayerLink | None:
    """Return the payer Patient (and its source) whose history the patient's page may show.

    ``payer_patient_id`` counts only while a completed fetch of the patient by their own
    organization (see ``payer_patient_find``) names it; a value set any other way (an old
    link, an edit) shows nothing. The newest such fetch decides the source.
    """
    pid = patient.payer_patient_id
    if not pid:
        return None
    jobs = list(
        SyncJob.objects.filter(
            emr_sync__patient=patient,
            status__in=[SyncJob.Status.COMPLETED, SyncJob.Status.NO_DATA],
            connection__organization_npi=patient.organization_npi,
        )
        .select_related("connection")
        .only("status", "patient_ids", "created_at", "finished_at", "connection", "member_match")
        .order_by("-created_at", "-pk")
    )
    # JSON "contains" is not portable to SQLite; a patient has few jobs.
    linked = next((job for job in jobs if job.status == SyncJob.Status.COMPLETED and pid in _patient_ids(job)), None)
    if linked is None:
        return None
    # The link is checked, never assumed: name, birth date and sex (emr/linking.py).
    if linking.link_allows(patient=patient, connection=linked.connection, payer_patient_id=pid) is not True:
        return None
    # A later fetch through the same connection that the payer answered with nothing for
    # this patient means its sharing ended (CMS-0057-F: data flows only while the member
    # is attributed and has not opted out); a fetch that failed says nothing either way.
    # A member match the payer refused over the attestation (PDex 2.2 §pdex-261) says the
    # request was wrong, not that the payer stopped sharing.
    ended = next(
        (job for job in jobs if job.connection_id == linked.connection_id and job.status == SyncJob.Status.NO_DATA
         and (job.member_match or {}).get("outcome") != MATCH_REFUSED
         and (job.created_at, job.pk) > (linked.created_at, linked.pk)),
        None,
    )
    return PayerLink(
        connection=linked.connection, patient_id=pid, ended_at=(ended.finished_at or ended.created_at) if ended else None
    )


def linked_payer_patient_id(*, patient: HospitalPatient) -> str:
    """Return the payer Patient id whose history the patient's page may show now, or ""."""
    link = payer_link(patient=patient)
    return link.patient_id if link and not link.ended_at else ""


def connections_for_fetch(*, patient: HospitalPatient) -> list[PayerConnection]:
    """Return the connections the patient's history can be fetched through.

    Only the patient's own organization's connections: each is that organization's SMART
    client at the payer, and the payer answers it with that organization's attributed
    members. ``insurer`` names the payer holding the member id (a member id means nothing
    to another payer, and sending it there would disclose it); when the insurer chosen is
    another organization's connection, the organization's own connection to the same payer
    (same FHIR base URL) is used. None when the organization has no client at that payer.
    """
    insurer = patient.insurer
    if insurer is None or not patient.member_id or not patient.organization_npi:
        return []
    if insurer.organization_npi == patient.organization_npi:
        return [insurer]
    return list(
        PayerConnection.objects.filter(
            organization_npi=patient.organization_npi, fhir_base_url=insurer.fhir_base_url
        ).order_by("display_name", "pk")
    )
