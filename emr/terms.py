"""Plain words for what a clinician reads: FHIR codes, statuses and units turned into the
words a physician uses, with the code kept for the secondary detail line.

Every vocabulary here is a FHIR R4 (4.0.1) required or extensible value set, or a code
system the exchanged profiles bind (US Core 6.1.0, CARIN BB 2.1.0, PDex 2.1); a code
that is not listed reads as itself, marked as the source's own word, never as nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# Code systems a clinician may recognise, by their FHIR canonical URL.
SYSTEM_NAMES = {
    "http://snomed.info/sct": "SNOMED CT",
    "http://loinc.org": "LOINC",
    "http://hl7.org/fhir/sid/icd-10-cm": "ICD-10-CM",
    "http://hl7.org/fhir/sid/icd-10": "ICD-10",
    "http://www.nlm.nih.gov/research/umls/rxnorm": "RxNorm",
    "http://hl7.org/fhir/sid/ndc": "NDC",
    "http://hl7.org/fhir/sid/cvx": "CVX",
    "http://www.ama-assn.org/go/cpt": "CPT",
    "urn:oid:2.16.840.1.113883.6.285": "HCPCS",
    "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "HCPCS",
    "http://unitsofmeasure.org": "UCUM",
}
# Which coding names a thing best, most readable first (a condition's ICD-10-CM display
# is written for people; SNOMED CT's carries a semantic tag).
SYSTEM_PREFERENCE = [
    "http://hl7.org/fhir/sid/icd-10-cm",
    "http://www.nlm.nih.gov/research/umls/rxnorm",
    "http://hl7.org/fhir/sid/cvx",
    "http://snomed.info/sct",
    "http://loinc.org",
]
# SNOMED CT fully specified names end in a semantic tag: "Penicillin (substance)".
_SEMANTIC_TAG = re.compile(
    r"\s*\((disorder|finding|procedure|substance|situation|observable entity|regime/therapy|"
    r"product|medicinal product|clinical drug|environment|event|morphologic abnormality|"
    r"qualifier value|body structure|organism|physical object|record artifact)\)$",
    re.IGNORECASE,
)

# Short names clinicians use for the LOINC codes a summary shows most (LOINC's own
# "SHORTNAME"/consumer names); anything else reads as the source's text or display.
LOINC_SHORT_NAMES = {
    "4548-4": "Hemoglobin A1c",
    "17856-6": "Hemoglobin A1c",
    "33914-3": "eGFR",
    "62238-1": "eGFR",
    "98979-8": "eGFR",
    "2160-0": "Creatinine",
    "2345-7": "Glucose",
    "2339-0": "Glucose",
    "13457-7": "LDL cholesterol",
    "18262-6": "LDL cholesterol",
    "2093-3": "Total cholesterol",
    "2085-9": "HDL cholesterol",
    "2571-8": "Triglycerides",
    "30934-4": "BNP",
    "33762-6": "NT-proBNP",
    "10839-9": "Troponin I",
    "6598-7": "Troponin T",
    "10230-1": "LV ejection fraction",
    "19926-5": "FEV1/FVC",
    "2951-2": "Sodium",
    "2823-3": "Potassium",
    "718-7": "Hemoglobin",
    "6690-2": "White blood cells",
    "777-3": "Platelets",
    "85354-9": "Blood pressure",
    "55284-4": "Blood pressure",
    "8480-6": "Systolic blood pressure",
    "8462-4": "Diastolic blood pressure",
    "29463-7": "Weight",
    "8302-2": "Height",
    "39156-5": "BMI",
    "8867-4": "Heart rate",
    "9279-1": "Respiratory rate",
    "8310-5": "Body temperature",
    "2708-6": "Oxygen saturation",
    "59408-5": "Oxygen saturation",
    "44261-6": "PHQ-9 score",
}

# UCUM codes as people write them.
UNIT_WORDS = {
    "mm[Hg]": "mmHg",
    "mL/min/{1.73_m2}": "mL/min/1.73 m²",
    "kg/m2": "kg/m²",
    "{score}": "",
    "/min": "/min",
    "{tbl}": "tablet",
    "{puff}": "puff",
    "{capsule}": "capsule",
    "[in_i]": "in",
    "[lb_av]": "lb",
    "Cel": "°C",
    "[degF]": "°F",
    "d": "days",
    "wk": "weeks",
    "mo": "months",
    "a": "years",
    "h": "hours",
}


# Routes (SNOMED CT, US Core's extensible binding) as a sig says them.
ROUTE_WORDS = {
    "26643006": "by mouth", "447694001": "inhaled", "18679011000001101": "inhaled", "34206005": "under the skin",
    "78421000": "into a muscle", "47625008": "into a vein", "6064005": "on the skin", "37161004": "rectally",
    "37839007": "under the tongue", "46713006": "in the nose", "54485002": "in the eye", "10547007": "in the ear",
}
TIMES = {1: "once", 2: "twice", 3: "three times", 4: "four times"}
PERIOD_UNITS = {"s": "second", "min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month", "a": "year"}


def frequency_text(repeat: dict) -> str:
    """Return a Timing.repeat in words: "twice a day", "every 8 hours", "once a week"."""
    frequency, period, unit = repeat.get("frequency"), repeat.get("period"), PERIOD_UNITS.get(str(repeat.get("periodUnit")))
    if (not isinstance(frequency, int) or isinstance(frequency, bool) or not isinstance(period, int | float)
            or isinstance(period, bool) or not unit or frequency < 1 or period <= 0):
        return ""
    if period == 1:
        return f"{TIMES.get(frequency, f'{frequency} times')} a {unit}"
    every = f"every {period:g} {unit}s"
    return every if frequency == 1 else f"{TIMES.get(frequency, f'{frequency} times')} {every}"


# Units that count things ("{tbl}" is UCUM's annotation for a tablet): plural past one.
COUNTED_UNITS = {"tablet", "puff", "capsule", "drop", "spray", "patch", "unit"}


def unit_text(unit: str | None, *, count: float | None = None) -> str:
    """Return a unit as a clinician writes it ("mm[Hg]" reads "mmHg", 2 "{tbl}" "tablets")."""
    unit = str(unit or "").strip()
    words = UNIT_WORDS.get(unit, unit)
    if words in COUNTED_UNITS and count is not None and count != 1:
        return words + "s"
    return words


def display_clean(display: str) -> str:
    """Return a coding's display without SNOMED CT's semantic tag."""
    return _SEMANTIC_TAG.sub("", str(display).strip())


def _codings(concept: Any) -> list[dict]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings if isinstance(c, dict)] if isinstance(codings, list) else []


def scalar_text(value: Any) -> str:
    """Return a JSON string or number as text ("" for objects, arrays, null, booleans)."""
    return str(value) if isinstance(value, str | int | float) and not isinstance(value, bool) else ""


def concept_name(concept: Any) -> str:
    """Return what a CodeableConcept names, in words: a LOINC short name for the common
    tests, else the concept's text, else the display of the most readable coding. Return ""
    when the source gave only codes (the caller says "not named" and shows the code)."""
    codings = _codings(concept)
    for coding in codings:
        if coding.get("system") == "http://loinc.org" and scalar_text(coding.get("code")) in LOINC_SHORT_NAMES:
            return LOINC_SHORT_NAMES[scalar_text(coding.get("code"))]
    if isinstance(concept, dict) and scalar_text(concept.get("text")):
        return display_clean(scalar_text(concept["text"]))
    ranked = sorted(
        (c for c in codings if scalar_text(c.get("display"))),
        key=lambda c: SYSTEM_PREFERENCE.index(c["system"]) if scalar_text(c.get("system")) in SYSTEM_PREFERENCE else 99,
    )
    return display_clean(scalar_text(ranked[0]["display"])) if ranked else ""


def concept_codes(concept: Any) -> str:
    """Return the codes behind a concept for the secondary line: "ICD-10-CM E11.9 · SNOMED CT 44054006"."""
    parts = []
    for coding in _codings(concept):
        if scalar_text(coding.get("code")):
            system = SYSTEM_NAMES.get(scalar_text(coding.get("system")), "")
            parts.append(f"{system} {scalar_text(coding['code'])}".strip())
    return " · ".join(dict.fromkeys(parts))


def concept_code(concept: Any, *, system: str | None = None) -> str:
    """Return the first code of a concept (of ``system`` when given)."""
    for coding in _codings(concept):
        if scalar_text(coding.get("code")) and (system is None or coding.get("system") == system):
            return scalar_text(coding["code"])
    return ""


@dataclass(frozen=True)
class Status:
    """A status in words, and how it should look: ok, warn, bad, info or plain."""

    label: str
    tone: str = "plain"


# Encounter.status (R4 encounter-status, required).
ENCOUNTER_STATUS = {
    "planned": Status("Planned", "info"), "arrived": Status("Arrived", "info"), "triaged": Status("Triaged", "info"),
    "in-progress": Status("In progress", "info"), "onleave": Status("On leave", "info"),
    "finished": Status("Completed", "ok"), "cancelled": Status("Cancelled", "bad"),
    "entered-in-error": Status("Entered in error", "bad"), "unknown": Status("Status not given"),
}
# Procedure.status (event-status, required).
PROCEDURE_STATUS = {
    "preparation": Status("Being prepared", "info"), "in-progress": Status("In progress", "info"),
    "not-done": Status("Not done", "warn"), "on-hold": Status("On hold", "warn"), "stopped": Status("Stopped", "bad"),
    "completed": Status("Done", "ok"), "entered-in-error": Status("Entered in error", "bad"), "unknown": Status("Status not given"),
}
# Condition.clinicalStatus (condition-clinical, required) and verificationStatus.
CONDITION_CLINICAL = {
    "active": Status("Active", "warn"), "recurrence": Status("Recurred", "warn"), "relapse": Status("Relapsed", "warn"),
    "inactive": Status("Inactive"), "remission": Status("In remission", "ok"), "resolved": Status("Resolved", "ok"),
}
CONDITION_ACTIVE = {"active", "recurrence", "relapse"}
VERIFICATION = {
    "unconfirmed": Status("Unconfirmed", "info"), "provisional": Status("Provisional", "info"),
    "differential": Status("Differential", "info"), "confirmed": Status("Confirmed"),
    "refuted": Status("Ruled out", "bad"), "entered-in-error": Status("Entered in error", "bad"),
    "presumed": Status("Presumed", "info"),
}
NOT_TRUE = {"refuted", "entered-in-error"}
CONDITION_CATEGORY = {
    "problem-list-item": "Problem list", "encounter-diagnosis": "Visit diagnosis", "health-concern": "Health concern",
}
# MedicationRequest / MedicationDispense / MedicationStatement .status.
MEDICATION_STATUS = {
    "MedicationRequest": {
        "active": Status("Active", "ok"), "on-hold": Status("On hold", "warn"), "cancelled": Status("Cancelled", "bad"),
        "completed": Status("Completed"), "entered-in-error": Status("Entered in error", "bad"),
        "stopped": Status("Stopped", "bad"), "draft": Status("Draft", "info"), "unknown": Status("Status not given"),
    },
    "MedicationDispense": {
        "preparation": Status("Being prepared", "info"), "in-progress": Status("Being dispensed", "info"),
        "cancelled": Status("Cancelled", "bad"), "on-hold": Status("On hold", "warn"), "completed": Status("Dispensed", "ok"),
        "entered-in-error": Status("Entered in error", "bad"), "stopped": Status("Stopped", "bad"),
        "declined": Status("Declined", "bad"), "unknown": Status("Status not given"),
    },
    "MedicationStatement": {
        "active": Status("Taking", "ok"), "completed": Status("Completed"), "entered-in-error": Status("Entered in error", "bad"),
        "intended": Status("Intends to take", "info"), "stopped": Status("Stopped", "bad"), "on-hold": Status("On hold", "warn"),
        "unknown": Status("Status not given"), "not-taken": Status("Not taken", "bad"),
    },
}
MEDICATION_ACTIVE = {"active", "on-hold", "intended"}
MEDICATION_KIND = {"MedicationRequest": "Prescription", "MedicationDispense": "Dispensed", "MedicationStatement": "Reported by patient"}
# AllergyIntolerance (allergyintolerance-clinical, -verification, criticality, severity).
ALLERGY_CLINICAL = {"active": Status("Active", "warn"), "inactive": Status("Inactive"), "resolved": Status("Resolved", "ok")}
ALLERGY_CRITICALITY = {
    "low": Status("Low risk"), "high": Status("High risk", "bad"), "unable-to-assess": Status("Risk not assessed", "warn"),
}
ALLERGY_CATEGORY = {"food": "Food", "medication": "Medication", "environment": "Environment", "biologic": "Biologic"}
ALLERGY_TYPE = {"allergy": "Allergy", "intolerance": "Intolerance"}
# Immunization.status (immunization-status, required).
IMMUNIZATION_STATUS = {
    "completed": Status("Given", "ok"), "entered-in-error": Status("Entered in error", "bad"), "not-done": Status("Not given", "warn"),
}
# Observation.status and .interpretation (v3 ObservationInterpretation).
OBSERVATION_STATUS = {
    "registered": Status("Ordered", "info"), "preliminary": Status("Preliminary", "warn"), "final": Status("Final"),
    "amended": Status("Amended", "info"), "corrected": Status("Corrected", "info"), "cancelled": Status("Cancelled", "bad"),
    "entered-in-error": Status("Entered in error", "bad"), "unknown": Status("Status not given"),
}
INTERPRETATION = {
    "H": Status("High", "bad"), "HH": Status("Critically high", "bad"), "HU": Status("Very high", "bad"),
    "L": Status("Low", "bad"), "LL": Status("Critically low", "bad"), "LU": Status("Very low", "bad"),
    "A": Status("Abnormal", "bad"), "AA": Status("Critically abnormal", "bad"), "N": Status("Normal", "ok"),
    "POS": Status("Positive", "warn"), "NEG": Status("Negative", "ok"), "DET": Status("Detected", "warn"),
    "ND": Status("Not detected", "ok"),
}
# ExplanationOfBenefit.type (claim-type) and, for a claim, outcome (remittance-outcome)
# read with status (explanationofbenefit-status): no cost is ever shown.
CLAIM_TYPE = {
    "institutional": "Hospital or facility", "professional": "Professional services", "pharmacy": "Pharmacy",
    "oral": "Dental", "vision": "Vision",
}
CLAIM_OUTCOME = {
    "complete": Status("Processed", "ok"), "queued": Status("Being processed", "info"),
    "partial": Status("Partly processed", "warn"), "error": Status("Not processed (error)", "bad"),
}
RECORD_STATUS = {
    "cancelled": Status("Cancelled", "bad"), "entered-in-error": Status("Entered in error", "bad"),
    "draft": Status("Draft", "info"),
}
# Prior authorization decisions: PDex's reviewAction carries the X12 306 action code
# (278 HCR01); without it, the EOB's outcome says only whether review is done.
REVIEW_ACTION = {
    "A1": Status("Approved", "ok"), "A2": Status("Partly approved", "warn"), "A3": Status("Denied", "bad"),
    "A4": Status("Pending", "info"), "A6": Status("Approved with changes", "warn"), "C": Status("Cancelled", "bad"),
    "CT": Status("Contact the plan", "warn"), "D": Status("Deferred", "info"), "NA": Status("No review needed", "ok"),
}
PA_OUTCOME = {
    # R4 remittance-outcome "partial": some of the review is done, not a partial approval.
    "queued": Status("Pending", "info"), "partial": Status("Partly reviewed", "info"),
    "complete": Status("Decided", "plain"), "error": Status("Could not be reviewed", "bad"),
}
PA_OPEN = {"Pending", "Deferred", "Contact the plan", "Partly reviewed"}


def status_word(table: dict[str, Status], code: Any, *, missing: str = "Status not given") -> Status:
    """Return a status code in words (the code itself, capitalised, when not in the table)."""
    code = scalar_text(code).strip()
    if not code:
        return Status(missing)
    return table.get(code) or Status(code.replace("-", " ").capitalize())


# Resource types as the records a clinician recognizes (singular, plural), for counts such
# as the fetch panel's "26 encounters, 272 claims and authorizations".
RECORD_KINDS = {
    "AllergyIntolerance": ("allergy", "allergies"),
    "CarePlan": ("care plan", "care plans"),
    "CareTeam": ("care team", "care teams"),
    "Claim": ("claim", "claims"),
    "ClaimResponse": ("claim response", "claim responses"),
    "Condition": ("problem or diagnosis", "problems and diagnoses"),
    "Coverage": ("coverage record", "coverage records"),
    "Device": ("device", "devices"),
    "DiagnosticReport": ("report", "reports"),
    "DocumentReference": ("document", "documents"),
    "Encounter": ("encounter", "encounters"),
    "ExplanationOfBenefit": ("claim or authorization", "claims and authorizations"),
    "Goal": ("goal", "goals"),
    "Group": ("group", "groups"),
    "Immunization": ("immunization", "immunizations"),
    "Location": ("location", "locations"),
    "Medication": ("medication", "medications"),
    "MedicationDispense": ("dispensed medication", "dispensed medications"),
    "MedicationRequest": ("prescription", "prescriptions"),
    "MedicationStatement": ("reported medication", "reported medications"),
    "Observation": ("result", "results"),
    "Organization": ("organization", "organizations"),
    "Patient": ("patient record", "patient records"),
    "Practitioner": ("clinician", "clinicians"),
    "PractitionerRole": ("clinician's role", "clinicians' roles"),
    "Procedure": ("procedure", "procedures"),
    "Provenance": ("provenance record", "provenance records"),
}


def record_kind(resource_type: str, count: int) -> str:
    """Return the words for ``count`` records of a type: "encounters" for 26, "allergy" for 1."""
    one, many = RECORD_KINDS.get(resource_type, (f"record of type {resource_type}", f"records of type {resource_type}"))
    return one if count == 1 else many
