"""Import FHIR R4 clinical records (Bundles and NDJSON) into the clinical repository.

Design:
- Input is streamed (payer/services/imports/fhir_read.py): NDJSON line by line; a Bundle
  with ijson, entry by entry, in two passes, the first keeping only each entry's fullUrl,
  type and id and each Patient's member link, so ``urn:uuid:`` references are rewritten
  even when an entry refers forward (R4 bundle.html#references). Memory is bounded by the
  largest single resource plus one write batch and that map; no whole Bundle is held.
- Each resource is validated with the fhir.resources R4B model of its type and stored
  with the indexed columns export and search use (patient, clinical date, status).
- Patients and Coverages are linked to members through the identifier system the plan
  configures (``PA_MEMBER_IDENTIFIER_SYSTEM``): a Patient is stored under its member's
  Patient id, and references to the source id are rewritten. Data about a person who is
  no member is an error: the server could never serve it.
- Newer wins: a resource already stored is replaced only when its ``meta.lastUpdated`` is
  later than that of the version stored (the source's, kept in a meta extension); the
  stored ``meta.lastUpdated`` is the import time, so a ``_since`` export sees the change
  (Bulk Data 2.0 req 59: "changed after _since" is about this server).
- ``DELETE`` entries (transaction, batch, history, and the tombstone Bundles of a Bulk
  Data ``deleted`` file) delete the resource and leave a tombstone for ``_since`` exports.
- Entries are written in batches of their own, not as one atomic FHIR transaction: a bad
  entry is reported with its file and position and the rest loads.
"""

import datetime
import os
from dataclasses import dataclass
from typing import Any

import orjson
from django.db import IntegrityError, connection, reset_queries, transaction
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from fhirkit.validation import resource_validate
from payer.models import ClinicalResource, Member
from payer.services.clinical import clinical_resource_delete
from payer.services.export_params import PATIENT_TYPES, SHARED_TYPES
from payer.services.imports.fhir_read import (
    ImportRun,
    Item,
    identifier_value,
    input_files,
    is_ndjson,
    member_identifier_system,
    patient_member_patient_id,
    read_bundle,
    read_ndjson,
)
from payer.services.imports.report import ImportReport, Progress
from payer.services.population import RESOURCE_COLUMNS, _copy

BATCH_SIZE = 1000
# Financial resources and the claims system's own outputs: this server derives
# ExplanationOfBenefit from its claims system (payer/mapping.py), so a clinical feed's
# Claim/EOB must not shadow it; the rest are out of CARIN BB's non-financial scope.
FINANCIAL_TYPES = {
    "Claim", "ClaimResponse", "ExplanationOfBenefit", "PaymentNotice", "PaymentReconciliation",
    "CoverageEligibilityRequest", "CoverageEligibilityResponse", "EnrollmentRequest", "EnrollmentResponse",
    "Invoice", "Account", "ChargeItem", "Contract",
}
STORED_TYPES = {t for t in (*PATIENT_TYPES, *SHARED_TYPES) if t not in FINANCIAL_TYPES}
SOURCE_LAST_UPDATED_URL = "https://provider-access.example/fhir/StructureDefinition/source-last-updated"
_ID_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-.")

# R4: the element that holds the clinically relevant date of each type (the one the
# ``date`` search parameter of that type reads), in order of preference.
_DATE_PATHS: dict[str, tuple[str, ...]] = {
    "Encounter": ("period.start",),
    "Condition": ("onsetDateTime", "onsetPeriod.start", "recordedDate"),
    "Observation": ("effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
    "Procedure": ("performedDateTime", "performedPeriod.start"),
    "MedicationRequest": ("authoredOn",),
    "MedicationDispense": ("whenHandedOver", "whenPrepared"),
    "AllergyIntolerance": ("recordedDate", "onsetDateTime"),
    "Immunization": ("occurrenceDateTime", "recorded"),
    "DiagnosticReport": ("effectiveDateTime", "effectivePeriod.start", "issued"),
    "DocumentReference": ("date", "context.period.start"),
    "CarePlan": ("period.start", "created"),
    "CareTeam": ("period.start",),
    "Goal": ("startDate", "statusDate"),
    "ServiceRequest": ("occurrenceDateTime", "authoredOn"),
    "Provenance": ("recorded",),
    "Coverage": ("period.start",),
}
# The element that names the Patient a resource is about (R4 compartmentdefinition-patient).
_PATIENT_PATHS = ("subject", "patient", "beneficiary")


@dataclass
class _Candidate:
    item: Item
    resource: dict[str, Any]
    patient_id: str
    date: datetime.datetime | None
    status: str
    source_updated: datetime.datetime | None



# --- Checking and writing ----------------------------------------------------------------

def _get(resource: dict[str, Any], path: str) -> Any:
    value: Any = resource
    for part in path.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _when(value: Any) -> datetime.datetime | None:
    """Parse a FHIR date, dateTime or instant into an aware datetime (a date is its midnight UTC)."""
    if not isinstance(value, str):
        return None
    moment = parse_datetime(value)
    if moment is None:
        day = parse_date(value[:10]) if len(value) >= 4 else None
        if day is None and len(value) in (4, 7):  # R4 allows partial dates: YYYY, YYYY-MM
            day = parse_date(value + ("-01-01" if len(value) == 4 else "-01"))
        if day is None:
            return None
        moment = datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
    if timezone.is_naive(moment):
        moment = timezone.make_aware(moment, datetime.UTC)
    return moment


def _rewrite_references(value: Any, *, run: ImportRun) -> Any:
    """Rewrite ``urn:uuid:``/fullUrl references and source Patient ids to the stored ids (in place)."""
    if isinstance(value, dict):
        for key, inner in value.items():
            if key == "reference" and isinstance(inner, str):
                value[key] = _reference_target(inner, run=run)
            else:
                _rewrite_references(inner, run=run)
    elif isinstance(value, list):
        for inner in value:
            _rewrite_references(inner, run=run)
    return value


def _reference_target(reference: str, *, run: ImportRun) -> str:
    if reference in run.full_urls:
        return run.full_urls[reference]
    if reference.startswith("Patient/"):
        alias = run.patient_alias.get(reference.removeprefix("Patient/"))
        if alias:
            return f"Patient/{alias}"
    return reference


def _patient_ref_id(resource: dict[str, Any]) -> str:
    for path in _PATIENT_PATHS:
        ref = _get(resource, path)
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and ref["reference"].startswith("Patient/"):
            return ref["reference"].removeprefix("Patient/")
    return ""


def _status(resource: dict[str, Any]) -> str:
    status = resource.get("status")
    if isinstance(status, str):
        return status[:40]
    for path in ("clinicalStatus",):  # Condition, AllergyIntolerance: a CodeableConcept
        for coding in (_get(resource, path) or {}).get("coding") or []:
            if isinstance(coding, dict) and coding.get("code"):
                return str(coding["code"])[:40]
    if resource.get("resourceType") in ("Patient", "Practitioner", "Organization", "Location", "PractitionerRole"):
        active = resource.get("active")
        return "" if active is None else ("active" if active else "inactive")
    return ""


def _clinical_date(resource: dict[str, Any]) -> datetime.datetime | None:
    for path in _DATE_PATHS.get(resource["resourceType"], ()):
        moment = _when(_get(resource, path))
        if moment is not None:
            return moment
    return None


def _item_check(item: Item, *, run: ImportRun) -> _Candidate | None:
    """Turn an item into a candidate row, or count why it is not one."""
    report = run.report
    resource = item.resource
    rtype = resource.get("resourceType") if isinstance(resource, dict) else None
    kind = rtype if isinstance(rtype, str) else "(not FHIR)"
    if item.method == "INVALID":
        report.error(file=item.file, line=item.line, message="Bundle entry is not a JSON object", kind=kind)
        return None
    if item.method not in ("PUT", "POST"):
        report.skip(f"request method {item.method} is not imported", kind=kind)
        return None
    if not isinstance(resource, dict) or not isinstance(rtype, str):
        report.error(file=item.file, line=item.line, message="not a FHIR resource (no resourceType)", kind=kind)
        return None
    if rtype in FINANCIAL_TYPES:
        report.skip(f"{rtype}: financial data comes from the claims system, not a clinical feed", kind=rtype)
        return None
    if rtype not in STORED_TYPES:
        report.skip(f"{rtype}: type not served by this server", kind=rtype)
        return None
    rid = resource.get("id")
    if not rid and item.full_url.startswith("urn:uuid:"):
        # A POST entry without an id gets the id its urn:uuid names: deterministic, so
        # importing the same Bundle twice stores the same resource once.
        rid = item.full_url.removeprefix("urn:uuid:")
    if not rid and item.url.count("/") == 1:
        rid = item.url.split("/")[1]
    if not isinstance(rid, str) or not rid or len(rid) > 64 or not set(rid) <= _ID_CHARS:
        report.error(file=item.file, line=item.line, item=rtype, message=f"invalid or missing id {rid!r} "
                     "(R4 datatypes.html#id: 1-64 of A-Z a-z 0-9 - .)", kind=rtype)
        return None
    resource["id"] = rid
    label = f"{rtype}/{rid}"
    if run.validate:
        issues = resource_validate(resource)
        if issues:
            detail = "; ".join(f"{(i.get('expression') or [''])[0]}: {i.get('diagnostics')}" for i in issues[:3])
            report.error(file=item.file, line=item.line, item=label, message=f"invalid {rtype}: {detail}", kind=rtype)
            return None
    source_updated = _when(_get(resource, "meta.lastUpdated"))
    _rewrite_references(resource, run=run)

    patient_id = ""
    if rtype == "Patient":
        member_patient_id = run.patient_alias.get(rid) or patient_member_patient_id(resource)
        if not member_patient_id:
            value = identifier_value(resource.get("identifier"))
            report.error(file=item.file, line=item.line, item=label, kind=rtype, column="identifier",
                         message=(f"no member has identifier {member_identifier_system()}|{value}" if value else
                                  f"no identifier of system {member_identifier_system()} (PA_MEMBER_IDENTIFIER_SYSTEM)"))
            return None
        run.patient_alias[rid] = member_patient_id
        resource["id"] = patient_id = member_patient_id
    elif rtype in PATIENT_TYPES:
        patient_id = _patient_ref_id(resource)
        if rtype == "Coverage":
            member_id = identifier_value(resource.get("identifier")) or str(resource.get("subscriberId") or "")
            linked = Member.objects.filter(member_id=member_id).values_list("patient_id", flat=True).first() if member_id else None
            if linked:
                patient_id = linked
                resource["beneficiary"] = {**(resource.get("beneficiary") or {}), "reference": f"Patient/{linked}"}
        if not patient_id:
            report.error(file=item.file, line=item.line, item=label, kind=rtype,
                         message="names no Patient (subject, patient or beneficiary)")
            return None
    return _Candidate(item=item, resource=resource, patient_id=patient_id, date=_clinical_date(resource),
                      status=_status(resource), source_updated=source_updated)


def _stored_source_updated(resource: dict[str, Any]) -> datetime.datetime | None:
    meta = resource.get("meta") or {}
    for ext in meta.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == SOURCE_LAST_UPDATED_URL:
            return _when(ext.get("valueInstant"))
    return _when(meta.get("lastUpdated"))


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    """Return the resource without the meta elements this server manages."""
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("lastUpdated", "versionId", "extension")}
    extensions = [e for e in (resource.get("meta") or {}).get("extension") or [] if e.get("url") != SOURCE_LAST_UPDATED_URL]
    if extensions:
        meta["extension"] = extensions
    body = {k: v for k, v in resource.items() if k != "meta"}
    if meta:
        body["meta"] = meta
    return body


def _flush(run: ImportRun) -> None:
    """Write the batch: members' links checked, newer versions only, in one transaction."""
    batch, run.batch = run.batch, []
    if not batch:
        return
    report = run.report
    # The last version of each resource in the batch competes with the stored one; an
    # earlier duplicate in the same batch is compared with it first.
    latest: dict[tuple[str, str], _Candidate] = {}
    for cand in batch:
        key = (cand.resource["resourceType"], cand.resource["id"])
        other = latest.get(key)
        if other is None:
            latest[key] = cand
            continue
        newer, older = (cand, other) if _newer(cand.source_updated, other.source_updated) else (other, cand)
        latest[key] = newer
        report.skip("an older version of a resource read in the same run", kind=key[0])

    patient_ids = {c.patient_id for c in latest.values() if c.patient_id}
    members = set(Member.objects.filter(patient_id__in=patient_ids).values_list("patient_id", flat=True))
    with transaction.atomic():
        by_type: dict[str, list[str]] = {}
        for rtype, rid in latest:
            by_type.setdefault(rtype, []).append(rid)
        stored: dict[tuple[str, str], ClinicalResource] = {}
        for rtype, ids in by_type.items():
            for row in ClinicalResource.objects.select_for_update().filter(resource_type=rtype, resource_id__in=ids):
                stored[(rtype, row.resource_id)] = row
        writes: list[ClinicalResource] = []
        for key, cand in latest.items():
            rtype = key[0]
            if cand.patient_id and cand.patient_id not in members:
                report.error(file=cand.item.file, line=cand.item.line, item=f"{rtype}/{key[1]}", kind=rtype,
                             message=f"Patient/{cand.patient_id} is not a member (no Member with that Patient id)")
                continue
            row = stored.get(key)
            version = 1
            if row is not None and row.patient_id != cand.patient_id:
                # The same Type/id already holds another person's (or a shared) resource:
                # two sources' ids collide. Replacing it would move one person's record
                # into another's history, so it is refused, whichever version is newer.
                report.error(file=cand.item.file, line=cand.item.line, item=f"{rtype}/{key[1]}", kind=rtype,
                             message=f"{rtype}/{key[1]} is stored for another patient; ids must be unique per type")
                continue
            if row is not None:
                if _content(row.resource) == _content(cand.resource):
                    report.count("unchanged", kind=rtype)
                    continue
                if not _newer(cand.source_updated, _stored_source_updated(row.resource)):
                    report.skip("not newer than the stored version (meta.lastUpdated)", kind=rtype)
                    continue
                version = row.version_id + 1
            resource = cand.resource
            meta = dict(resource.get("meta") or {})
            extensions = [e for e in meta.get("extension") or [] if e.get("url") != SOURCE_LAST_UPDATED_URL]
            if cand.source_updated is not None:
                extensions.append({"url": SOURCE_LAST_UPDATED_URL, "valueInstant": _instant(cand.source_updated)})
            meta.update(versionId=str(version), lastUpdated=_instant(run.now))
            if extensions:
                meta["extension"] = extensions
            resource["meta"] = meta
            writes.append(ClinicalResource(
                resource_type=rtype, resource_id=key[1], version_id=version, last_updated=run.now,
                patient_id=cand.patient_id, date=cand.date, status=cand.status, resource=resource))
            report.count("updated" if row is not None else "stored", kind=rtype)
        _rows_write(creates=[w for w in writes if w.version_id == 1 and (w.resource_type, w.resource_id) not in stored],
                    upserts=[w for w in writes if w.version_id > 1 or (w.resource_type, w.resource_id) in stored])
    reset_queries()


def _rows_write(*, creates: list[ClinicalResource], upserts: list[ClinicalResource]) -> None:
    """Insert new rows and replace changed ones.

    On PostgreSQL new rows go in with COPY, through the population generator's writer
    (payer/services/population.py), several times faster than a parameterised INSERT of
    the JSON; should another import have stored one of them since this batch looked
    (the unique constraint refuses it), the batch falls back to upserts in a savepoint.
    """
    if creates and connection.vendor == "postgresql":
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                _copy(cursor.cursor, ClinicalResource, RESOURCE_COLUMNS, (
                    (r.resource_type, r.resource_id, r.version_id, r.last_updated, r.patient_id, r.date, r.status,
                     orjson.dumps(r.resource).decode()) for r in creates))
            creates = []
        except IntegrityError:
            pass
    ClinicalResource.objects.bulk_create(
        [*creates, *upserts], update_conflicts=True, unique_fields=["resource_type", "resource_id"],
        update_fields=["version_id", "last_updated", "patient_id", "date", "status", "resource"])


def _newer(a: datetime.datetime | None, b: datetime.datetime | None) -> bool:
    """Return whether version ``a`` replaces ``b``: a version without lastUpdated counts as now."""
    if a is None:
        return True
    return b is None or a > b


def _instant(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def _delete(item: Item, *, run: ImportRun) -> None:
    report = run.report
    parts = item.url.strip("/").split("/")
    if len(parts) < 2 or "?" in item.url:
        report.error(file=item.file, line=item.line, item=item.url, kind="(delete)",
                     message="DELETE needs request.url Type/id (conditional deletes are not imported)")
        return
    rtype, rid = parts[-2], parts[-1]
    if rtype == "Patient":
        rid = run.patient_alias.get(rid, rid)
    if clinical_resource_delete(resource_type=rtype, resource_id=rid) is None:
        report.skip("DELETE of a resource not stored", kind=rtype)
    else:
        report.count("deleted", kind=rtype)


def fhir_import(*, paths: list[str], validate: bool = True, progress: Progress | None = None,
                report_path: str | None = None, batch_size: int = BATCH_SIZE) -> ImportReport:
    """Import the FHIR files and folders ``paths`` and return the report of every item read.

    ``progress(done, total)`` is called with the bytes read of all files as it goes; with
    ``report_path`` the report is also written there as JSON. Safe to run twice: a second
    run of the same files stores nothing (every resource is unchanged).
    """
    report = ImportReport(command="import_fhir")
    files = input_files(paths)
    total = sum(os.path.getsize(p) for p in files) or 1
    run = ImportRun(report=report, now=timezone.now(), validate=validate)
    done = 0

    def tick(position: int) -> None:
        if progress:
            progress(min(position, total), total)

    for path in files:
        reader = read_ndjson if is_ndjson(path) else read_bundle
        for item in reader(path, run=run, progress_base=done, progress=tick if progress else None):
            report.read += 1
            if item.method == "DELETE":
                _flush(run)  # a deletion applies after the writes read before it
                _delete(item, run=run)
                continue
            cand = _item_check(item, run=run)
            if cand is not None:
                run.batch.append(cand)
                if len(run.batch) >= batch_size:
                    _flush(run)
        _flush(run)
        done += os.path.getsize(path)
        tick(done)
    report.finish()
    if report_path:
        report.write(report_path)
    return report
