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
    # The subscriber's id on the policy (Coverage.subscriberId); a dependent shares the
    # subscriber's. Empty: the member is the subscriber and it is ``member_id``.
    subscriber_id = models.CharField(max_length=40, blank=True, db_index=True)
    # Enrollment: the member is covered while today is in [coverage_start, coverage_end];
    # empty bounds are open. Ended coverage: not matched, not attributed, not exported.
    coverage_start = models.DateField(null=True, blank=True)
    coverage_end = models.DateField(null=True, blank=True)
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
    # NCPDP D.0 420-DK Dispense As Written (DAW) code, 403-D3 fill number (0 = original
    # dispensing) and 415-DF number of refills authorized.
    daw_code = models.CharField(max_length=1, blank=True, default="")
    refill_number = models.PositiveIntegerField(null=True, blank=True)
    refills_authorized = models.PositiveIntegerField(null=True, blank=True)
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
    # Units the decision approved (empty: none decided yet) and units used to date, as the
    # UM platform tracks them (PDex Prior Authorization: "units and services approved and
    # those used to date").
    units_approved = models.PositiveIntegerField(null=True, blank=True)
    units_used = models.PositiveIntegerField(default=0)
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
        # PDex 2.2 $provider-member-match: an accepted treatment attestation. Visible only
        # while a live TreatmentRelationship backs it (payer/services/access.py).
        ATTESTATION = "attestation", "Treatment attestation"

    group = models.ForeignKey(AttributionGroup, on_delete=models.CASCADE, related_name="members")
    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="attributions")
    start = models.DateField()
    end = models.DateField(null=True, blank=True)
    source = models.CharField(max_length=12, choices=Source.choices)
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
    0008_notices_audit) refuse UPDATE and DELETE except the logged retention purge.
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
    # Group/{id}/$davinci-data-export of a MatchedMembers Group from $provider-member-match.
    match_group = models.ForeignKey("MemberMatchGroup", on_delete=models.CASCADE, null=True, blank=True,
                                    related_name="export_jobs")
    operation = models.CharField(max_length=40, default="export",
                                 help_text="export, davinci-data-export or provider-member-match")
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


class TreatmentRelationship(models.Model):
    """A member's treatment relationship with a practitioner of a provider organization.

    The payer's long-lived Member-Provider Treatment Relationship List (PDex 2.2
    ``pdex-treatment-relationship``, §pdex-248..250), recorded from an accepted Provider
    Treatment Attestation of ``$provider-member-match``. Live while not revoked and before
    ``expires_at``; staff revoke it in the admin.
    """

    class RelationshipType(models.TextChoices):
        # PDex CodeSystem treatment-relationship-type (``past`` is never accepted).
        ACTIVE = "active", "Active"
        PROSPECTIVE = "prospective", "Prospective"

    member = models.ForeignKey(Member, on_delete=models.PROTECT, related_name="treatment_relationships")
    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="treatment_relationships")
    practitioner = models.ForeignKey(ProviderPractitioner, on_delete=models.PROTECT, related_name="treatment_relationships")
    relationship_type = models.CharField(max_length=12, choices=RelationshipType.choices)
    period_start = models.DateField()
    period_end = models.DateField(null=True, blank=True)
    attested_at = models.DateTimeField(help_text="Consent.dateTime of the attestation.")
    client_id = models.CharField(max_length=64, help_text="The SMART client that submitted the attestation.")
    match_job_id = models.CharField(max_length=64, blank=True, help_text="The $provider-member-match job.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    expires_at = models.DateTimeField(db_index=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.CharField(max_length=150, blank=True)
    revoke_reason = models.CharField(max_length=300, blank=True)

    class Meta:
        constraints = [
            # One live row per (member, organization, practitioner); a new attestation extends it.
            models.UniqueConstraint(fields=["member", "organization", "practitioner"],
                                    condition=Q(revoked_at__isnull=True), name="treatment_relationship_live_unique"),
        ]
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.member} treated by {self.practitioner} ({self.organization.name})"


class MemberMatchGroup(models.Model):
    """A result Group of one ``$provider-member-match`` job, owned by the requesting client.

    PDex 2.2 §pdex-259/260/264: the MatchedMembers Group id is the input of the client's
    ``$davinci-data-export``; it is short-lived (``PA_MEMBER_MATCH_GROUP_DAYS``).
    """

    class Kind(models.TextChoices):
        MATCHED = "matched", "MatchedMembers"
        NON_MATCHED = "nonmatched", "NonMatchedMembers"
        CONSENT_CONSTRAINED = "consentconstrained", "ConsentConstrainedMembers"

    fhir_id = models.CharField(max_length=64, unique=True)
    # Outlives its job: the job's status and files expire after PA_EXPORT_EXPIRY_HOURS,
    # the Group after PA_MEMBER_MATCH_GROUP_DAYS (export_purge deletes both).
    job = models.ForeignKey("ExportJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="match_groups")
    client = models.ForeignKey(SmartClient, on_delete=models.CASCADE, related_name="match_groups")
    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="match_groups")
    kind = models.CharField(max_length=20, choices=Kind.choices)
    members = models.ManyToManyField(Member, blank=True, related_name="match_groups")
    resource = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField(db_index=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "kind"], name="match_group_job_kind_unique")]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.fhir_id}"


class MemberMatchDecision(models.Model):
    """How one MemberBundle of a ``$provider-member-match`` was decided, for audit.

    Holds a keyed digest of the submitted inputs, never the demographics themselves.
    """

    class Outcome(models.TextChoices):
        MATCHED = "matched", "Matched"
        NON_MATCHED = "nonmatched", "Not matched"
        CONSENT_CONSTRAINED = "consentconstrained", "Matched, opted out"

    # The decision is kept for audit after its job is purged; ``job_ref`` names it then.
    job = models.ForeignKey("ExportJob", on_delete=models.SET_NULL, null=True, blank=True, related_name="match_decisions")
    job_ref = models.CharField(max_length=64, db_index=True, help_text="ExportJob.job_id of the match job.")
    sequence = models.PositiveIntegerField(help_text="Position of the MemberBundle in the request.")
    organization = models.ForeignKey(ProviderOrganization, on_delete=models.PROTECT, related_name="match_decisions")
    client_id = models.CharField(max_length=64)
    inputs_digest = models.CharField(max_length=64, help_text="HMAC-SHA256 of the normalized inputs.")
    candidates = models.JSONField(default=list, blank=True, help_text="Member ids that shared an identifier.")
    member = models.ForeignKey(Member, on_delete=models.PROTECT, null=True, blank=True, related_name="match_decisions")
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    rule = models.CharField(max_length=60, help_text="The rule that decided.")
    reported_as = models.CharField(max_length=20, choices=Outcome.choices,
                                   help_text="The bucket the requester saw (opt-outs suppressed into not matched).")
    treatment_relationship = models.ForeignKey(TreatmentRelationship, on_delete=models.SET_NULL, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job_ref", "sequence"], name="match_decision_job_seq_unique")]
        ordering = ["-created_at", "job", "sequence"]

    def __str__(self) -> str:
        return f"{self.job_ref} #{self.sequence}: {self.outcome} ({self.rule})"


class EobProjection(models.Model):
    """The ExplanationOfBenefit of one claim or prior authorization, as payer/mapping.py maps
    it, kept so that exports stream EOBs with the same COPY path as clinical resources.

    Brought up to date by ``payer.services.eob_projection.eob_projection_refresh``: a row is
    stale when its source's ``updated_at`` differs from ``source_updated_at``; a source that
    is gone leaves a tombstone (``deleted_at`` set, ``resource`` null) so that exports with
    ``_since`` list the deletion (Bulk Data 2.0 ``deleted``).
    """

    class Kind(models.TextChoices):
        CLAIM = "claim", "Claim"
        PRIOR_AUTHORIZATION = "pa", "Prior authorization"

    kind = models.CharField(max_length=5, choices=Kind.choices)
    source_pk = models.BigIntegerField()
    resource_id = models.CharField(max_length=64, unique=True)
    member = models.ForeignKey(Member, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    patient_id = models.CharField(max_length=64)
    # The source's updated_at (= meta.lastUpdated), and the first date of service (claims)
    # or the date requested (prior authorizations) for the 2016-01-01 floor.
    source_updated_at = models.DateTimeField()
    service_date = models.DateField()
    resource = models.JSONField(null=True)
    deleted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "source_pk"], name="eob_projection_source_unique")]
        indexes = [models.Index(fields=["member", "source_updated_at"], name="eob_projection_member_idx")]

    def __str__(self) -> str:
        return f"ExplanationOfBenefit/{self.resource_id}"
