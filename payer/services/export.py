"""Bulk Data ``$export`` and PDex ``$davinci-data-export`` as resumable jobs.

A job is split, when it is created, into work units (one resource type for one batch
of patients) saved in the same transaction; only then are units queued. A unit takes a
lease, writes its own deterministic gzip NDJSON parts, and commits its ``ExportFile``
rows and ``done`` status together, so a unit run twice (a redelivered message, a lease
that ran out) leaves one copy of each resource. ``export_reconcile`` (beat, every
minute) re-queues units whose lease expired (killed worker, lost message) and finishes
jobs whose units are all done.

PDex 2.2 ``Group/$provider-member-match`` runs on the same jobs: one ``Group`` unit whose
file is the result Groups (payer/services/member_match.py).

Bulk Data IG 2.0.0 export.html; Da Vinci PDex STU2 Provider Access; CMS-0057-F.
"""

import contextlib
import dataclasses
import datetime
import json
import logging
import queue
import secrets
import threading
import time
from collections.abc import Iterator
from typing import Any

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Count, Exists, F, Lookup, OuterRef, Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone
from django.utils.http import http_date

from fhirkit.outcome import FHIRError, operation_outcome, outcome_issue
from payer.models import (
    AttributionGroup,
    AttributionMember,
    Claim,
    ClinicalResource,
    EobProjection,
    ExportJob,
    ExportWorkUnit,
    MemberMatchGroup,
    PriorAuthorization,
    ResourceTombstone,
    SmartClient,
)
from payer.services.access import organization_in_network, visible_members, visible_patient_ids
from payer.services.notices import notice_filter_unnotified
from payer.services.auth import scope_granted_types
from payer.services.eob_projection import eob_projection_refresh
from payer.services.export_params import (
    PATIENT_TYPES,
    PROVENANCE_RELEVANT,
    SERVICE_DATE_FLOOR,
    SHARED_TYPES,
    SUPPORTED_TYPES,
    ExportParams,
    elements_for,
    export_params_parse,
    resource_matches,
    resource_subset,
    type_filter_q,
)
from storage.models import ExportFile
from storage.services import NDJSONPartWriter, export_names_delete, export_parts_prune, file_row_fields

logger = logging.getLogger(__name__)

ROWS_PER_FETCH = 5000
ROWS_BLOCK_BYTES = 256 * 1024
COPY_QUEUE_BLOCKS = 4
ACTIVE = (ExportWorkUnit.Status.PENDING, ExportWorkUnit.Status.RUNNING)
# A job for a few patients (PDex Provider Access: often one member) is a dozen tiny units;
# a message each would cost more broker round trips than work. Such a job gets this many
# tasks, and each goes on with the job's next unit (export_unit_run).
SMALL_JOB_PATIENTS = 10
SMALL_JOB_TASKS = 2
# PDex 2.2 Group/$provider-member-match runs as a job of one "Group" unit on this same
# machinery (payer/services/member_match.py): kick-off, lease, status, manifest, files.
MEMBER_MATCH_OPERATION = "provider-member-match"


def _setting(name: str) -> Any:
    return getattr(settings, name)


def _lease() -> datetime.timedelta:
    return datetime.timedelta(seconds=_setting("PA_EXPORT_LEASE_SECONDS"))


def _enqueue(unit_ids: list[int]) -> None:
    from payer.tasks import export_unit_run_task

    for unit_id in unit_ids:
        export_unit_run_task.delay(unit_id)


# --- Kick-off --------------------------------------------------------------------------------


def export_job_create(
    *,
    client: SmartClient,
    scopes: str,
    level: str,
    operation: str,
    raw_params: dict[str, list[str]],
    lenient: bool,
    request_url: str,
    group: AttributionGroup | None = None,
    match_group: MemberMatchGroup | None = None,
) -> ExportJob:
    """Validate a kick-off, record the job and its work units, and queue the units.

    ``group`` is the organization's attribution Group; ``match_group`` a MatchedMembers
    Group of the client's own ``$provider-member-match`` (PDex 2.2 §pdex-262).

    Raise ``FHIRError``: 400 for bad parameters (unless ``lenient``), 403 when the scopes
    grant nothing or the organization is out of network, 429 when the client already
    runs ``max_concurrent_exports`` jobs (Bulk Data req 118).
    """
    organization = client.organization
    granted = scope_granted_types(scopes=scopes, candidates=list(SUPPORTED_TYPES))
    params, issues = export_params_parse(
        raw=raw_params,
        operation=operation,
        granted_types=granted,
        lenient=lenient,
        patient_param_allowed=level != ExportJob.Level.SYSTEM,
    )
    if not organization_in_network(organization=organization):
        raise FHIRError("The organization has no network contract in force.", status=403, code="forbidden")
    if "ExplanationOfBenefit" in params.types:
        # Claims and prior authorizations changed since the projection was last brought up
        # to date are mapped now, before transactionTime, so the export streams current
        # EOBs and lists the deletions found (issue 11).
        eob_projection_refresh()
    # Bulk Data transactionTime: the instant the data is read. Taken before anything is
    # read, and every query of the job is capped at it, so it can be the next _since.
    transaction_time = timezone.now()
    if params.until is None or params.until_dt() > transaction_time:
        params.until = transaction_time.isoformat()

    members = visible_members(organization=organization)
    if group is not None:
        members = members.filter(attributions__group=group)
    if match_group is not None:
        members = members.filter(pk__in=match_group.members.values("pk"))
    member_rows = list(members.order_by("patient_id").values_list("patient_id", "pk").distinct())
    if params.patients is not None:
        # Bulk Data req 85-87: never export patients outside the list. Group level: PDex
        # §pdex-296/§pdex-360 say the operation SHALL ignore references to patients that
        # are invalid or not members of the group; they are reported as OperationOutcome
        # warnings in the manifest's ``error``. When none is left, nothing is exported:
        # the list never widens to the whole Group. System and Patient level: 400.
        known = {patient_id for patient_id, _ in member_rows}
        missing = [p for p in params.patients if p not in known]
        if missing and level == ExportJob.Level.GROUP:
            issues.extend(
                outcome_issue(code="not-found", severity="warning", expression=["patient"],
                              diagnostics=f"Patient/{p} is not a member of this Group whose data may be shared; "
                                          "ignored (PDex §pdex-360).")
                for p in missing
            )
            missing = []
        if missing and not lenient:
            raise FHIRError(
                f"patient: {', '.join(missing[:20])} not found among the members this client may see"
                + (" in the group." if group else "."),
                code="not-found",
                expression=["patient"],
            )
        issues.extend(
            outcome_issue(code="not-found", severity="warning", expression=["patient"],
                          diagnostics=f"Ignored under Prefer: handling=lenient: patient {p} not found among visible members.")
            for p in missing
        )
        wanted = set(params.patients)
        member_rows = [row for row in member_rows if row[0] in wanted]

    # --- Notice gate (42 CFR 422.121(a)(4)(i)): no member's data before they were sent the
    # Provider Access notice, unless PA_EXPORT_ALLOW_UNNOTIFIED; the manifest's error file says so.
    member_rows, withheld = notice_filter_unnotified(rows=member_rows)
    if withheld:
        issues.append(outcome_issue(
            code="suppressed", severity="warning",
            diagnostics=f"{len(withheld)} member(s) withheld: not yet sent the payer's Provider Access notice "
                        "(42 CFR 422.121(a)(4)); their data is released once the notice has gone out.",
        ))

    with transaction.atomic():
        # Lock the client row so two simultaneous kick-offs cannot both pass the limit.
        locked = SmartClient.objects.select_for_update().get(pk=client.pk)
        running = ExportJob.objects.filter(client=locked, status=ExportJob.Status.IN_PROGRESS).count()
        if running >= locked.max_concurrent_exports:
            raise FHIRError(
                f"This client already runs {running} exports (its limit); retry when one completes.",
                status=429,
                code="throttled",
                headers={"Retry-After": "30"},
            )
        job = ExportJob.objects.create(
            job_id=secrets.token_urlsafe(24),
            client=locked,
            level=level,
            group=group,
            match_group=match_group,
            operation=operation,
            request_url=request_url,
            params=params.to_json(),
            scopes=scopes,
            issues=issues,
            transaction_time=transaction_time,
        )
        units = _units_build(job=job, params=params, member_rows=member_rows)
        ExportWorkUnit.objects.bulk_create(units, batch_size=500)
        unit_ids = list(job.units.values_list("id", flat=True))
        if unit_ids:
            queued = unit_ids[:SMALL_JOB_TASKS] if len(member_rows) <= SMALL_JOB_PATIENTS else unit_ids
            transaction.on_commit(lambda: _enqueue(queued))
        else:
            transaction.on_commit(lambda: export_job_finalize(job_id=job.pk))
    return job


def _units_build(*, job: ExportJob, params: ExportParams, member_rows: list[tuple[str, int]]) -> list[ExportWorkUnit]:
    """Return unsaved work units: each patient type x batch, plus one per shared type."""
    batch_size = _setting("PA_EXPORT_BATCH_PATIENTS")
    lease_until = timezone.now() + _lease()
    units: list[ExportWorkUnit] = []
    # Types the repository holds nothing of need no unit (one indexed probe per type).
    # With _since, a type whose rows were all deleted still has deletions to list.
    stored = [t for t in params.types
              if _type_has_rows(t) or (params.since and ResourceTombstone.objects.filter(resource_type=t).exists())]
    for sequence, start in enumerate(range(0, len(member_rows), batch_size)):
        batch = member_rows[start : start + batch_size]
        for resource_type in stored:
            if resource_type in PATIENT_TYPES:
                units.append(ExportWorkUnit(
                    job=job, resource_type=resource_type, sequence=sequence,
                    patient_ids=[p for p, _ in batch], member_pks=[pk for _, pk in batch],
                    lease_expires_at=lease_until,
                ))
    # Directory resources (outside the patient compartment) at the system level, or when
    # named in _type (Bulk Data req 37/38: MAY be returned).
    for resource_type in stored:
        if resource_type in SHARED_TYPES and member_rows:
            units.append(ExportWorkUnit(job=job, resource_type=resource_type, sequence=0, lease_expires_at=lease_until))
    return units


def _type_has_rows(resource_type: str) -> bool:
    if resource_type == "ExplanationOfBenefit":
        return Claim.objects.exists() or PriorAuthorization.objects.exists() or EobProjection.objects.exists()
    return ClinicalResource.objects.filter(resource_type=resource_type).exists()


# --- Running a unit --------------------------------------------------------------------------


def _unit_claim(*, unit_id: int) -> bool:
    now = timezone.now()
    claimable = Q(status=ExportWorkUnit.Status.PENDING) | Q(status=ExportWorkUnit.Status.RUNNING, lease_expires_at__lt=now)
    return bool(
        ExportWorkUnit.objects.filter(claimable, pk=unit_id, job__status=ExportJob.Status.IN_PROGRESS).update(
            status=ExportWorkUnit.Status.RUNNING, lease_expires_at=now + _lease(), attempts=F("attempts") + 1
        )
    )


def _part_name(unit: ExportWorkUnit, part: int, *, deleted: bool = False, error: bool = False) -> str:
    kind = ".deleted" if deleted else ".error" if error else ""
    return f"exports/{unit.job.job_id}/{unit.resource_type}.{unit.sequence:05d}{kind}.{part:03d}.ndjson.gz"


class _Heartbeat:
    """Renew the unit's lease while it runs; stop when the job was cancelled.

    ``beat()`` renews inline, on the unit's own connection, when due. Inside
    ``background()`` a thread renews on a connection of its own instead (a COPY holds
    the unit's connection until it ends), and ``beat()`` only reports what it found.
    """

    def __init__(self, unit: ExportWorkUnit) -> None:
        self.unit = unit
        self.interval = max(1.0, _setting("PA_EXPORT_LEASE_SECONDS") / 3)
        self.next_at = time.monotonic() + self.interval
        self._threaded = False
        self._abandoned = threading.Event()

    def _renew(self) -> bool:
        return bool(ExportWorkUnit.objects.filter(
            pk=self.unit.pk, status=ExportWorkUnit.Status.RUNNING, job__status=ExportJob.Status.IN_PROGRESS
        ).update(lease_expires_at=timezone.now() + _lease()))

    def beat(self) -> None:
        if self._abandoned.is_set():
            raise _UnitAbandoned
        if self._threaded or time.monotonic() < self.next_at:
            return
        self.next_at = time.monotonic() + self.interval
        if not self._renew():
            raise _UnitAbandoned

    @contextlib.contextmanager
    def background(self) -> Iterator[None]:
        stop = threading.Event()

        def run() -> None:
            try:
                while not stop.wait(self.interval):
                    if not self._renew():
                        self._abandoned.set()
                        return
            except Exception:  # the unit's own end-of-run checks still guard its result
                logger.warning("Export unit %s: lease renewal failed", self.unit.pk, exc_info=True)
            finally:
                connection.close()  # this thread's own connection

        thread = threading.Thread(target=run, name=f"export-lease-{self.unit.pk}", daemon=True)
        self._threaded = True
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self._threaded = False
            self.next_at = time.monotonic() + self.interval


class _UnitAbandoned(Exception):
    """The job was cancelled or failed while the unit ran."""


def _clinical_rows(*, unit: ExportWorkUnit, params: ExportParams, patient_ids: list[str]):
    """Return the unit's rows as a queryset of JSON texts, the alternatives of
    ``_typeFilter`` that must be re-checked on the parsed resource, and ``_elements``."""
    rows, python_filters = _clinical_queryset(resource_type=unit.resource_type, params=params, patient_ids=patient_ids)
    keep = elements_for(params=params, resource_type=unit.resource_type)
    # No ORDER BY: the (patient_id, resource_type, last_updated) index drives the scan.
    texts = rows.order_by().annotate(text=Cast("resource", TextField())).values_list("text", flat=True)
    return texts, python_filters, keep


def _clinical_queryset(*, resource_type: str, params: ExportParams, patient_ids: list[str]):
    """Return the ClinicalResource rows of ``resource_type`` and ``patient_ids`` that the
    job exports, and the ``_typeFilter`` alternatives to re-check on each parsed row."""
    rows = ClinicalResource.objects.filter(resource_type=resource_type)
    postgres = connection.vendor == "postgresql"
    # Postgres: one array parameter instead of a thousand IN (...) parameters.
    in_patients = (lambda field: _AnyOf(F(field), patient_ids)) if postgres else (
        lambda field: Q(**{f"{field}__in": patient_ids}))
    if resource_type == "Patient":
        rows = rows.filter(in_patients("resource_id"))
    elif resource_type in PATIENT_TYPES:
        rows = rows.filter(in_patients("patient_id"))
    else:
        rows = rows.filter(patient_id="")
    since, until = params.since_dt(), params.until_dt()
    if since is not None:
        rows = rows.filter(last_updated__gt=since)  # Bulk Data req 59: changed after _since.
    if until is not None:
        rows = rows.filter(last_updated__lte=until)  # req 153/154: up to transactionTime.
    if resource_type in PATIENT_TYPES and resource_type != "Patient":
        # CMS-0057-F: dates of service from 2016-01-01 on.
        rows = rows.filter(Q(date__isnull=True) | Q(date__gte=SERVICE_DATE_FLOOR))
    python_filters: list[list[list[str]]] = []
    alternatives = params.type_filters.get(resource_type)
    if alternatives:
        sql_alternatives = []
        for criteria in alternatives:
            q, rest = type_filter_q(criteria=criteria)
            sql_alternatives.append(q)
            python_filters.append(rest)
        # OR of the alternatives; one without column criteria matches every row in SQL.
        if all(sql_alternatives):
            any_q = sql_alternatives[0]
            for q in sql_alternatives[1:]:
                any_q |= q
            rows = rows.filter(any_q)
        if not any(python_filters):
            python_filters = []
        else:
            # Each alternative must be re-checked whole on the parsed row.
            python_filters = alternatives
    return rows, python_filters


PROVENANCE_CHUNK = 1000


def _provenance_exported_targets(*, params: ExportParams, patient_ids: list[str], member_pks: list[int],
                                 references: set[str]) -> set[str]:
    """Return those of ``references`` (``Type/id``) that the job exports (this batch's
    patients; ``_since``, ``_until``, ``_typeFilter`` and the service-date floor applied)."""
    by_type: dict[str, set[str]] = {}
    for reference in references:
        resource_type, _, resource_id = reference.partition("/")
        by_type.setdefault(resource_type, set()).add(resource_id)
    exported: set[str] = set()
    for resource_type, ids in by_type.items():
        if resource_type == "ExplanationOfBenefit":
            # The projection of the claims system: the EOBs of the batch's members.
            rows = _eob_queryset(params=params, member_pks=member_pks).filter(resource_id__in=sorted(ids))
            alternatives = params.type_filters.get("ExplanationOfBenefit") or []
            found = {rid for rid, resource in rows.values_list("resource_id", "resource")
                     if not alternatives or any(resource_matches(resource=resource, criteria=c) for c in alternatives)}
            exported |= {f"{resource_type}/{i}" for i in found}
            continue
        rows, python_filters = _clinical_queryset(resource_type=resource_type, params=params, patient_ids=patient_ids)
        rows = rows.filter(resource_id__in=sorted(ids)).order_by()
        if python_filters:
            found = {resource_id for resource_id, resource in rows.values_list("resource_id", "resource")
                     if any(resource_matches(resource=resource, criteria=c) for c in python_filters)}
        else:
            found = set(rows.values_list("resource_id", flat=True))
        exported |= {f"{resource_type}/{i}" for i in found}
    return exported


def _provenance_recorded(resource: dict[str, Any]) -> str:
    value = resource.get("recorded") or (resource.get("meta") or {}).get("lastUpdated") or ""
    try:
        parsed = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return ""
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.astimezone(datetime.UTC).isoformat()


def _associated_provenance_lines(*, params: ExportParams, patient_ids: list[str], member_pks: list[int],
                                 heartbeat: "_Heartbeat") -> Iterator[bytes]:
    """Yield the batch's Provenance exported as associated data (includeAssociatedData).

    Bulk Data 2.0 export.html#query-parameters, req 97-99: Provenance associated with the
    non-Provenance resources being returned, so only those whose ``target`` names an
    exported resource. RelevantProvenanceResources: every such Provenance;
    LatestProvenanceResources: for each exported resource its most recent Provenance
    (by ``recorded``), and no other (req 98). Two passes over the batch's Provenance: the
    first finds which to send (memory grows with their ids, not their bodies), the second
    streams them.
    """
    target_types = set(params.types) - {"Provenance"}
    rows, _ = _clinical_queryset(resource_type="Provenance", params=dataclasses.replace(params, since=None, type_filters={}),
                                 patient_ids=patient_ids)
    texts = rows.order_by().annotate(text=Cast("resource", TextField())).values_list("text", flat=True)
    chosen: set[str] = set()
    latest: dict[str, tuple[str, str]] = {}  # target -> (recorded, Provenance id)
    chunk: list[tuple[str, str, list[str]]] = []

    def settle() -> None:
        references = {ref for _, _, refs in chunk for ref in refs}
        exported = _provenance_exported_targets(params=params, patient_ids=patient_ids, member_pks=member_pks,
                                                references=references) if references else set()
        for provenance_id, recorded, refs in chunk:
            for ref in refs:
                if ref not in exported:
                    continue
                if params.provenance == PROVENANCE_RELEVANT:
                    chosen.add(provenance_id)
                elif ref not in latest or (recorded, provenance_id) > latest[ref]:
                    latest[ref] = (recorded, provenance_id)
        chunk.clear()

    for text in _texts_stream(texts, heartbeat=heartbeat):
        resource = json.loads(text)
        if not isinstance(resource, dict):
            continue  # not a resource: nothing it could be associated with
        refs = [ref for target in resource.get("target") or [] if isinstance(target, dict)
                and isinstance(ref := target.get("reference"), str) and ref.partition("/")[0] in target_types]
        if refs:
            chunk.append((str(resource.get("id")), _provenance_recorded(resource), refs))
        if len(chunk) >= PROVENANCE_CHUNK:
            settle()
    settle()
    chosen |= {provenance_id for _, provenance_id in latest.values()}
    latest.clear()
    if not chosen:
        return
    keep = elements_for(params=params, resource_type="Provenance")
    for text in _texts_stream(texts, heartbeat=heartbeat):
        resource = json.loads(text)
        if isinstance(resource, dict) and str(resource.get("id")) in chosen:
            if keep is not None:
                resource = resource_subset(resource=resource, keep=keep)
            yield json.dumps(resource, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _clinical_lines(*, rows, resource_type: str, python_filters: list, keep: Any, heartbeat: "_Heartbeat",
                    errors: NDJSONPartWriter) -> Iterator[bytes]:
    """Yield NDJSON lines of ClinicalResource rows (``(resource_id, text)``), parsed only
    when ``_elements`` or a JSON-level ``_typeFilter`` needs it.

    A stored row that cannot be processed (not a JSON object) is left out and reported in
    ``errors`` as an OperationOutcome: Bulk Data req 142/143, the export still succeeds
    (200) and the manifest's ``error`` files say what went wrong.

    Postgres: ``resource::text`` through a server-side cursor; SQLite: the stored text.
    """
    for resource_id, text in _texts_stream(rows, heartbeat=heartbeat, flat=False):
        if python_filters or keep is not None:
            try:
                resource = json.loads(text)
                if not isinstance(resource, dict):
                    raise TypeError(f"the stored resource is a JSON {type(resource).__name__}, not an object")
                if python_filters and not any(resource_matches(resource=resource, criteria=c) for c in python_filters):
                    continue
                if keep is not None:
                    resource = resource_subset(resource=resource, keep=keep)
            except (ValueError, TypeError, AttributeError) as exc:
                errors.write_lines([_resource_error_line(resource_type=resource_type, resource_id=resource_id, error=exc)])
                continue
            text = json.dumps(resource, separators=(",", ":"), ensure_ascii=False)
        yield text.encode() + b"\n"


def _resource_error_line(*, resource_type: str, resource_id: str, error: Exception) -> bytes:
    """Return an error-file line: an OperationOutcome for one resource that was not exported."""
    outcome = operation_outcome([outcome_issue(
        code="processing", diagnostics=f"{resource_type}/{resource_id} was not exported: {error}",
        expression=[resource_type])])
    return json.dumps(outcome, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


# COPY in CSV format with a quote and a delimiter byte that JSON text never holds (jsonb
# output escapes every control character, and holds no raw newline): each row comes out
# verbatim followed by a newline, so the COPY stream already is the NDJSON.
_COPY_NDJSON = "COPY ({query}) TO STDOUT WITH (FORMAT csv, QUOTE E'\\x01', DELIMITER E'\\x02')"


class _ReaderStopped(Exception):
    """The consumer of a COPY stream went away; end (and cancel) the COPY."""


def _clinical_copy_blocks(*, texts, heartbeat: "_Heartbeat") -> Iterator[bytes]:
    """Yield the NDJSON of a Postgres query of JSON texts in blocks of whole lines.

    The bytes go from the server to gzip without being decoded, parsed or split into
    rows in Python. The query's parameters are bound by psycopg (client side, as COPY
    takes no server-side parameters), never formatted into the SQL here.

    A reader thread runs the COPY while the caller compresses and writes the previous
    block (libpq waits and zlib both release the GIL). At most ``COPY_QUEUE_BLOCKS``
    blocks wait between them, so memory stays flat. The reader alone uses the unit's
    connection until it is joined; the lease is renewed on another one meanwhile.
    """
    query, query_params = texts.query.sql_with_params()
    statement = _COPY_NDJSON.format(query=query)
    connection.ensure_connection()
    raw = connection.connection
    blocks: queue.Queue = queue.Queue(maxsize=COPY_QUEUE_BLOCKS)
    stop = threading.Event()

    def put(item: Any) -> None:
        while True:
            try:
                blocks.put(item, timeout=0.1)
                return
            except queue.Full:
                if stop.is_set():
                    raise _ReaderStopped from None

    def read() -> None:
        try:
            with raw.cursor() as cursor, cursor.copy(statement, query_params) as copy:
                pending: list = []
                pending_size = 0
                # Each CopyData message is one row; hand them on in blocks of ~256 KB.
                for data in copy:
                    pending.append(data)
                    pending_size += len(data)
                    if pending_size >= ROWS_BLOCK_BYTES:
                        if stop.is_set():
                            raise _ReaderStopped  # raised inside the COPY: psycopg cancels it
                        put(b"".join(pending))
                        pending.clear()
                        pending_size = 0
                if pending:
                    put(b"".join(pending))
            put(None)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            with contextlib.suppress(_ReaderStopped):
                put(exc)

    with heartbeat.background():
        reader = threading.Thread(target=read, name="export-copy", daemon=True)
        reader.start()
        try:
            while True:
                block = blocks.get()
                if block is None:
                    return
                if isinstance(block, BaseException):
                    raise block
                heartbeat.beat()
                yield block
        finally:
            stop.set()
            reader.join()


class _AnyOf(Lookup):
    """``column = ANY(%s)`` with the values as one Postgres array parameter."""

    lookup_name = "any_of"
    prepare_rhs = False

    def as_sql(self, compiler, conn):
        lhs, lhs_params = self.process_lhs(compiler, conn)
        return f"{lhs} = ANY(%s)", [*lhs_params, list(self.rhs)]


def _texts_stream(texts, *, heartbeat: "_Heartbeat", flat: bool = True) -> Iterator[Any]:
    """Yield the stored JSON text of each row (the row's tuple unless ``flat``),
    ``ROWS_PER_FETCH`` rows per round trip.

    Postgres: a server-side cursor inside a transaction (a cursor WITH HOLD, which
    Django's ``.iterator()`` uses in autocommit mode, would materialize the whole result
    first), fetched raw so no per-row ORM work happens. SQLite: ``.iterator()``.
    """
    if connection.vendor != "postgresql":
        for count, text in enumerate(texts.iterator(chunk_size=ROWS_PER_FETCH), 1):
            if count % ROWS_PER_FETCH == 0:
                heartbeat.beat()
            yield text
        return
    sql, params = texts.query.sql_with_params()
    with transaction.atomic(), connection.chunked_cursor() as cursor:
        cursor.execute(sql, params)
        # A reader thread fetches the next batch while this one compresses the last, so
        # the database and gzip work at the same time (both release the GIL). The queue
        # holds at most two batches: memory stays flat.
        batches: queue.Queue = queue.Queue(maxsize=2)
        stop = threading.Event()

        def read() -> None:
            try:
                while not stop.is_set():
                    rows = cursor.fetchmany(ROWS_PER_FETCH)
                    batches.put(rows)
                    if not rows:
                        return
            except BaseException as exc:  # handed to the consumer, which re-raises it
                batches.put(exc)

        reader = threading.Thread(target=read, name="export-fetch", daemon=True)
        reader.start()
        try:
            while True:
                rows = batches.get()
                if isinstance(rows, BaseException):
                    raise rows
                if not rows:
                    break
                heartbeat.beat()
                for row in rows:
                    yield row[0] if flat else row
        finally:
            stop.set()
            while reader.is_alive():
                try:
                    batches.get(timeout=0.1)
                except queue.Empty:
                    pass
            reader.join()


def _eob_queryset(*, params: ExportParams, member_pks: list[int]):
    """Return the projection rows of the EOBs the job exports for ``member_pks``."""
    rows = EobProjection.objects.filter(deleted_at__isnull=True)
    rows = rows.filter(_AnyOf(F("member_id"), member_pks) if connection.vendor == "postgresql"
                       else Q(member_id__in=member_pks))
    since, until = params.since_dt(), params.until_dt()
    if since is not None:
        rows = rows.filter(source_updated_at__gt=since)  # Bulk Data req 59: changed after _since.
    if until is not None:
        rows = rows.filter(source_updated_at__lte=until)  # req 153/154: up to transactionTime.
    # CMS-0057-F (42 CFR 422.121(a)): dates of service from 2016-01-01 on.
    return rows.filter(service_date__gte=SERVICE_DATE_FLOOR.date())


def _eob_write(*, params: ExportParams, member_pks: list[int], writer: NDJSONPartWriter, errors: NDJSONPartWriter,
               heartbeat: _Heartbeat) -> None:
    """Write the unit's EOBs from the projection: the COPY stream on Postgres, as for the
    clinical data, unless ``_typeFilter`` or ``_elements`` needs each resource parsed."""
    alternatives = params.type_filters.get("ExplanationOfBenefit") or []
    keep = elements_for(params=params, resource_type="ExplanationOfBenefit")
    texts = _eob_queryset(params=params, member_pks=member_pks).order_by().annotate(
        text=Cast("resource", TextField())).values_list("text", flat=True)
    if connection.vendor == "postgresql" and not alternatives and keep is None:
        writer.write_blocks(_clinical_copy_blocks(texts=texts, heartbeat=heartbeat))
    else:
        writer.write_lines(_clinical_lines(rows=texts.values_list("resource_id", "text"), resource_type="ExplanationOfBenefit",
                                           python_filters=alternatives, keep=keep, heartbeat=heartbeat, errors=errors))


def _eob_deleted_lines(*, params: ExportParams, member_pks: list[int]) -> Iterator[bytes]:
    """Yield the DELETE Bundles of the EOBs whose source left the claims system after ``_since``."""
    rows = EobProjection.objects.filter(deleted_at__gt=params.since_dt(), member_id__in=member_pks)
    if params.until_dt() is not None:
        rows = rows.filter(deleted_at__lte=params.until_dt())
    ids = list(rows.order_by("resource_id").values_list("resource_id", flat=True))
    for start in range(0, len(ids), DELETED_PER_BUNDLE):
        entries = [{"request": {"method": "DELETE", "url": f"ExplanationOfBenefit/{rid}"}}
                   for rid in ids[start:start + DELETED_PER_BUNDLE]]
        yield json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                         separators=(",", ":")).encode() + b"\n"


def _unit_visible(*, unit: ExportWorkUnit, organization) -> tuple[list[str], list[int]]:
    """Return the unit's patient ids and member pks the organization may still see.

    One query per unit (Postgres: the ids as one array parameter, which the
    ``patient_id`` index answers in a few milliseconds for a thousand patients).
    """
    if not unit.patient_ids:
        return [], []
    if connection.vendor == "postgresql":
        visible = set(visible_members(organization=organization)
                      .filter(_AnyOf(F("patient_id"), unit.patient_ids)).values_list("patient_id", flat=True))
    else:
        visible = visible_patient_ids(organization=organization, patient_ids=unit.patient_ids)
    kept = [(p, pk) for p, pk in zip(unit.patient_ids, unit.member_pks, strict=True) if p in visible]
    return [p for p, _ in kept], [pk for _, pk in kept]


DELETED_PER_BUNDLE = 100


def _deleted_lines(*, unit: ExportWorkUnit, params: ExportParams, patient_ids: list[str]) -> Iterator[bytes]:
    """Yield the unit's deleted-file lines: transaction Bundles of DELETE entries.

    Bulk Data 2.0 export.html, complete status, ``deleted`` (req 182, 186-190): the
    resources of the unit's type and visible patients deleted after ``_since`` and up to
    transactionTime, each as an entry with ``request.method`` DELETE and ``request.url``
    ``Type/id``. A resource stored again since its deletion is in ``output`` instead
    (req 186). Content-level criteria (``_typeFilter``) cannot be applied to a resource
    that no longer exists; a DELETE of a resource the client never received is a no-op.
    """
    resource_type = unit.resource_type
    rows = ResourceTombstone.objects.filter(resource_type=resource_type, deleted_at__gt=params.since_dt())
    if params.until_dt() is not None:
        rows = rows.filter(deleted_at__lte=params.until_dt())
    if resource_type in PATIENT_TYPES:
        if not patient_ids:
            return
        rows = rows.filter(_AnyOf(F("patient_id"), patient_ids) if connection.vendor == "postgresql"
                           else Q(patient_id__in=patient_ids))
    else:
        rows = rows.filter(patient_id="")
    stored_again = ClinicalResource.objects.filter(resource_type=OuterRef("resource_type"), resource_id=OuterRef("resource_id"))
    ids = rows.exclude(Exists(stored_again)).order_by("resource_id").values_list("resource_id", flat=True).distinct()
    batch: list[str] = []

    def bundle() -> bytes:
        entries = [{"request": {"method": "DELETE", "url": f"{resource_type}/{rid}"}} for rid in batch]
        return json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries},
                          separators=(",", ":")).encode() + b"\n"

    for resource_id in ids.iterator(chunk_size=ROWS_PER_FETCH):
        batch.append(resource_id)
        if len(batch) == DELETED_PER_BUNDLE:
            yield bundle()
            batch = []
    if batch:
        yield bundle()


def _unit_write(*, unit: ExportWorkUnit, params: ExportParams, patient_ids: list[str], member_pks: list[int],
                writer: NDJSONPartWriter, errors: NDJSONPartWriter, heartbeat: _Heartbeat) -> None:
    """Write the unit's NDJSON through ``writer``: mapped EOBs, parsed rows when
    ``_elements`` or a JSON-level ``_typeFilter`` needs them, else the COPY stream."""
    if unit.job.operation == MEMBER_MATCH_OPERATION:
        from payer.services.member_match import member_match_run

        writer.write_lines(member_match_run(job=unit.job))
        return
    if unit.resource_type == "ExplanationOfBenefit":
        if member_pks:
            _eob_write(params=params, member_pks=member_pks, writer=writer, errors=errors, heartbeat=heartbeat)
        return
    if unit.resource_type in PATIENT_TYPES and not patient_ids:
        return
    if unit.resource_type == "Provenance" and params.provenance:
        writer.write_lines(_associated_provenance_lines(params=params, patient_ids=patient_ids, member_pks=member_pks,
                                                        heartbeat=heartbeat))
        return
    texts, python_filters, keep = _clinical_rows(unit=unit, params=params, patient_ids=patient_ids)
    if connection.vendor == "postgresql" and not python_filters and keep is None:
        writer.write_blocks(_clinical_copy_blocks(texts=texts, heartbeat=heartbeat))
    else:
        rows = texts.values_list("resource_id", "text")
        writer.write_lines(_clinical_lines(rows=rows, resource_type=unit.resource_type, python_filters=python_filters,
                                           keep=keep, heartbeat=heartbeat, errors=errors))


def export_unit_run(*, unit_id: int) -> None:
    """Run the unit if it is claimable, then the job's units no task has started yet.

    Units whose message is still queued are taken here (their message then finds them
    done), saving a round trip each; units that failed once are left to the reconciler.
    Ends: every unit handed on is claimed, by this task or another, and never again
    handed on.
    """
    job_id = ExportWorkUnit.objects.filter(pk=unit_id).values_list("job_id", flat=True).first()
    next_id: int | None = unit_id
    while next_id is not None:
        _unit_run(unit_id=next_id)
        next_id = (
            ExportWorkUnit.objects.filter(job_id=job_id, status=ExportWorkUnit.Status.PENDING, attempts=0,
                                          job__status=ExportJob.Status.IN_PROGRESS)
            .order_by("pk").values_list("pk", flat=True).first()
        )


def _unit_run(*, unit_id: int) -> None:
    """Run one work unit if it is claimable; finish the job when it was the last one.

    Safe to run twice: the claim is an atomic UPDATE, parts have deterministic names,
    and file rows and ``done`` are committed together only if the unit is not done yet.
    """
    if not _unit_claim(unit_id=unit_id):
        return
    unit = ExportWorkUnit.objects.select_related("job__client__organization").get(pk=unit_id)
    job = unit.job
    params = ExportParams(types=["Group"]) if job.operation == MEMBER_MATCH_OPERATION else ExportParams.from_json(job.params)
    organization = job.client.organization
    heartbeat = _Heartbeat(unit)
    max_bytes = _setting("PA_EXPORT_FILE_MAX_BYTES")
    writer = NDJSONPartWriter(name_for=lambda part: _part_name(unit, part), max_bytes=max_bytes)
    deleted_writer = NDJSONPartWriter(name_for=lambda part: _part_name(unit, part, deleted=True), max_bytes=max_bytes)
    error_writer = NDJSONPartWriter(name_for=lambda part: _part_name(unit, part, error=True), max_bytes=max_bytes)
    writers = (writer, deleted_writer, error_writer)
    try:
        # Opt-outs (and ended attributions or contracts) are re-checked now, when the
        # unit runs, not when the job was created (issue: "re-checked when each unit runs").
        patient_ids, member_pks = _unit_visible(unit=unit, organization=organization)
        _unit_write(unit=unit, params=params, patient_ids=patient_ids, member_pks=member_pks,
                    writer=writer, errors=error_writer, heartbeat=heartbeat)
        parts = writer.close()
        if params.since and unit.resource_type == "ExplanationOfBenefit":
            if member_pks:
                deleted_writer.write_lines(_eob_deleted_lines(params=params, member_pks=member_pks))
        elif params.since:
            deleted_writer.write_lines(_deleted_lines(unit=unit, params=params, patient_ids=patient_ids))
        deleted_parts = deleted_writer.close()
        error_parts = error_writer.close()
    except _UnitAbandoned:
        for each in writers:
            each.abort()
        export_names_delete(names=[p.name for each in writers for p in each.parts])
        return
    except Exception as exc:
        for each in writers:
            each.abort()
        _unit_fail(unit=unit, error=exc)
        raise
    export_parts_prune(name_for=lambda part: _part_name(unit, part), first=len(parts))
    export_parts_prune(name_for=lambda part: _part_name(unit, part, deleted=True), first=len(deleted_parts))
    export_parts_prune(name_for=lambda part: _part_name(unit, part, error=True), first=len(error_parts))

    with transaction.atomic():
        locked = ExportWorkUnit.objects.select_for_update(of=("self",)).select_related("job").filter(pk=unit.pk).first()
        if locked is None or locked.job.status != ExportJob.Status.IN_PROGRESS:
            # Cancelled (DELETE) while running: the files must go too.
            transaction.on_commit(lambda: export_names_delete(names=[p.name for p in parts + deleted_parts + error_parts]))
            return
        if locked.status == ExportWorkUnit.Status.DONE:
            return  # Another run of the same unit finished first; its rows stand.
        ExportFile.objects.filter(unit=locked).delete()
        ExportFile.objects.bulk_create([
            *(ExportFile(file_id=secrets.token_urlsafe(24), job=job, unit=locked, resource_type=unit.resource_type,
                         kind=ExportFile.Kind.OUTPUT, **file_row_fields(part)) for part in parts),
            # Bulk Data 2.0: deleted files hold transaction Bundles; the manifest types them "Bundle".
            *(ExportFile(file_id=secrets.token_urlsafe(24), job=job, unit=locked, resource_type="Bundle",
                         kind=ExportFile.Kind.DELETED, **file_row_fields(part)) for part in deleted_parts),
            # Req 142: resources that failed to export, as OperationOutcome NDJSON.
            *(ExportFile(file_id=secrets.token_urlsafe(24), job=job, unit=locked, resource_type="OperationOutcome",
                         kind=ExportFile.Kind.ERROR, **file_row_fields(part)) for part in error_parts),
        ])
        locked.status = ExportWorkUnit.Status.DONE
        locked.count = sum(part.count for part in parts)
        locked.exported_patient_ids = patient_ids
        locked.completed_at = timezone.now()
        locked.error = ""
        locked.save(update_fields=["status", "count", "exported_patient_ids", "completed_at", "error"])
    if unit.patient_ids and patient_ids:
        from payer.services.audit import audit_record

        audit_record(action="export-data", outcome="success", client=job.client, patient_ids=patient_ids,
                     resource_types=[unit.resource_type], detail=f"job {job.job_id} unit {unit.resource_type}#{unit.sequence}")
    if not ExportWorkUnit.objects.filter(job=job).exclude(status=ExportWorkUnit.Status.DONE).exists():
        export_job_finalize(job_id=job.pk)


def _error_is_transient(error: BaseException) -> bool:
    """Return True when the same work may well succeed later: storage or database out of
    reach, a disk full, a network error of the object store."""
    if isinstance(error, OSError | OperationalError | InterfaceError):
        return True
    try:
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # django-storages' S3 backend not installed
        return False
    return isinstance(error, BotoCoreError | ClientError)


def _unit_fail(*, unit: ExportWorkUnit, error: BaseException) -> None:
    """Record a failed run: back to pending for the reconciler, or failed for good."""
    text = f"{type(error).__name__}: {error}"
    logger.warning("Export unit %s failed: %s", unit.pk, text)
    final = unit.attempts >= _setting("PA_EXPORT_MAX_ATTEMPTS")  # attempts counts this run
    ExportWorkUnit.objects.filter(pk=unit.pk).update(
        status=ExportWorkUnit.Status.FAILED if final else ExportWorkUnit.Status.PENDING,
        lease_expires_at=timezone.now() + _lease(),
        error=text[:500],
    )
    if final:
        now = timezone.now()
        transient = _error_is_transient(error)
        reason = ("storage or database unavailable; a new export may succeed later" if transient
                  else "an internal error")
        ExportJob.objects.filter(pk=unit.job_id, status=ExportJob.Status.IN_PROGRESS).update(
            status=ExportJob.Status.FAILED, error=f"An export work unit failed repeatedly: {reason}.",
            error_transient=transient, completed_at=now,
            expires_at=now + datetime.timedelta(hours=_setting("PA_EXPORT_EXPIRY_HOURS")),
        )


# --- Finishing, reconciling, cancelling, purging ---------------------------------------------


def export_job_finalize(*, job_id: int) -> None:
    """Complete a job whose units are all done: error file, expiry, PDex lastTransmitted."""
    with transaction.atomic():
        job = (ExportJob.objects.select_for_update(of=("self",)).select_related("client__organization")
               .filter(pk=job_id, status=ExportJob.Status.IN_PROGRESS).first())
        if job is None or job.units.exclude(status=ExportWorkUnit.Status.DONE).exists():
            return
        if rerun := _units_with_hidden_patients(job=job):
            # Issue 3: "An opt-out applies from the moment it is saved: ... any export still
            # running must not release that member's data." Units that finished before an
            # opt-out (or an ended attribution or contract) run again without the member;
            # the job completes when they are done, with counts that match the files.
            ExportWorkUnit.objects.filter(pk__in=rerun, status=ExportWorkUnit.Status.DONE).update(
                status=ExportWorkUnit.Status.PENDING, lease_expires_at=timezone.now() + _lease())
            transaction.on_commit(lambda: _enqueue(rerun))
            return
        now = timezone.now()
        expires_at = now + datetime.timedelta(hours=_setting("PA_EXPORT_EXPIRY_HOURS"))
        if job.issues:
            # Bulk Data req 142/196/197: warnings go to error files of OperationOutcomes.
            name = f"exports/{job.job_id}/OperationOutcome.error.ndjson.gz"
            writer = NDJSONPartWriter(name_for=lambda part: name if part == 0 else f"{name}.{part}", max_bytes=1 << 40)
            writer.write_lines(
                json.dumps(operation_outcome([issue]), separators=(",", ":")).encode() + b"\n" for issue in job.issues
            )
            ExportFile.objects.filter(job=job, kind=ExportFile.Kind.ERROR).delete()
            for part in writer.close():
                ExportFile.objects.create(file_id=secrets.token_urlsafe(24), job=job, resource_type="OperationOutcome",
                                          kind=ExportFile.Kind.ERROR, **file_row_fields(part))
        ExportFile.objects.filter(job=job).update(expires_at=expires_at)
        job.status = ExportJob.Status.COMPLETED
        job.completed_at = now
        job.expires_at = expires_at
        job.save(update_fields=["status", "completed_at", "expires_at"])
        if job.operation == "davinci-data-export" and (job.group_id or job.match_group_id):
            # PDex STU 2.1: record when each member's data was last sent to the provider.
            group_id = job.group_id or AttributionGroup.objects.filter(
                organization=job.client.organization).values_list("pk", flat=True).first()
            sent: set[str] = set()
            for ids in job.units.values_list("exported_patient_ids", flat=True):
                sent.update(ids)
            sent_list = sorted(sent)
            for start in range(0, len(sent_list), 500):
                AttributionMember.objects.filter(
                    group_id=group_id, member__patient_id__in=sent_list[start : start + 500]
                ).update(last_transmitted=job.transaction_time)


def _units_with_hidden_patients(*, job: ExportJob) -> list[int]:
    """Return the ids of the job's done units that wrote a patient the client may no longer see."""
    exported = [(pk, ids) for pk, ids in job.units.filter(status=ExportWorkUnit.Status.DONE)
                .values_list("pk", "exported_patient_ids") if ids]
    patients = {patient_id for _, ids in exported for patient_id in ids}
    if not patients:
        return []
    hidden = patients - visible_patient_ids(organization=job.client.organization, patient_ids=patients)
    return [pk for pk, ids in exported if hidden.intersection(ids)]


def export_reconcile() -> dict[str, int]:
    """Re-queue units whose lease expired and finish jobs whose units are all done.

    A killed worker leaves its unit ``running`` past its lease; a lost message leaves a
    unit ``pending`` past it. Both go back to pending with a fresh lease and a new message.
    """
    now = timezone.now()
    expired = list(
        ExportWorkUnit.objects.filter(status__in=ACTIVE, lease_expires_at__lt=now, job__status=ExportJob.Status.IN_PROGRESS)
        .values_list("pk", flat=True)
    )
    requeued: list[int] = []
    for unit_id in expired:
        if ExportWorkUnit.objects.filter(pk=unit_id, status__in=ACTIVE, lease_expires_at__lt=now).update(
            status=ExportWorkUnit.Status.PENDING, lease_expires_at=timezone.now() + _lease()
        ):
            requeued.append(unit_id)
    if requeued:
        transaction.on_commit(lambda: _enqueue(requeued))
    finished = 0
    stuck_jobs = ExportJob.objects.filter(status=ExportJob.Status.IN_PROGRESS).exclude(
        units__status__in=[*ACTIVE, ExportWorkUnit.Status.FAILED]
    )
    for job_id in stuck_jobs.values_list("pk", flat=True):
        export_job_finalize(job_id=job_id)
        finished += 1
    return {"requeued": len(requeued), "finalized": finished}


def export_job_get(*, job_id: str, client: SmartClient) -> ExportJob:
    """Return the client's job, or raise 404: another client's, cancelled or purged jobs
    do not exist for this client (Bulk Data req 6, 122)."""
    job = ExportJob.objects.filter(job_id=job_id, client__organization=client.organization, client=client).first()
    if job is None or job.status == ExportJob.Status.CANCELLED:
        raise FHIRError("No such export job.", status=404, code="not-found")
    if job.expires_at and job.expires_at <= timezone.now():
        raise FHIRError("The export job has expired and its files were removed.", status=404, code="not-found")
    return job


def export_job_cancel(*, job_id: str, client: SmartClient) -> ExportJob:
    """Cancel a job (Bulk Data DELETE, req 119-122): stop its units and delete its files."""
    with transaction.atomic():
        job = export_job_get(job_id=job_id, client=client)
        if job.status == ExportJob.Status.COMPLETED:
            # A client that read a finished $provider-member-match deletes its status URL
            # (Bulk Data req 119: done with the files); its result Groups stay live for
            # PA_MEMBER_MATCH_GROUP_DAYS (§pdex-264), so the MatchedMembers export still works.
            MemberMatchGroup.objects.filter(job=job).update(job=None)
        ExportJob.objects.filter(pk=job.pk).update(status=ExportJob.Status.CANCELLED)
        ExportWorkUnit.objects.filter(job=job, status__in=ACTIVE).update(status=ExportWorkUnit.Status.FAILED, error="cancelled")
        names = list(ExportFile.objects.filter(job=job).values_list("name", flat=True))
        ExportFile.objects.filter(job=job).delete()
        transaction.on_commit(lambda: export_names_delete(names=names))
    return job


def export_purge(*, now: datetime.datetime | None = None) -> int:
    """Delete expired jobs and their files; return how many jobs went.

    Bulk Data req 8: files being downloaded are not deleted even past their expiry, so
    files stay ``PA_EXPORT_PURGE_GRACE_SECONDS`` past expiry, and longer while downloads
    of them keep starting.
    """
    now = now or timezone.now()
    grace = datetime.timedelta(seconds=_setting("PA_EXPORT_PURGE_GRACE_SECONDS"))
    expired = ExportJob.objects.filter(
        Q(expires_at__lt=now - grace) | Q(status=ExportJob.Status.CANCELLED, created_at__lt=now - _lease())
    ).exclude(files__last_download_at__gt=now - grace)
    purged = 0
    for job in expired.distinct():
        names = list(ExportFile.objects.filter(job=job).values_list("name", flat=True))
        export_names_delete(names=names)
        job.delete()
        purged += 1
    from payer.services.member_match import match_groups_purge

    match_groups_purge(now=now)
    return purged


# --- Files written before an opt-out --------------------------------------------------------

# Where a resource of the patient compartment names its patient (R4 CompartmentDefinition
# Patient: subject, patient, beneficiary for the types this payer exports).
_PATIENT_REFERENCE_FIELDS = ("subject", "patient", "beneficiary")


def export_file_shared_allowed(*, export_file: ExportFile, organization) -> bool:
    """Return False for a file of the provider directory (Practitioner, Location, ...) once
    ``organization`` may no longer search the directory: its contract ended. Files are
    downloadable only while the client could still search what they hold."""
    resource_type = export_file.unit.resource_type if export_file.unit_id else export_file.resource_type
    return resource_type not in SHARED_TYPES or organization_in_network(organization=organization)


def export_file_hidden_patients(*, export_file: ExportFile, organization) -> set[str]:
    """Return the patients whose data the file holds and ``organization`` may no longer see.

    A file written before an opt-out (or before an attribution or contract ended) still
    holds that member's lines; issue 3: an opt-out "applies from the moment it is saved".
    """
    patient_ids = export_file.unit.exported_patient_ids if export_file.unit_id else []
    if not patient_ids:
        return set()
    return set(patient_ids) - visible_patient_ids(organization=organization, patient_ids=patient_ids)


def _referenced_patient(resource: dict[str, Any]) -> str | None:
    if resource.get("resourceType") == "Patient":
        return resource.get("id")
    for field in _PATIENT_REFERENCE_FIELDS:
        value = resource.get(field)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference[len("Patient/"):]
    return None


def export_lines_withhold(*, lines: Iterator[bytes], export_file: ExportFile, hidden: set[str]) -> Iterator[bytes]:
    """Yield the file's NDJSON lines minus those of the ``hidden`` patients.

    Output lines are dropped when their patient reference names a hidden patient, or when
    the repository stores them as that patient's (a resource that names its patient some
    other way). Deleted-file Bundles lose the DELETE entries of the hidden patients'
    resources. Only this rare path parses lines; memory stays flat.
    """
    # Read now, not when the response streams: a view's generator outlives its queries.
    resource_type = export_file.unit.resource_type
    hidden_ids = set(ClinicalResource.objects.filter(resource_type=resource_type, patient_id__in=hidden)
                     .values_list("resource_id", flat=True))
    if export_file.kind == ExportFile.Kind.DELETED:
        hidden_ids |= set(ResourceTombstone.objects.filter(resource_type=resource_type, patient_id__in=hidden)
                          .values_list("resource_id", flat=True))
    return _lines_withheld(lines=lines, deleted=export_file.kind == ExportFile.Kind.DELETED,
                           hidden=hidden, hidden_ids=hidden_ids)


def _lines_withheld(*, lines: Iterator[bytes], deleted: bool, hidden: set[str], hidden_ids: set[str]) -> Iterator[bytes]:
    for line in lines:
        resource = json.loads(line)
        if deleted:
            entries = resource.get("entry") or []
            kept = [e for e in entries
                    if str((e.get("request") or {}).get("url", "")).rpartition("/")[2] not in hidden_ids]
            if not kept:
                continue
            if len(kept) != len(entries):
                line = json.dumps({**resource, "entry": kept}, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"
        elif _referenced_patient(resource) in hidden or resource.get("id") in hidden_ids:
            continue
        yield line if line.endswith(b"\n") else line + b"\n"


# --- Status and manifest ---------------------------------------------------------------------


def export_poll_check(*, job: ExportJob) -> int:
    """Account a status poll of a running job; return the Retry-After seconds to ask for.

    Bulk Data req 127/128: a client polling faster than asked gets 429 + Retry-After.
    Small jobs ask for 1 s, so a one-patient export is picked up within a second or two.
    """
    now = timezone.now()
    remaining = job.units.exclude(status=ExportWorkUnit.Status.DONE).count()
    retry_after = 1 if remaining <= 40 else min(30, 1 + remaining // 40)
    if job.next_poll_at and now < job.next_poll_at:
        wait = max(1, int((job.next_poll_at - now).total_seconds() + 0.999))
        raise FHIRError("Polling too often; wait as Retry-After says.", status=429, code="throttled",
                        headers={"Retry-After": str(wait)})
    ExportJob.objects.filter(pk=job.pk).update(
        last_polled_at=now, next_poll_at=now + datetime.timedelta(seconds=retry_after / 2)
    )
    return retry_after


def export_progress(*, job: ExportJob) -> str:
    """Return an X-Progress text (under 100 characters, Bulk Data req 133)."""
    # One aggregate, not two counts: clients poll this on every status request.
    counts = job.units.aggregate(total=Count("pk"), done=Count("pk", filter=Q(status=ExportWorkUnit.Status.DONE)))
    total, done = counts["total"], counts["done"]
    percent = int(100 * done / total) if total else 100
    return f"{percent}% ({done} of {total} work units done)"


def export_manifest(*, job: ExportJob, file_url_base: str) -> dict[str, Any]:
    """Return the Bulk Data complete-status manifest (req 150-199)."""
    files = ExportFile.objects.filter(job=job).order_by("resource_type", "name")
    params = ExportParams.from_json(job.params) if job.operation != MEMBER_MATCH_OPERATION else ExportParams(types=[])

    def item(export_file: ExportFile) -> dict[str, Any]:
        return {"type": export_file.resource_type, "url": f"{file_url_base}{export_file.file_id}", "count": export_file.count}

    manifest: dict[str, Any] = {
        "transactionTime": job.transaction_time.isoformat().replace("+00:00", "Z"),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": [item(f) for f in files if f.kind == ExportFile.Kind.OUTPUT],
        "error": [item(f) for f in files if f.kind == ExportFile.Kind.ERROR],
    }
    if params.since:
        # Req 179-190: resources deleted after _since, from ResourceTombstone (per unit).
        manifest["deleted"] = [item(f) for f in files if f.kind == ExportFile.Kind.DELETED]
    if job.operation == "davinci-data-export" and params.export_type:
        manifest["extension"] = {"exportType": params.export_type}
    return manifest


def export_expires_header(*, job: ExportJob) -> str:
    return http_date(job.expires_at.timestamp()) if job.expires_at else ""
