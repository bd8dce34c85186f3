"""Writes for the EMR: register patients, start fetches from a payer, record every access."""

from __future__ import annotations

import datetime as dt

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from emr import linking, selectors
from emr.models import AccessEvent, Clinician, HospitalPatient, PatientSync, TreatmentAttestation
from provider.models import PayerConnection, SyncJob

# The payer refuses an attestation older than its limit (the demo payer: 30 days); past
# this the EMR asks the clinician again rather than send a stale one.
ATTESTATION_DAYS = 30


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
    attest: bool = False,
) -> HospitalPatient:
    """Register a patient in the clinician's organization; with ``attest``, record the
    clinician's treatment attestation too (sent with the first fetch)."""
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
    if attest:
        treatment_attestation_record(patient=patient, clinician=clinician, user=created_by)
    return patient


def attestation_statement(*, clinician: Clinician, on: dt.date, patient: HospitalPatient | None = None) -> str:
    """Return the words a clinician attests to, as the checkbox shows them (who, for whom, when)."""
    whom = f"{patient.name} (born {patient.birth_date.isoformat()})" if patient else "this patient"
    return (f"I, {clinician.display_name} (NPI {clinician.npi or 'none on file'}), attest that "
            f"{clinician.organization_name} has a treatment relationship with {whom} as of {on.isoformat()}.")


def treatment_attestation_record(*, patient: HospitalPatient, clinician: Clinician, user) -> TreatmentAttestation:
    """Record the clinician's explicit attestation of a treatment relationship with the patient."""
    if clinician.organization_npi != patient.organization_npi:
        raise PatientError("Only a clinician of the patient's organization can attest a treatment relationship.")
    if not clinician.npi:
        raise PatientError("Your profile has no NPI, so you cannot attest a treatment relationship; ask an administrator.")
    now = timezone.now()
    attestation = TreatmentAttestation.objects.create(
        patient=patient, clinician=clinician, user=user if getattr(user, "is_authenticated", False) else None,
        practitioner_npi=clinician.npi, practitioner_name=clinician.display_name,
        organization_npi=clinician.organization_npi, organization_name=clinician.organization_name,
        statement=attestation_statement(patient=patient, clinician=clinician, on=now.date())[:500],
        period_start=now.date(), attested_at=now,
    )
    access_record(user=user, patient=patient, action=AccessEvent.Action.ATTEST, detail=attestation.statement)
    return attestation


def attestation_current(*, patient: HospitalPatient) -> TreatmentAttestation | None:
    """Return the patient's newest attestation still young enough to send, or None."""
    days = getattr(settings, "EMR_ATTESTATION_DAYS", ATTESTATION_DAYS)
    return patient.attestations.filter(attested_at__gte=timezone.now() - dt.timedelta(days=days)).first()


def patient_member_id_correct(*, patient: HospitalPatient, member_id: str, user) -> HospitalPatient:
    """Correct the member id on file; the old link goes, and the next fetch is checked anew."""
    member_id = member_id.strip()
    if not member_id or len(member_id) > 64:
        raise PatientError("Enter the member id as printed on the insurance card.")
    if patient.insurer is None:
        raise PatientError("A member id needs the insurer that issued it.")
    old = patient.member_id
    patient.member_id, patient.payer_patient_id = member_id, ""
    patient.save(update_fields=["member_id", "payer_patient_id"])
    access_record(user=user, patient=patient, action=AccessEvent.Action.CORRECT, detail=f"Member id {old} -> {member_id}")
    return patient


def patient_fetch_start(
    *, patient: HospitalPatient, connection: PayerConnection, user, clinician: Clinician | None = None,
    attest: bool = False, retry_of: SyncJob | None = None,
) -> SyncJob:
    """Start fetching the patient's history from the payer (a sync job run by Celery).

    With a current treatment attestation (given now with ``attest``, or at registration),
    the job sends the patient's demographics, coverage and the attestation to the payer's
    PDex 2.2 ``$provider-member-match`` first, so that a new patient with no claims at the
    organization is found; without one, only the payer's attribution list can find them.
    ``retry_of``: the fetch this one tries again (named in the access log).
    """
    from provider.services.sync import member_bundle_build, sync_job_start

    # A connection is one organization's SMART client: fetching through another
    # organization's would show this clinician patients the payer attributes to that one.
    if connection.organization_npi != patient.organization_npi:
        raise PatientError(f"{connection.display_name} is not a connection of this patient's organization.")
    if connection not in selectors.connections_for_fetch(patient=patient):
        raise PatientError(f"{connection.display_name} holds no member id for this patient.")
    with transaction.atomic():
        if attest:
            if clinician is None:
                raise PatientError("Only a clinician can attest a treatment relationship.")
            treatment_attestation_record(patient=patient, clinician=clinician, user=user)
        attestation = attestation_current(patient=patient)
        member_bundle = None
        if attestation is not None:
            member_bundle = member_bundle_build(
                submitted_id=f"{patient.organization_npi}-{patient.mrn}".replace(" ", "")[:64],
                family=patient.family, given=patient.given, birth_date=patient.birth_date.isoformat(),
                gender=patient.gender, member_id=patient.member_id, payer_name=connection.display_name,
                practitioner_npi=attestation.practitioner_npi, practitioner_name=attestation.practitioner_name,
                organization_npi=attestation.organization_npi, organization_name=attestation.organization_name,
                attested_at=attestation.attested_at, period_start=attestation.period_start.isoformat(),
            )
        job = sync_job_start(
            connection=connection, member_id=patient.member_id, requested_by=user, member_bundle=member_bundle
        )
        PatientSync.objects.create(patient=patient, job=job)
        detail = connection.display_name + (f" (again, after fetch {retry_of.pk})" if retry_of else "")
        access_record(user=user, patient=patient, action=AccessEvent.Action.FETCH, detail=detail)
    return job


def _patient_job_check(*, patient: HospitalPatient, job: SyncJob) -> None:
    if not PatientSync.objects.filter(patient=patient, job=job).exists():
        raise PatientError("That fetch is not one of this patient's.")


def patient_fetch_cancel(*, patient: HospitalPatient, job: SyncJob, user) -> SyncJob:
    """Cancel a fetch of the patient's history, at the payer too, and record who cancelled it.

    ``sync_job_cancel`` stops the job's steps and sends DELETE on the payer's status URL
    (Bulk Data req 119) once the request had reached the payer. A fetch that has ended
    already is left as it is; the attempt is recorded all the same.
    """
    from provider.services.sync import TERMINAL, sync_job_cancel

    _patient_job_check(patient=patient, job=job)
    job.refresh_from_db()
    running = job.status not in TERMINAL
    job = sync_job_cancel(job=job)
    outcome = "cancelled" if running and job.status == SyncJob.Status.CANCELLED else f"had ended ({job.get_status_display()})"
    access_record(user=user, patient=patient, action=AccessEvent.Action.CANCEL_FETCH,
                  detail=f"{job.connection.display_name}, fetch {job.pk}: {outcome}")
    return job


def patient_fetch_retry(
    *, patient: HospitalPatient, job: SyncJob, user, clinician: Clinician | None = None, attest: bool = False
) -> SyncJob:
    """Fetch the patient's history again through the connection ``job`` used: cancel ``job``
    first while it still runs (a stuck or slow fetch), then start a new one under the same
    rules as any fetch (``patient_fetch_start``)."""
    from provider.services.sync import TERMINAL

    _patient_job_check(patient=patient, job=job)
    job.refresh_from_db()
    if job.status not in TERMINAL:
        patient_fetch_cancel(patient=patient, job=job, user=user)
    return patient_fetch_start(patient=patient, connection=job.connection, user=user, clinician=clinician,
                               attest=attest, retry_of=job)


def patient_sync_link(*, patient: HospitalPatient, job: SyncJob, user=None) -> HospitalPatient:
    """Remember the payer's Patient id once a fetch for the patient completed, so the
    patient page can read the local store by it, and check (and record) that the payer's
    record is this patient's (emr/linking.py)."""
    if job.status != SyncJob.Status.COMPLETED:
        return patient
    payer_patient_id = selectors.payer_patient_find(patient=patient, job=job)
    if payer_patient_id and payer_patient_id != patient.payer_patient_id:
        patient.payer_patient_id = payer_patient_id
        patient.save(update_fields=["payer_patient_id"])
    if payer_patient_id:
        linking.link_decide(patient=patient, connection=job.connection, payer_patient_id=payer_patient_id, user=user)
    return patient
