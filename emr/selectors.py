"""Reads for the EMR pages: the organization's patients, and a patient's history as the
local FHIR store holds it, flattened into rows a template can show.

Every string that comes out of a FHIR resource is plain text here; the templates escape it
and no narrative (``text.div``) is ever read.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import OuterRef, Q, QuerySet, Subquery
from django.utils.dateparse import parse_date, parse_datetime

from emr import linking
from emr.models import Clinician, HospitalPatient, PatientSync
from emr.sync_messages import sync_panel_words
from provider.models import LocalResource, PayerConnection, SyncJob

# FHIR R4 v3-ActCode, the codes Encounter.class uses.
ENCOUNTER_CLASSES = {
    "AMB": "Ambulatory",
    "EMER": "Emergency",
    "IMP": "Inpatient",
    "ACUTE": "Inpatient acute",
    "NONAC": "Inpatient non-acute",
    "OBSENC": "Observation",
    "PRENC": "Pre-admission",
    "SS": "Short stay",
    "VR": "Virtual",
    "HH": "Home health",
    "FLD": "Field",
}
TERMINAL_STATUSES = {
    SyncJob.Status.COMPLETED,
    SyncJob.Status.NO_DATA,
    SyncJob.Status.FAILED,
    SyncJob.Status.CANCELLED,
}
SYNC_STEPS = [
    (SyncJob.Status.PENDING, "Kick-off"),
    (SyncJob.Status.KICKED_OFF, "Waiting on the payer"),
    (SyncJob.Status.DOWNLOADING, "Downloading"),
    (SyncJob.Status.INGESTING, "Ingesting"),
    (SyncJob.Status.COMPLETED, "Done"),
]


# --- Patients ---------------------------------------------------------------------------


def clinician_for_user(*, user) -> Clinician | None:
    """Return the user's clinician profile, or None for users who are not clinicians."""
    if not user.is_authenticated:
        return None
    return Clinician.objects.filter(user=user).first()


def patient_queryset(*, clinician: Clinician) -> QuerySet[HospitalPatient]:
    """Return the patients of the clinician's organization, and no one else's."""
    last_sync = PatientSync.objects.filter(patient=OuterRef("pk")).order_by("-created_at")
    return (
        HospitalPatient.objects.filter(organization_npi=clinician.organization_npi)
        .select_related("insurer")
        .annotate(
            last_sync_status=Subquery(last_sync.values("job__status")[:1]),
            last_sync_at=Subquery(last_sync.values("job__finished_at")[:1]),
            last_sync_started=Subquery(last_sync.values("created_at")[:1]),
        )
    )


def patient_search(
    *, clinician: Clinician, name: str = "", birth_date: dt.date | None = None, member_id: str = ""
) -> QuerySet[HospitalPatient]:
    """Return the organization's patients matching every given criterion."""
    patients = patient_queryset(clinician=clinician)
    for word in name.split():
        patients = patients.filter(
            Q(family__icontains=word) | Q(given__icontains=word) | Q(mrn__iexact=word)
        )
    if birth_date:
        patients = patients.filter(birth_date=birth_date)
    if member_id.strip():
        patients = patients.filter(member_id__icontains=member_id.strip())
    return patients


def sync_latest(*, patient: HospitalPatient) -> SyncJob | None:
    """Return the most recent sync job started for the patient."""
    sync = PatientSync.objects.filter(patient=patient).select_related("job__connection").first()
    return sync.job if sync else None


def sync_progress(*, job: SyncJob) -> dict[str, Any]:
    """Return what the progress panel shows about a sync job, JSON-serializable: the
    client's own progress report plus the step list and what to say to the clinician
    (emr/sync_messages.py)."""
    from provider.services.sync import sync_job_progress

    data = sync_job_progress(job=job)
    payer = job.connection.display_name
    counts = {k: v for k, v in sorted((data.get("counts") or {}).items()) if v}
    step_index = next((i for i, (status, _) in enumerate(SYNC_STEPS) if status == job.status), len(SYNC_STEPS) - 1)
    if job.status in (SyncJob.Status.FAILED, SyncJob.Status.CANCELLED, SyncJob.Status.NO_DATA):
        step_index = 1 if job.kicked_off_at or job.status == SyncJob.Status.NO_DATA else 0
        if job.manifest_at:
            step_index = 3
    words = sync_panel_words(job=job, progress=data, counts=counts, slow_after=settings.EMR_FETCH_SLOW_SECONDS)
    return {
        **data,
        "payer": payer,
        "steps": [label for _, label in SYNC_STEPS],
        "step_index": step_index,
        "done": job.status in TERMINAL_STATUSES,
        "ok": job.status == SyncJob.Status.COMPLETED,
        "counts": counts,
        **words,
    }


def payer_patient_find(*, patient: HospitalPatient, job: SyncJob) -> str:
    """Return the payer's FHIR Patient id a completed fetch of the patient's own
    organization resolved their member id to ("" if none).

    The local store is shared by every organization of the deployment, so the link never
    comes from searching it by member id: only the payer, answering this organization's
    own SMART client from its attribution list (Da Vinci ATR), may say who the patient is.
    The job must be this patient's (a ``PatientSync``), completed, and run through a
    connection of the patient's organization.
    """
    if (
        job.status != SyncJob.Status.COMPLETED
        or job.connection.organization_npi != patient.organization_npi
        or not PatientSync.objects.filter(patient=patient, job=job).exists()
    ):
        return ""
    # The client resolves the member id to the payer's Patient id before the kick-off.
    ids = [str(p).removeprefix("Patient/") for p in job.patient_ids or []]
    return ids[0] if len(ids) == 1 else ""


@dataclass(frozen=True)
class PayerLink:
    """Whose history a hospital patient's page shows: one payer Patient of one source.

    ``connection`` is the payer connection whose completed fetch of this patient named
    ``patient_id``; only that source's resources are read, since another payer (or another
    organization's client) may use the same id for someone else. ``ended_at`` is set when
    a later fetch through the same connection found the payer no longer sharing the
    patient (no longer attributed, opted out, coverage ended): the history is then hidden.
    """

    connection: PayerConnection
    patient_id: str
    ended_at: dt.datetime | None = None


def _patient_ids(job: SyncJob) -> list[str]:
    return [str(p).removeprefix("Patient/") for p in job.patient_ids or []]


def payer_link(*, patient: HospitalPatient) -> PayerLink | None:
    """Return the payer Patient (and its source) whose history the patient's page may show.

    ``payer_patient_id`` counts only while a completed fetch of the patient by their own
    organization (see ``payer_patient_find``) names it; a value set any other way (an old
    link, an edit) shows nothing. The newest such fetch decides the source.
    """
    pid = patient.payer_patient_id
    if not pid:
        return None
    jobs = list(
        SyncJob.objects.filter(
            emr_sync__patient=patient,
            status__in=[SyncJob.Status.COMPLETED, SyncJob.Status.NO_DATA],
            connection__organization_npi=patient.organization_npi,
        )
        .select_related("connection")
        .only("status", "patient_ids", "created_at", "finished_at", "connection")
        .order_by("-created_at", "-pk")
    )
    # JSON "contains" is not portable to SQLite; a patient has few jobs.
    linked = next((job for job in jobs if job.status == SyncJob.Status.COMPLETED and pid in _patient_ids(job)), None)
    if linked is None:
        return None
    # The link is checked, never assumed: name, birth date and sex (emr/linking.py).
    if linking.link_allows(patient=patient, connection=linked.connection, payer_patient_id=pid) is not True:
        return None
    # A later fetch through the same connection that the payer answered with nothing for
    # this patient means its sharing ended (CMS-0057-F: data flows only while the member
    # is attributed and has not opted out); a fetch that failed says nothing either way.
    ended = next(
        (job for job in jobs if job.connection_id == linked.connection_id and job.status == SyncJob.Status.NO_DATA
         and (job.created_at, job.pk) > (linked.created_at, linked.pk)),
        None,
    )
    return PayerLink(
        connection=linked.connection, patient_id=pid, ended_at=(ended.finished_at or ended.created_at) if ended else None
    )


def linked_payer_patient_id(*, patient: HospitalPatient) -> str:
    """Return the payer Patient id whose history the patient's page may show now, or ""."""
    link = payer_link(patient=patient)
    return link.patient_id if link and not link.ended_at else ""


# --- FHIR display helpers ---------------------------------------------------------------


def codeable_text(concept: dict | None) -> str:
    """Return a CodeableConcept's text, else its first coding's display, else its code."""
    if not concept:
        return ""
    if concept.get("text"):
        return str(concept["text"])
    for coding in concept.get("coding") or []:
        if coding.get("display"):
            return str(coding["display"])
    for coding in concept.get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def coding_code(concept: dict | None) -> str:
    for coding in (concept or {}).get("coding") or []:
        if coding.get("code"):
            return str(coding["code"])
    return ""


def ref_key(reference: dict | None) -> tuple[str, str] | None:
    """Return (type, id) of a literal reference, relative or absolute (FHIR R4 §2.3.0.3)."""
    value = (reference or {}).get("reference") or ""
    parts = value.rstrip("/").split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2] and parts[-1]:
        return parts[-2], parts[-1]
    return None


def parse_when(value: str | None) -> dt.datetime | None:
    """Parse a FHIR date or dateTime (partial dates allowed) into an aware datetime."""
    if not value:
        return None
    value = str(value)
    parsed = parse_datetime(value) if "T" in value else None
    if parsed is None:
        padded = value + "-01" * (3 - len(value.split("-"))) if len(value) < 10 else value[:10]
        day = parse_date(padded)
        if day is None:
            return None
        parsed = dt.datetime.combine(day, dt.time())
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed


def human_name(resource: dict) -> str:
    for name in resource.get("name") or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family") or ""]
        text = " ".join(str(p) for p in parts if p)
        if text:
            return text
    return ""


def quantity_text(q: dict) -> str:
    value = q.get("value")
    unit = q.get("unit") or q.get("code") or ""
    return f"{value} {unit}".strip() if value is not None else ""


def observation_value(obs: dict) -> str:
    if "valueQuantity" in obs:
        return quantity_text(obs["valueQuantity"])
    if "valueCodeableConcept" in obs:
        return codeable_text(obs["valueCodeableConcept"])
    for key in ("valueString", "valueBoolean", "valueInteger", "valueDateTime"):
        if key in obs:
            return str(obs[key])
    parts = []
    for comp in obs.get("component") or []:
        value = quantity_text(comp.get("valueQuantity") or {}) or codeable_text(comp.get("valueCodeableConcept"))
        if value:
            parts.append(f"{codeable_text(comp.get('code'))}: {value}")
    return "; ".join(parts)


# --- History ----------------------------------------------------------------------------


@dataclass
class Source:
    """Where an item came from: the payer and the export it arrived in."""

    payer: str
    export_time: dt.datetime | None


@dataclass
class Item:
    """One resource, flattened for display."""

    kind: str
    id: str
    date: dt.datetime | None
    title: str
    status: str
    source: Source
    fields: dict[str, Any] = field(default_factory=dict)


class Resolver:
    """Resolve references to Practitioner, Location and Organization within one source of
    the local store, in one query per type, falling back to the reference's own display."""

    TYPES = ("Practitioner", "Location", "Organization", "PractitionerRole", "Medication")

    def __init__(self, resources: Iterable[dict], *, connection_id: int | None) -> None:
        wanted: dict[str, set[str]] = defaultdict(set)
        for resource in resources:
            _collect_refs(resource, wanted)
        self.found: dict[tuple[str, str], dict] = {}
        for rtype in self.TYPES if connection_id is not None else ():
            if wanted.get(rtype):
                for row in LocalResource.objects.filter(
                    connection_id=connection_id, resource_type=rtype, resource_id__in=wanted[rtype]
                ).only(
                    "resource_type", "resource_id", "resource"
                ):
                    self.found[(rtype, row.resource_id)] = row.resource

    def name(self, reference: dict | None) -> str:
        """Return a human name for the referenced resource."""
        if not reference:
            return ""
        key = ref_key(reference)
        target = self.found.get(key) if key else None
        if target:
            if target.get("resourceType") == "Practitioner":
                return human_name(target) or reference.get("display", "")
            if target.get("resourceType") == "PractitionerRole":
                return self.name(target.get("practitioner")) or reference.get("display", "")
            if target.get("resourceType") == "Medication":
                return codeable_text(target.get("code")) or reference.get("display", "")
            if target.get("name"):
                return str(target["name"])
        return str(reference.get("display") or (f"{key[0]}/{key[1]}" if key else ""))

    def resource(self, reference: dict | None) -> dict | None:
        key = ref_key(reference)
        return self.found.get(key) if key else None


def _collect_refs(node: Any, wanted: dict[str, set[str]]) -> None:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            key = ref_key(node)
            if key and key[0] in Resolver.TYPES:
                wanted[key[0]].add(key[1])
        for key, value in node.items():
            if key not in ("text", "contained"):
                _collect_refs(value, wanted)
    elif isinstance(node, list):
        for value in node:
            _collect_refs(value, wanted)


HISTORY_TYPES = (
    "Encounter",
    "Condition",
    "Procedure",
    "Observation",
    "MedicationRequest",
    "MedicationDispense",
    "MedicationStatement",
    "ExplanationOfBenefit",
    "Claim",
    "ClaimResponse",
)


def _patient_rows(*, link: PayerLink | None) -> dict[str, list[LocalResource]]:
    """Return the linked payer patient's resources in the link's source, by type (none
    once the payer's sharing ended)."""
    rows: dict[str, list[LocalResource]] = defaultdict(list)
    if link is None or link.ended_at:
        return rows
    pid = link.patient_id
    queryset = (
        LocalResource.objects.filter(
            connection=link.connection, resource_type__in=HISTORY_TYPES, patient_id__in=[pid, f"Patient/{pid}"]
        )
        .select_related("connection")
        .only("resource_type", "resource_id", "date", "status", "resource", "export_time", "connection__display_name")
    )
    for row in queryset:
        rows[row.resource_type].append(row)
    return rows


def _source(row: LocalResource) -> Source:
    return Source(payer=row.connection.display_name if row.connection else "Unknown source", export_time=row.export_time)


def _date(row: LocalResource, *paths: str) -> dt.datetime | None:
    if row.date:
        return row.date
    for path in paths:
        node: Any = row.resource
        for part in path.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if parsed := parse_when(node if isinstance(node, str) else None):
            return parsed
    return None


def _is_preauth(resource: dict) -> bool:
    # PDex prior authorization: an ExplanationOfBenefit (or Claim/ClaimResponse) with
    # use = "preauthorization" (http://hl7.org/fhir/claim-use).
    return resource.get("use") == "preauthorization"


def _encounter_refs(resource: dict) -> set[str]:
    """Return ids of the Encounters a resource points to (encounter, context, item.encounter)."""
    ids = set()
    for ref in (resource.get("encounter"), resource.get("context")):
        key = ref_key(ref if isinstance(ref, dict) else None)
        if key and key[0] == "Encounter":
            ids.add(key[1])
    for item in resource.get("item") or []:
        for ref in item.get("encounter") or []:
            key = ref_key(ref)
            if key and key[0] == "Encounter":
                ids.add(key[1])
    return ids


def _claim_item(row: LocalResource, resolver: Resolver) -> Item:
    r = row.resource
    services = [codeable_text(item.get("productOrService")) for item in r.get("item") or []]
    diagnoses = [codeable_text(d.get("diagnosisCodeableConcept")) for d in r.get("diagnosis") or []]
    period = r.get("billablePeriod") or {}
    # No cost data on these pages: totals, payments and adjudication amounts are not read.
    return Item(
        kind=row.resource_type,
        id=row.resource_id,
        date=_date(row, "billablePeriod.start", "created"),
        title=codeable_text(r.get("type")) or row.resource_type,
        status=r.get("status", ""),
        source=_source(row),
        fields={
            "outcome": r.get("outcome", ""),
            "provider": resolver.name(r.get("provider")),
            "facility": resolver.name((r.get("facility") or {})) if r.get("facility") else "",
            "period_start": parse_when(period.get("start")),
            "period_end": parse_when(period.get("end")),
            "created": parse_when(r.get("created")),
            "services": [s for s in services if s],
            "diagnoses": [d for d in diagnoses if d],
            "identifier": next((i.get("value") for i in r.get("identifier") or [] if i.get("value")), ""),
            "pre_auth_ref": [str(ref) for ins in r.get("insurance") or [] for ref in ins.get("preAuthRef") or []]
            or [str(ref) for ref in r.get("preAuthRef") or []],
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def _medication_item(row: LocalResource, resolver: Resolver) -> Item:
    r = row.resource
    name = codeable_text(r.get("medicationCodeableConcept")) or resolver.name(r.get("medicationReference"))
    dosage = r.get("dosageInstruction") or r.get("dosage") or []
    return Item(
        kind=row.resource_type,
        id=row.resource_id,
        date=_date(row, "authoredOn", "whenHandedOver", "effectiveDateTime", "effectivePeriod.start"),
        title=name or "Medication",
        status=r.get("status", ""),
        source=_source(row),
        fields={
            "dosage": "; ".join(str(d.get("text")) for d in dosage if d.get("text")),
            "prescriber": resolver.name(r.get("requester") or next((p.get("actor") for p in r.get("performer") or [] if isinstance(p, dict)), None)),
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def _condition_item(row: LocalResource) -> Item:
    r = row.resource
    return Item(
        kind="Condition",
        id=row.resource_id,
        date=_date(row, "onsetDateTime", "onsetPeriod.start", "recordedDate"),
        title=codeable_text(r.get("code")) or "Condition",
        status=codeable_text(r.get("clinicalStatus")) or r.get("status", ""),
        source=_source(row),
        fields={
            "code": coding_code(r.get("code")),
            "category": ", ".join(codeable_text(c) for c in r.get("category") or [] if codeable_text(c)),
            "verification": codeable_text(r.get("verificationStatus")),
            "recorded": parse_when(r.get("recordedDate")),
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def _encounter_item(row: LocalResource, resolver: Resolver, conditions: dict[str, Item]) -> Item:
    r = row.resource
    klass = r.get("class") or {}
    class_code = str(klass.get("code") or "")
    facility = ""
    for loc in r.get("location") or []:
        facility = resolver.name(loc.get("location"))
        if facility:
            break
    organization = resolver.name(r.get("serviceProvider"))
    clinicians = []
    for participant in r.get("participant") or []:
        name = resolver.name(participant.get("individual"))
        if name and name not in clinicians:
            clinicians.append(name)
    reasons = [codeable_text(c) for c in r.get("reasonCode") or []]
    for ref in r.get("reasonReference") or []:
        key = ref_key(ref)
        reasons.append(conditions[key[1]].title if key and key[1] in conditions else str(ref.get("display") or ""))
    diagnoses = []
    for diag in r.get("diagnosis") or []:
        key = ref_key(diag.get("condition"))
        if key and key[1] in conditions:
            diagnoses.append(conditions[key[1]].title)
        elif (diag.get("condition") or {}).get("display"):
            diagnoses.append(str(diag["condition"]["display"]))
    period = r.get("period") or {}
    return Item(
        kind="Encounter",
        id=row.resource_id,
        date=_date(row, "period.start"),
        title=", ".join(t for t in (codeable_text(t) for t in r.get("type") or []) if t) or "Encounter",
        status=r.get("status", ""),
        source=_source(row),
        fields={
            "class_code": class_code,
            "class_label": str(klass.get("display") or ENCOUNTER_CLASSES.get(class_code, class_code or "Unknown")),
            "facility": facility or organization or "Unknown facility",
            "organization": organization,
            "clinicians": clinicians,
            "reasons": [x for x in reasons if x],
            "diagnoses": [x for x in dict.fromkeys(diagnoses) if x],
            "end": parse_when(period.get("end")),
        },
    )


@dataclass
class History:
    """A patient's history from the local store, ready for the patient page."""

    encounters: list[Item]
    claims: list[Item]
    prior_auths: list[Item]
    conditions: list[Item]
    medications: list[Item]
    timeline: dict[str, Any] | None
    sources: list[Source]
    total: int
    # Set when the payer stopped sharing the patient's data: what was fetched is hidden.
    ended: PayerLink | None = None


def patient_history(*, patient: HospitalPatient) -> History:
    """Return the patient's encounters, claims, prior authorizations, conditions and
    medications, newest first, with references resolved."""
    link = payer_link(patient=patient)
    rows = _patient_rows(link=link)
    resolver = Resolver(
        (row.resource for type_rows in rows.values() for row in type_rows),
        connection_id=link.connection.pk if link else None,
    )
    conditions = {row.resource_id: _condition_item(row) for row in rows["Condition"]}
    encounters = [_encounter_item(row, resolver, conditions) for row in rows["Encounter"]]
    claim_rows = [*rows["ExplanationOfBenefit"], *rows["Claim"], *rows["ClaimResponse"]]
    claims = [_claim_item(row, resolver) for row in claim_rows if not _is_preauth(row.resource)]
    # A Claim and its ClaimResponse/EOB describe one claim: list EOBs, else the Claim.
    if any(c.kind == "ExplanationOfBenefit" for c in claims):
        claims = [c for c in claims if c.kind == "ExplanationOfBenefit"]
    prior_auths = [_claim_item(row, resolver) for row in claim_rows if _is_preauth(row.resource)]
    if any(c.kind == "ExplanationOfBenefit" for c in prior_auths):
        prior_auths = [c for c in prior_auths if c.kind == "ExplanationOfBenefit"]
    medications = [
        _medication_item(row, resolver)
        for kind in ("MedicationRequest", "MedicationDispense", "MedicationStatement")
        for row in rows[kind]
    ]

    def newest_first(items: list[Item]) -> list[Item]:
        return sorted(items, key=lambda i: i.date or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)

    sources: dict[tuple, Source] = {}
    for type_rows in rows.values():
        for row in type_rows:
            src = _source(row)
            sources.setdefault((src.payer, src.export_time), src)
    return History(
        encounters=newest_first(encounters),
        claims=newest_first(claims),
        prior_auths=newest_first(prior_auths),
        conditions=newest_first(list(conditions.values())),
        medications=newest_first(medications),
        timeline=encounter_timeline(encounters=encounters),
        sources=sorted(sources.values(), key=lambda s: (s.export_time is None, s.export_time), reverse=True),
        total=sum(len(v) for v in rows.values()),
        ended=link if link and link.ended_at else None,
    )


def encounter_timeline(*, encounters: list[Item], width: int = 1000) -> dict[str, Any] | None:
    """Lay encounters out on a years axis, one row per facility, for an inline SVG."""
    dated = [e for e in encounters if e.date]
    if not dated:
        return None
    label_width, right_pad, row_height, top = 230, 20, 34, 30
    first_year = min(e.date.year for e in dated)
    last_year = max(e.date.year for e in dated) + 1
    start = dt.datetime(first_year, 1, 1, tzinfo=dt.UTC)
    end = dt.datetime(last_year, 1, 1, tzinfo=dt.UTC)
    span = (end - start).total_seconds()
    plot = width - label_width - right_pad

    def x(when: dt.datetime) -> float:
        return round(label_width + (when - start).total_seconds() / span * plot, 1)

    facilities: dict[str, int] = {}
    for e in sorted(dated, key=lambda e: e.date):
        facilities.setdefault(e.fields["facility"], len(facilities))
    height = top + row_height * len(facilities) + 10
    step = max(1, (last_year - first_year) // 10)
    years = [{"label": y, "x": x(dt.datetime(y, 1, 1, tzinfo=dt.UTC))} for y in range(first_year, last_year + 1, step)]
    rows = [
        {"label": name, "y": top + row_height * i + row_height / 2, "band_y": top + row_height * i, "odd": i % 2}
        for name, i in facilities.items()
    ]
    # Encounters close in time would hide each other: a dot goes to the first of three
    # lanes of its row (middle, above, below) where it does not touch the previous dot.
    lanes = (0, -9, 9)
    last_x: dict[tuple[int, int], float] = {}
    points = []
    for e in sorted(dated, key=lambda e: e.date):
        row, px = facilities[e.fields["facility"]], x(e.date)
        lane = next((lane for lane in lanes if px - last_x.get((row, lane), -1e9) >= 12), 0)
        last_x[(row, lane)] = px
        points.append(
            {
                "x": px,
                "y": top + row_height * row + row_height / 2 + lane,
                "item": e,
                "class_code": e.fields["class_code"] if e.fields["class_code"] in ENCOUNTER_CLASSES else "other",
            }
        )
    classes = sorted({(p["class_code"], p["item"].fields["class_label"]) for p in points})
    return {
        "width": width,
        "height": height,
        "label_width": label_width,
        "plot_end": width - right_pad,
        "row_height": row_height,
        "top": top,
        "years": years,
        "rows": rows,
        "points": points,
        "classes": classes,
        "facility_count": len(facilities),
        "first_year": first_year,
        "last_year": last_year - 1,
    }


@dataclass
class EncounterDetail:
    encounter: Item
    resource: dict
    participants: list[dict[str, str]]
    locations: list[dict[str, str]]
    diagnoses: list[Item]
    procedures: list[Item]
    observations: list[Item]
    medications: list[Item]
    claims: list[Item]


def encounter_detail(*, patient: HospitalPatient, encounter_id: str) -> EncounterDetail | None:
    """Return one of the patient's encounters with everything linked to it, or None when
    the encounter is not the patient's."""
    rows = _patient_rows(link=payer_link(patient=patient))
    row = next((r for r in rows["Encounter"] if r.resource_id == encounter_id), None)
    if row is None:
        return None
    linked = lambda kind: [r for r in rows[kind] if encounter_id in _encounter_refs(r.resource)]  # noqa: E731
    claim_rows = [r for r in rows["ExplanationOfBenefit"] if not _is_preauth(r.resource)]
    resolver = Resolver(
        [row.resource, *(r.resource for r in claim_rows), *(r.resource for k in HISTORY_TYPES for r in linked(k))],
        connection_id=row.connection_id,
    )
    conditions = {r.resource_id: _condition_item(r) for r in rows["Condition"]}
    encounter = _encounter_item(row, resolver, conditions)
    r = row.resource

    participants = []
    for p in r.get("participant") or []:
        roles = ", ".join(codeable_text(t) for t in p.get("type") or [] if codeable_text(t))
        participants.append({"name": resolver.name(p.get("individual")) or "Unknown", "role": roles})
    locations = []
    for loc in r.get("location") or []:
        target = resolver.resource(loc.get("location")) or {}
        address = target.get("address") or {}
        locations.append(
            {
                "name": resolver.name(loc.get("location")),
                "address": ", ".join(
                    str(p) for p in [*(address.get("line") or []), address.get("city"), address.get("state")] if p
                ),
            }
        )
    diagnosis_ids = [ref_key(d.get("condition")) for d in r.get("diagnosis") or []]
    diagnoses = [conditions[k[1]] for k in diagnosis_ids if k and k[1] in conditions]
    for item in (_condition_item(c) for c in linked("Condition")):
        if item.id not in {d.id for d in diagnoses}:
            diagnoses.append(item)

    procedures = [
        Item(
            kind="Procedure", id=p.resource_id, date=_date(p, "performedDateTime", "performedPeriod.start"),
            title=codeable_text(p.resource.get("code")) or "Procedure", status=p.resource.get("status", ""),
            source=_source(p), fields={"code": coding_code(p.resource.get("code"))},
        )
        for p in linked("Procedure")
    ]
    observations = [
        Item(
            kind="Observation", id=o.resource_id, date=_date(o, "effectiveDateTime", "effectivePeriod.start", "issued"),
            title=codeable_text(o.resource.get("code")) or "Observation", status=o.resource.get("status", ""),
            source=_source(o), fields={"value": observation_value(o.resource)},
        )
        for o in linked("Observation")
    ]
    medications = [
        _medication_item(m, resolver)
        for kind in ("MedicationRequest", "MedicationDispense", "MedicationStatement")
        for m in linked(kind)
    ]
    # The claim for the encounter: an EOB whose item.encounter names it (CARIN BB), else
    # one whose billablePeriod starts on the encounter's day at the same facility/provider.
    claims = [_claim_item(c, resolver) for c in claim_rows if encounter_id in _encounter_refs(c.resource)]
    if not claims and encounter.date:
        day = encounter.date.date()
        for c in claim_rows:
            start = parse_when((c.resource.get("billablePeriod") or {}).get("start"))
            if start and start.date() == day:
                claims.append(_claim_item(c, resolver))
    return EncounterDetail(
        encounter=encounter,
        resource=r,
        participants=participants,
        locations=locations,
        diagnoses=diagnoses,
        procedures=procedures,
        observations=observations,
        medications=medications,
        claims=claims,
    )


def connections_for_fetch(*, patient: HospitalPatient) -> list[PayerConnection]:
    """Return the connections the patient's history can be fetched through.

    Only the patient's own organization's connections: each is that organization's SMART
    client at the payer, and the payer answers it with that organization's attributed
    members. ``insurer`` names the payer holding the member id (a member id means nothing
    to another payer, and sending it there would disclose it); when the insurer chosen is
    another organization's connection, the organization's own connection to the same payer
    (same FHIR base URL) is used. None when the organization has no client at that payer.
    """
    insurer = patient.insurer
    if insurer is None or not patient.member_id or not patient.organization_npi:
        return []
    if insurer.organization_npi == patient.organization_npi:
        return [insurer]
    return list(
        PayerConnection.objects.filter(
            organization_npi=patient.organization_npi, fhir_base_url=insurer.fhir_base_url
        ).order_by("display_name", "pk")
    )
