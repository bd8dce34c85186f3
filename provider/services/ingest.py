"""Ingest Bulk Data NDJSON files into the hospital's local FHIR store.

Bulk Data IG 2.0.0 (export.html#file-request): each output file holds one resource per
line, all of the manifest entry's ``type``. A file is streamed line by line (memory stays
flat whatever its size), each resource is checked, and the good ones are upserted by
(type, id) in batches; a bad line becomes an ``IngestIssue`` and the rest still loads.

How it scales: validation with fhir.resources is pure Python and bound to one core, so
a big file is cut into chunks of whole lines with ``ndjson_chunk_plan`` and each chunk is
ingested by its own task (``ndjson_ingest_chunk``) on as many workers as there are.
Every write is an idempotent upsert, so chunks may run in any order, in parallel, or twice.

Inside one worker, validation is the ceiling and the worker does little else: lines are
parsed with orjson (the same parse the validation-only baseline of ``bench/ingest.py``
times) and the structure checks are one regular-expression scan of the line's text.
Everything after the checks (indexed columns, search tokens, COPY text, the database
client) runs in a forked helper process (``_Writer``), and Postgres works on its own, so
on a machine with cores to spare a worker ingests at about the validation-only rate.
Postgres side: first loads COPY straight into the table (no per-id look-up), later ones
look ids up and upsert through a staging table, and bulk writes commit with
``synchronous_commit = off`` (see ``_upsert_postgres`` for why that loses nothing).
"""

from __future__ import annotations

import concurrent.futures
import datetime
import multiprocessing
import multiprocessing.connection
import os
import logging
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal, NoReturn

from django.db import connections, transaction
from django.db.utils import DEFAULT_DB_ALIAS
from django.utils import timezone
import orjson
from fhir.resources.R4B import get_fhir_model_class

from fhirkit.outcome import operation_outcome, outcome_issue
from fhirkit.validation import resource_validate
from provider.models import IngestIssue, LocalResource, PayerConnection, SyncFile, SyncJob

logger = logging.getLogger(__name__)

ValidationLevel = Literal["full", "structure"]

BATCH_SIZE = 2000

# R4 datatypes.html#id
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
# R4 references.html#literal: relative "Type/id[/_history/vid]", an absolute URL ending so,
# "urn:uuid:"/"urn:oid:" (inside Bundles) or "#local" for a contained resource.
_REFERENCE_RE = re.compile(
    r"(?:(?:https?://\S+/)?[A-Z][A-Za-z]{1,63}/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?"
    r"|urn:(?:uuid|oid):\S+|#\S*)"
)

# Finds, in a line's raw JSON text and at C speed, the first "reference" element whose value
# is not plainly well-formed: one search per line instead of a walk of the resource. Inside
# a JSON string a quote is escaped, so the pattern cannot match string content. A value
# with escapes (or anything else it does not accept) is only a suspect: the resource is
# then walked to decide (``_references_check``).
_REFERENCE_TEXT_CHAR = r'[^"\\\s]'
_REFERENCE_SUSPECT_RE = re.compile(
    r'"reference"\s*:\s*"(?!(?:'
    rf"(?:https?://{_REFERENCE_TEXT_CHAR}+/)?[A-Z][A-Za-z]{{1,63}}/[A-Za-z0-9\-.]{{1,64}}"
    r"(?:/_history/[A-Za-z0-9\-.]{1,64})?"
    rf"|urn:(?:uuid|oid):{_REFERENCE_TEXT_CHAR}+|#{_REFERENCE_TEXT_CHAR}*"
    r')")'
)
# PostgreSQL jsonb cannot hold U+0000 ("unsupported Unicode escape sequence"): such a line
# would fail its whole COPY batch, so it is refused on its own (on SQLite too, alike).
_NUL_ESCAPE_RE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass
class IngestResult:
    """What one ingest call did.

    ``lines``: non-blank lines read; ``stored``: rows inserted or replaced; ``unchanged``:
    valid resources already stored in the same or a later version; ``errors``: bad lines
    (each an IngestIssue); ``by_type``: valid resources per type (stored + unchanged).
    """

    lines: int = 0
    stored: int = 0
    unchanged: int = 0
    errors: int = 0
    by_type: dict[str, int] = field(default_factory=dict)

    def add(self, other: IngestResult) -> None:
        """Add another chunk's result to this one."""
        self.lines += other.lines
        self.stored += other.stored
        self.unchanged += other.unchanged
        self.errors += other.errors
        self.by_type = dict(Counter(self.by_type) + Counter(other.by_type))


@dataclass(frozen=True)
class NDJSONChunk:
    """Whole lines ``[start_byte, end_byte)`` of a file; ``first_line`` numbers the first of them."""

    start_byte: int
    end_byte: int
    first_line: int


class LineError(Exception):
    """A line that cannot be stored; carries the OperationOutcome issues saying why."""

    def __init__(self, issues: list[dict[str, Any]]) -> None:
        super().__init__(issues[0]["diagnostics"] if issues else "invalid")
        self.issues = issues


# --- extraction of the indexed columns -------------------------------------------------

# Which element names the Patient a resource is about (US Core / R4 compartment-patient).
_PATIENT_ELEMENTS = ("subject", "patient", "beneficiary")

# Where each type keeps the date its searches use (R4 search parameters "date"/"created").
_DATE_PATHS: dict[str, tuple[tuple[str, ...], ...]] = {
    "Encounter": (("period", "start"), ("period", "end")),
    "Condition": (("onsetDateTime",), ("onsetPeriod", "start"), ("recordedDate",)),
    "Observation": (("effectiveDateTime",), ("effectivePeriod", "start"), ("effectiveInstant",), ("issued",)),
    "Procedure": (("performedDateTime",), ("performedPeriod", "start")),
    "MedicationRequest": (("authoredOn",),),
    "ExplanationOfBenefit": (("billablePeriod", "start"), ("created",)),
    "Claim": (("created",), ("billablePeriod", "start")),
    "ClaimResponse": (("created",),),
    "DiagnosticReport": (("effectiveDateTime",), ("effectivePeriod", "start"), ("issued",)),
    "Immunization": (("occurrenceDateTime",), ("recorded",)),
    "AllergyIntolerance": (("recordedDate",), ("onsetDateTime",)),
    "MedicationDispense": (("whenHandedOver",), ("whenPrepared",)),
    "DocumentReference": (("date",),),
    "CarePlan": (("period", "start"),),
    "Coverage": (("period", "start"),),
    "Patient": (("birthDate",),),
}

# Token search values kept in LocalResource.search_tokens: (search name, element, kind).
_TOKEN_ELEMENTS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "Patient": (("identifier", "identifier", "Identifier"),),
    "Encounter": (("class", "class", "Coding"), ("type", "type", "CodeableConcept")),
    "Condition": (("code", "code", "CodeableConcept"),),
    "Observation": (("code", "code", "CodeableConcept"),),
    "Procedure": (("code", "code", "CodeableConcept"),),
    "MedicationRequest": (("code", "medicationCodeableConcept", "CodeableConcept"),),
}

_DATE_RE = re.compile(r"(\d{4})(?:-(\d{2})(?:-(\d{2}))?)?(T.*)?")


_INSTANTS: dict[str, datetime.datetime | None] = {}


def fhir_instant_parse(value: Any) -> datetime.datetime | None:
    """Return the start of a FHIR date/dateTime/instant as an aware datetime (UTC if no zone)."""
    if value.__class__ is not str:
        return None
    # An export repeats its dates (a lastUpdated per load, a day per visit): remember the
    # recent ones, within a bound so that memory stays flat.
    parsed = _INSTANTS.get(value, _INSTANTS)
    if parsed is not _INSTANTS:
        return parsed  # type: ignore[return-value]
    if len(_INSTANTS) >= 4096:
        _INSTANTS.clear()
    parsed = _INSTANTS[value] = _fhir_instant_parse(value)
    return parsed


def _fhir_instant_parse(value: str) -> datetime.datetime | None:
    match = _DATE_RE.fullmatch(value)
    if not match:
        return None
    year, month, day, time_part = match.groups()
    try:
        if time_part:
            parsed = datetime.datetime.fromisoformat(value)
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)
        return datetime.datetime(int(year), int(month or 1), int(day or 1), tzinfo=datetime.timezone.utc)
    except ValueError:
        return None


def token_word_encode(text: str) -> str:
    """Return ``text`` as it appears inside one search_tokens word."""
    # Tokens are space-delimited; R4 code values may hold single inner spaces.
    if "%" in text or " " in text:
        return text.replace("%", "%25").replace(" ", "%20")
    return text


def search_tokens_extract(resource: dict[str, Any]) -> str:
    """Return the space-delimited ``name=value`` words the token and string searches match."""
    words: list[str] = []
    resource_type = resource["resourceType"]
    for name, element, kind in _TOKEN_ELEMENTS.get(resource_type, ()):
        value = resource.get(element)
        if value is None:
            continue
        items = value if value.__class__ is list else (value,)
        codings: list[tuple[Any, Any]] = []
        for item in items:
            if item.__class__ is not dict:
                continue
            if kind == "Identifier":
                codings.append((item.get("system"), item.get("value")))
            elif kind == "Coding":
                codings.append((item.get("system"), item.get("code")))
            else:
                for coding in item.get("coding") or ():
                    if coding.__class__ is dict:
                        codings.append((coding.get("system"), coding.get("code")))
        for system, code in codings:
            if code.__class__ is not str or not code:
                continue
            code = token_word_encode(code)
            words.append(f"{name}={code}")
            if system.__class__ is str:
                words.append(f"{name}={token_word_encode(system)}|{code}")
    if resource_type == "Patient":
        # R4 Patient search "name": any part of any name (family, given, prefix, suffix, text).
        for human_name in resource.get("name") or ():
            if not isinstance(human_name, dict):
                continue
            parts = [human_name.get("family"), human_name.get("text")]
            for key in ("given", "prefix", "suffix"):
                parts.extend(human_name.get(key) or ())
            for part in parts:
                if isinstance(part, str):
                    for piece in part.split():
                        words.append(f"name={token_word_encode(piece.lower())}")
    return f" {' '.join(words)} " if words else ""


def _reference_id(reference: Any, resource_type: str) -> str:
    if reference.__class__ is not dict:
        return ""
    text = reference.get("reference")
    if text.__class__ is not str:
        return ""
    # The usual relative "Patient/123" first, without splitting.
    prefix = f"{resource_type}/"
    if text.startswith(prefix) and text.find("/", len(prefix)) < 0:
        return text[len(prefix):]
    parts = text.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] == resource_type:
        return parts[-1]
    return ""


def columns_extract(resource: dict[str, Any]) -> tuple[str, datetime.datetime | None, str]:
    """Return (patient_id, date, status): the indexed columns of ``resource``."""
    resource_type = resource["resourceType"]
    if resource_type == "Patient":
        patient_id = resource["id"]
    else:
        patient_id = ""
        for element in _PATIENT_ELEMENTS:
            if element in resource:
                patient_id = _reference_id(resource[element], "Patient")
                if patient_id:
                    break
    date = None
    for path in _DATE_PATHS.get(resource_type, ()):
        value: Any = resource.get(path[0])
        if len(path) > 1:
            value = value.get(path[1]) if value.__class__ is dict else None
        if value is not None:
            date = fhir_instant_parse(value)
            if date is not None:
                break
    status = resource.get("status")
    return patient_id, date, status if status.__class__ is str else ""


# --- checks -------------------------------------------------------------------------------


def ndjson_line_parse(line: bytes) -> Any:
    """Return the JSON value of one NDJSON line; raise LineError if it is not JSON.

    orjson parses several times faster than the json module, and it refuses what jsonb
    would refuse later (invalid UTF-8, lone surrogates, numbers out of range), so such a
    line is rejected on its own instead of failing its batch.
    """
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError as error:
        raise LineError([outcome_issue(code="structure", diagnostics=f"The line is not JSON: {error}.")]) from None


_KNOWN_TYPES: dict[str, bool] = {}


def resource_type_known(resource_type: str) -> bool:
    """Return whether fhir.resources R4B has a model for ``resource_type``."""
    known = _KNOWN_TYPES.get(resource_type)
    if known is None:
        try:
            get_fhir_model_class(resource_type)
            known = True
        except (KeyError, ValueError):
            known = False
        _KNOWN_TYPES[resource_type] = known
    return known


def _references_check(node: Any, path: str, issues: list[dict[str, Any]]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                if not _REFERENCE_RE.fullmatch(value):
                    issues.append(
                        outcome_issue(
                            code="structure",
                            diagnostics=f"Malformed reference {value[:100]!r}.",
                            expression=[f"{path}.reference"],
                        )
                    )
            elif isinstance(value, (dict, list)):
                _references_check(value, f"{path}.{key}", issues)
    elif isinstance(node, list):
        for index, item in enumerate(node):
            if isinstance(item, (dict, list)):
                _references_check(item, f"{path}[{index}]", issues)


def resource_check(
    resource: Any, *, expected_type: str | None, validation_level: ValidationLevel, text: str | None = None
) -> None:
    """Raise LineError unless ``resource`` may be stored.

    ``structure`` (for payers the hospital trusts): a JSON object of a known R4B
    resourceType, with a valid id and well-formed references. ``full`` also validates
    it against the fhir.resources R4B model of its type. ``text``, the JSON the resource
    was parsed from, lets the references be checked without walking the resource.
    """
    if not isinstance(resource, dict):
        raise LineError([outcome_issue(code="structure", diagnostics="The line is not a JSON object.")])
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        raise LineError(
            [outcome_issue(code="required", diagnostics="resourceType is missing.", expression=["resourceType"])]
        )
    if not resource_type_known(resource_type):
        raise LineError(
            [
                outcome_issue(
                    code="not-supported",
                    diagnostics=f"Unknown resourceType {resource_type[:100]!r}.",
                    expression=["resourceType"],
                )
            ]
        )
    # Bulk Data export.html#file-request: each file holds resources of the manifest
    # entry's type only.
    if expected_type and resource_type != expected_type:
        raise LineError(
            [
                outcome_issue(
                    code="invalid",
                    diagnostics=f"A {resource_type} in a file the manifest lists as {expected_type}.",
                    expression=["resourceType"],
                )
            ]
        )
    resource_id = resource.get("id")
    if not isinstance(resource_id, str) or not _ID_RE.fullmatch(resource_id):
        raise LineError(
            [
                outcome_issue(
                    code="required" if resource_id is None else "invalid",
                    diagnostics="The resource has no valid id (R4 datatypes.html#id).",
                    expression=[f"{resource_type}.id"],
                )
            ]
        )
    issues: list[dict[str, Any]] = []
    if text is None or _REFERENCE_SUSPECT_RE.search(text):
        # Walk the resource only when its text holds a suspect reference (rare).
        _references_check(resource, resource_type, issues)
    if issues:
        raise LineError(issues)
    if text is not None and "\\u0000" in text and _NUL_ESCAPE_RE.search(text):
        raise LineError(
            [outcome_issue(code="not-supported", diagnostics="The resource holds a U+0000 character, which cannot be stored.")]
        )
    if validation_level == "full":
        issues = resource_validate(resource)
        if issues:
            raise LineError(issues)


# --- writing --------------------------------------------------------------------------------

_COLUMNS = (
    "resource_type", "resource_id", "version_id", "last_updated", "patient_id", "date", "status",
    "search_tokens", "resource", "connection_id", "sync_job_id", "export_time", "ingested_at",
)
_DATETIME_INDEXES = tuple(_COLUMNS.index(name) for name in ("last_updated", "date", "export_time", "ingested_at"))
_CONNECTION_INDEX = _COLUMNS.index("connection_id")
# The store is partitioned by source (LocalResource's unique constraint): a row is only
# ever replaced by the same connection's newer version, never taken over by another's.
_CONFLICT = "(connection_id, resource_type, resource_id)"
_UPDATE_SET = ", ".join(f"{column} = EXCLUDED.{column}" for column in _COLUMNS[2:] if column != "connection_id")

# A later version replaces an earlier one, an earlier one never replaces a later one, and
# the same version again changes nothing (not even the provenance). Order by
# meta.lastUpdated first; with equal (or no) lastUpdated, by meta.versionId (shorter first,
# so "9" < "10"), and only when the content differs.
_NEWER_POSTGRES = """
    EXCLUDED.last_updated > t.last_updated
    OR (t.last_updated IS NULL AND EXCLUDED.last_updated IS NOT NULL)
    OR (EXCLUDED.last_updated IS NOT DISTINCT FROM t.last_updated
        AND (length(EXCLUDED.version_id), EXCLUDED.version_id) >= (length(t.version_id), t.version_id)
        AND EXCLUDED.resource IS DISTINCT FROM t.resource)
"""
_NEWER_SQLITE = """
    EXCLUDED.last_updated > t.last_updated
    OR (t.last_updated IS NULL AND EXCLUDED.last_updated IS NOT NULL)
    OR (EXCLUDED.last_updated IS t.last_updated
        AND (length(EXCLUDED.version_id), EXCLUDED.version_id) >= (length(t.version_id), t.version_id)
        AND EXCLUDED.resource IS NOT t.resource)
"""

_TABLE = LocalResource._meta.db_table
_STAGE = "provider_localresource_stage"


def _sort_key(row: tuple) -> tuple:
    last_updated = row[3]
    return (
        last_updated is not None,
        last_updated or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc),
        len(row[2]),
        row[2],
    )


def _rows_dedupe(rows: list[tuple]) -> list[tuple]:
    # One INSERT ... ON CONFLICT may not touch a row twice: keep the latest version of
    # each (type, id) in the batch (a batch holds one source's rows). Most batches repeat no key.
    if len({(row[0], row[1]) for row in rows}) == len(rows):
        return rows
    latest: dict[tuple[str, str], tuple] = {}
    for row in rows:
        key = (row[0], row[1])
        kept = latest.get(key)
        if kept is None or _sort_key(row) >= _sort_key(kept):
            latest[key] = row
    return list(latest.values())


def _copy_field(value: Any) -> str:
    # PostgreSQL COPY text format: \N is NULL; backslash, tab, newline and CR are escaped.
    if value is None:
        return "\\N"
    if isinstance(value, str):
        if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
            return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
        return value
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)


_COPY_NULL = "\\N"


def _copy_escapes(text: str) -> bool:
    # Four substring scans run at memchr speed; a regular expression over the ~1 KB of a
    # resource's JSON is some thirty times slower.
    return "\\" in text or "\t" in text or "\n" in text or "\r" in text


def _copy_data(rows: list[tuple]) -> str:
    # COPY's text format written by hand: several times cheaper than write_row per row,
    # which matters because this runs beside validation under the same GIL. Escaping is
    # rare and the provenance columns are the same for the whole batch: they are
    # formatted once, and so is each repeated timestamp.
    tails: dict[tuple, str] = {}
    stamps: dict[datetime.datetime | None, str] = {None: _COPY_NULL}
    lines = []
    for row in rows:
        tail_key = row[9:]
        tail = tails.get(tail_key)
        if tail is None:
            tail = tails[tail_key] = "\t".join(map(_copy_field, tail_key))
        # resource_type and resource_id passed resource_check: no characters to escape.
        version_id, patient_id, status, tokens, text = row[2], row[4], row[6], row[7], row[8]
        if _copy_escapes(f"{version_id}{patient_id}{status}{tokens}"):
            version_id, patient_id, status, tokens = map(_copy_field, (version_id, patient_id, status, tokens))
        if _copy_escapes(text):
            text = _copy_field(text)
        last_updated = stamps.get(row[3])
        if last_updated is None:
            last_updated = stamps[row[3]] = row[3].isoformat()
        date = stamps.get(row[5])
        if date is None:
            date = stamps[row[5]] = row[5].isoformat()
        lines.append(
            f"{row[0]}\t{row[1]}\t{version_id}\t{last_updated}\t{patient_id}\t{date}\t{status}\t{tokens}\t{text}\t{tail}\n"
        )
    return "".join(lines)


def _copy_new(cursor, rows: list[tuple]) -> bool:
    """COPY ``rows`` straight into the table; return False, storing none, if one is there."""
    import psycopg  # only on Postgres

    # In key order the unique index takes the batch in a few runs of neighbouring pages.
    rows = sorted(rows)
    try:
        with transaction.atomic(using=cursor.db.alias):
            with cursor.cursor.copy(f"COPY {_TABLE} ({', '.join(_COLUMNS)}) FROM STDIN") as copy:
                copy.write(_copy_data(rows))
    except psycopg.errors.UniqueViolation:
        return False
    return True


def _upsert_postgres(cursor, rows: list[tuple], *, optimistic: bool) -> tuple[int, bool]:

    columns = ", ".join(_COLUMNS)
    raw = cursor.cursor  # the psycopg cursor under Django's wrapper
    # A bulk load commits asynchronously (PostgreSQL wal-async-commit): a crash may lose
    # the last batches' commits, never corrupt them, and the sync job only marks a file
    # ingested in a later, synchronous commit, which flushes the WAL of every batch before
    # it; a file cut short is ingested again, idempotently. SET LOCAL ends with the batch.
    cursor.execute("SET LOCAL synchronous_commit = off")
    # Resources not stored yet (a first sync) go straight in with COPY: one pass instead
    # of staging plus INSERT ... SELECT, and without looking each id up first (at a
    # million rows the look-ups cost as much again as the unique index's own). After a
    # batch that held stored resources (an incremental sync), look them up first.
    if optimistic and _copy_new(cursor, rows):
        return len(rows), False
    ids_by_type: dict[str, list[str]] = {}
    for row in rows:
        ids_by_type.setdefault(row[0], []).append(row[1])
    connection_id = rows[0][_CONNECTION_INDEX]
    existing: set[tuple[str, str]] = set()
    for resource_type, ids in ids_by_type.items():
        # One text parameter split by the server: cheaper to send than an array of 1,000
        # strings. Ids passed resource_check, so they hold no space.
        cursor.execute(
            f"SELECT resource_id FROM {_TABLE} WHERE connection_id = %s AND resource_type = %s"
            " AND resource_id = ANY(string_to_array(%s, ' '))",
            [connection_id, resource_type, " ".join(ids)],
        )
        existing.update((resource_type, resource_id) for (resource_id,) in cursor.fetchall())
    new = [row for row in rows if (row[0], row[1]) not in existing]
    known = [row for row in rows if (row[0], row[1]) in existing] if existing else []
    written = 0
    if new:
        if _copy_new(cursor, new):
            written += len(new)
        else:
            # Another worker stored one of them in the meantime: upsert them all.
            known = rows
    if known:
        # COPY into a session-local staging table, then one INSERT ... SELECT ... ON
        # CONFLICT that applies the version rule.
        cursor.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {_STAGE} ("
            "resource_type varchar(40), resource_id varchar(64), version_id varchar(64),"
            " last_updated timestamptz, patient_id varchar(64), date timestamptz, status varchar(40),"
            " search_tokens text, resource jsonb, connection_id bigint, sync_job_id bigint,"
            " export_time timestamptz, ingested_at timestamptz)"
        )
        cursor.execute(f"TRUNCATE {_STAGE}")
        with raw.copy(f"COPY {_STAGE} ({columns}) FROM STDIN") as copy:
            copy.write(_copy_data(known))
        cursor.execute(
            f"INSERT INTO {_TABLE} AS t ({columns}) SELECT {columns} FROM {_STAGE} "
            f"ON CONFLICT {_CONFLICT} DO UPDATE SET {_UPDATE_SET} WHERE {_NEWER_POSTGRES}"
        )
        written += cursor.rowcount
    return written, bool(existing)


def _upsert_sqlite(cursor, rows: list[tuple]) -> int:
    placeholders = ", ".join(["%s"] * len(_COLUMNS))
    written = 0
    sql = (
        f"INSERT INTO {_TABLE} AS t ({', '.join(_COLUMNS)}) VALUES ({placeholders}) "
        f"ON CONFLICT {_CONFLICT} DO UPDATE SET {_UPDATE_SET} WHERE {_NEWER_SQLITE}"
    )
    # Store timestamps as the ORM does (naive UTC text), so that its lookups match them.
    adapt = cursor.db.ops.adapt_datetimefield_value
    for row in rows:
        row = list(row)
        for index in _DATETIME_INDEXES:
            row[index] = adapt(row[index])
        cursor.execute(sql, row)
        written += cursor.rowcount
    return written


def _rows_write(rows: list[tuple], *, using: str, optimistic: bool = True) -> tuple[int, bool]:
    """Upsert ``rows`` in one transaction.

    Return how many rows were inserted or replaced, and whether some were stored already
    (then the next batch had better not be ``optimistic``: see ``_upsert_postgres``).
    """
    rows = _rows_dedupe(rows)
    db = connections[using]
    with transaction.atomic(using=using), db.cursor() as cursor:
        if db.vendor == "postgresql":
            return _upsert_postgres(cursor, rows, optimistic=optimistic)
        return _upsert_sqlite(cursor, rows), True


def _rows_build(items: list[tuple[Any, bytes]], *, provenance: tuple) -> list[tuple]:
    """Return the table rows of checked resources: (parsed resource or None, its line)."""
    rows = []
    for resource, line in items:
        if resource is None:
            resource = orjson.loads(line)
        meta = resource.get("meta")
        if meta.__class__ is not dict:
            meta = {}
        version_id = meta.get("versionId")
        patient_id, date, status = columns_extract(resource)
        rows.append(
            (
                resource["resourceType"],
                resource["id"],
                version_id[:64] if version_id.__class__ is str else "",
                fhir_instant_parse(meta.get("lastUpdated")),
                patient_id[:64],
                date,
                status[:40],
                search_tokens_extract(resource),
                # The original JSON, not a re-serialisation (STYLE.md "FHIR").
                line.decode(),
                *provenance,
            )
        )
    return rows


class _Writer:
    """Turn checked lines into rows and upsert them, in a helper process when that pays.

    fhir.resources validation is pure Python and holds the GIL, so anything else the
    worker does per resource (columns, search tokens, COPY text, the database client) comes
    straight off the validation rate; a thread does not help. Once a file proves larger
    than one batch, a forked helper process does all of it: the worker only sends each
    batch's checked lines down a pipe and goes on validating, while the helper and
    Postgres work on other cores. At most one batch is in the helper while the next is
    built, so memory stays flat. Small files, SQLite, and callers inside a transaction
    (which a second connection could not see) write on the caller's connection.
    """

    def __init__(self, *, using: str, background: bool | None, provenance: tuple) -> None:
        self.using = using
        self.provenance = provenance
        db = connections[using]
        if background is None:
            background = db.vendor == "postgresql" and not db.in_atomic_block and hasattr(os, "fork")
        self.background = background
        self.pipe: multiprocessing.connection.Connection | None = None
        self.pid = 0
        self.pending = 0
        self.written = 0
        self.stored_seen = False

    # Batches sent to the helper and not yet written: one being written, one being built.
    IN_FLIGHT = 2

    def submit(self, items: list[tuple[Any, bytes]], *, more: bool) -> None:
        """Write one batch; ``more`` says whether further batches follow."""
        # Never inside a transaction: the helper's connection could not see it, and closing
        # the caller's connection (``_start``) would end it.
        if self.pipe is None and self.background and more and not connections[self.using].in_atomic_block:
            self._start()
        if self.pipe is None:
            written, self.stored_seen = _rows_write(
                _rows_build(items, provenance=self.provenance), using=self.using, optimistic=not self.stored_seen
            )
            self.written += written
            return
        while self.pending >= self.IN_FLIGHT:
            self._receive()
        self.pipe.send_bytes(b"\n".join(line for _, line in items))
        self.pending += 1

    def _receive(self) -> None:
        try:
            outcome, value = self.pipe.recv()
        except EOFError:
            raise RuntimeError("The ingest writer process ended unexpectedly.") from None
        self.pending -= 1
        if outcome == "error":
            self.pending = 0
            raise value
        self.written += value

    def close(self) -> None:
        if self.pipe is None:
            return
        try:
            while self.pending:
                self._receive()
        finally:
            self.pipe.close()  # the helper reads EOF and exits
            self.pipe = None
            os.waitpid(self.pid, 0)

    def _start(self) -> None:
        # The helper must not share the caller's database session: close it (we are
        # outside any transaction; Django reconnects on next use) so that neither process
        # inherits a live one.
        connections[self.using].close()
        parent_end, child_end = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:  # the helper
            parent_end.close()
            _writer_serve(child_end, using=self.using, provenance=self.provenance)
        child_end.close()
        self.pipe, self.pid = parent_end, pid


def _writer_serve(pipe: multiprocessing.connection.Connection, *, using: str, provenance: tuple) -> NoReturn:
    """Upsert the batches that arrive on ``pipe`` until it closes; answer each with its count.

    The rows of the next batch are built while a thread waits on Postgres for the last.
    """
    status = 0
    database = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    writing: concurrent.futures.Future | None = None
    stored_seen = False

    def answer() -> None:
        nonlocal stored_seen
        written, stored_seen = writing.result()
        pipe.send(("ok", written))

    try:
        while True:
            if writing is not None and not pipe.poll():
                # Nothing to build meanwhile, and the caller may be waiting for this answer.
                answer()
                writing = None
            try:
                data = pipe.recv_bytes()
            except EOFError:
                data = None
            rows = _rows_build([(None, line) for line in data.split(b"\n")], provenance=provenance) if data else []
            if writing is not None:
                answer()
                writing = None
            if data is None:
                break
            writing = database.submit(_rows_write, rows, using=using, optimistic=not stored_seen)
    except Exception as error:
        status = 1
        try:
            pipe.send(("error", error))
        except Exception:  # an exception that does not pickle, or a closed pipe
            try:
                pipe.send(("error", RuntimeError(f"{type(error).__name__}: {error}")))
            except Exception:
                pass
    finally:
        try:
            database.submit(connections[using].close).result()
        finally:
            # Skip the parent's atexit handlers and buffers: they are not this process's.
            os._exit(status)


def _issues_write(issues: list[IngestIssue]) -> None:
    # ignore_conflicts: a retried chunk finds its bad lines already recorded.
    IngestIssue.objects.bulk_create(issues, ignore_conflicts=True)


def _lines_read(stream: IO[bytes], *, start_byte: int, end_byte: int | None) -> Iterator[bytes]:
    if start_byte:
        stream.seek(start_byte)
    position = start_byte
    for raw in stream:
        if end_byte is not None and position >= end_byte:
            return
        position += len(raw)
        yield raw


def ndjson_ingest(
    *,
    stream: IO[bytes],
    file_name: str,
    expected_type: str | None,
    connection: PayerConnection,
    sync_job: SyncJob | None = None,
    sync_file: SyncFile | None = None,
    export_time: datetime.datetime | None,
    validation_level: ValidationLevel = "full",
    start_byte: int = 0,
    end_byte: int | None = None,
    first_line: int = 1,
    batch_size: int = BATCH_SIZE,
    background_writes: bool | None = None,
) -> IngestResult:
    """Validate and upsert the NDJSON resources of ``stream``; record each bad line.

    ``stream`` is binary and read line by line. ``start_byte``/``end_byte``/``first_line``
    restrict the call to one chunk from ``ndjson_chunk_plan`` (the stream must then be
    seekable). Every resource is stored as ``connection``'s: only that source's rows are
    compared and replaced. Stored data is never replaced by an older version, and
    ingesting the same lines twice changes nothing.
    """
    if validation_level not in ("full", "structure"):
        raise ValueError(f"Unknown validation level {validation_level!r}.")
    if connection is None or connection.pk is None:
        raise ValueError("Every stored resource belongs to a saved payer connection.")
    using = DEFAULT_DB_ALIAS
    result = IngestResult()
    by_type: Counter[str] = Counter()
    provenance = (connection.pk, sync_job.pk if sync_job else None, export_time, timezone.now())
    batch: list[tuple[Any, bytes]] = []
    issues: list[IngestIssue] = []
    writer = _Writer(using=using, background=background_writes, provenance=provenance)
    line_number = first_line - 1
    parse, check = ndjson_line_parse, resource_check
    try:
        for raw in _lines_read(stream, start_byte=start_byte, end_byte=end_byte):
            line_number += 1
            stripped = raw.strip()
            if not stripped:  # Blank lines (a trailing newline, CRLF files) are not resources.
                continue
            result.lines += 1
            try:
                resource = parse(stripped)
                # orjson has checked that the line is UTF-8.
                check(resource, expected_type=expected_type, validation_level=validation_level, text=stripped.decode())
            except LineError as error:
                result.errors += 1
                issues.append(
                    IngestIssue(
                        sync_file=sync_file,
                        file_name=file_name[:500],
                        line_number=line_number,
                        outcome=operation_outcome(error.issues[:20]),
                    )
                )
                if len(issues) >= batch_size:
                    _issues_write(issues)
                    issues = []
                continue
            by_type[resource["resourceType"]] += 1
            # A helper process parses the line again itself: drop the parsed resource now.
            batch.append((None if writer.background else resource, stripped))
            if len(batch) >= batch_size:
                writer.submit(batch, more=True)
                batch = []
        if batch:
            writer.submit(batch, more=False)
        writer.close()
        if issues:
            _issues_write(issues)
    finally:
        writer.close()
    result.stored = writer.written
    result.by_type = dict(by_type)
    result.unchanged = sum(by_type.values()) - result.stored
    logger.info(
        "Ingested %s lines %s-%s: %s stored, %s unchanged, %s errors",
        file_name, first_line, line_number, result.stored, result.unchanged, result.errors,
    )
    return result


def ndjson_chunk_plan(*, path: str, lines_per_chunk: int = 50_000) -> list[NDJSONChunk]:
    """Return the chunks of whole lines that split the file at ``path`` for parallel ingest.

    Counting newlines runs at disk speed, so planning a file costs little next to
    ingesting it. Fan the chunks out as one task each (``ndjson_ingest_chunk``).
    """
    chunks: list[NDJSONChunk] = []
    start, position, lines_in_chunk, line_number = 0, 0, 0, 1
    first_line = 1
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            offset = 0
            while True:
                newline = block.find(b"\n", offset)
                if newline < 0:
                    break
                offset = newline + 1
                lines_in_chunk += 1
                line_number += 1
                if lines_in_chunk >= lines_per_chunk:
                    end = position + offset
                    chunks.append(NDJSONChunk(start_byte=start, end_byte=end, first_line=first_line))
                    start, first_line, lines_in_chunk = end, line_number, 0
            position += len(block)
    if position > start:
        chunks.append(NDJSONChunk(start_byte=start, end_byte=position, first_line=first_line))
    return chunks


def ndjson_ingest_chunk(
    *,
    path: str,
    chunk: NDJSONChunk,
    file_name: str,
    expected_type: str | None,
    connection: PayerConnection,
    sync_job: SyncJob | None = None,
    sync_file: SyncFile | None = None,
    export_time: datetime.datetime | None,
    validation_level: ValidationLevel = "full",
) -> IngestResult:
    """Ingest one chunk of the local file at ``path`` (see ``ndjson_chunk_plan``)."""
    with open(path, "rb") as stream:
        return ndjson_ingest(
            stream=stream,
            file_name=file_name,
            expected_type=expected_type,
            connection=connection,
            sync_job=sync_job,
            sync_file=sync_file,
            export_time=export_time,
            validation_level=validation_level,
            start_byte=chunk.start_byte,
            end_byte=chunk.end_byte,
            first_line=chunk.first_line,
        )


def deleted_apply(
    *,
    stream: IO[bytes],
    file_name: str,
    connection: PayerConnection,
    sync_file: SyncFile | None = None,
    batch_size: int = BATCH_SIZE,
) -> IngestResult:
    """Remove the resources a manifest's ``deleted`` file lists.

    Bulk Data export.html#bulk-data-output-file-request ("deleted"): each line is a
    transaction Bundle whose entries have ``request.method`` DELETE and ``request.url``
    ``Type/id``. Only ``connection``'s resources are removed: one payer (or one
    organization's client) never deletes what another sent. ``stored`` counts the rows removed.
    """
    result = IngestResult()
    by_type: Counter[str] = Counter()
    issues: list[IngestIssue] = []
    keys: list[tuple[str, str]] = []
    line_number = 0

    def flush() -> None:
        by_kind: dict[str, list[str]] = {}
        for kind, resource_id in keys:
            by_kind.setdefault(kind, []).append(resource_id)
        with transaction.atomic():
            for kind, ids in by_kind.items():
                rows = LocalResource.objects.filter(connection=connection, resource_type=kind, resource_id__in=ids)
                deleted, _ = rows.delete()
                result.stored += deleted
        keys.clear()

    for raw in stream:
        line_number += 1
        text = raw.strip()
        if not text:
            continue
        result.lines += 1
        try:
            bundle = ndjson_line_parse(text)
            if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
                raise LineError(
                    [outcome_issue(code="invalid", diagnostics="A deleted file holds Bundles.", expression=["resourceType"])]
                )
            found: list[tuple[str, str]] = []
            for index, entry in enumerate(bundle.get("entry") or []):
                request = entry.get("request") if isinstance(entry, dict) else None
                url = request.get("url") if isinstance(request, dict) else None
                method = request.get("method") if isinstance(request, dict) else None
                parts = url.split("?")[0].strip("/").split("/") if isinstance(url, str) else []
                if method != "DELETE" or len(parts) < 2 or not resource_type_known(parts[-2]) or not _ID_RE.fullmatch(parts[-1]):
                    raise LineError(
                        [
                            outcome_issue(
                                code="invalid",
                                diagnostics="Each entry needs request.method DELETE and request.url Type/id.",
                                expression=[f"Bundle.entry[{index}].request"],
                            )
                        ]
                    )
                found.append((parts[-2], parts[-1]))
        except LineError as error:
            result.errors += 1
            issues.append(
                IngestIssue(
                    sync_file=sync_file, file_name=file_name[:500], line_number=line_number,
                    outcome=operation_outcome(error.issues),
                )
            )
            continue
        for key in found:
            by_type[key[0]] += 1
        keys.extend(found)
        if len(keys) >= batch_size:
            flush()
    if keys:
        flush()
    if issues:
        _issues_write(issues)
    result.by_type = dict(by_type)
    return result

