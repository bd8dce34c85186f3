"""Writes for the EMR: register patients, start fetches from a payer, record every access."""

from __future__ import annotations

import datetime as dt

from django.db import IntegrityError, transaction

from emr import selectors
from emr.models import AccessEvent, Clinician, HospitalPatient, PatientSync
from provider.models import PayerConnection, SyncJob


class PatientError(ValueError):
    """A registration the hospital cannot accept (shown to the clinician as is)."""


def access_record(*, user, patient: HospitalPatient, action: str, detail: str = "") -> AccessEvent:
    """Record that a user looked at or acted on a patient's record."""
    return AccessEvent.objects.create(
        user=user if getattr(user, "is_authenticated", False) else None,
        organization_npi=patient.organization_npi,
        patient=patient,
        action=action,
        detail=detail[:300],
    )


def mrn_next(*, organization_npi: str) -> str:
    """Return the next free medical record number of the organization."""
    count = HospitalPatient.objects.filter(organization_npi=organization_npi).count()
    while True:
        count += 1
        mrn = f"MRN{count:06d}"
        if not HospitalPatient.objects.filter(organization_npi=organization_npi, mrn=mrn).exists():
            return mrn


@transaction.atomic
def hospital_patient_create(
    *,
    clinician: Clinician,
    family: str,
    given: str,
    birth_date: dt.date,
    gender: str = HospitalPatient.Gender.UNKNOWN,
    insurer: PayerConnection | None = None,
    member_id: str = "",
    mrn: str = "",
    created_by=None,
) -> HospitalPatient:
    """Register a patient in the clinician's organization."""
    if birth_date > dt.date.today():
        raise PatientError("The date of birth is in the future.")
    if member_id.strip() and insurer is None:
        raise PatientError("A member id needs the insurer that issued it.")
    try:
        with transaction.atomic():
            patient = HospitalPatient.objects.create(
                organization_npi=clinician.organization_npi,
                mrn=mrn.strip() or mrn_next(organization_npi=clinician.organization_npi),
                family=family.strip(),
                given=given.strip(),
                birth_date=birth_date,
                gender=gender,
                insurer=insurer,
                member_id=member_id.strip(),
                created_by=created_by,
            )
    except IntegrityError as exc:
        raise PatientError(f"MRN {mrn} is already registered.") from exc
    access_record(user=created_by, patient=patient, action=AccessEvent.Action.CREATE)
    return patient


def patient_fetch_start(*, patient: HospitalPatient, connection: PayerConnection, user) -> SyncJob:
    """Start fetching the patient's history from the payer (a sync job run by Celery)."""
    from provider.services.sync import sync_job_start

    # A connection is one organization's SMART client: fetching through another
    # organization's would show this clinician patients the payer attributes to that one.
    if connection.organization_npi != patient.organization_npi:
        raise PatientError(f"{connection.display_name} is not a connection of this patient's organization.")
    if connection not in selectors.connections_for_fetch(patient=patient):
        raise PatientError(f"{connection.display_name} holds no member id for this patient.")
    with transaction.atomic():
        job = sync_job_start(connection=connection, member_id=patient.member_id, requested_by=user)
        PatientSync.objects.create(patient=patient, job=job)
        access_record(user=user, patient=patient, action=AccessEvent.Action.FETCH, detail=connection.display_name)
    return job


def patient_sync_link(*, patient: HospitalPatient, job: SyncJob) -> HospitalPatient:
    """Remember the payer's Patient id once a fetch for the patient completed, so the
    patient page can read the local store by it."""
    if job.status != SyncJob.Status.COMPLETED:
        return patient
    payer_patient_id = selectors.payer_patient_find(patient=patient, job=job)
    if payer_patient_id and payer_patient_id != patient.payer_patient_id:
        patient.payer_patient_id = payer_patient_id
        patient.save(update_fields=["payer_patient_id"])
    return patient
