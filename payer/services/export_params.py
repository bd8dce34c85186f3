"""Kick-off parameters of Bulk Data ``$export`` and PDex ``$davinci-data-export``.

Parse, validate and normalize them into ``ExportParams`` (JSON-serializable, stored on
the job), and filter rows by ``_typeFilter`` and ``_elements`` when the job runs.

Bulk Data IG 2.0.0 export.html#query-parameters: an unsupported or malformed parameter
SHOULD be answered with an error and an OperationOutcome, unless the client sent
``Prefer: handling=lenient``; then the server MAY run the job and SHOULD list what it
ignored in the manifest's ``error`` files (req 197).
"""

import dataclasses
import datetime
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import unquote

from django.db.models import Q
from django.utils import timezone
from django.utils.dateparse import parse_date, parse_datetime

from fhirkit.outcome import FHIRError, outcome_issue

# The FHIR types this payer exports. Patient compartment types come from the clinical
# repository (ExplanationOfBenefit from the claims system through payer/mapping.py);
# directory types (outside the compartment) help interpret the data (Bulk Data req 37/38).
PATIENT_TYPES = (
    "Patient",
    "AllergyIntolerance",
    "CarePlan",
    "CareTeam",
    "Condition",
    "Coverage",
    "DiagnosticReport",
    "DocumentReference",
    "Encounter",
    "ExplanationOfBenefit",
    "Goal",
    "Immunization",
    "MedicationDispense",
    "MedicationRequest",
    "Observation",
    "Procedure",
    "Provenance",
    "ServiceRequest",
)
SHARED_TYPES = ("Organization", "Location", "Practitioner", "PractitionerRole", "Medication")
SUPPORTED_TYPES = PATIENT_TYPES + SHARED_TYPES

OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}

# Bulk Data 2.0 includeAssociatedData (req 92-99): the Provenance whose targets are among
# the non-Provenance resources exported; Relevant: all of them, Latest: for each exported
# resource only its most recent one (by Provenance.recorded).
ASSOCIATED_DATA = {"LatestProvenanceResources", "RelevantProvenanceResources"}
PROVENANCE_LATEST, PROVENANCE_RELEVANT = "latest", "relevant"

PDEX_EXPORT_TYPES = {
    "hl7.fhir.us.davinci-pdex#provider-download",
    "hl7.fhir.us.davinci-pdex#provider-delta",
    "hl7.fhir.us.davinci-pdex#provider-snapshot",
}

EXPORT_PARAMS = {"_outputFormat", "_type", "_since", "_until", "_typeFilter", "patient", "_elements", "includeAssociatedData"}
PDEX_PARAMS = EXPORT_PARAMS | {"exportType"}

# CMS-0057-F: Provider Access shares data with a date of service on or after 2016-01-01.
SERVICE_DATE_FLOOR = datetime.datetime(2016, 1, 1, tzinfo=datetime.UTC)

# Elements kept whatever ``_elements`` says (Bulk Data req 79: mandatory elements).
ALWAYS_ELEMENTS = {"resourceType", "id", "meta"}
MANDATORY_ELEMENTS: dict[str, set[str]] = {
    "AllergyIntolerance": {"patient"},
    "CarePlan": {"status", "intent", "subject"},
    "CareTeam": set(),
    "Condition": {"subject"},
    "Coverage": {"status", "beneficiary", "payor"},
    "DiagnosticReport": {"status", "code"},
    "DocumentReference": {"status", "content"},
    "Encounter": {"status", "class"},
    "ExplanationOfBenefit": {
        "status", "type", "use", "patient", "created", "insurer", "provider", "outcome", "insurance",
    },
    "Goal": {"lifecycleStatus", "description", "subject"},
    "Immunization": {"status", "vaccineCode", "patient", "occurrenceDateTime", "occurrenceString"},
    "MedicationDispense": {"status"},
    "MedicationRequest": {"status", "intent", "subject", "medicationCodeableConcept", "medicationReference"},
    "Observation": {"status", "code"},
    "Procedure": {"status", "subject"},
    "Provenance": {"target", "recorded", "agent"},
    "ServiceRequest": {"status", "intent", "subject"},
    "PractitionerRole": set(),
}
SUBSETTED_TAG = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}

# _typeFilter (issue 4: "at least the search parameters the payer FHIR API supports for
# each type"): every parameter of payer/services/fhir.py (``_id``, ``_lastUpdated``;
# ``identifier`` on Patient; ``patient`` on the other types of the patient compartment;
# ``date`` on Encounter) and more. "column" parameters become SQL on indexed columns of
# ClinicalResource; the others are checked on the parsed row.
COMMON_SEARCH = {"_lastUpdated": "date", "_id": "token"}
# Types of the patient compartment searchable by ``patient`` (all but Patient itself).
PATIENT_SEARCH = {"patient": "reference"}
TYPE_SEARCH: dict[str, dict[str, str]] = {
    "Patient": {"identifier": "token"},
    "Encounter": {"date": "date", "status": "token", "type": "token", "class": "token"},
    "Observation": {"date": "date", "status": "token", "category": "token", "code": "token"},
    "Condition": {"category": "token", "code": "token", "clinical-status": "token", "onset-date": "date"},
    "Procedure": {"date": "date", "status": "token", "code": "token"},
    "DiagnosticReport": {"date": "date", "status": "token", "category": "token", "code": "token"},
    "DocumentReference": {"date": "date", "status": "token", "category": "token", "type": "token"},
    "Immunization": {"date": "date", "status": "token"},
    "MedicationRequest": {"status": "token", "intent": "token", "authoredon": "date"},
    "MedicationDispense": {"status": "token"},
    "AllergyIntolerance": {"clinical-status": "token"},
    "CarePlan": {"status": "token", "category": "token", "date": "date"},
    "CareTeam": {"status": "token"},
    "Goal": {"lifecycle-status": "token"},
    "ServiceRequest": {"status": "token", "category": "token", "code": "token", "authored": "date"},
    "Coverage": {"status": "token"},
    # Directory references (the payer FHIR API answers them too; issue 11).
    "PractitionerRole": {"practitioner": "reference", "organization": "reference"},
    "Location": {"organization": "reference"},
    "ExplanationOfBenefit": {"use": "token", "status": "token", "type": "token", "service-date": "date", "created": "date"},
}
# Parameters answered from indexed ClinicalResource columns (the rest look at the JSON).
# ``date`` is the column holding each type's clinical date (see ClinicalResource.date).
COLUMN_PARAMS = {"_lastUpdated": "last_updated", "_id": "resource_id", "status": "status", "date": "date",
                 "patient": "patient_id"}
# JSON paths of the other parameters (first match wins; lists are walked).
JSON_PATHS: dict[str, tuple[str, ...]] = {
    "category": ("category",),
    "code": ("code",),
    "type": ("type",),
    "class": ("class",),
    "use": ("use",),
    "status": ("status",),
    "intent": ("intent",),
    "clinical-status": ("clinicalStatus",),
    "lifecycle-status": ("lifecycleStatus",),
    "service-date": ("billablePeriod.start", "item.servicedDate"),
    "created": ("created",),
    "onset-date": ("onsetDateTime",),
    "authoredon": ("authoredOn",),
    "authored": ("authoredOn",),
    "_lastUpdated": ("meta.lastUpdated",),
    "_id": ("id",),
    "date": ("date",),
    "identifier": ("identifier",),
    # R4 CompartmentDefinition Patient: where each exported type names its patient.
    "patient": ("patient", "subject", "beneficiary"),
    "practitioner": ("practitioner",),
    "organization": ("organization", "managingOrganization"),
}
REFERENCE_PARAMS = {"patient"}
# The resource type each reference parameter points at.
REFERENCE_TARGETS = {"patient": "Patient", "practitioner": "Practitioner", "organization": "Organization"}
_DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_ELEMENT_NAME = re.compile(r"^[a-z][A-Za-z0-9]*(\[x\])?$")
_TYPE_NAME = re.compile(r"^[A-Z][A-Za-z]+$")


@dataclasses.dataclass
class ExportParams:
    """Normalized kick-off parameters, stored as ``ExportJob.params``."""

    types: list[str]
    output_format: str = "application/fhir+ndjson"
    since: str | None = None
    until: str | None = None
    # type -> list of alternatives (OR), each a list of [param, prefix, value] (AND).
    type_filters: dict[str, list[list[list[str]]]] = dataclasses.field(default_factory=dict)
    # "*" -> elements for every type; "Type" -> elements for that type.
    elements: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    patients: list[str] | None = None
    include_associated: list[str] = dataclasses.field(default_factory=list)
    # PROVENANCE_LATEST or PROVENANCE_RELEVANT when Provenance is exported as associated
    # data of the other types, not as a type of its own; None otherwise.
    provenance: str | None = None
    export_type: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "ExportParams":
        return cls(**data)

    def since_dt(self) -> datetime.datetime | None:
        return parse_datetime(self.since) if self.since else None

    def until_dt(self) -> datetime.datetime | None:
        return parse_datetime(self.until) if self.until else None


class _Issues:
    """Collect problems: raise at once when strict, keep them as warnings when lenient."""

    def __init__(self, lenient: bool) -> None:
        self.lenient = lenient
        self.items: list[dict[str, Any]] = []

    def add(self, diagnostics: str, *, code: str = "invalid", status: int = 400, expression: str = "") -> None:
        if not self.lenient:
            raise FHIRError(diagnostics, status=status, code=code, expression=[expression] if expression else None)
        self.items.append(
            outcome_issue(
                code=code,
                severity="warning",
                diagnostics=f"Ignored under Prefer: handling=lenient: {diagnostics}",
                expression=[expression] if expression else None,
            )
        )


def raw_params_from_query(query: Mapping[str, list[str]]) -> dict[str, list[str]]:
    """Return kick-off parameters of a GET as name -> values (repeats kept)."""
    return {name: [v for v in values] for name, values in query.items()}


def raw_params_from_parameters(body: Any) -> dict[str, list[str]]:
    """Return kick-off parameters of a POST ``Parameters`` body as name -> values.

    Bulk Data 2.0 export.html#post-body: each parameter is a ``Parameters.parameter``
    with a ``value[x]``; ``patient`` carries a ``valueReference``.
    """
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise FHIRError("A POST kick-off body must be a FHIR Parameters resource.", code="structure")
    raw: dict[str, list[str]] = {}
    for index, parameter in enumerate(body.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        if not isinstance(name, str) or not name:
            raise FHIRError("Every Parameters.parameter needs a name.", code="structure", expression=[f"Parameters.parameter[{index}]"])
        value: Any = None
        for key, candidate in parameter.items():
            if key.startswith("value"):
                value = candidate
        if isinstance(value, dict):
            value = value.get("reference")
        if isinstance(value, bool):
            value = "true" if value else "false"
        if not isinstance(value, str | int | float) or value == "":
            raise FHIRError(
                f"Parameter {name} has no usable value.", code="structure", expression=[f"Parameters.parameter[{index}]"]
            )
        raw.setdefault(name, []).append(str(value))
    return raw


def _split(values: Iterable[str]) -> list[str]:
    # Bulk Data req 32: repeated parameters are treated as one comma-delimited value.
    return [item.strip() for value in values for item in value.split(",") if item.strip()]


def _parse_instant(value: str, *, name: str, issues: _Issues) -> datetime.datetime | None:
    try:
        parsed = parse_datetime(value)
        if parsed is None and (day := parse_date(value)) is not None:
            parsed = datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
    except ValueError:
        # Well formed but no such day or time (2020-13-45, 2020-02-30): malformed, not a 500.
        parsed = None
    if parsed is None or timezone.is_naive(parsed):
        issues.add(f"{name} must be a FHIR instant with a time zone, got {value!r}.", expression=name)
        return None
    return parsed


def _date_range(value: str) -> tuple[datetime.datetime, datetime.datetime] | None:
    """Return [start, end) of a FHIR date/dateTime search value at its precision, or None
    when it is not a date: malformed, no such day (2020-13-45), or an end past year 9999."""
    try:
        return _date_range_unchecked(value)
    except (ValueError, OverflowError):
        return None


_END_OF_TIME = datetime.datetime.max.replace(tzinfo=datetime.UTC)


def _month_start(year: int, month: int) -> datetime.datetime:
    # The end of 9999 (or of its December) is past datetime's range: the end of time.
    if year > 9999:
        return _END_OF_TIME
    return datetime.datetime(year, month, 1, tzinfo=datetime.UTC)


def _after(start: datetime.datetime, delta: datetime.timedelta) -> datetime.datetime:
    try:
        return start + delta
    except OverflowError:
        return _END_OF_TIME


def _date_range_unchecked(value: str) -> tuple[datetime.datetime, datetime.datetime] | None:
    if re.fullmatch(r"\d{4}", value):
        year = int(value)
        return _month_start(year, 1), _month_start(year + 1, 1)
    if re.fullmatch(r"\d{4}-\d{2}", value):
        year, month = map(int, value.split("-"))
        return _month_start(year, month), _month_start(year + (month == 12), month % 12 + 1)
    if (day := parse_date(value)) is not None and len(value) == 10:
        start = datetime.datetime.combine(day, datetime.time(), tzinfo=datetime.UTC)
        return start, _after(start, datetime.timedelta(days=1))
    parsed = parse_datetime(value)
    if parsed is None:
        return None
    if timezone.is_naive(parsed):
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed, _after(parsed, datetime.timedelta(seconds=1))


def supported_search_params(resource_type: str) -> dict[str, str]:
    """Return the ``_typeFilter`` search parameters of ``resource_type`` and their types."""
    compartment = PATIENT_SEARCH if resource_type in PATIENT_TYPES and resource_type != "Patient" else {}
    return {**COMMON_SEARCH, **compartment, **TYPE_SEARCH.get(resource_type, {})}


def _query_pairs(text: str) -> tuple[str, str, list[tuple[str, str]]] | None:
    """Split ``Type?query`` into (type, query, [(name, value), ...]), decoding once.

    Bulk Data 2.0 export.html#_typefilter: the value is a FHIR search query, URL-encoded
    as a whole in the kick-off URL; Django has already undone that encoding. The query's
    own names and values are percent-decoded once more (a ``|`` sent as ``%7C``), never
    form-decoded: a ``+`` stays a ``+`` (a time zone offset such as ``+02:00``). A client
    that encoded the whole query twice (``Type%3Fparam%3Dvalue``) gets one decoding of it.
    """
    resource_type, mark, query = text.partition("?")
    decode = unquote
    if not mark and "%3f" in text.lower():
        resource_type, mark, query = unquote(text).partition("?")
        decode = str  # already decoded once above: never twice
    if not mark or not query:
        return None
    pairs = []
    for pair in query.split("&"):
        if pair:
            name, _, value = pair.partition("=")
            pairs.append((decode(name), decode(value)))
    return resource_type, query, pairs


def _parse_type_filter(text: str, *, types: list[str], issues: _Issues) -> tuple[str, list[list[str]]] | None:
    """Parse one ``Type?param=value&...`` into (type, [[param, prefix, value], ...])."""
    split = _query_pairs(text)
    if split is None:
        issues.add(f"_typeFilter {text!r} must look like Type?param=value.", expression="_typeFilter")
        return None
    resource_type, _query, pairs = split
    if resource_type not in SUPPORTED_TYPES:
        issues.add(f"_typeFilter names an unsupported resource type {resource_type!r}.", code="not-supported", expression="_typeFilter")
        return None
    supported = supported_search_params(resource_type)
    criteria: list[list[str]] = []
    for name, value in pairs:
        base, _, modifier = name.partition(":")
        if base in {"_include", "_revinclude", "_sort", "_count", "_elements", "_summary"}:
            # Bulk Data req 104: search result parameters SHALL NOT be used in _typeFilter.
            issues.add(f"_typeFilter may not use {base}.", expression="_typeFilter")
            return None
        if base not in supported or modifier:
            issues.add(
                f"_typeFilter search parameter {name!r} is not supported for {resource_type}; "
                f"supported: {', '.join(sorted(supported))}.",
                code="not-supported",
                expression="_typeFilter",
            )
            return None
        if not value:
            issues.add(f"_typeFilter parameter {name!r} has no value.", expression="_typeFilter")
            return None
        if supported[base] == "date":
            prefix, rest = (value[:2], value[2:]) if value[:2] in _DATE_PREFIXES else ("eq", value)
            if prefix not in {"eq", "gt", "lt", "ge", "le"} or _date_range(rest) is None:
                issues.add(f"_typeFilter {name}={value} is not a supported date search.", expression="_typeFilter")
                return None
            criteria.append([base, prefix, rest])
        elif supported[base] == "reference":
            # R4 search.html#reference: [Type/]id of the parameter's target type.
            ids = []
            target = REFERENCE_TARGETS[base]
            for reference in value.split(","):
                kind, slash, patient_id = reference.strip().rpartition("/")
                if (slash and kind != target) or not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", patient_id):
                    issues.add(f"_typeFilter {name}={value} is not a {target} reference.", expression="_typeFilter")
                    return None
                ids.append(patient_id)
            criteria.append([base, "", ",".join(ids)])
        else:
            criteria.append([base, "", value])
    return resource_type, criteria


# A NUL or a lone surrogate: no FHIR string holds one, and no database column stores one.
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def _bounds_check(raw: Mapping[str, list[str]]) -> None:
    """Refuse a kick-off too large to plan cheaply, with 400 ``too-costly`` (lenient too).

    Bounds (settings): ``PA_FHIR_MAX_PARAMETERS`` values in all, ``PA_EXPORT_MAX_TYPE_FILTERS``
    ``_typeFilter`` alternatives, ``PA_EXPORT_MAX_PATIENTS`` patient references and
    ``PA_FHIR_MAX_VALUE_LENGTH`` characters a value. 5,000 alternatives built a query tree
    the database refused ("Expression tree is too large").
    """
    from django.conf import settings

    bounds = {
        "_typeFilter": getattr(settings, "PA_EXPORT_MAX_TYPE_FILTERS", 50),
        "patient": getattr(settings, "PA_EXPORT_MAX_PATIENTS", 1000),
    }
    total = sum(len(values) for values in raw.values())
    if total > getattr(settings, "PA_FHIR_MAX_PARAMETERS", 100) + bounds["patient"]:
        raise FHIRError(f"The kick-off holds {total} parameter values, more than this server takes.", code="too-costly")
    max_length = getattr(settings, "PA_FHIR_MAX_VALUE_LENGTH", 4000)
    for name, values in raw.items():
        # A comma list of patients or _typeFilter alternatives is bounded by its count below.
        if name not in bounds and any(len(value) > max_length for value in values):
            raise FHIRError(f"A value of {name[:64]!r} is longer than {max_length} characters.", code="too-costly",
                            expression=[name[:64]])
    for name, limit in bounds.items():
        count = len(_split(raw.get(name, [])))
        if count > limit:
            raise FHIRError(f"{name} takes at most {limit} values; this kick-off has {count}.", code="too-costly",
                            expression=[name])


def export_params_parse(
    *,
    raw: Mapping[str, list[str]],
    operation: str,
    granted_types: list[str],
    lenient: bool,
    patient_param_allowed: bool = True,
) -> tuple[ExportParams, list[dict[str, Any]]]:
    """Validate kick-off parameters; return them normalized with the lenient warnings.

    ``granted_types`` are the supported types the caller's scopes allow (Bulk Data req 9:
    only data the client is authorized for). Raise ``FHIRError`` (400, or 403 for a type
    the scopes do not grant) unless ``lenient``.
    """
    issues = _Issues(lenient)
    _bounds_check(raw)
    # No FHIR value holds a NUL or a lone UTF-16 surrogate (a JSON body may spell one as
    # "\ud800"), and Postgres text or jsonb cannot store either (the job keeps its
    # parameters): a parameter holding one is malformed (ignored when lenient).
    clean: dict[str, list[str]] = {}
    for name, values in raw.items():
        if _UNSTORABLE.search(name) or any(_UNSTORABLE.search(value) for value in values):
            shown = _UNSTORABLE.sub("\ufffd", name)
            issues.add(f"Parameter {shown!r} holds a NUL character or invalid Unicode.", expression=shown)
            continue
        clean[name] = values
    raw = clean
    known = PDEX_PARAMS if operation == "davinci-data-export" else EXPORT_PARAMS
    for name in raw:
        if name not in known:
            issues.add(f"Unknown parameter {name!r}.", code="not-supported", expression=name)
    if not patient_param_allowed and raw.get("patient"):
        issues.add("The patient parameter is not accepted at the system level.", code="not-supported", expression="patient")

    params = ExportParams(types=[])

    # _outputFormat (Bulk Data req 49, 51, 52).
    formats = _split(raw.get("_outputFormat", []))
    for output_format in formats:
        if output_format not in OUTPUT_FORMATS:
            issues.add(f"_outputFormat {output_format!r} is not supported; use application/fhir+ndjson.",
                       code="not-supported", expression="_outputFormat")

    # _type (req 62, 63, 70).
    requested = _split(raw.get("_type", []))
    types: list[str] = []
    for resource_type in requested:
        if resource_type not in SUPPORTED_TYPES:
            issues.add(f"Resource type {resource_type!r} is not supported by this server.", code="not-supported", expression="_type")
        elif resource_type not in granted_types:
            issues.add(f"The access token's scopes do not grant {resource_type}.", code="forbidden", status=403, expression="_type")
        elif resource_type not in types:
            types.append(resource_type)
    if not requested:
        types = [t for t in SUPPORTED_TYPES if t in granted_types]
    if not types and not lenient:
        raise FHIRError("The access token's scopes grant none of the requested resource types.", status=403, code="forbidden")

    # _since, _until (STU3 addition), both instants; transactionTime caps _until later.
    for name in ("_since", "_until"):
        values = raw.get(name, [])
        if len(values) > 1:
            issues.add(f"{name} may be given once.", expression=name)
        elif values:
            parsed = _parse_instant(values[0], name=name, issues=issues)
            if parsed is not None:
                setattr(params, name.lstrip("_"), parsed.isoformat())
    if params.since and params.until and params.since_dt() >= params.until_dt():
        issues.add("_since must be before _until.", expression="_since")
        params.until = None

    # _typeFilter (req 103-106, 117): alternatives for one type are OR-ed.
    for text in _split(raw.get("_typeFilter", [])):
        parsed_filter = _parse_type_filter(text, types=types, issues=issues)
        if parsed_filter is not None:
            resource_type, criteria = parsed_filter
            params.type_filters.setdefault(resource_type, []).append(criteria)

    # _elements (req 75-82): root elements only, optionally qualified by type.
    for item in _split(raw.get("_elements", [])):
        resource_type, dot, element = item.rpartition(".")
        if not dot:
            resource_type = "*"
        if (resource_type != "*" and (not _TYPE_NAME.match(resource_type) or resource_type not in SUPPORTED_TYPES)) or not _ELEMENT_NAME.match(element):
            issues.add(f"_elements item {item!r} must be [ResourceType.]rootElement.", expression="_elements")
            continue
        params.elements.setdefault(resource_type, []).append(element)

    # patient (req 85-89): references to Patients; checked against visibility at kick-off.
    patients: list[str] = []
    references = _split(raw.get("patient", []))
    for reference in references:
        patient_id = reference.removeprefix("Patient/")
        if not re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", patient_id):
            issues.add(f"patient {reference!r} is not a Patient reference.", expression="patient")
            continue
        patients.append(patient_id)
    if references:
        # Lenient drops what is malformed and never widens: a patient list whose every
        # reference was malformed exports nobody, not the whole Group.
        params.patients = list(dict.fromkeys(patients))

    # includeAssociatedData (req 92-100): both Provenance presets add Provenance.
    for value in _split(raw.get("includeAssociatedData", [])):
        if value not in ASSOCIATED_DATA:
            issues.add(f"includeAssociatedData value {value!r} is not supported.", code="not-supported",
                       expression="includeAssociatedData")
            continue
        params.include_associated.append(value)
    if params.include_associated and "Provenance" not in requested:
        # Req 96: conflicting values get the least restrictive (Relevant returns more).
        # Req 98: with Latest no other Provenance is returned, also when _type is omitted
        # (which otherwise exports all Provenance, req 109-112). A _type that names
        # Provenance asks for every Provenance: the least restrictive reading again.
        relevant = "RelevantProvenanceResources" in params.include_associated
        params.provenance = PROVENANCE_RELEVANT if relevant else PROVENANCE_LATEST
        if "Provenance" not in types and "Provenance" in granted_types:
            types.append("Provenance")

    # PDex STU2 $davinci-data-export exportType; provider-delta needs _since.
    if operation == "davinci-data-export":
        export_types = _split(raw.get("exportType", []))
        if len(export_types) > 1:
            issues.add("exportType may be given once.", expression="exportType")
        elif export_types and export_types[0] not in PDEX_EXPORT_TYPES:
            issues.add(f"exportType {export_types[0]!r} is not supported; use one of {', '.join(sorted(PDEX_EXPORT_TYPES))}.",
                       code="not-supported", expression="exportType")
        else:
            params.export_type = export_types[0] if export_types else "hl7.fhir.us.davinci-pdex#provider-download"
        if params.export_type == "hl7.fhir.us.davinci-pdex#provider-delta" and not params.since:
            if lenient:
                issues.add("exportType provider-delta requires _since; exported everything instead.", expression="exportType")
            else:
                raise FHIRError("exportType hl7.fhir.us.davinci-pdex#provider-delta requires _since.", expression=["_since"])

    params.types = types
    return params, issues.items


# --- Applying _typeFilter and _elements ----------------------------------------------------


def type_filter_q(*, criteria: list[list[str]]) -> tuple[Q, list[list[str]]]:
    """Split one AND-list of criteria into a Q on ClinicalResource columns and the rest."""
    q = Q()
    rest: list[list[str]] = []
    for name, prefix, value in criteria:
        column = COLUMN_PARAMS.get(name)
        if column is None:
            rest.append([name, prefix, value])
        elif column in {"last_updated", "date"}:
            start, end = _date_range(value)  # type: ignore[misc]
            q &= {
                "eq": Q(**{f"{column}__gte": start, f"{column}__lt": end}),
                "ge": Q(**{f"{column}__gte": start}),
                "gt": Q(**{f"{column}__gte": end}),
                "le": Q(**{f"{column}__lt": end}),
                "lt": Q(**{f"{column}__lt": start}),
            }[prefix]
        elif name in REFERENCE_PARAMS:
            q &= Q(**{f"{column}__in": value.split(",")})
        else:
            alternatives = Q()
            for token in value.split(","):
                alternatives |= Q(**{column: token.rpartition("|")[2]})
            q &= alternatives
    return q, rest


def _values_at(resource: Any, path: str) -> list[Any]:
    current = [resource]
    for part in path.split("."):
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict) and part in item:
                value = item[part]
                found.extend(value if isinstance(value, list) else [value])
        current = found
    return current


def _token_matches(candidate: Any, token: str) -> bool:
    system, bar, code = token.rpartition("|")
    codings: list[Any]
    if isinstance(candidate, dict):
        if "coding" in candidate:
            codings = candidate["coding"]
        elif "value" in candidate and "code" not in candidate:
            # An Identifier: system|value.
            codings = [{"system": candidate.get("system"), "code": candidate.get("value")}]
        else:
            codings = [candidate]
    else:
        return not bar and str(candidate) == code
    for coding in codings:
        if not isinstance(coding, dict):
            continue
        if code and coding.get("code") != code:
            continue
        if bar and system and coding.get("system") != system:
            continue
        if bar and not system and coding.get("system"):
            continue
        return True
    return False


def _date_matches(candidate: Any, prefix: str, value: str) -> bool:
    own = _date_range(str(candidate)) if candidate else None
    wanted = _date_range(value)
    if own is None or wanted is None:
        return False
    return {
        "eq": wanted[0] <= own[0] < wanted[1],
        "ge": own[0] >= wanted[0],
        "gt": own[0] >= wanted[1],
        "le": own[0] < wanted[1],
        "lt": own[0] < wanted[0],
    }[prefix]


def resource_matches(*, resource: Mapping[str, Any], criteria: list[list[str]]) -> bool:
    """Return True when the parsed resource meets every criterion (one _typeFilter)."""
    for name, prefix, value in criteria:
        candidates = [v for path in JSON_PATHS.get(name, (name,)) for v in _values_at(resource, path)]
        if name in REFERENCE_TARGETS:
            wanted = {f"{REFERENCE_TARGETS[name]}/{target_id}" for target_id in value.split(",")}
            if not any(isinstance(c, dict) and c.get("reference") in wanted for c in candidates):
                return False
        elif prefix:
            if not any(_date_matches(c, prefix, value) for c in candidates):
                return False
        elif not any(_token_matches(c, token) for c in candidates for token in value.split(",")):
            return False
    return True


def elements_for(*, params: ExportParams, resource_type: str) -> set[str] | None:
    """Return the root elements to keep for ``resource_type``, or None to keep them all."""
    wanted = params.elements.get("*", []) + params.elements.get(resource_type, [])
    if not wanted:
        # Only elements of other types were named: this type is exported whole.
        return None
    return set(wanted) | ALWAYS_ELEMENTS | MANDATORY_ELEMENTS.get(resource_type, set())


def resource_subset(*, resource: dict[str, Any], keep: set[str]) -> dict[str, Any]:
    """Return ``resource`` with only ``keep`` root elements, tagged SUBSETTED (req 80)."""
    subset = {key: value for key, value in resource.items() if key in keep}
    # Choice elements: "occurrence[x]" keeps occurrenceDateTime and friends.
    for element in keep:
        if element.endswith("[x]"):
            stem = element[:-3]
            subset.update({k: v for k, v in resource.items() if k.startswith(stem) and k[len(stem):][:1].isupper()})
    meta = dict(subset.get("meta") or {})
    meta["tag"] = [*(meta.get("tag") or []), SUBSETTED_TAG]
    subset["meta"] = meta
    return subset
