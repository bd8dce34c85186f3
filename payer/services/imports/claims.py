"""Import a claims platform's flat extract (a folder of CSV files) into the systems of record.

The layout is ``LAYOUT`` (payer/services/imports/layout.py), one file per table, described column by column in
docs/claims-extract.md. Design:
- Files are read in dependency order (providers, contracts, members, coverage, claims,
  their lines and diagnoses, prior authorizations) in batches of ``BATCH_SIZE`` rows, so
  memory stays flat however large the extract.
- Every cell is checked for shape (NPI check digit, ICD-10-CM, CPT/HCPCS, NDC, dates,
  amounts, code lists); a bad row is reported with its file, line and column and left
  out, and the rest loads. A row whose parent (member, organization, claim) is not
  loaded is reported the same way.
- Rows are upserted on their natural keys (NPI, contract number, member id, coverage id,
  claim number, (claim, sequence), auth number) and compared with what is stored first:
  a re-run of the same extract writes nothing, and a later extract touches only the rows
  that changed. A claim listed in claim_lines.csv (or claim_diagnoses.csv) has exactly
  the lines listed there afterwards; a claim not listed keeps its lines.
- A claim or prior authorization that changed gets ``updated_at`` = import time (so
  ``_since`` exports of ExplanationOfBenefit see it), then ``claims_changed`` is called
  with their ids (where the EOB projection refresh plugs in) and attribution is
  refreshed for the members of the changed claims only.
"""

import csv
import datetime
import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.conf import settings
from django.db import models, reset_queries, transaction
from django.utils import timezone

from payer.models import (
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    NetworkContract,
    PriorAuthorization,
    ProviderOrganization,
    ProviderPractitioner,
)
from payer.services.attribution import attribution_refresh_members
from payer.services.eob_projection import eob_projection_refresh
from payer.services.imports.layout import LAYOUT, SYSTEMS, TABLES, CellError, Table
from payer.services.imports.report import ImportReport, Progress
from payer.services.synthetic import Org, Prac, directory_rows

BATCH_SIZE = 2000

@dataclass
class _Row:
    line: int
    values: dict[str, Any]


@dataclass
class _Run:
    folder: Path
    report: ImportReport
    now: datetime.datetime
    progress: Progress | None
    total_bytes: int
    done_bytes: int = 0
    changed_claims: set[int] = field(default_factory=set)
    changed_pas: set[int] = field(default_factory=set)
    changed_directory: set[str] = field(default_factory=set)  # organization/practitioner NPIs
    changed_coverage_members: set[str] = field(default_factory=set)


# --- Reading and checking ------------------------------------------------------------------

def _rows(run: _Run, table: Table) -> Iterator[_Row]:
    """Yield the checked rows of ``table``'s file; report each bad row with file, line and column."""
    path = run.folder / table.file
    if not path.exists():
        return
    report = run.report
    kind = table.file.removesuffix(".csv")
    with path.open(newline="", encoding="utf-8-sig") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return
        header = [h.strip() for h in header]
        known = {c.name for c in table.columns}
        missing = [c.name for c in table.columns if c.required and c.name not in header]
        if missing or len(set(header)) != len(header):
            report.read += 1  # the file is one item, an error; its rows are not read
            report.error(file=table.file, line=1, column=",".join(missing), kind=kind,
                         message=f"header lacks required columns {missing}" if missing else "header repeats a column")
            return
        for extra in (h for h in header if h not in known):
            report.skip(f"{table.file}: unknown column {extra!r} ignored", kind=kind)
        index = {name: header.index(name) for name in known if name in header}
        for cells in reader:
            line = reader.line_num
            if run.progress and line % 5000 == 0:
                run.progress(min(run.done_bytes + handle.tell(), run.total_bytes), run.total_bytes)
            if not any(c.strip() for c in cells):
                continue
            report.read += 1
            if len(cells) != len(header):
                report.error(file=table.file, line=line, kind=kind,
                             message=f"{len(cells)} cells, the header has {len(header)}")
                continue
            values: dict[str, Any] = {}
            for column in table.columns:
                raw = cells[index[column.name]].strip() if column.name in index else ""
                if not raw:
                    if column.required:
                        report.error(file=table.file, line=line, column=column.name, kind=kind, message="required")
                        break
                    values[column.name] = column.default
                    continue
                try:
                    values[column.name] = column.parse(raw)
                except CellError as error:
                    report.error(file=table.file, line=line, column=column.name, kind=kind, message=str(error))
                    break
            else:
                yield _Row(line=line, values=values)
    run.done_bytes += path.stat().st_size
    if run.progress:
        run.progress(min(run.done_bytes, run.total_bytes), run.total_bytes)


def _batches(rows: Iterator[_Row], size: int = BATCH_SIZE) -> Iterator[list[_Row]]:
    while batch := list(itertools.islice(rows, size)):
        yield batch


def _row_error(run: _Run, table: Table, row: _Row, column: str, message: str) -> None:
    run.report.error(file=table.file, line=row.line, column=column, message=message, kind=table.file.removesuffix(".csv"))


# --- Writing -----------------------------------------------------------------------------

def _upsert(run: _Run, *, table: Table, model: type[models.Model], key: str,
            items: list[tuple[_Row, dict[str, Any]]], touch: str | None = None) -> list[Any]:
    """Create or update ``items`` (row, field values) on the unique ``key``; return the pks changed.

    A row equal to the stored one is counted unchanged and not written. ``touch`` names a
    timestamp set to the import time on the rows created or changed (and not compared).
    Of two rows with the same key in one batch the later wins; the earlier is reported.
    """
    kind = table.file.removesuffix(".csv")
    by_key: dict[Any, tuple[_Row, dict[str, Any]]] = {}
    for row, fields in items:
        if fields[key] in by_key:
            earlier = by_key[fields[key]][0]
            run.report.skip(f"{table.file}: a later row has the same {key} (line {earlier.line} replaced)", kind=kind)
        by_key[fields[key]] = (row, fields)
    names = [n for n in next(iter(by_key.values()))[1]] if by_key else []
    stored = {obj_key: obj for obj in model.objects.filter(**{f"{key}__in": list(by_key)})
              for obj_key in [getattr(obj, key)]}
    creates, updates, changed = [], [], []
    for value, (row, fields) in by_key.items():
        obj = stored.get(value)
        if obj is None:
            creates.append(model(**fields, **({touch: run.now} if touch else {})))
            run.report.count("stored", kind=kind)
            continue
        if all(getattr(obj, _attname(model, n)) == _fk_value(fields[n]) for n in names):
            run.report.count("unchanged", kind=kind)
            continue
        for n, v in fields.items():
            setattr(obj, n, v)
        if touch:
            setattr(obj, touch, run.now)
        updates.append(obj)
        changed.append(obj.pk)
        run.report.count("updated", kind=kind)
    model.objects.bulk_create(creates, batch_size=BATCH_SIZE)
    if updates:
        model.objects.bulk_update(updates, [_field_name(model, n) for n in (*names, *([touch] if touch else []))],
                                  batch_size=BATCH_SIZE)
    if creates:
        changed += list(model.objects.filter(**{f"{key}__in": [getattr(c, key) for c in creates]}).values_list("pk", flat=True))
    return changed


def _attname(model: type[models.Model], name: str) -> str:
    """Return the attribute that holds ``name``'s raw value (a foreign key's ``*_id``)."""
    for f in model._meta.concrete_fields:
        if name in (f.name, f.attname):
            return f.attname
    raise LookupError(name)


def _field_name(model: type[models.Model], name: str) -> str:
    for f in model._meta.concrete_fields:
        if name in (f.name, f.attname):
            return f.name
    raise LookupError(name)


def _fk_value(value: Any) -> Any:
    return value.pk if isinstance(value, models.Model) else value


def _organizations(run: _Run) -> None:
    table = TABLES["organizations.csv"]
    for batch in _batches(_rows(run, table)):
        items = [(r, {"npi": v["npi"], "name": v["name"], "city": v["city"], "state": v["state"],
                      "fhir_id": v["fhir_id"] or f"org-{v['npi']}"}) for r in batch for v in [r.values]]
        with transaction.atomic():
            changed = _upsert(run, table=table, model=ProviderOrganization, key="npi", items=items)
        run.changed_directory.update(ProviderOrganization.objects.filter(pk__in=changed).values_list("npi", flat=True))


def _practitioners(run: _Run) -> None:
    table = TABLES["practitioners.csv"]
    for batch in _batches(_rows(run, table)):
        orgs = {o.npi: o for o in ProviderOrganization.objects.filter(npi__in={r.values["organization_npi"] for r in batch})}
        items = []
        for row in batch:
            v = row.values
            org = orgs.get(v["organization_npi"])
            if org is None:
                _row_error(run, table, row, "organization_npi", f"no organization with NPI {v['organization_npi']}")
                continue
            items.append((row, {"npi": v["npi"], "family": v["family"], "given": v["given"],
                                "taxonomy_code": v["taxonomy_code"], "taxonomy_display": v["taxonomy_display"],
                                "organization": org, "fhir_id": v["fhir_id"] or f"prac-{v['npi']}"}))
        with transaction.atomic():
            changed = _upsert(run, table=table, model=ProviderPractitioner, key="npi", items=items)
        run.changed_directory.update(ProviderPractitioner.objects.filter(pk__in=changed).values_list("npi", flat=True))


def _directory_resources(run: _Run) -> None:
    """Write the FHIR Organization, Location, Practitioner and PractitionerRole of changed providers.

    The same resources the demo's directory has (payer/services/synthetic.py ``directory_rows``).
    """
    npis = sorted(run.changed_directory)
    for start in range(0, len(npis), BATCH_SIZE):
        chunk = npis[start:start + BATCH_SIZE]
        orgs = [_org(o) for o in ProviderOrganization.objects.filter(npi__in=chunk)]
        pracs = [Prac(p.npi, p.given, p.family, p.taxonomy_code, p.taxonomy_display, _org(p.organization), p.fhir_id)
                 for p in ProviderPractitioner.objects.select_related("organization").filter(npi__in=chunk)]
        stamp = run.now.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")
        rows = [r for r in directory_rows(orgs, pracs)[1:]]  # [0] is the payer's own Organization
        for r in rows:
            r.resource["meta"]["lastUpdated"] = stamp
        ClinicalResource.objects.bulk_create(
            [ClinicalResource(resource_type=r.resource["resourceType"], resource_id=r.resource["id"],
                              last_updated=run.now, patient_id="", date=None, status=r.status, resource=r.resource)
             for r in rows],
            update_conflicts=True, unique_fields=["resource_type", "resource_id"],
            update_fields=["last_updated", "status", "resource", "patient_id", "date"])


def _org(o: ProviderOrganization) -> Org:
    return Org(o.npi, o.name, o.fhir_id, o.city, o.state, "clinic")


def _contracts(run: _Run) -> None:
    table = TABLES["contracts.csv"]
    for batch in _batches(_rows(run, table)):
        orgs = {o.npi: o for o in ProviderOrganization.objects.filter(npi__in={r.values["organization_npi"] for r in batch})}
        items = []
        for row in batch:
            v = row.values
            if v["organization_npi"] not in orgs:
                _row_error(run, table, row, "organization_npi", f"no organization with NPI {v['organization_npi']}")
            elif v["end"] is not None and v["end"] < v["start"]:
                _row_error(run, table, row, "end", "before start")
            else:
                items.append((row, {"contract_number": v["contract_number"], "organization": orgs[v["organization_npi"]],
                                    "start": v["start"], "end": v["end"]}))
        with transaction.atomic():
            _upsert(run, table=table, model=NetworkContract, key="contract_number", items=items)


def _members(run: _Run) -> None:
    table = TABLES["members.csv"]
    for batch in _batches(_rows(run, table)):
        items = [(r, {"member_id": v["member_id"], "patient_id": v["patient_id"] or f"pat-{v['member_id'].lower()}",
                      "family": v["family"], "given": v["given"], "birth_date": v["birth_date"], "gender": v["gender"]})
                 for r in batch for v in [r.values]]
        # A patient id taken by another member would break the unique constraint mid-batch.
        taken = dict(Member.objects.filter(patient_id__in=[f["patient_id"] for _, f in items])
                     .values_list("patient_id", "member_id"))
        kept = []
        for row, fields in items:
            owner = taken.get(fields["patient_id"])
            if owner and owner != fields["member_id"]:
                _row_error(run, table, row, "patient_id", f"Patient id {fields['patient_id']} belongs to member {owner}")
            else:
                kept.append((row, fields))
        with transaction.atomic():
            _upsert(run, table=table, model=Member, key="member_id", items=kept)


def _coverage_resource(v: dict[str, Any], member: Member, now: datetime.datetime) -> tuple[dict[str, Any], bool]:
    """Return the Coverage of one enrollment period (the demo's Coverage shape) and whether it covers today."""
    classes = [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": code}]},
         "value": value, **({"name": name} if name else {})}
        for code, value, name in (("group", v["group_id"], ""), ("plan", v["plan_id"], v["plan_name"])) if value
    ]
    today = now.date()
    active = v["start"] <= today and (v["end"] is None or v["end"] >= today)
    return {
        "resourceType": "Coverage", "id": v["coverage_id"],
        "meta": {"lastUpdated": now.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")},
        "identifier": [{"system": settings.PA_MEMBER_IDENTIFIER_SYSTEM, "value": member.member_id}],
        # R4 Coverage.status is the status of the resource (active | cancelled | ...); an
        # ended period is still an active record of coverage that existed.
        "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIP",
                             "display": "health insurance plan policy"}]},
        "subscriberId": member.member_id, "beneficiary": {"reference": f"Patient/{member.patient_id}"},
        "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/subscriber-relationship", "code": "self"}]},
        "period": {"start": v["start"].isoformat(), **({"end": v["end"].isoformat()} if v["end"] else {})},
        "payor": [{"reference": "Organization/org-unitedcare-health"}],
        **({"class": classes} if classes else {}),
    }, active


def _coverage_periods(run: _Run) -> None:
    table = TABLES["coverage_periods.csv"]
    kind = "coverage_periods"
    for batch in _batches(_rows(run, table)):
        members = {m.member_id: m for m in Member.objects.filter(member_id__in={r.values["member_id"] for r in batch})}
        candidates: dict[str, tuple[_Row, tuple[dict[str, Any], bool], Member]] = {}
        for row in batch:
            v = row.values
            member = members.get(v["member_id"])
            if member is None:
                _row_error(run, table, row, "member_id", f"no member {v['member_id']}")
            elif v["end"] is not None and v["end"] < v["start"]:
                _row_error(run, table, row, "end", "before start")
            else:
                if v["coverage_id"] in candidates:
                    run.report.skip(f"{table.file}: a later row has the same coverage_id", kind=kind)
                candidates[v["coverage_id"]] = (row, _coverage_resource(v, member, run.now), member)
        with transaction.atomic():
            stored = {r.resource_id: r for r in ClinicalResource.objects.select_for_update()
                      .filter(resource_type="Coverage", resource_id__in=list(candidates))}
            writes = []
            for cid, (row, (resource, active), member) in candidates.items():
                old = stored.get(cid)
                if old is not None and {**old.resource, "meta": None} == {**resource, "meta": None} \
                        and old.patient_id == member.patient_id:
                    run.report.count("unchanged", kind=kind)
                    continue
                if old is not None and old.patient_id != member.patient_id:
                    _row_error(run, table, row, "coverage_id", f"Coverage/{cid} belongs to another member")
                    continue
                version = old.version_id + 1 if old else 1
                resource["meta"]["versionId"] = str(version)
                writes.append(ClinicalResource(
                    resource_type="Coverage", resource_id=cid, version_id=version, last_updated=run.now,
                    patient_id=member.patient_id, status="active" if active else "ended",
                    date=datetime.datetime.combine(row.values["start"], datetime.time(), tzinfo=datetime.UTC),
                    resource=resource))
                run.changed_coverage_members.add(member.member_id)
                run.report.count("updated" if old else "stored", kind=kind)
            ClinicalResource.objects.bulk_create(
                writes, update_conflicts=True, unique_fields=["resource_type", "resource_id"],
                update_fields=["version_id", "last_updated", "patient_id", "date", "status", "resource"])


def _claims(run: _Run) -> None:
    table = TABLES["claims.csv"]
    for batch in _batches(_rows(run, table)):
        members = dict(Member.objects.filter(member_id__in={r.values["member_id"] for r in batch}).values_list("member_id", "pk"))
        items = []
        for row in batch:
            v = dict(row.values)
            member_pk = members.get(v.pop("member_id"))
            if member_pk is None:
                _row_error(run, table, row, "member_id", f"no member {row.values['member_id']}")
            elif v["service_end"] < v["service_start"]:
                _row_error(run, table, row, "service_end", "before service_start")
            else:
                items.append((row, {**v, "member_id": member_pk}))
        with transaction.atomic():
            run.changed_claims.update(_upsert(run, table=table, model=Claim, key="claim_number", items=items, touch="updated_at"))
        reset_queries()


def _claim_children(run: _Run, *, table: Table, model: type[models.Model], columns: tuple[str, ...]) -> None:
    """Load lines or diagnoses: each claim's consecutive rows replace its stored ones if they differ."""
    kind = table.file.removesuffix(".csv")
    seen_claims: set[str] = set()
    groups = itertools.groupby(_rows(run, table), key=lambda r: r.values["claim_number"])
    # Each group is listed before the next is taken: groupby's groups share one iterator.
    while chunk := [(number, list(rows)) for number, rows in itertools.islice(groups, BATCH_SIZE // 4)]:
        claim_rows: dict[str, list[_Row]] = {}
        for number, rows in chunk:
            if number in seen_claims:
                for row in rows:
                    _row_error(run, table, row, "claim_number",
                               f"rows of claim {number} are not consecutive (sort the file by claim_number)")
                continue
            seen_claims.add(number)
            claim_rows[number] = rows
        claims = dict(Claim.objects.filter(claim_number__in=list(claim_rows)).values_list("claim_number", "pk"))
        with transaction.atomic():
            stored: dict[int, set[tuple]] = {}
            for claim_id, *values in model.objects.filter(claim_id__in=claims.values()).values_list("claim_id", *columns):
                stored.setdefault(claim_id, set()).add(tuple(values))
            replace: dict[int, list[tuple]] = {}
            for number, rows in claim_rows.items():
                claim_id = claims.get(number)
                if claim_id is None:
                    for row in rows:
                        _row_error(run, table, row, "claim_number", f"no claim {number}")
                    continue
                wanted: dict[int, tuple] = {}
                for row in rows:
                    values = tuple(_child_value(c, row.values) for c in columns)
                    if table.file == "claim_lines.csv" and bool(row.values["procedure_code"]) != bool(row.values["procedure_system"]):
                        _row_error(run, table, row, "procedure_system", "procedure_code and procedure_system go together")
                        continue
                    if values[0] in wanted:
                        run.report.skip(f"{table.file}: a later row has the same claim_number and sequence", kind=kind)
                    wanted[values[0]] = values
                old = stored.get(claim_id, set())
                old_by_seq = {v[0]: v for v in old}
                for seq, values in wanted.items():
                    run.report.count("stored" if seq not in old_by_seq else
                                     "unchanged" if old_by_seq[seq] == values else "updated", kind=kind)
                if set(wanted.values()) != old:
                    replace[claim_id] = list(wanted.values())
            if replace:
                model.objects.filter(claim_id__in=list(replace)).delete()
                model.objects.bulk_create(
                    [model(claim_id=claim_id, **dict(zip(columns, values)))
                     for claim_id, rows in replace.items() for values in rows], batch_size=BATCH_SIZE)
                Claim.objects.filter(pk__in=list(replace)).update(updated_at=run.now)
                run.changed_claims.update(replace)
        reset_queries()


def _child_value(column: str, values: dict[str, Any]) -> Any:
    value = values[column]
    if column in ("procedure_system",):
        return SYSTEMS.get(value, value)
    return value


LINE_FIELDS = ("sequence", "procedure_code", "procedure_system", "procedure_display", "revenue_code", "modifier",
               "place_of_service", "service_date", "quantity", "charged_amount", "allowed_amount", "paid_amount",
               "copay_amount")
DIAGNOSIS_FIELDS = ("sequence", "icd10_code", "display", "kind")


def _prior_authorizations(run: _Run) -> None:
    table = TABLES["prior_authorizations.csv"]
    for batch in _batches(_rows(run, table)):
        members = dict(Member.objects.filter(member_id__in={r.values["member_id"] for r in batch}).values_list("member_id", "pk"))
        items = []
        for row in batch:
            v = dict(row.values)
            member_pk = members.get(v.pop("member_id"))
            if member_pk is None:
                _row_error(run, table, row, "member_id", f"no member {row.values['member_id']}")
            elif v["valid_start"] and v["valid_end"] and v["valid_end"] < v["valid_start"]:
                _row_error(run, table, row, "valid_end", "before valid_start")
            else:
                v["service_system"] = SYSTEMS[v["service_system"]]
                items.append((row, {**v, "member_id": member_pk}))
        with transaction.atomic():
            run.changed_pas.update(_upsert(run, table=table, model=PriorAuthorization, key="auth_number",
                                           items=items, touch="updated_at"))


def claims_changed(*, claim_ids: list[int], prior_authorization_ids: list[int]) -> None:
    """Bring the ExplanationOfBenefit projection up to date after an import changed claims.

    The refresh is incremental: it maps exactly the sources whose ``updated_at`` differs
    from their projected row (the import set it on every row it changed), and leaves
    tombstones for deleted ones, so the next export streams the new EOBs at COPY speed.
    """
    if claim_ids or prior_authorization_ids:
        eob_projection_refresh()


def claims_import(*, folder: str, progress: Progress | None = None, report_path: str | None = None,
                  today: datetime.date | None = None) -> ImportReport:
    """Import the claims extract in ``folder`` (docs/claims-extract.md); return the report.

    Safe to run twice: a second run of the same extract writes nothing. Attribution is
    refreshed for the members whose claims changed, as of ``today``.
    """
    path = Path(folder)
    if not path.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    known = {t.file for t in LAYOUT}
    files = [t.file for t in LAYOUT if (path / t.file).exists()]
    if not files:
        raise FileNotFoundError(f"{folder}: none of {', '.join(sorted(known))}")
    report = ImportReport(command="import_claims")
    for other in sorted(p.name for p in path.glob("*.csv") if p.name not in known):
        report.skip(f"{other}: not a file of the extract layout", kind=other.removesuffix(".csv"))
    run = _Run(folder=path, report=report, now=timezone.now(), progress=progress,
               total_bytes=sum((path / f).stat().st_size for f in files) or 1)
    _organizations(run)
    _practitioners(run)
    _directory_resources(run)
    _contracts(run)
    _members(run)
    _coverage_periods(run)
    _claims(run)
    _claim_children(run, table=TABLES["claim_lines.csv"], model=ClaimLine, columns=LINE_FIELDS)
    _claim_children(run, table=TABLES["claim_diagnoses.csv"], model=ClaimDiagnosis, columns=DIAGNOSIS_FIELDS)
    _prior_authorizations(run)

    claim_ids = sorted(run.changed_claims)
    claims_changed(claim_ids=claim_ids, prior_authorization_ids=sorted(run.changed_pas))
    member_pks: set[int] = set()
    for start in range(0, len(claim_ids), BATCH_SIZE):
        member_pks.update(Claim.objects.filter(pk__in=claim_ids[start:start + BATCH_SIZE]).values_list("member_id", flat=True))
    summary = attribution_refresh_members(member_pks=sorted(member_pks), today=today)
    report.extra = {"claims_changed": len(claim_ids), "prior_authorizations_changed": len(run.changed_pas),
                    "attribution_members_refreshed": len(member_pks), "attribution": summary.__dict__}
    report.finish()
    if report_path:
        report.write(report_path)
    return report
