"""The payer's systems of record and the records of who may see what.

- Clinical repository: FHIR R4 JSON with the columns search and export need.
- Claims system: relational claim headers, lines, diagnoses and prior authorizations,
  not FHIR; mapped to ExplanationOfBenefit on the way out (payer/mapping.py).
- Provider directory and network contracts.
- Members, attribution, opt-out, SMART clients and tokens, audit, export jobs.
"""

from django.db import models
from django.db.models import Q


class ProviderOrganization(models.Model):
    """A provider organization (hospital, clinic, practice) known to the payer by NPI."""

    npi = models.CharField(max_length=10, unique=True)
    name = models.CharField(max_length=200)
    # The FHIR Organization id of this organization in the clinical repository.
    fhir_id = models.CharField(max_length=64, unique=True)
    city = models.CharField(max_length=100, blank=True)
    state = models.CharField(max_length=2, blank=True)

    def __str__(self) -> str:
        return f"{self.name} (NPI {self.npi})"


class ProviderPractitioner(models.Model):
    """A clinician with an NPI and a NUCC taxonomy, practising for one organization."""

    npi = models.CharField(max_length=10, unique=True)
    family = models.CharField(max_length=100)
    given = models.CharField(max_length=100)
    taxonomy_code = models.CharField(max_length=10)
    taxonomy_display = models.CharField(max_length=200)
    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="practitioners")
    fhir_id = models.CharField(max_length=64, unique=True)

    def __str__(self) -> str:
        return f"Dr. {self.given} {self.family} (NPI {self.npi})"


class NetworkContract(models.Model):
    """A network contract: the organization is in network while today is in [start, end]."""

    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="contracts")
    contract_number = models.CharField(max_length=40, unique=True)
    start = models.DateField()
    end = models.DateField(null=True, blank=True, help_text="Empty: open-ended.")

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(end__isnull=True) | Q(end__gte=models.F("start")), name="contract_end_after_start")
        ]

    def __str__(self) -> str:
        return f"{self.contract_number} with {self.organization.name}"


class Member(models.Model):
    """A health plan member (the enrollment system), linked to its FHIR Patient."""

    member_id = models.CharField(max_length=40, unique=True)
    patient_id = models.CharField(max_length=64, unique=True, help_text="FHIR Patient id")
    family = models.CharField(max_length=100)
    given = models.CharField(max_length=100)
    birth_date = models.DateField()
    gender = models.CharField(max_length=10)
    # Where the Provider Access notice goes (42 CFR 422.121(a)(4)); empty: a printed letter.
    email = models.EmailField(blank=True)
    # Current opt-out state; the history is in OptOutEvent. Kept here so every access
    # check is one indexed column, not a scan of the history.
    opted_out = models.BooleanField(default=False, db_index=True)

    def __str__(self) -> str:
        return f"{self.given} {self.family} ({self.member_id})"


class ClinicalResource(models.Model):
    """One FHIR resource of the clinical repository, as JSON, with indexed columns."""

    resource_type = models.CharField(max_length=40)
    resource_id = models.CharField(max_length=64)
    version_id = models.PositiveIntegerField(default=1)
    last_updated = models.DateTimeField()
    # FHIR id of the Patient the resource is about (empty for shared resources such as
    # Practitioner, Organization, Location).
    patient_id = models.CharField(max_length=64, blank=True, default="")
    # The clinically relevant date (Encounter.period.start, Condition.onset, ...).
    date = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=40, blank=True, default="")
    resource = models.JSONField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["resource_type", "resource_id"], name="clinical_type_id_unique")]
        indexes = [
            models.Index(fields=["patient_id", "resource_type", "last_updated"], name="clinical_patient_type_idx"),
            models.Index(fields=["resource_type", "last_updated"], name="clinical_type_updated_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


class ResourceTombstone(models.Model):
    """A clinical resource that was deleted: Bulk Data 2.0 lists it under ``deleted``
    in exports whose ``_since`` precedes ``deleted_at`` (export.html, complete status)."""

    resource_type = models.CharField(max_length=40)
    resource_id = models.CharField(max_length=64)
    # FHIR id of the Patient the resource was about (its own id for a Patient; empty for
    # shared resources), so exports limit deletions to visible members.
    patient_id = models.CharField(max_length=64, blank=True, default="")
    deleted_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["patient_id", "resource_type", "deleted_at"], name="tombstone_patient_type_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id} deleted {self.deleted_at:%Y-%m-%d}"


class Claim(models.Model):
    """A claim header as the claims platform keeps it (not FHIR)."""

    class ClaimType(models.TextChoices):
        INSTITUTIONAL = "institutional", "Institutional"
        PROFESSIONAL = "professional", "Professional"
        PHARMACY = "pharmacy", "Pharmacy"

    class Status(models.TextChoices):
        PAID = "paid", "Paid"
        DENIED = "denied", "Denied"
        PENDED = "pended", "Pended"
        ADJUSTED = "adjusted", "Adjusted"

    claim_number = models.CharField(max_length=40, unique=True)
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="claims")
    claim_type = models.CharField(max_length=20, choices=ClaimType.choices)
    status = models.CharField(max_length=20, choices=Status.choices)
    billing_npi = models.CharField(max_length=10)
    rendering_npi = models.CharField(max_length=10, blank=True)
    facility_npi = models.CharField(max_length=10, blank=True)
    # Uniform bill type for institutional claims (e.g. 0111 inpatient, 0131 outpatient).
    type_of_bill = models.CharField(max_length=4, blank=True)
    service_start = models.DateField()
    service_end = models.DateField()
    received_date = models.DateField()
    processed_date = models.DateField(null=True, blank=True)
    # FHIR Encounter id in the clinical repository this claim bills for, when known.
    encounter_id = models.CharField(max_length=64, blank=True)
    # Pharmacy claims: the dispensed drug.
    ndc_code = models.CharField(max_length=11, blank=True)
    rxnorm_code = models.CharField(max_length=20, blank=True)
    drug_name = models.CharField(max_length=200, blank=True)
    days_supply = models.PositiveIntegerField(null=True, blank=True)
    total_charged = models.DecimalField(max_digits=12, decimal_places=2)
    total_paid = models.DecimalField(max_digits=12, decimal_places=2)
    member_liability = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    updated_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["member", "updated_at"], name="claim_member_updated_idx"),
            models.Index(fields=["rendering_npi", "service_end"], name="claim_rendering_idx"),
            models.Index(fields=["updated_at"], name="claim_updated_idx"),
        ]

    def __str__(self) -> str:
        return self.claim_number


class ClaimLine(models.Model):
    claim = models.ForeignKey(Claim, on_delete=models.CASCADE, related_name="lines")
    sequence = models.PositiveIntegerField()
    # CPT / HCPCS procedure code (professional and institutional lines).
    procedure_code = models.CharField(max_length=10, blank=True)
    procedure_system = models.CharField(max_length=10, blank=True, help_text="CPT or HCPCS")
    procedure_display = models.CharField(max_length=200, blank=True)
    revenue_code = models.CharField(max_length=4, blank=True)
    modifier = models.CharField(max_length=2, blank=True)
    place_of_service = models.CharField(max_length=2, blank=True)
    service_date = models.DateField()
    quantity = models.DecimalField(max_digits=8, decimal_places=2, default=1)
    charged_amount = models.DecimalField(max_digits=12, decimal_places=2)
    allowed_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    paid_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)
    copay_amount = models.DecimalField(max_digits=12, decimal_places=2, default=0)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["claim", "sequence"], name="claim_line_seq_unique")]
        ordering = ["claim", "sequence"]

    def __str__(self) -> str:
        return f"{self.claim.claim_number} line {self.sequence}"


class ClaimDiagnosis(models.Model):
    class Kind(models.TextChoices):
        PRINCIPAL = "principal", "Principal"
        ADMITTING = "admitting", "Admitting"
        OTHER = "other", "Other"

    claim = models.ForeignKey(Claim, on_delete=models.CASCADE, related_name="diagnoses")
    sequence = models.PositiveIntegerField()
    icd10_code = models.CharField(max_length=8)
    display = models.CharField(max_length=200, blank=True)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.OTHER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["claim", "sequence"], name="claim_dx_seq_unique")]
        ordering = ["claim", "sequence"]

    def __str__(self) -> str:
        return f"{self.claim.claim_number} diagnosis {self.sequence}: {self.icd10_code}"


class PriorAuthorization(models.Model):
    """A prior authorization request and its decision, as the UM platform keeps it."""

    class Decision(models.TextChoices):
        PENDING = "pending", "Pending"
        APPROVED = "approved", "Approved"
        PARTIAL = "partial", "Partially approved"
        DENIED = "denied", "Denied"
        CANCELLED = "cancelled", "Cancelled"

    auth_number = models.CharField(max_length=40, unique=True)
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="prior_authorizations")
    requesting_npi = models.CharField(max_length=10)
    servicing_npi = models.CharField(max_length=10, blank=True)
    service_code = models.CharField(max_length=10)
    service_system = models.CharField(max_length=10, help_text="CPT or HCPCS")
    service_display = models.CharField(max_length=200)
    diagnosis_code = models.CharField(max_length=8, blank=True, help_text="ICD-10-CM")
    quantity = models.PositiveIntegerField(default=1)
    requested_date = models.DateField()
    decision = models.CharField(max_length=10, choices=Decision.choices, default=Decision.PENDING)
    decision_date = models.DateField(null=True, blank=True)
    decision_reason = models.CharField(max_length=200, blank=True)
    valid_start = models.DateField(null=True, blank=True)
    valid_end = models.DateField(null=True, blank=True)
    updated_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["member", "updated_at"], name="pa_member_updated_idx")]

    def __str__(self) -> str:
        return self.auth_number


class AttributionGroup(models.Model):
    """The attribution list of one provider organization (PDex PDexProviderGroup / ATR Group)."""

    organization = models.OneToOneField(ProviderOrganization, on_delete=models.PROTECT, related_name="attribution_group")
    # FHIR Group id; opaque so it does not leak the organization's database id.
    fhir_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name


class AttributionMember(models.Model):
    """A member on an attribution list for a period, derived from claims or added by staff."""

    class Source(models.TextChoices):
        CLAIMS = "claims", "Derived from claims"
        MANUAL = "manual", "Added by payer staff"

    group = models.ForeignKey(AttributionGroup, on_delete=models.CASCADE, related_name="members")
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="attributions")
    start = models.DateField()
    end = models.DateField(null=True, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices)
    reason = models.CharField(max_length=300, blank=True)
    changed_by = models.CharField(max_length=150, blank=True)
    # PDex STU 2.1: when the member's data was last sent to this provider by $davinci-data-export.
    last_transmitted = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["group", "member"], name="attribution_group_member_unique")]

    def __str__(self) -> str:
        return f"{self.member} on {self.group}"


class OptOutEvent(models.Model):
    """One change of a member's Provider Access opt-out choice. Never updated, only added."""

    class Channel(models.TextChoices):
        WEB = "web", "Member web page"
        PHONE = "phone", "Phone call to member services"
        MAIL = "mail", "Letter"
        ADMIN = "admin", "Payer staff"

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="opt_out_events")
    opted_out = models.BooleanField()
    channel = models.CharField(max_length=10, choices=Channel.choices)
    changed_by = models.CharField(max_length=150, help_text="Staff user name, or 'member'.")
    note = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        choice = "opted out" if self.opted_out else "opted in"
        return f"{self.member} {choice} by {self.get_channel_display().lower()} on {self.created_at:%Y-%m-%d %H:%M}"


class SmartClient(models.Model):
    """A provider system registered for SMART Backend Services (private_key_jwt)."""

    client_id = models.CharField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="clients")
    jwks_url = models.URLField("JWKS URL", blank=True, help_text="Where the provider system serves its public keys (https).")
    jwks = models.JSONField(
        "Public keys (JWKS)", null=True, blank=True, help_text="Public keys as a JWKS, when not served at the JWKS URL."
    )
    scopes = models.CharField(
        max_length=1000, default="system/*.read", help_text="Space-separated scopes this client may be granted."
    )
    active = models.BooleanField(default=True)
    max_concurrent_exports = models.PositiveIntegerField(default=5)
    created_at = models.DateTimeField(auto_now_add=True)

    # DRF's request.user is the authenticated client (see payer/authentication.py).
    is_authenticated = True

    class Meta:
        verbose_name = "provider system"
        verbose_name_plural = "provider systems"
        constraints = [
            models.CheckConstraint(
                condition=~Q(jwks_url="") | Q(jwks__isnull=False), name="client_has_keys"
            )
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.client_id})"


class UsedAssertion(models.Model):
    """A client assertion ``jti`` seen before its expiry; the constraint refuses replays."""

    client = models.ForeignKey(SmartClient, on_delete=models.CASCADE)
    jti = models.CharField(max_length=255)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["client", "jti"], name="assertion_jti_unique")]

    def __str__(self) -> str:
        return f"Assertion {self.jti} of {self.client.client_id}"


class AccessToken(models.Model):
    """An issued bearer token, stored as a SHA-256 hash only."""

    token_hash = models.CharField(max_length=64, unique=True)
    client = models.ForeignKey(SmartClient, on_delete=models.CASCADE, related_name="tokens")
    scopes = models.CharField(max_length=1000)
    issued_at = models.DateTimeField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"Token of {self.client.client_id} until {self.expires_at:%Y-%m-%d %H:%M}"


class AuditEvent(models.Model):
    """Who accessed or tried to access what, and with which outcome. Never holds tokens or keys.

    Append-only: the admin offers no change or delete, and database triggers (migration
    0005_notices_audit) refuse UPDATE and DELETE except the logged retention purge.
    """

    class Outcome(models.TextChoices):
        SUCCESS = "success", "Success"
        DENIED = "denied", "Denied"
        ERROR = "error", "Error"

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=40, help_text="token, read, search, export, status, download, ...")
    outcome = models.CharField(max_length=10, choices=Outcome.choices)
    client_id = models.CharField(max_length=64, blank=True, db_index=True)
    organization_npi = models.CharField(max_length=10, blank=True, db_index=True)
    patient_ids = models.JSONField(default=list, blank=True)
    resource_types = models.JSONField(default=list, blank=True)
    # The members the event concerns, resolved from patient_ids when it is recorded, so
    # "whose data went where" is one indexed join (AuditSubject), not a scan of JSON.
    members = models.ManyToManyField(Member, through="AuditSubject", related_name="audit_events", blank=True)
    request_path = models.CharField(max_length=500, blank=True)
    status_code = models.PositiveIntegerField(null=True, blank=True)
    detail = models.CharField(max_length=500, blank=True)
    remote_addr = models.GenericIPAddressField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "audit event"

    def __str__(self) -> str:
        who = self.client_id or "anonymous"
        return f"{self.created_at:%Y-%m-%d %H:%M:%S} {self.action} by {who}: {self.get_outcome_display().lower()}"


class AuditSubject(models.Model):
    """One member an audit event concerns."""

    event = models.ForeignKey(AuditEvent, on_delete=models.CASCADE, related_name="subjects")
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="audit_subjects")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["event", "member"], name="audit_subject_unique")]
        indexes = [models.Index(fields=["member", "event"], name="audit_subject_member_idx")]

    def __str__(self) -> str:
        return f"{self.member} in {self.event}"


class AuditPurge(models.Model):
    """One run of the audit retention purge: the only path by which audit rows are deleted.

    The database triggers allow a DELETE of an audit row only when it is older than the
    latest purge cutoff recorded here, so a purge is always logged first.
    """

    cutoff = models.DateTimeField(help_text="Audit events created before this instant were deleted.")
    retention_days = models.PositiveIntegerField()
    deleted = models.PositiveIntegerField(default=0)
    run_by = models.CharField(max_length=150)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = "audit retention purge"

    def __str__(self) -> str:
        return f"Purge of audit events before {self.cutoff:%Y-%m-%d} ({self.deleted} deleted)"


class Notice(models.Model):
    """One Provider Access notice sent (or attempted) to a member (42 CFR 422.121(a)(4)).

    ``period`` names the occasion, so the UniqueConstraint makes sending safe to run twice:
    ``initial`` (once, before any data is released), the coverage start date for
    ``coverage_start``, the year for ``annual``. Append-only like the audit trail.
    """

    class Kind(models.TextChoices):
        INITIAL = "initial", "Before the first release of data"
        COVERAGE_START = "coverage_start", "Within 7 days of a coverage start"
        ANNUAL = "annual", "Yearly"

    class Channel(models.TextChoices):
        EMAIL = "email", "Email"
        LETTER = "letter", "Printed letter"

    class Outcome(models.TextChoices):
        # Claimed by a sending run (the UniqueConstraint decides which), not yet delivered;
        # the triggers allow one change of a pending row, to its outcome, and no other.
        PENDING = "pending", "Being sent"
        SENT = "sent", "Sent"
        QUEUED_FOR_PRINT = "queued_for_print", "Letter ready to print and mail"
        FAILED = "failed", "Failed"

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="notices")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    period = models.CharField(max_length=20, help_text="initial, the coverage start date, or the year.")
    channel = models.CharField(max_length=10, choices=Channel.choices)
    template_version = models.CharField(max_length=20)
    sent_at = models.DateTimeField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    detail = models.CharField(max_length=300, blank=True)
    # The printable letter (members without an email address), under the default storage.
    letter_path = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["-sent_at", "-id"]
        # A failed attempt does not count, so the next run may try the same occasion again.
        constraints = [models.UniqueConstraint(fields=["member", "kind", "period"], condition=~Q(outcome="failed"),
                                               name="notice_member_kind_period_unique")]
        indexes = [models.Index(fields=["member", "outcome"], name="notice_member_outcome_idx")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} notice to {self.member} by {self.get_channel_display().lower()} ({self.get_outcome_display().lower()})"


class ExportJob(models.Model):
    """One Bulk Data ``$export`` or PDex ``$davinci-data-export`` request of a client.

    The job is split into ``ExportWorkUnit`` rows when it is created, before any worker
    starts, so a lost message or a killed worker never loses track of what is left.
    """

    class Status(models.TextChoices):
        IN_PROGRESS = "in_progress", "In progress"
        COMPLETED = "completed", "Completed"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled by the client"

    class Level(models.TextChoices):
        SYSTEM = "system", "System"
        PATIENT = "patient", "Patient"
        GROUP = "group", "Group"

    # Opaque id in the status URL; never the database id.
    job_id = models.CharField(max_length=64, unique=True)
    client = models.ForeignKey(SmartClient, on_delete=models.CASCADE, related_name="export_jobs")
    level = models.CharField(max_length=10, choices=Level.choices)
    group = models.ForeignKey(AttributionGroup, on_delete=models.CASCADE, null=True, blank=True)
    operation = models.CharField(max_length=40, default="export", help_text="export or davinci-data-export")
    # Bulk Data manifest ``request``: the kick-off URL (without parameters for POST).
    request_url = models.TextField()
    params = models.JSONField(default=dict, help_text="Normalized kick-off parameters.")
    scopes = models.CharField(max_length=1000)
    # OperationOutcome issues for what was ignored under ``Prefer: handling=lenient``.
    issues = models.JSONField(default=list, blank=True)
    # Bulk Data: the instant the data was read; recorded before reading, and the upper
    # bound of every query of the job, so that it can be the client's next ``_since``.
    transaction_time = models.DateTimeField()
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.IN_PROGRESS, db_index=True)
    error = models.CharField(max_length=500, blank=True)
    # A failed job whose failure may pass (storage or database out of reach): its status
    # answers with the OperationOutcome issue code ``transient`` (Bulk Data export.html).
    error_transient = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    # Status polling accounting (Bulk Data: a client polling too often may get 429).
    last_polled_at = models.DateTimeField(null=True, blank=True)
    next_poll_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"Export {self.job_id} ({self.status})"


class ExportWorkUnit(models.Model):
    """One resource type for one batch of patients of an ``ExportJob``.

    A unit writes its own deterministic file parts and is done when its ``ExportFile``
    rows are committed. ``lease_expires_at`` bounds how long a unit may stay queued or
    running before the reconciler queues it again.
    """

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        RUNNING = "running", "Running"
        DONE = "done", "Done"
        FAILED = "failed", "Failed"

    job = models.ForeignKey(ExportJob, on_delete=models.CASCADE, related_name="units")
    resource_type = models.CharField(max_length=40)
    sequence = models.PositiveIntegerField()
    # FHIR Patient ids of the batch (empty for shared resources such as Practitioner).
    patient_ids = models.JSONField(default=list, blank=True)
    # Member primary keys of the same batch (the claims system keys EOBs by member).
    member_pks = models.JSONField(default=list, blank=True)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING, db_index=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    count = models.PositiveIntegerField(default=0)
    # The patients whose data this unit actually wrote (visible when it ran).
    exported_patient_ids = models.JSONField(default=list, blank=True)
    error = models.CharField(max_length=500, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["job", "resource_type", "sequence"], name="export_unit_unique")
        ]

    def __str__(self) -> str:
        return f"{self.job.job_id} {self.resource_type} #{self.sequence} ({self.status})"
