"""The hospital's EMR: its clinicians, its registered patients, and who looked at what."""

from datetime import date

from django.conf import settings
from django.db import models

from provider.models import PayerConnection, SyncJob


class Clinician(models.Model):
    """A user who works for one provider organization and sees only its patients."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="clinician")
    display_name = models.CharField(max_length=200, help_text="e.g. Dr. James Smith")
    organization_name = models.CharField(max_length=200)
    organization_npi = models.CharField(max_length=10, db_index=True, help_text="The hospital's NPI.")
    # The clinician's own (individual) NPI: a treatment attestation names the practitioner
    # by it (PDex Provider Treatment Attestation); without one the clinician cannot attest.
    npi = models.CharField("NPI", max_length=10, blank=True, default="")

    def __str__(self) -> str:
        return f"{self.display_name} ({self.organization_name})"


class HospitalPatient(models.Model):
    """A patient as the hospital registered them: demographics and the insurer's member id."""

    class Gender(models.TextChoices):
        FEMALE = "female", "Female"
        MALE = "male", "Male"
        OTHER = "other", "Other"
        UNKNOWN = "unknown", "Unknown"

    organization_npi = models.CharField(max_length=10, db_index=True)
    mrn = models.CharField("MRN", max_length=40)
    family = models.CharField(max_length=100)
    given = models.CharField(max_length=100)
    birth_date = models.DateField()
    gender = models.CharField(max_length=10, choices=Gender.choices, default=Gender.UNKNOWN)
    insurer = models.ForeignKey(PayerConnection, null=True, blank=True, on_delete=models.SET_NULL)
    member_id = models.CharField(max_length=64, blank=True, db_index=True)
    # The payer's FHIR Patient id, learnt from the first sync that returned data; the
    # local store keys every resource by it.
    payer_patient_id = models.CharField(max_length=64, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["family", "given"]
        constraints = [models.UniqueConstraint(fields=["organization_npi", "mrn"], name="emr_patient_org_mrn_unique")]

    def __str__(self) -> str:
        return f"{self.given} {self.family} ({self.mrn})"

    @property
    def name(self) -> str:
        return f"{self.given} {self.family}"

    @property
    def age(self) -> int:
        today = date.today()
        return today.year - self.birth_date.year - ((today.month, today.day) < (self.birth_date.month, self.birth_date.day))


class PatientSync(models.Model):
    """A sync job a clinician started for one of the hospital's patients."""

    patient = models.ForeignKey(HospitalPatient, on_delete=models.CASCADE, related_name="syncs")
    job = models.OneToOneField(SyncJob, on_delete=models.CASCADE, related_name="emr_sync")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"Fetch for {self.patient} on {self.created_at:%Y-%m-%d %H:%M} (sync job {self.job_id})"


class AccessEvent(models.Model):
    """A clinician's access to a patient's record: who, which patient, what, when."""

    class Action(models.TextChoices):
        VIEW = "view", "Viewed the record"
        VIEW_ENCOUNTER = "view_encounter", "Viewed an encounter"
        FETCH = "fetch", "Fetched history from a payer"
        CANCEL_FETCH = "cancel_fetch", "Cancelled a fetch from a payer"
        CREATE = "create", "Registered the patient"
        ATTEST = "attest", "Attested a treatment relationship"
        CORRECT = "correct_member_id", "Corrected the member id"
        PRINT = "print", "Printed part of the record"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    organization_npi = models.CharField(max_length=10)
    patient = models.ForeignKey(HospitalPatient, on_delete=models.CASCADE, related_name="access_events")
    action = models.CharField(max_length=20, choices=Action.choices)
    detail = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        who = self.user.get_username() if self.user_id else "a removed user"
        return f"{self.created_at:%Y-%m-%d %H:%M} {who}: {self.get_action_display().lower()} ({self.patient})"

class TreatmentAttestation(models.Model):
    """A clinician's explicit statement that the organization treats the patient: who, when.

    Sent to the payer as the PDex 2.2 Provider Treatment Attestation (a Consent) with the
    patient's demographics in ``$provider-member-match``; kept here as the hospital's record
    of what was attested, by whom and when.
    """

    patient = models.ForeignKey(HospitalPatient, on_delete=models.CASCADE, related_name="attestations")
    clinician = models.ForeignKey(Clinician, null=True, on_delete=models.SET_NULL, related_name="attestations")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL)
    practitioner_npi = models.CharField(max_length=10)
    practitioner_name = models.CharField(max_length=200)
    organization_npi = models.CharField(max_length=10)
    organization_name = models.CharField(max_length=200)
    # The words the clinician agreed to, as shown next to the checkbox.
    statement = models.CharField(max_length=500)
    period_start = models.DateField(help_text="Start of the treatment relationship attested.")
    attested_at = models.DateTimeField(db_index=True)

    class Meta:
        ordering = ["-attested_at"]

    def __str__(self) -> str:
        return f"{self.practitioner_name} for {self.patient} at {self.attested_at:%Y-%m-%d %H:%M}"


class LinkDecision(models.Model):
    """One check of a hospital patient against the payer's Patient record: who, when, what matched.

    The payer record's name, birth date and sex are compared with the hospital's; only a
    ``match`` lets the patient's page show that payer's data (emr/linking.py).
    """

    class Verdict(models.TextChoices):
        MATCH = "match", "Same person"
        MISMATCH = "mismatch", "Another person"
        UNVERIFIED = "unverified", "No payer Patient record to compare"

    patient = models.ForeignKey(HospitalPatient, on_delete=models.CASCADE, related_name="link_decisions")
    connection = models.ForeignKey(PayerConnection, on_delete=models.CASCADE, related_name="+")
    payer_patient_id = models.CharField(max_length=64)
    member_id = models.CharField(max_length=64, blank=True)
    verdict = models.CharField(max_length=12, choices=Verdict.choices)
    # None: not compared (the payer record or the hospital's has no value).
    name_matches = models.BooleanField(null=True)
    birth_date_matches = models.BooleanField(null=True)
    sex_matches = models.BooleanField(null=True)
    # A digest of the compared values (the hospital's and the payer's), so that one decision
    # is stored per distinct comparison and a change on either side is decided anew.
    inputs_digest = models.CharField(max_length=64)
    decided_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    decided_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-decided_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["patient", "connection", "payer_patient_id", "inputs_digest"], name="emr_link_decision_unique"
            )
        ]

    def __str__(self) -> str:
        return f"{self.patient} ~ Patient/{self.payer_patient_id}: {self.verdict}"
