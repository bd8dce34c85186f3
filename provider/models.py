"""The hospital's side: connections to payers, sync jobs, and the local FHIR store."""

from datetime import timedelta

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models


class PayerConnection(models.Model):
    """How this hospital reaches one payer's Bulk Data server (SMART Backend Services)."""

    class ValidationLevel(models.TextChoices):
        FULL = "full", "Full (fhir.resources R4B models)"
        STRUCTURE = "structure", "Structure only (trusted payer)"

    name = models.SlugField(max_length=50, unique=True)
    # The provider organization whose SMART client this is: the payer answers a client with
    # that organization's attributed members only, so only that organization's users may
    # fetch through it. Empty: no clinician may use it (staff and the bulk_fetch command only).
    organization_npi = models.CharField(
        "organization NPI", max_length=10, blank=True, default="", db_index=True,
        validators=[RegexValidator(r"^[0-9]{10}$", "An NPI is 10 digits.")],
        help_text="The NPI of the organization this client speaks for (e.g. 1345678902 for Grace Hospital).",
    )
    display_name = models.CharField(max_length=200, help_text="Shown to clinicians, e.g. UnitedCare Health.")
    fhir_base_url = models.URLField()
    token_url = models.URLField(blank=True, help_text="Empty: discovered from .well-known/smart-configuration.")
    # Any length: SMART's reference server issues 225- and 788-character client ids.
    client_id = models.TextField()
    # The private key stays out of the database: a PEM file under var/keys/ (or a
    # mounted secret); only its path and key id are stored.
    private_key_path = models.CharField(max_length=500)
    key_id = models.CharField(max_length=200)
    algorithm = models.CharField(max_length=5, choices=[("RS384", "RS384"), ("ES384", "ES384")], default="RS384")
    scopes = models.CharField(max_length=1000, default="system/*.read")
    validation_level = models.CharField(max_length=10, choices=ValidationLevel.choices, default=ValidationLevel.FULL)
    # Where the client may go besides the FHIR base's own origin (provider/bulk_client.py
    # OriginPolicy): "scheme://host[:port]" per line. File origins get no bearer token
    # (e.g. a pre-signed S3 bucket), token origins do.
    file_origins = models.TextField(
        blank=True, default="",
        help_text="Other origins output files may come from, without the access token (one per line, e.g. https://bucket.s3.amazonaws.com).",
    )
    token_origins = models.TextField(
        blank=True, default="",
        help_text="Other origins that may receive the access token (one per line). Leave empty unless the payer documents one.",
    )
    # Limits, so that a broken or hostile payer cannot make a job run forever or fill the disk.
    poll_deadline = models.DurationField(
        default=timedelta(hours=24), help_text="A job still not done this long after its kick-off fails."
    )
    max_file_bytes = models.PositiveBigIntegerField(
        default=4 * 1024**3, help_text="Decompressed bytes per output file."
    )
    max_line_bytes = models.PositiveIntegerField(
        default=16 * 1024**2, help_text="Bytes per NDJSON line (one resource)."
    )
    max_manifest_files = models.PositiveIntegerField(default=10_000, help_text="Files per manifest (all pages).")
    max_job_resources = models.PositiveBigIntegerField(default=50_000_000, help_text="Resources per job.")
    # Panel sync: keep the organization's whole attribution Group up to date with a
    # scheduled _since fetch (PDex #provider-delta when the payer declares it).
    panel_group_id = models.CharField(
        max_length=64, blank=True, default="", help_text="The attribution Group to keep up to date; empty: no panel sync."
    )
    panel_sync_hours = models.PositiveIntegerField(
        default=24, validators=[MinValueValidator(1)], help_text="Hours between panel syncs (24: nightly)."
    )
    panel_sync_hour = models.PositiveSmallIntegerField(
        default=2, validators=[MaxValueValidator(23)], help_text="UTC hour the schedule is anchored on (2: 02:00 UTC)."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.display_name


class SyncJob(models.Model):
    """One fetch from a payer: kick-off, polling, downloads and ingest, driven by Celery tasks."""

    class Level(models.TextChoices):
        GROUP = "group", "Group"
        PATIENT = "patient", "Patient"
        SYSTEM = "system", "System"

    class Status(models.TextChoices):
        PENDING = "pending", "Waiting to start"
        KICKED_OFF = "kicked_off", "Waiting on the payer"
        DOWNLOADING = "downloading", "Downloading"
        INGESTING = "ingesting", "Ingesting"
        COMPLETED = "completed", "Completed"
        NO_DATA = "no_data", "The payer returned no data for this patient"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    class Failure(models.TextChoices):
        """What went wrong, for a failed job: the EMR says it in words a clinician understands."""

        UNREACHABLE = "unreachable", "The payer could not be reached or kept answering busy"
        CREDENTIALS = "credentials", "The payer refused the hospital's credentials or access"
        PAYER_ERROR = "payer_error", "The payer reported an error"
        TIMEOUT = "timeout", "The payer did not finish in time"
        MALFORMED = "malformed", "The payer's answer was malformed or past a limit"
        INCOMPLETE = "incomplete", "Files could not be downloaded in full"
        HOSPITAL = "hospital", "The hospital's own system failed"

    connection = models.ForeignKey(PayerConnection, on_delete=models.PROTECT, related_name="sync_jobs")
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL)
    level = models.CharField(max_length=10, choices=Level.choices)
    # Same scope, same key: the next fetch of this scope sends _since = the last transactionTime.
    scope_key = models.CharField(max_length=300, db_index=True)
    group_id = models.CharField(max_length=64, blank=True)
    member_id = models.CharField(max_length=64, blank=True, help_text="The payer's member id, when fetching one patient.")
    patient_ids = models.JSONField(default=list, blank=True)
    types = models.JSONField(default=list, blank=True)
    type_filters = models.JSONField(default=list, blank=True)
    since = models.DateTimeField(null=True, blank=True)
    export_type = models.CharField(max_length=100, blank=True)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING, db_index=True)
    status_url = models.URLField(max_length=1000, blank=True)
    progress = models.CharField(max_length=200, blank=True, help_text="The payer's X-Progress, or our own step.")
    # The payer's own X-Progress of the last status answer (Bulk Data req 135: the client
    # MAY show it), kept apart from ``progress`` so that the EMR never passes our words off
    # as the payer's.
    payer_progress = models.CharField(max_length=200, blank=True)
    poll_count = models.PositiveIntegerField(default=0)
    # PDex 2.2 $provider-member-match, when the job finds its member that way: "request" (the
    # MemberBundle parameters sent), "status_url", then "outcome" (matched, nonmatched,
    # consentconstrained, refused), "group_id" (the MatchedMembers Group) and "message".
    member_match = models.JSONField(default=dict, blank=True)
    # "$export", or PDex "$davinci-data-export" when the payer declares it.
    operation = models.CharField(max_length=40, blank=True, default="$export")
    # Consecutive 429/5xx/network failures; bounded, reset by any good answer.
    transient_errors = models.PositiveIntegerField(default=0)
    # The earliest time the next step may run: a duplicate (redelivered) poll task that
    # comes earlier sees it and stops, so one job never has two poll chains.
    next_step_at = models.DateTimeField(null=True, blank=True)
    manifest = models.JSONField(null=True, blank=True)
    transaction_time = models.DateTimeField(null=True, blank=True)
    # When the client sent DELETE on the status URL (cancelled, failed after kick-off, or
    # every file downloaded): once only.
    status_url_deleted_at = models.DateTimeField(null=True, blank=True)
    counts = models.JSONField(default=dict, blank=True, help_text="Resources ingested per type.")
    # Resources removed because the manifest's `deleted` files listed them.
    deleted_count = models.PositiveIntegerField(default=0)
    # A scheduled panel sync of the connection's attribution Group (not a clinician's fetch).
    panel = models.BooleanField(default=False, db_index=True)
    # When polling gives up (kick-off + the connection's poll_deadline).
    deadline_at = models.DateTimeField(null=True, blank=True)
    # When the current run of transient failures began; bounded by PA_SYNC_TRANSIENT_BUDGET_SECONDS.
    transient_since = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    failure = models.CharField(max_length=12, choices=Failure.choices, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    kicked_off_at = models.DateTimeField(null=True, blank=True)
    manifest_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]


class SyncFile(models.Model):
    """One file of a manifest: downloaded (resumably) then ingested exactly once."""

    class Kind(models.TextChoices):
        OUTPUT = "output", "Output"
        ERROR = "error", "Error"
        DELETED = "deleted", "Deleted"

    class Status(models.TextChoices):
        PENDING = "pending", "Pending"
        DOWNLOADED = "downloaded", "Downloaded"
        INGESTED = "ingested", "Ingested"
        FAILED = "failed", "Failed"

    job = models.ForeignKey(SyncJob, on_delete=models.CASCADE, related_name="files")
    kind = models.CharField(max_length=10, choices=Kind.choices)
    resource_type = models.CharField(max_length=40)
    url = models.URLField(max_length=1000)
    expected_count = models.PositiveIntegerField(null=True, blank=True)
    local_path = models.CharField(max_length=500, blank=True)
    bytes_downloaded = models.PositiveBigIntegerField(default=0)
    line_count = models.PositiveIntegerField(default=0)
    # Output files: resources stored (new, or a newer version); unchanged: valid resources
    # the store already held in that or a later version.
    ingested_count = models.PositiveIntegerField(default=0)
    unchanged_count = models.PositiveIntegerField(default=0)
    error_count = models.PositiveIntegerField(default=0)
    status = models.CharField(max_length=12, choices=Status.choices, default=Status.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    # A task working on the file holds it until then (renewed by a heartbeat while it
    # runs); a duplicate task finds it taken, and a dead worker's claim soon runs out.
    claimed_until = models.DateTimeField(null=True, blank=True)
    # A big output file is ingested in chunks of whole lines, each its own SyncFile with
    # the parent's local file and a byte range (services/ingest.py ndjson_chunk_plan).
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.CASCADE, related_name="chunks")
    chunk_start = models.PositiveBigIntegerField(null=True, blank=True)
    chunk_end = models.PositiveBigIntegerField(null=True, blank=True)
    chunk_first_line = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "url"], name="sync_file_job_url_unique")]


class LocalResource(models.Model):
    """A FHIR resource in the hospital's local store, with the columns its searches need."""

    resource_type = models.CharField(max_length=40)
    resource_id = models.CharField(max_length=64)
    version_id = models.CharField(max_length=64, blank=True)
    last_updated = models.DateTimeField(null=True, blank=True)
    # The id of the Patient the resource is about (from subject/patient/beneficiary).
    patient_id = models.CharField(max_length=64, blank=True, default="")
    date = models.DateTimeField(null=True, blank=True)
    status = models.CharField(max_length=40, blank=True, default="")
    # Token and string search values, space-delimited "name=value" words (values
    # percent-encode spaces): " class=AMB class=http://...|AMB name=shaw ". A LIKE on the
    # rows one patient's index already narrowed to works the same on Postgres and SQLite.
    search_tokens = models.TextField(blank=True, default="")
    resource = models.JSONField()
    # The source: every stored resource belongs to the one payer connection (and so the one
    # organization) that fetched it. Ids are the payer's, so two payers (or one payer
    # answering two organizations) may use the same (type, id) for different things:
    # uniqueness, upserts, deletions, references and _include all hold within a source.
    connection = models.ForeignKey(PayerConnection, on_delete=models.PROTECT, related_name="resources")
    sync_job = models.ForeignKey(SyncJob, null=True, blank=True, on_delete=models.SET_NULL)
    export_time = models.DateTimeField(null=True, blank=True, help_text="The export's transactionTime.")
    ingested_at = models.DateTimeField()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["connection", "resource_type", "resource_id"], name="local_source_type_id_unique"
            )
        ]
        indexes = [
            models.Index(
                fields=["connection", "resource_type", "patient_id", "date"], name="local_source_patient_date_idx"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


class IngestIssue(models.Model):
    """A line of an NDJSON file that could not be stored, with why (an OperationOutcome)."""

    sync_file = models.ForeignKey(SyncFile, null=True, blank=True, on_delete=models.CASCADE, related_name="issues")
    file_name = models.CharField(max_length=500)
    line_number = models.PositiveIntegerField()
    outcome = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["file_name", "line_number"]
        constraints = [
            # A retried ingest task records each bad line once.
            models.UniqueConstraint(fields=["sync_file", "file_name", "line_number"], name="ingest_issue_line_unique"),
        ]


class StoreReader(models.Model):
    """A user of the local FHIR API who reads one organization's sources only.

    The API's merged view of every source is for hospital staff holding the
    ``provider.view_localresource`` permission; an organization's own systems (its
    integration engine, its analytics) get a grant here instead and see only what that
    organization's payer connections fetched.
    """

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="store_reader")
    organization_npi = models.CharField(
        "organization NPI", max_length=10, db_index=True,
        validators=[RegexValidator(r"^[0-9]{10}$", "An NPI is 10 digits.")],
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = "local store reader"

    def __str__(self) -> str:
        return f"{self.user} (organization {self.organization_npi})"
