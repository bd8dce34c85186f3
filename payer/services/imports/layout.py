"""The claims extract layout: one CSV file per table, each column with the check of its cells.

docs/claims-extract.md describes this table column by column (tests/payer/test_import_claims.py
checks they agree). A parser returns the stored value of a cell or raises ``CellError``.
"""

import datetime
import re
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from payer.models import Claim, ClaimDiagnosis, PriorAuthorization
from payer.services.synthetic import npi_with_check_digit


class CellError(ValueError):
    pass


# --- Cell parsers: each returns the stored value or raises CellError -------------------------

def _text(max_length: int) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if len(value) > max_length:
            raise CellError(f"longer than {max_length} characters")
        return value
    return parse


def npi(value: str) -> str:
    """An NPI: 10 digits whose last is the Luhn check digit over 80840 + the first nine (CMS)."""
    if not re.fullmatch(r"\d{10}", value):
        raise CellError(f"NPI {value!r} is not 10 digits")
    if npi_with_check_digit(value[:9]) != value:
        raise CellError(f"NPI {value} fails the check digit (Luhn over 80840 prefix)")
    return value


_ICD10CM = re.compile(r"[A-Z][0-9][0-9A-Z](\.?[0-9A-Z]{1,4})?")


def icd10cm(value: str) -> str:
    """An ICD-10-CM code, with or without its dot: a letter, a digit, a digit or letter, then up to 4 more."""
    if not _ICD10CM.fullmatch(value.upper()):
        raise CellError(f"{value!r} is not an ICD-10-CM code")
    code = value.upper().replace(".", "")
    return code if len(code) <= 3 else f"{code[:3]}.{code[3:]}"


def procedure_code(value: str) -> str:
    """A CPT code (5 digits, or 4 digits + F/T/U for Category II/III) or a HCPCS Level II code (letter + 4 digits)."""
    if not (re.fullmatch(r"\d{4}[0-9FTU]", value) or re.fullmatch(r"[A-V]\d{4}", value.upper())):
        raise CellError(f"{value!r} is not a CPT or HCPCS code")
    return value.upper()


def ndc(value: str) -> str:
    """An NDC as 11 digits (5-4-2), from 11 digits or a 10-digit hyphenated 4-4-2, 5-3-2 or 5-4-1 form."""
    if re.fullmatch(r"\d{11}", value):
        return value
    parts = value.split("-")
    shapes = {(4, 4, 2): "0{}{}{}", (5, 3, 2): "{}0{}{}", (5, 4, 1): "{}{}0{}", (5, 4, 2): "{}{}{}"}
    shape = tuple(len(p) for p in parts)
    if len(parts) == 3 and all(p.isdigit() for p in parts) and shape in shapes:
        return shapes[shape].format(*parts)
    raise CellError(f"{value!r} is not an NDC (11 digits, or 4-4-2 / 5-3-2 / 5-4-1 with hyphens)")


def day(value: str) -> datetime.date:
    try:
        return datetime.date.fromisoformat(value) if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value) else _no_date(value)
    except ValueError:
        raise CellError(f"{value!r} is not a date (YYYY-MM-DD)") from None


def _no_date(value: str):
    raise CellError(f"{value!r} is not a date (YYYY-MM-DD)")


def amount(value: str) -> Decimal:
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise CellError(f"{value!r} is not an amount") from None
    if not number.is_finite() or number < 0 or number != round(number, 2) or number >= 10**10:
        raise CellError(f"{value!r} is not an amount (0 or more, at most 2 decimals)")
    return number


def quantity(value: str) -> Decimal:
    number = amount(value)
    if number >= 10**6:
        raise CellError(f"{value!r} is too large a quantity")
    return number


def count(value: str) -> int:
    if not re.fullmatch(r"\d{1,6}", value):
        raise CellError(f"{value!r} is not a whole number")
    return int(value)


def positive(value: str) -> int:
    number = count(value)
    if number < 1:
        raise CellError("must be 1 or more")
    return number


def pattern(regex: str, what: str) -> Callable[[str], str]:
    compiled = re.compile(regex)

    def parse(value: str) -> str:
        if not compiled.fullmatch(value):
            raise CellError(f"{value!r} is not {what}")
        return value
    return parse


def choice(*values: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value.lower() not in values:
            raise CellError(f"{value!r} is not one of {', '.join(values)}")
        return value.lower()
    return parse


FHIR_ID = pattern(r"[A-Za-z0-9\-.]{1,64}", "a FHIR id (1-64 of A-Z a-z 0-9 - .)")


@dataclass(frozen=True)
class Column:
    name: str
    parse: Callable[[str], Any]
    required: bool = False
    default: Any = ""
    doc: str = ""


@dataclass(frozen=True)
class Table:
    file: str
    doc: str
    columns: tuple[Column, ...]


def C(name: str, parse: Callable[[str], Any], doc: str, *, required: bool = False, default: Any = "") -> Column:
    return Column(name=name, parse=parse, required=required, default=default, doc=doc)


# The extract layout: docs/claims-extract.md describes it from this table
# (tests/payer/test_import_claims.py checks that every column is documented).
LAYOUT: tuple[Table, ...] = (
    Table("organizations.csv", "Provider organizations (hospitals, clinics, practices) by NPI.", (
        C("npi", npi, "Type 2 NPI", required=True),
        C("name", _text(200), "Organization name", required=True),
        C("city", _text(100), "City"),
        C("state", pattern(r"[A-Z]{2}", "a 2-letter state code"), "USPS state code"),
        C("fhir_id", FHIR_ID, "FHIR Organization id; default org-<npi>"),
    )),
    Table("practitioners.csv", "Clinicians with an NPI and a NUCC taxonomy, each practising for one organization.", (
        C("npi", npi, "Type 1 NPI", required=True),
        C("family", _text(100), "Family name", required=True),
        C("given", _text(100), "Given name", required=True),
        C("taxonomy_code", pattern(r"[0-9]{3}[0-9A-Z]{6}X", "a NUCC taxonomy code"), "NUCC taxonomy code", required=True),
        C("taxonomy_display", _text(200), "Taxonomy display", required=True),
        C("organization_npi", npi, "NPI of the organization (organizations.csv or already stored)", required=True),
        C("fhir_id", FHIR_ID, "FHIR Practitioner id; default prac-<npi>"),
    )),
    Table("contracts.csv", "Network contracts: the organization is in network while today is in [start, end].", (
        C("contract_number", _text(40), "Contract number", required=True),
        C("organization_npi", npi, "NPI of the organization", required=True),
        C("start", day, "First day in force", required=True),
        C("end", day, "Last day in force; empty: open-ended", default=None),
    )),
    Table("members.csv", "Members (the enrollment system).", (
        C("member_id", pattern(r"[A-Za-z0-9\-.]{1,40}", "a member id (1-40 of A-Z a-z 0-9 - .)"),
          "Member id: the value of the member identifier (PA_MEMBER_IDENTIFIER_SYSTEM)", required=True),
        C("family", _text(100), "Family name", required=True),
        C("given", _text(100), "Given name", required=True),
        C("birth_date", day, "Date of birth", required=True),
        C("gender", choice("male", "female", "other", "unknown"), "FHIR administrative gender", required=True),
        C("patient_id", FHIR_ID, "FHIR Patient id; default pat-<member id in lower case>"),
    )),
    Table("coverage_periods.csv", "Enrollment periods, each stored as a FHIR Coverage of the member.", (
        C("coverage_id", FHIR_ID, "FHIR Coverage id of the period", required=True),
        C("member_id", _text(40), "Member id (members.csv or already stored)", required=True),
        C("start", day, "First day covered", required=True),
        C("end", day, "Last day covered; empty: ongoing", default=None),
        C("group_id", _text(40), "Employer group number"),
        C("plan_id", _text(40), "Plan number"),
        C("plan_name", _text(200), "Plan name"),
    )),
    Table("claims.csv", "Claim headers as the claims platform keeps them.", (
        C("claim_number", _text(40), "Claim number (unique; an adjustment keeps its number and changes its status)", required=True),
        C("member_id", _text(40), "Member id", required=True),
        C("claim_type", choice(*Claim.ClaimType.values), "institutional, professional or pharmacy", required=True),
        C("status", choice(*Claim.Status.values), "paid, denied, pended or adjusted", required=True),
        C("billing_npi", npi, "Billing provider NPI", required=True),
        C("rendering_npi", npi, "Rendering practitioner NPI"),
        C("facility_npi", npi, "Facility NPI"),
        C("type_of_bill", pattern(r"0?\d{3}", "a type of bill (3 or 4 digits)"), "Uniform bill type (institutional)"),
        C("service_start", day, "First day of service", required=True),
        C("service_end", day, "Last day of service (not before service_start)", required=True),
        C("received_date", day, "Day the claim was received", required=True),
        C("processed_date", day, "Day the claim was adjudicated", default=None),
        C("encounter_id", FHIR_ID, "FHIR Encounter id of the visit billed, when known"),
        C("ndc_code", ndc, "Pharmacy: NDC dispensed (stored as 11 digits)"),
        C("rxnorm_code", pattern(r"\d{1,20}", "an RxNorm code"), "Pharmacy: RxNorm code"),
        C("drug_name", _text(200), "Pharmacy: drug name"),
        C("days_supply", count, "Pharmacy: days supply", default=None),
        C("total_charged", amount, "Total charged", required=True),
        C("total_paid", amount, "Total paid by the plan", required=True),
        C("member_liability", amount, "Member liability", default=Decimal("0")),
    )),
    Table("claim_lines.csv", "Claim lines; the lines of one claim are consecutive rows.", (
        C("claim_number", _text(40), "Claim number (claims.csv or already stored)", required=True),
        C("sequence", positive, "Line number within the claim", required=True),
        C("procedure_code", procedure_code, "CPT or HCPCS code"),
        C("procedure_system", choice("cpt", "hcpcs"), "CPT or HCPCS (required with procedure_code)"),
        C("procedure_display", _text(200), "Procedure display"),
        C("revenue_code", pattern(r"\d{4}", "a revenue code (4 digits)"), "Revenue code (institutional)"),
        C("modifier", pattern(r"[0-9A-Z]{2}", "a modifier (2 characters)"), "Procedure modifier"),
        C("place_of_service", pattern(r"\d{2}", "a place of service code (2 digits)"), "CMS place of service"),
        C("service_date", day, "Day of service", required=True),
        C("quantity", quantity, "Units", default=Decimal("1")),
        C("charged_amount", amount, "Charged", required=True),
        C("allowed_amount", amount, "Allowed", default=Decimal("0")),
        C("paid_amount", amount, "Paid", default=Decimal("0")),
        C("copay_amount", amount, "Copay", default=Decimal("0")),
    )),
    Table("claim_diagnoses.csv", "Claim diagnoses; the diagnoses of one claim are consecutive rows.", (
        C("claim_number", _text(40), "Claim number", required=True),
        C("sequence", positive, "Diagnosis number within the claim", required=True),
        C("icd10_code", icd10cm, "ICD-10-CM code, with or without the dot (stored with it)", required=True),
        C("display", _text(200), "Diagnosis display"),
        C("kind", choice(*ClaimDiagnosis.Kind.values), "principal, admitting or other", default="other"),
    )),
    Table("prior_authorizations.csv", "Prior authorization requests and their decisions (the UM platform).", (
        C("auth_number", _text(40), "Authorization number", required=True),
        C("member_id", _text(40), "Member id", required=True),
        C("requesting_npi", npi, "Requesting provider NPI", required=True),
        C("servicing_npi", npi, "Servicing provider NPI"),
        C("service_code", procedure_code, "CPT or HCPCS code of the service", required=True),
        C("service_system", choice("cpt", "hcpcs"), "CPT or HCPCS", required=True),
        C("service_display", _text(200), "Service display", required=True),
        C("diagnosis_code", icd10cm, "ICD-10-CM code"),
        C("quantity", positive, "Units requested", default=1),
        C("requested_date", day, "Day requested", required=True),
        C("decision", choice(*PriorAuthorization.Decision.values), "pending, approved, partial, denied or cancelled",
          default="pending"),
        C("decision_date", day, "Day decided", default=None),
        C("decision_reason", _text(200), "Reason for the decision"),
        C("valid_start", day, "First day the authorization is valid", default=None),
        C("valid_end", day, "Last day the authorization is valid", default=None),
    )),
)
TABLES = {t.file: t for t in LAYOUT}
# Stored spelling of the procedure systems (ClaimLine.procedure_system, PriorAuthorization.service_system).
SYSTEMS = {"cpt": "CPT", "hcpcs": "HCPCS"}
