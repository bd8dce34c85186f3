"""Read FHIR input for import_fhir: NDJSON line by line, Bundles entry by entry with ijson.

A Bundle is read in two passes: the first keeps only each entry's fullUrl, type and id
and each Patient's member link (a few dozen bytes per entry), so ``urn:uuid:``
references can be rewritten even when an entry refers forward (R4 bundle.html#references);
the second yields the entries one at a time. Nothing here holds a whole Bundle.
"""

import datetime
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ijson
import orjson
from django.conf import settings

from payer.models import Member
from payer.services.imports.report import ImportReport

BUNDLE_TYPES = {"collection", "transaction", "batch", "searchset", "history"}


def member_identifier_system() -> str:
    return settings.PA_MEMBER_IDENTIFIER_SYSTEM


@dataclass
class Item:
    """One resource (or deletion) read from the input, with where it came from."""

    file: str
    line: int | None  # NDJSON line, or the entry's position (1-based) in a Bundle
    resource: dict[str, Any] | None = None
    method: str = "PUT"  # PUT/POST store, DELETE deletes
    url: str = ""  # request.url of a transaction/batch entry
    full_url: str = ""



@dataclass
class ImportRun:
    report: ImportReport
    now: datetime.datetime
    # Patient id aliases (source id -> member's Patient id) and fullUrl -> "Type/id".
    patient_alias: dict[str, str] = field(default_factory=dict)
    full_urls: dict[str, str] = field(default_factory=dict)
    batch: list[Any] = field(default_factory=list)  # candidates waiting to be written
    validate: bool = True


# --- Reading -----------------------------------------------------------------------------

def input_files(paths: list[str]) -> list[Path]:
    """Return the files to read: each file given, and the .json/.ndjson files of each folder.

    Within a folder Patient files come first, so the member links they make are known
    when the resources that refer to them are read.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith((".json", ".ndjson", ".jsonl")))
            files += sorted(found, key=lambda p: (not p.name.startswith("Patient"), str(p)))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{raw}: no such file or folder")
    return files


def is_ndjson(path: Path) -> bool:
    if path.name.endswith((".ndjson", ".jsonl")):
        return True
    # A .json file holding one resource per line (some exporters name them so): the first
    # line is a complete object.
    with path.open("rb") as handle:
        first = handle.readline().strip()
    if not first.startswith(b"{"):
        return False
    try:
        orjson.loads(first)
    except orjson.JSONDecodeError:
        return False
    with path.open("rb") as handle:
        handle.readline()
        return bool(handle.readline().strip())


def _bundle_entries(item_file: str, bundle: dict[str, Any], *, run: ImportRun, first_line: int | None) -> Iterator[Item]:
    """Yield the items of an in-memory Bundle (an NDJSON line that is a Bundle)."""
    btype = bundle.get("type")
    if btype not in BUNDLE_TYPES:
        run.report.read += 1
        run.report.error(file=item_file, line=first_line, message=f"Bundle type {btype!r} is not imported "
                         f"(collection, transaction, batch, searchset, history are).", kind="Bundle")
        return
    entries = bundle.get("entry") or []
    _bundle_map(entries, run=run)
    for entry in entries:
        yield _entry_item(item_file, first_line, entry)


def _entry_item(file: str, line: int | None, entry: Any) -> Item:
    if not isinstance(entry, dict):
        return Item(file=file, line=line, resource=None, method="INVALID")
    request = entry.get("request") or {}
    method = str(request.get("method") or "PUT").upper()
    return Item(file=file, line=line, resource=entry.get("resource"), method=method,
                 url=str(request.get("url") or ""), full_url=str(entry.get("fullUrl") or ""))


def _entry_id(entry: dict[str, Any]) -> tuple[str, str] | None:
    """Return the (type, id) an entry's resource will be stored under (before member links)."""
    resource = entry.get("resource")
    if not isinstance(resource, dict):
        return None
    rtype = resource.get("resourceType")
    rid = resource.get("id")
    full_url = str(entry.get("fullUrl") or "")
    if not rid and full_url.startswith("urn:uuid:"):
        rid = full_url.removeprefix("urn:uuid:")
    if not rid:
        url = str((entry.get("request") or {}).get("url") or "")
        if url.count("/") == 1 and "?" not in url:
            rid = url.split("/")[1]
    return (rtype, rid) if isinstance(rtype, str) and isinstance(rid, str) and rid else None


def _bundle_map(entries: Any, *, run: ImportRun) -> None:
    """Record fullUrl -> Type/id and Patient -> member links of ``entries`` (first pass)."""
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        ids = _entry_id(entry)
        if ids is None:
            continue
        rtype, rid = ids
        if rtype == "Patient":
            member_patient_id = patient_member_patient_id(entry["resource"])
            if member_patient_id:
                run.patient_alias[rid] = member_patient_id
                rid = member_patient_id
        full_url = str(entry.get("fullUrl") or "")
        if full_url:
            run.full_urls[full_url] = f"{rtype}/{rid}"


def patient_member_patient_id(patient: dict[str, Any]) -> str:
    """Return the Patient id of the member ``patient`` names by the member identifier, or ''."""
    member_id = identifier_value(patient.get("identifier"))
    if not member_id:
        return ""
    return Member.objects.filter(member_id=member_id).values_list("patient_id", flat=True).first() or ""


def identifier_value(identifiers: Any) -> str:
    system = member_identifier_system()
    for identifier in identifiers if isinstance(identifiers, list) else []:
        if isinstance(identifier, dict) and identifier.get("system") == system and identifier.get("value"):
            return str(identifier["value"])
    return ""


def read_ndjson(path: Path, *, run: ImportRun, progress_base: int, progress) -> Iterator[Item]:
    name = str(path)
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            line = raw.strip()
            if not line:
                continue
            if progress and number % 5000 == 0:
                progress(progress_base + handle.tell())
            try:
                resource = orjson.loads(line)
            except orjson.JSONDecodeError as error:
                run.report.read += 1
                run.report.error(file=name, line=number, message=f"not JSON: {error}", kind="(unreadable)")
                continue
            if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
                # A Bulk Data ``deleted`` file holds one transaction Bundle of DELETE entries
                # per line (Bulk Data 2.0 export.html, complete status, ``deleted``).
                yield from _bundle_entries(name, resource, run=run, first_line=number)
            else:
                yield Item(file=name, line=number, resource=resource)


def read_bundle(path: Path, *, run: ImportRun, progress_base: int, progress) -> Iterator[Item]:
    name = str(path)
    try:
        with path.open("rb") as handle:
            head = _bundle_head(handle)
    except (ijson.JSONError, ijson.IncompleteJSONError, UnicodeDecodeError) as error:
        run.report.read += 1
        run.report.error(file=name, line=None, message=f"not JSON: {error}", kind="(unreadable)")
        return
    if head["resourceType"] != "Bundle":
        # A single resource in a .json file: it is small by nature; read it whole.
        resource = orjson.loads(path.read_bytes())
        yield Item(file=name, line=None, resource=resource)
        return
    if head["type"] not in BUNDLE_TYPES:
        run.report.read += 1
        run.report.error(file=name, line=None, message=f"Bundle type {head['type']!r} is not imported "
                         f"(collection, transaction, batch, searchset, history are).", kind="Bundle")
        return
    with path.open("rb") as handle:
        _bundle_map(ijson.items(handle, "entry.item", use_float=True), run=run)
    with path.open("rb") as handle:
        for position, entry in enumerate(ijson.items(handle, "entry.item", use_float=True), start=1):
            if progress and position % 2000 == 0:
                progress(progress_base + handle.tell())
            if head["type"] == "searchset" and isinstance(entry, dict) and (entry.get("search") or {}).get("mode") == "outcome":
                run.report.read += 1
                run.report.skip("searchset outcome entry", kind="OperationOutcome")
                continue
            yield _entry_item(name, position, entry)


def _bundle_head(handle) -> dict[str, Any]:
    """Return the top-level ``resourceType`` and ``type`` of a JSON file, streaming its events."""
    head: dict[str, Any] = {"resourceType": None, "type": None}
    for prefix, event, value in ijson.parse(handle):
        if prefix in head and event == "string":
            head[prefix] = value
            if head["resourceType"] and head["resourceType"] != "Bundle":
                break
            if all(head.values()):
                break
    return head
