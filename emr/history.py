"""A patient's history as the hospital's store holds it, flattened into items a page shows.

Only the linked payer Patient's resources in the link's own source are read (``payer_link``:
one connection of the patient's own organization, the link checked by name, birth date and
sex). Each item carries its source (payer and export) and its words for a clinician
(``emr.terms``); the codes stay on the item for the secondary detail line. No cost data
is read: totals, payments and adjudication amounts never leave the store.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.utils import timezone

from emr import terms
from emr.fhir_text import as_dict, as_list, dicts, human_name, parse_when, quantity_text, ref_key, showable, text
from emr.models import HospitalPatient
from emr.selectors import PayerLink, payer_link
from emr.terms import Status
from emr.timeline import ENCOUNTER_CLASSES, encounter_timeline
from provider.models import LocalResource

logger = logging.getLogger(__name__)

HISTORY_TYPES = (
    "Encounter",
    "Condition",
    "Procedure",
    "Observation",
    "MedicationRequest",
    "MedicationDispense",
    "MedicationStatement",
    "AllergyIntolerance",
    "Immunization",
    "ExplanationOfBenefit",
    "Claim",
    "ClaimResponse",
)
MEDICATION_TYPES = ("MedicationRequest", "MedicationDispense", "MedicationStatement")
PDEX = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition"
REVIEW_ACTION = f"{PDEX}/extension-reviewAction"
REVIEW_ACTION_CODE = f"{PDEX}/extension-reviewActionCode"
WHEN_ADJUDICATED = f"{PDEX}/base-ext-when-adjudicated"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


@dataclass
class Source:
    """Where an item came from: the payer and the export it arrived in."""

    payer: str
    export_time: dt.datetime | None


@dataclass
class Item:
    """One resource, flattened for display: words first, codes for the secondary line."""

    kind: str
    id: str
    date: dt.datetime | None
    title: str
    status: Status
    source: Source
    codes: str = ""
    fields: dict[str, Any] = field(default_factory=dict)
    # False for a resource whose shape the reading could not follow: listed, never summarized.
    readable: bool = True


class Resolver:
    """Resolve references to Practitioner, Location and Organization within one source of
    the local store, in one query per type, falling back to the reference's own display."""

    TYPES = ("Practitioner", "Location", "Organization", "PractitionerRole", "Medication")

    def __init__(self, resources: Iterable[dict], *, connection_id: int | None,
                 stored_by: dt.datetime | None = None) -> None:
        wanted: dict[str, set[str]] = defaultdict(set)
        for resource in resources:
            _collect_refs(resource, wanted)
        self.found: dict[tuple[str, str], dict] = {}
        for rtype in self.TYPES if connection_id is not None else ():
            if wanted.get(rtype):
                rows = LocalResource.objects.filter(connection_id=connection_id, resource_type=rtype,
                                                    resource_id__in=wanted[rtype])
                if stored_by:  # the payer stopped sharing: nothing it sent after that is read
                    rows = rows.filter(ingested_at__lte=stored_by)
                for row in rows.only("resource_type", "resource_id", "resource"):
                    self.found[(rtype, row.resource_id)] = row.resource

    def name(self, reference: dict | None) -> str:
        """Return a human name for the referenced resource ("" when it names nothing)."""
        if not isinstance(reference, dict):
            return ""
        key = ref_key(reference)
        target = self.found.get(key) if key else None
        if target:
            if target.get("resourceType") == "Practitioner":
                return human_name(target) or str(reference.get("display") or "")
            if target.get("resourceType") == "PractitionerRole":
                return self.name(target.get("practitioner")) or str(reference.get("display") or "")
            if target.get("resourceType") == "Medication":
                return terms.concept_name(target.get("code")) or str(reference.get("display") or "")
            if target.get("name"):
                return str(target["name"])
        if text(reference.get("display")):
            return text(reference["display"])
        # A logical reference by NPI (CARIN BB pharmacy claims) still says who; a bare
        # "Practitioner/123" is not a name a clinician can use.
        identifier = as_dict(reference.get("identifier"))
        if identifier.get("system") == "http://hl7.org/fhir/sid/us-npi" and text(identifier.get("value")):
            return f"NPI {text(identifier['value'])}"
        return ""

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


def history_after_sharing_ends() -> str:
    """Return what the pages do with history received before the payer stopped sharing:
    "mark" (show it, marked as received then and no longer shared) or "hide"."""
    return settings.EMR_HISTORY_AFTER_SHARING_ENDS


def _patient_rows(*, link: PayerLink | None) -> dict[str, list[LocalResource]]:
    """Return the linked payer patient's resources in the link's source, by type.

    Once the payer's sharing ended, only what was stored before it ended is read (or
    nothing, when the hospital chose "hide"): a later fetch through the same connection
    brings nothing for this patient, and no other source is ever read.
    """
    rows: dict[str, list[LocalResource]] = defaultdict(list)
    if link is None or (link.ended_at and history_after_sharing_ends() == "hide"):
        return rows
    pid = link.patient_id
    queryset = (
        LocalResource.objects.filter(
            connection=link.connection, resource_type__in=HISTORY_TYPES, patient_id__in=[pid, f"Patient/{pid}"]
        )
        .select_related("connection")
        .only("resource_type", "resource_id", "date", "status", "resource", "export_time", "ingested_at",
              "connection__display_name")
    )
    if link.ended_at:
        queryset = queryset.filter(ingested_at__lte=link.ended_at)
    for row in queryset:
        rows[row.resource_type].append(row)
    return rows


def _source(row: LocalResource) -> Source:
    return Source(payer=row.connection.display_name if row.connection else "Unknown source", export_time=row.export_time)


def _get(resource: dict, path: str) -> Any:
    node: Any = resource
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _date(row: LocalResource, *paths: str) -> dt.datetime | None:
    if row.date and showable(row.date):
        return row.date
    for path in paths:
        node = _get(row.resource, path)
        if parsed := parse_when(node if isinstance(node, str) else None):
            return parsed
    return None


def _is_preauth(resource: dict) -> bool:
    # PDex prior authorization: an ExplanationOfBenefit (or Claim/ClaimResponse) with
    # use = "preauthorization" (http://hl7.org/fhir/claim-use).
    return resource.get("use") == "preauthorization"


def _encounter_refs(resource: dict) -> set[str]:
    """Return ids of the Encounters a resource points to (encounter, context, item.encounter)."""
    refs = [resource.get("encounter"), resource.get("context")]
    refs += [ref for item in dicts(resource.get("item")) for ref in dicts(item.get("encounter"))]
    return {key[1] for key in map(ref_key, refs) if key and key[0] == "Encounter"}


UNREADABLE = (AttributeError, TypeError, ValueError, KeyError, IndexError)


def readable(build, row: LocalResource, *args: Any) -> Item:
    """Build a row's item; a resource whose shape the reading cannot follow becomes an item
    that says so, instead of an error page. (Ingest validates every resource, so this is a
    guard for rows stored under a laxer validation setting, not a path the data takes.)"""
    try:
        return build(row, *args)
    except UNREADABLE:
        logger.warning("Could not read %s/%s of connection %s for display", row.resource_type, row.resource_id,
                       row.connection_id, exc_info=True)
        return Item(kind=row.resource_type, id=row.resource_id, date=_date(row), title="A record that could not be read",
                    status=Status("Not readable", "warn"), source=_source(row), codes=row.resource_type, readable=False)


def _named(concept: dict | None, fallback: str) -> tuple[str, str]:
    """Return (words, codes) for a concept; "<fallback> (not named by the source)" when it has only codes."""
    name, codes = terms.concept_name(concept), terms.concept_codes(concept)
    return (name or f"{fallback} (not named by the source)"), codes


def _names(values: Iterable[str]) -> list[str]:
    return [v for v in dict.fromkeys(v for v in values if v)]


# --- Items, one builder per resource type -------------------------------------------------


def claim_item(row: LocalResource, resolver: Resolver) -> Item:
    """A claim (CARIN BB EOB): what was billed, when, by whom, and where it stands; no cost."""
    r = row.resource
    items = dicts(r.get("item"))
    services = _names(terms.concept_name(i.get("productOrService")) for i in items)
    diagnoses = _names(terms.concept_name(d.get("diagnosisCodeableConcept")) for d in dicts(r.get("diagnosis")) if isinstance(d, dict))
    period = as_dict(r.get("billablePeriod"))
    type_code = terms.concept_code(r.get("type"))
    kind = terms.CLAIM_TYPE.get(type_code) or terms.concept_name(r.get("type")) or "Claim"
    subtype = terms.concept_name(r.get("subType"))
    status = terms.RECORD_STATUS.get(text(r.get("status"))) or terms.status_word(
        terms.CLAIM_OUTCOME, r.get("outcome"), missing="Processing status not given")
    provider = resolver.name(r.get("provider"))
    facility = resolver.name(r.get("facility"))
    return Item(
        kind=row.resource_type,
        id=row.resource_id,
        date=_date(row, "billablePeriod.start", "created"),
        title=f"{kind} ({subtype.lower()})" if subtype else kind,
        status=status,
        source=_source(row),
        codes=" · ".join(_names(terms.concept_codes(i.get("productOrService")) for i in items)),
        fields={
            "type_code": type_code,
            "type_label": kind,
            "provider": provider,
            "facility": facility or provider,
            "period_start": parse_when(period.get("start")),
            "period_end": parse_when(period.get("end")),
            "created": parse_when(r.get("created")),
            "services": services,
            "diagnoses": diagnoses,
            "identifier": next((str(i.get("value")) for i in dicts(r.get("identifier")) if i.get("value")), ""),
            "encounters": sorted(_encounter_refs(r)),
            # A pharmacy claim is a fill: which drug (RxNorm, as CARIN BB codes it beside the
            # NDC) and for how many days (supportingInfo:dayssupply).
            "rxnorm": [code for i in items if (code := terms.concept_code(i.get("productOrService"), system=RXNORM))],
            "days_supply": next((_number(v) for info in dicts(r.get("supportingInfo"))
                                 if terms.concept_code(info.get("category")) == "dayssupply"
                                 and isinstance(v := as_dict(info.get("valueQuantity")).get("value"), int | float)), ""),
        },
    )


def _review_actions(resource: dict) -> list[tuple[str, dt.datetime | None, str]]:
    """Return each PDex reviewAction of the authorization: its X12 306 code, the decision date
    and its reason. PDex carries it on an item's adjudication, or on the header's."""
    adjudications = [*dicts(resource.get("adjudication")),
                     *(a for item in dicts(resource.get("item")) for a in dicts(item.get("adjudication")))]
    found = []
    for adjudication in adjudications:
        code, when = "", None
        for ext in dicts(adjudication.get("extension")):
            if ext.get("url") == REVIEW_ACTION:
                for sub in dicts(ext.get("extension")):
                    if sub.get("url") in (REVIEW_ACTION_CODE, "code"):
                        code = terms.concept_code(sub.get("valueCodeableConcept"))
            elif ext.get("url") == WHEN_ADJUDICATED:
                when = parse_when(ext.get("valueDateTime") or ext.get("valueDate"))
        if code:
            reason = as_dict(adjudication.get("reason"))
            found.append((code, when, text(reason.get("text")) or terms.concept_name(reason)))
    return found


def _decision(resource: dict, actions: list[tuple[str, dt.datetime | None, str]]) -> Status:
    """Return the authorization's decision in words; lines decided differently read "Mixed"."""
    if text(resource.get("status")) in terms.RECORD_STATUS:
        return terms.RECORD_STATUS[text(resource["status"])]
    if not actions:
        return terms.status_word(terms.PA_OUTCOME, resource.get("outcome"), missing="Decision not given")
    words = [terms.status_word(terms.REVIEW_ACTION, code) for code, _, _ in actions]
    if len({w.label for w in words}) == 1:
        return words[0]
    counts = {label: sum(w.label == label for w in words) for label in dict.fromkeys(w.label for w in words)}
    return Status("Mixed: " + ", ".join(f"{n} {label.lower()}" for label, n in counts.items()), "warn")


def _units(resource: dict, category: str) -> float | None:
    for item in dicts(resource.get("item")):
        for adjudication in dicts(item.get("adjudication")):
            if terms.concept_code(adjudication.get("category")) == category and adjudication.get("value") is not None:
                return adjudication["value"]
    return None


def _number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def prior_auth_item(row: LocalResource, resolver: Resolver) -> Item:
    """A prior authorization (PDex): the service, the decision in words, the period it covers."""
    r = row.resource
    items = dicts(r.get("item"))
    actions = _review_actions(r)
    decision = _decision(r, actions)
    decided = max((when for _, when, _ in actions if when), default=None)
    reason = "; ".join(_names(why for _, _, why in actions))
    # The authorized service period: the item's servicedPeriod (PDex), else preAuthRefPeriod.
    period = next((i["servicedPeriod"] for i in items if isinstance(i.get("servicedPeriod"), dict)), None) or next(
        (p for ins in dicts(r.get("insurance")) for p in dicts(ins.get("preAuthRefPeriod"))), None
    ) or next(iter(dicts(r.get("preAuthRefPeriod"))), None) or as_dict(r.get("billablePeriod"))
    requested = sum(v for i in items if isinstance(v := as_dict(i.get("quantity")).get("value"), int | float)) or None
    approved, used = _units(r, "allowedunits"), _units(r, "consumedunits")
    services = _names(terms.concept_name(i.get("productOrService")) for i in items)
    references = [text(ref) for ins in dicts(r.get("insurance")) for ref in as_list(ins.get("preAuthRef"))] or [
        text(ref) for ref in as_list(r.get("preAuthRef"))]
    return Item(
        kind=row.resource_type,
        id=row.resource_id,
        date=parse_when(r.get("created")) or _date(row, "created"),
        title=", ".join(services) or "Service not named by the source",
        status=decision,
        source=_source(row),
        codes=" · ".join(_names(terms.concept_codes(i.get("productOrService")) for i in items)),
        fields={
            "requested": parse_when(r.get("created")),
            "decided": decided,
            "period_start": parse_when(period.get("start")),
            "period_end": parse_when(period.get("end")),
            "provider": resolver.name(r.get("provider")),
            "units_requested": _number(requested) if requested is not None else "",
            # Units approved mean something once approved (in part); "0 approved" of a
            # pending or denied request only repeats the decision.
            "units_approved": _number(approved) if approved and decision.label not in terms.PA_OPEN else "",
            "units_used": _number(used) if used is not None else "",
            "reason": reason,
            "reference": ", ".join(_names(references)) or next(
                (str(i.get("value")) for i in dicts(r.get("identifier")) if i.get("value")), ""),
            "open": decision.label in terms.PA_OPEN or any(terms.status_word(terms.REVIEW_ACTION, code).label
                                                           in terms.PA_OPEN for code, _, _ in actions),
            "type_label": decision.label,
        },
    )


def _dosage(dosage: dict) -> tuple[str, str]:
    """Return (dose, sig) of a Dosage: "1 tablet", "Take 1 tablet by mouth once daily"."""
    dose = ""
    for rate in dicts(dosage.get("doseAndRate")):
        if quantity := rate.get("doseQuantity"):
            dose = quantity_text(quantity)
        elif low_high := rate.get("doseRange"):
            low, high = quantity_text(as_dict(low_high.get("low"))), quantity_text(as_dict(low_high.get("high")))
            dose = f"{low} to {high}".strip(" to")
        if dose:
            break
    sig = str(dosage.get("text") or "")
    if not sig:
        # No text: write it from its parts, as a prescriber would ("1 tablet by mouth twice a day").
        route = dosage.get("route")
        parts = [dose, terms.ROUTE_WORDS.get(terms.concept_code(route)) or terms.concept_name(route).lower(),
                 terms.frequency_text(as_dict(as_dict(dosage.get("timing")).get("repeat")))]
        if dosage.get("asNeededBoolean") or dosage.get("asNeededCodeableConcept"):
            parts.append("as needed")
        sig = " ".join(p for p in parts if p)
    return dose, sig


def medication_item(row: LocalResource, resolver: Resolver) -> Item:
    """A prescription, dispense or patient-reported medication, with dose and sig when given."""
    r = row.resource
    concept = r.get("medicationCodeableConcept")
    name = terms.concept_name(concept) or resolver.name(r.get("medicationReference"))
    dosages = dicts(r.get("dosageInstruction")) or dicts(r.get("dosage"))
    doses, sigs = zip(*(_dosage(d) for d in dosages)) if dosages else ((), ())
    table = terms.MEDICATION_STATUS.get(row.resource_type, terms.MEDICATION_STATUS["MedicationRequest"])
    supply = as_dict(as_dict(r.get("dispenseRequest")).get("expectedSupplyDuration") or r.get("daysSupply"))
    reasons = _names(terms.concept_name(c) for c in dicts(r.get("reasonCode")))
    return Item(
        kind=row.resource_type,
        id=row.resource_id,
        date=_date(row, "authoredOn", "whenHandedOver", "effectiveDateTime", "effectivePeriod.start", "dateAsserted"),
        title=name or "Medication not named by the source",
        status=terms.status_word(table, r.get("status")),
        source=_source(row),
        codes=terms.concept_codes(concept),
        fields={
            "kind_label": terms.MEDICATION_KIND.get(row.resource_type, "Medication"),
            "dose": "; ".join(_names(doses)),
            "sig": "; ".join(_names(sigs)),
            # What the page shows: the sig, with the dose first when the sig does not say it.
            "directions": "; ".join(_names(
                sig if not dose or dose.lower() in sig.lower() else f"{dose} · {sig}" if sig else dose
                for dose, sig in zip(doses, sigs))),
            "supply": quantity_text(supply) if supply.get("value") is not None else "",
            "prescriber": resolver.name(r.get("requester") or next(
                (p.get("actor") for p in dicts(r.get("performer")) if isinstance(p, dict)), None)),
            "reasons": reasons,
            "active": text(r.get("status")) in terms.MEDICATION_ACTIVE,
            "rxnorm": terms.concept_code(concept, system=RXNORM),
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def condition_item(row: LocalResource) -> Item:
    """A problem or diagnosis: its name, clinical status, category, onset."""
    r = row.resource
    clinical = terms.concept_code(r.get("clinicalStatus"))
    verification = terms.concept_code(r.get("verificationStatus"))
    title, codes = _named(r.get("code"), "Condition")
    categories = [terms.concept_code(c) for c in dicts(r.get("category"))]
    return Item(
        kind="Condition",
        id=row.resource_id,
        date=_date(row, "onsetDateTime", "onsetPeriod.start", "recordedDate"),
        title=title,
        status=terms.status_word(terms.CONDITION_CLINICAL, clinical, missing="Clinical status not given"),
        source=_source(row),
        codes=codes,
        fields={
            "code": terms.concept_code(r.get("code")),
            "category": ", ".join(_names(terms.CONDITION_CATEGORY.get(c, c) for c in categories)),
            "problem_list": "problem-list-item" in categories or "health-concern" in categories,
            "verification": terms.status_word(terms.VERIFICATION, verification, missing="").label,
            "onset": parse_when(r.get("onsetDateTime")) or parse_when(as_dict(r.get("onsetPeriod")).get("start")),
            "abated": parse_when(r.get("abatementDateTime")) or parse_when(as_dict(r.get("abatementPeriod")).get("start")),
            "recorded": parse_when(r.get("recordedDate")),
            "active": clinical in terms.CONDITION_ACTIVE and verification not in terms.NOT_TRUE,
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def allergy_item(row: LocalResource, resolver: Resolver) -> Item:
    """An allergy or intolerance: substance, reactions, severity, criticality."""
    r = row.resource
    title, codes = _named(r.get("code"), "Substance")
    clinical = terms.concept_code(r.get("clinicalStatus"))
    verification = terms.concept_code(r.get("verificationStatus"))
    reactions, severities = [], []
    for reaction in dicts(r.get("reaction")):
        if not isinstance(reaction, dict):
            continue
        reactions += [terms.concept_name(m) for m in dicts(reaction.get("manifestation"))]
        if reaction.get("severity"):
            severities.append(str(reaction["severity"]))
    criticality = r.get("criticality")
    return Item(
        kind="AllergyIntolerance",
        id=row.resource_id,
        date=_date(row, "recordedDate", "onsetDateTime"),
        title=title,
        status=terms.status_word(terms.ALLERGY_CLINICAL, clinical, missing="Clinical status not given"),
        source=_source(row),
        codes=codes,
        fields={
            "reactions": _names(reactions),
            "severity": ", ".join(_names(severities)).capitalize(),
            "criticality": terms.status_word(terms.ALLERGY_CRITICALITY, criticality, missing="Risk not given"),
            "category": ", ".join(terms.ALLERGY_CATEGORY.get(str(c), str(c)) for c in as_list(r.get("category"))),
            "type": terms.ALLERGY_TYPE.get(str(r.get("type") or ""), ""),
            "verification": terms.status_word(terms.VERIFICATION, verification, missing="").label,
            "recorder": resolver.name(r.get("recorder") or r.get("asserter")),
            "active": clinical in ("active", "") and verification not in terms.NOT_TRUE,
        },
    )


def immunization_item(row: LocalResource, resolver: Resolver) -> Item:
    """A vaccine given (or not given): which, when, where."""
    r = row.resource
    title, codes = _named(r.get("vaccineCode"), "Vaccine")
    performer = next((resolver.name(p.get("actor")) for p in dicts(r.get("performer")) if isinstance(p, dict)), "")
    return Item(
        kind="Immunization",
        id=row.resource_id,
        date=_date(row, "occurrenceDateTime", "recorded"),
        title=title,
        status=terms.status_word(terms.IMMUNIZATION_STATUS, r.get("status")),
        source=_source(row),
        codes=codes,
        fields={
            "code": terms.concept_code(r.get("vaccineCode")),
            "location": resolver.name(r.get("location")),
            "performer": performer,
            "lot": str(r.get("lotNumber") or ""),
            "given": r.get("status") == "completed",
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def _range_text(ranges: list[dict]) -> str:
    """Return the first reference range in words: "4.0–5.6 %", "≥ 60 mL/min/1.73 m²", or its text."""
    for rr in ranges:
        if not isinstance(rr, dict):
            continue
        low, high = as_dict(rr.get("low")), as_dict(rr.get("high"))
        unit = terms.unit_text(high.get("unit") or high.get("code") or low.get("unit") or low.get("code"))
        if low.get("value") is not None and high.get("value") is not None:
            return f"{low['value']}–{high['value']} {unit}".strip()
        if low.get("value") is not None:
            return f"≥ {low['value']} {unit}".strip()
        if high.get("value") is not None:
            return f"≤ {high['value']} {unit}".strip()
        if rr.get("text"):
            return str(rr["text"])
    return ""


def _interpretation(resource: dict, value: float | None, unit: str) -> Status | None:
    """Return the source's interpretation, else High/Low against its numeric reference range
    (FHIR R4 Observation.referenceRange: low and high are inclusive) when in the value's unit."""
    for concept in dicts(resource.get("interpretation")):
        code = terms.concept_code(concept)
        if code:
            return terms.INTERPRETATION.get(code) or Status(terms.concept_name(concept) or code, "warn")
    if value is None:
        return None
    for rr in dicts(resource.get("referenceRange")):
        bounds = [as_dict(rr.get("low")), as_dict(rr.get("high"))]
        if any(b and terms.unit_text(text(b.get("unit")) or text(b.get("code"))) not in ("", unit) for b in bounds):
            continue  # a range in another unit says nothing about this value
        low, high = bounds[0].get("value"), bounds[1].get("value")
        if isinstance(low, int | float) and value < low:
            return terms.INTERPRETATION["L"]
        if isinstance(high, int | float) and value > high:
            return terms.INTERPRETATION["H"]
        if isinstance(low, int | float) or isinstance(high, int | float):
            return terms.INTERPRETATION["N"]
    return None


def _observation_value(r: dict) -> tuple[str, float | None, str]:
    """Return (value in words, the number if one, unit) of an Observation."""
    quantity = r.get("valueQuantity")
    if isinstance(quantity, dict) and quantity.get("value") is not None:
        value, unit = quantity["value"], terms.unit_text(text(quantity.get("unit")) or text(quantity.get("code")))
        # "<0.01": a bound, not a value; it is shown as given and neither flagged nor plotted.
        comparator = text(quantity.get("comparator"))
        exact = isinstance(value, int | float) and not isinstance(value, bool) and not comparator
        return f"{comparator}{value} {unit}".strip(), float(value) if exact else None, unit
    if r.get("valueCodeableConcept"):
        return terms.concept_name(r["valueCodeableConcept"]), None, ""
    for key in ("valueString", "valueInteger", "valueDateTime"):
        if key in r:
            number = r[key] if key == "valueInteger" else None
            return str(r[key]), float(number) if number is not None else None, ""
    if "valueBoolean" in r:
        return ("Yes" if r["valueBoolean"] else "No"), None, ""
    components = {}
    for comp in dicts(r.get("component")):
        if isinstance(comp, dict) and isinstance(comp.get("valueQuantity"), dict):
            components[terms.concept_code(comp.get("code"))] = comp["valueQuantity"]
    systolic, diastolic = components.get("8480-6"), components.get("8462-4")
    if systolic and diastolic and systolic.get("value") is not None and diastolic.get("value") is not None:
        unit = terms.unit_text(systolic.get("unit") or systolic.get("code"))
        return f"{systolic['value']}/{diastolic['value']} {unit}".strip(), None, unit
    parts = [f"{terms.concept_name(c.get('code'))}: {quantity_text(c.get('valueQuantity') or {})}"
             for c in dicts(r.get("component")) if isinstance(c, dict) and c.get("valueQuantity")]
    if r.get("dataAbsentReason"):
        return f"No result ({terms.concept_name(r['dataAbsentReason']).lower() or 'reason not given'})", None, ""
    return "; ".join(parts), None, ""


def observation_item(row: LocalResource) -> Item:
    """A lab result, vital sign or other observation: value with unit, range and flag."""
    r = row.resource
    title, codes = _named(r.get("code"), "Test")
    value_text, number, unit = _observation_value(r)
    components = {terms.concept_code(c.get("code")): as_dict(c.get("valueQuantity")).get("value")
                  for c in dicts(r.get("component")) if isinstance(c, dict)}
    categories = [terms.concept_code(c) for c in dicts(r.get("category"))]
    return Item(
        kind="Observation",
        id=row.resource_id,
        date=_date(row, "effectiveDateTime", "effectivePeriod.start", "effectiveInstant", "issued"),
        title=title,
        status=terms.status_word(terms.OBSERVATION_STATUS, r.get("status")),
        source=_source(row),
        codes=codes,
        fields={
            "code": terms.concept_code(r.get("code"), system="http://loinc.org") or terms.concept_code(r.get("code")),
            "full_name": terms.display_clean(text(as_dict(r.get("code")).get("text")) or next(
                (text(c.get("display")) for c in dicts(as_dict(r.get("code")).get("coding")) if text(c.get("display"))), "")),
            "value": value_text or "No value given",
            "number": number,
            "unit": unit,
            "components": components,
            "range": _range_text(dicts(r.get("referenceRange"))),
            "flag": _interpretation(r, number, unit),
            # Entered in error or cancelled: listed with its status, never a summary's "latest".
            "valid": text(r.get("status")) not in ("entered-in-error", "cancelled"),
            "vital": "vital-signs" in categories,
            "type_label": "Vital signs" if "vital-signs" in categories else "Laboratory" if "laboratory" in categories
            else ", ".join(c.replace("-", " ").capitalize() for c in categories if c) or "Other",
            "encounters": sorted(_encounter_refs(r)),
        },
    )


def procedure_item(row: LocalResource) -> Item:
    r = row.resource
    title, codes = _named(r.get("code"), "Procedure")
    return Item(
        kind="Procedure", id=row.resource_id, date=_date(row, "performedDateTime", "performedPeriod.start"),
        title=title, status=terms.status_word(terms.PROCEDURE_STATUS, r.get("status")),
        source=_source(row), codes=codes, fields={"code": terms.concept_code(r.get("code"))},
    )


def encounter_item(row: LocalResource, resolver: Resolver, conditions: dict[str, Item]) -> Item:
    """A visit: kind, facility, clinicians, reasons and diagnoses."""
    r = row.resource
    klass = as_dict(r.get("class"))
    class_code = str(klass.get("code") or "")
    facility = ""
    for loc in dicts(r.get("location")):
        facility = resolver.name(loc.get("location") if isinstance(loc, dict) else None)
        if facility:
            break
    organization = resolver.name(r.get("serviceProvider"))
    clinicians = _names(resolver.name(p.get("individual")) for p in dicts(r.get("participant")) if isinstance(p, dict))
    reasons = [terms.concept_name(c) for c in dicts(r.get("reasonCode"))]
    for ref in dicts(r.get("reasonReference")):
        key = ref_key(ref)
        reasons.append(conditions[key[1]].title if key and key[1] in conditions else str(as_dict(ref).get("display") or ""))
    diagnoses = []
    for diag in dicts(r.get("diagnosis")):
        key = ref_key(as_dict(diag).get("condition"))
        if key and key[1] in conditions:
            diagnoses.append(conditions[key[1]].title)
        elif text(as_dict(as_dict(diag).get("condition")).get("display")):
            diagnoses.append(str(diag["condition"]["display"]))
    period = as_dict(r.get("period"))
    class_label = ENCOUNTER_CLASSES.get(class_code) or str(klass.get("display") or "").capitalize() or "Visit"
    types = _names(terms.concept_name(t) for t in dicts(r.get("type")))
    return Item(
        kind="Encounter",
        id=row.resource_id,
        date=_date(row, "period.start"),
        title=", ".join(types) or f"{class_label} visit",
        status=terms.status_word(terms.ENCOUNTER_STATUS, r.get("status")),
        source=_source(row),
        codes=" · ".join(_names(terms.concept_codes(t) for t in dicts(r.get("type")))),
        fields={
            "class_code": class_code,
            "class_label": class_label,
            "facility": facility or organization or "Facility not given",
            "organization": organization,
            "clinicians": clinicians,
            "reasons": _names(reasons),
            "diagnoses": _names(diagnoses),
            "end": parse_when(period.get("end")),
            "happened": text(r.get("status")) not in ("cancelled", "entered-in-error", "planned"),
        },
    )


# --- The history -------------------------------------------------------------------------


@dataclass
class History:
    """A patient's history from the local store, ready for the patient page."""

    encounters: list[Item]
    claims: list[Item]
    prior_auths: list[Item]
    conditions: list[Item]
    medications: list[Item]
    allergies: list[Item]
    immunizations: list[Item]
    observations: list[Item]
    timeline: dict[str, Any] | None
    sources: list[Source]
    total: int
    # Set when the payer stopped sharing the patient's data: what is shown was received before.
    ended: PayerLink | None = None
    hidden: bool = False

    @property
    def active_medications(self) -> list[Item]:
        return [m for m in self.medications if m.fields.get("active")]

    @property
    def past_medications(self) -> list[Item]:
        return [m for m in self.medications if not m.fields.get("active")]

    @property
    def received_at(self) -> dt.datetime | None:
        return max((s.export_time for s in self.sources if s.export_time), default=None)


def newest_first(items: list[Item]) -> list[Item]:
    return sorted(items, key=lambda i: i.date or dt.datetime.min.replace(tzinfo=dt.UTC), reverse=True)


def patient_history(*, patient: HospitalPatient) -> History:
    """Return the patient's history from their linked source, newest first, references resolved."""
    link = payer_link(patient=patient)
    rows = _patient_rows(link=link)
    resolver = Resolver(
        (row.resource for type_rows in rows.values() for row in type_rows),
        connection_id=link.connection.pk if link else None, stored_by=link.ended_at if link else None,
    )
    conditions = {row.resource_id: readable(condition_item, row) for row in rows["Condition"]}
    encounters = [readable(encounter_item, row, resolver, conditions) for row in rows["Encounter"]]
    claim_rows = [*rows["ExplanationOfBenefit"], *rows["Claim"], *rows["ClaimResponse"]]
    claims = [readable(claim_item, row, resolver) for row in claim_rows if not _is_preauth(row.resource)]
    # A Claim and its ClaimResponse/EOB describe one claim: list EOBs, else the Claim.
    if any(c.kind == "ExplanationOfBenefit" for c in claims):
        claims = [c for c in claims if c.kind == "ExplanationOfBenefit"]
    prior_auths = [readable(prior_auth_item, row, resolver) for row in claim_rows if _is_preauth(row.resource)]
    if any(c.kind == "ExplanationOfBenefit" for c in prior_auths):
        prior_auths = [c for c in prior_auths if c.kind == "ExplanationOfBenefit"]
    medications = [readable(medication_item, row, resolver) for kind in MEDICATION_TYPES for row in rows[kind]]

    sources: dict[tuple, Source] = {}
    for type_rows in rows.values():
        for row in type_rows:
            src = _source(row)
            sources.setdefault((src.payer, src.export_time), src)
    ended = link if link and link.ended_at else None
    return History(
        encounters=newest_first(encounters),
        claims=newest_first(claims),
        prior_auths=newest_first(prior_auths),
        conditions=newest_first(list(conditions.values())),
        medications=newest_first(medications),
        allergies=newest_first([readable(allergy_item, row, resolver) for row in rows["AllergyIntolerance"]]),
        immunizations=newest_first([readable(immunization_item, row, resolver) for row in rows["Immunization"]]),
        observations=newest_first([readable(observation_item, row) for row in rows["Observation"]]),
        timeline=encounter_timeline(encounters=[e for e in encounters if e.readable and e.fields["happened"]]),
        sources=sorted(sources.values(), key=lambda s: (s.export_time is None, s.export_time), reverse=True),
        total=sum(len(v) for v in rows.values()),
        ended=ended,
        hidden=bool(ended) and history_after_sharing_ends() == "hide",
    )


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
    immunizations: list[Item]
    claims: list[Item]
    ended: PayerLink | None = None


def encounter_detail(*, patient: HospitalPatient, encounter_id: str) -> EncounterDetail | None:
    """Return one of the patient's encounters with everything linked to it, or None when
    the encounter is not the patient's (or not shown any more)."""
    link = payer_link(patient=patient)
    rows = _patient_rows(link=link)
    row = next((r for r in rows["Encounter"] if r.resource_id == encounter_id), None)
    if row is None:
        return None
    linked = lambda kind: [r for r in rows[kind] if encounter_id in _encounter_refs(r.resource)]  # noqa: E731
    claim_rows = [r for r in rows["ExplanationOfBenefit"] if not _is_preauth(r.resource)]
    resolver = Resolver(
        [row.resource, *(r.resource for r in claim_rows), *(r.resource for k in HISTORY_TYPES for r in linked(k))],
        connection_id=row.connection_id, stored_by=link.ended_at if link else None,
    )
    conditions = {r.resource_id: readable(condition_item, r) for r in rows["Condition"]}
    encounter = readable(encounter_item, row, resolver, conditions)
    r = row.resource

    participants = []
    for p in dicts(r.get("participant")):
        roles = ", ".join(_names(terms.concept_name(t) for t in dicts(p.get("type"))))
        participants.append({"name": resolver.name(p.get("individual")) or "Name not given", "role": roles.capitalize()})
    locations = []
    for loc in dicts(r.get("location")):
        address = as_dict(as_dict(resolver.resource(loc.get("location"))).get("address"))
        lines = address.get("line") if isinstance(address.get("line"), list) else []
        locations.append({
            "name": resolver.name(loc.get("location")) or "Location not named",
            "address": ", ".join(text(p) for p in [*lines, address.get("city"), address.get("state")] if text(p)),
        })
    diagnosis_ids = [ref_key(d.get("condition")) for d in dicts(r.get("diagnosis"))]
    diagnoses = [conditions[k[1]] for k in diagnosis_ids if k and k[1] in conditions]
    for item in (readable(condition_item, c) for c in linked("Condition")):
        if item.id not in {d.id for d in diagnoses}:
            diagnoses.append(item)
    # The claim for the encounter: an EOB whose item.encounter names it (CARIN BB), else
    # one whose billablePeriod starts on the encounter's day.
    claims = [readable(claim_item, c, resolver) for c in claim_rows if encounter_id in _encounter_refs(c.resource)]
    if not claims and encounter.date:
        day = encounter.date.date()
        for c in claim_rows:
            start = parse_when(as_dict(c.resource.get("billablePeriod")).get("start"))
            if start and start.date() == day:
                claims.append(readable(claim_item, c, resolver))
    return EncounterDetail(
        encounter=encounter,
        resource=r,
        participants=participants,
        locations=locations,
        diagnoses=diagnoses,
        procedures=[readable(procedure_item, p) for p in linked("Procedure")],
        observations=[readable(observation_item, o) for o in linked("Observation")],
        medications=[readable(medication_item, m, resolver) for kind in MEDICATION_TYPES for m in linked(kind)],
        immunizations=[readable(immunization_item, i, resolver) for i in linked("Immunization")],
        claims=claims,
        ended=link if link and link.ended_at else None,
    )


# --- Lists a clinician pages through and filters ------------------------------------------


@dataclass
class ListPage:
    """One page of a filtered list (encounters, claims), with what the filters can offer."""

    items: list[Item]
    total: int
    matched: int
    page: int
    pages: int
    first: int
    last: int
    facilities: list[str]
    types: list[str]

    @property
    def filtered(self) -> bool:
        return self.matched != self.total


def _type_of(item: Item) -> str:
    return str(item.fields.get("class_label") or item.fields.get("type_label") or "")


def list_page(
    *,
    items: list[Item],
    date_from: dt.date | None = None,
    date_to: dt.date | None = None,
    facility: str = "",
    kind: str = "",
    page: int = 1,
    per_page: int = 25,
) -> ListPage:
    """Return the page of ``items`` (newest first) within the dates (inclusive), at the
    facility and of the type asked; a page past the end gives the last page."""
    days = {id(i): timezone.localtime(i.date).date() for i in items if i.date}  # each day as the page shows it
    matched = [
        i for i in items
        if (not date_from or days.get(id(i), dt.date.min) >= date_from)
        and (not date_to or days.get(id(i), dt.date.max) <= date_to)
        and (not facility or i.fields.get("facility") == facility)
        and (not kind or _type_of(i) == kind)
    ]
    pages = max(1, -(-len(matched) // per_page))
    page = min(max(1, page), pages)
    start = (page - 1) * per_page
    return ListPage(
        items=matched[start:start + per_page],
        total=len(items),
        matched=len(matched),
        page=page,
        pages=pages,
        first=start + 1 if matched else 0,
        last=min(start + per_page, len(matched)),
        facilities=sorted({str(i.fields.get("facility")) for i in items if i.fields.get("facility")}),
        types=sorted({_type_of(i) for i in items if _type_of(i)}),
    )
