"""Map the claims system to FHIR ExplanationOfBenefit for the Provider Access API.

Claims become CARIN Blue Button *non-financial* ("Basis") EOBs; prior authorizations
become PDex Prior Authorization EOBs (``use = preauthorization``).

CMS-0057-F Provider Access API (42 CFR 422.121(a) and its parallels): it shares claims and
encounter data "without provider remittances and enrollee cost-sharing information".
So this mapping never emits ``total``, ``payment``, ``benefitBalance``, ``item.net``,
``item.unitPrice`` nor any ``adjudication.amount``; tests/payer/test_mapping.py walks
the JSON to prove it.
"""

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from django.db.models import Q

from payer.models import (
    Claim,
    ClinicalResource,
    Member,
    NetworkContract,
    PriorAuthorization,
    ProviderOrganization,
    ProviderPractitioner,
)

# Code systems and identifier systems.
NPI_SYSTEM = "http://hl7.org/fhir/sid/us-npi"
ICD10CM_SYSTEM = "http://hl7.org/fhir/sid/icd-10-cm"
CPT_SYSTEM = "http://www.ama-assn.org/go/cpt"
HCPCS_SYSTEM = "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
NDC_SYSTEM = "http://hl7.org/fhir/sid/ndc"
RXNORM_SYSTEM = "http://www.nlm.nih.gov/research/umls/rxnorm"
REVENUE_SYSTEM = "https://www.nubc.org/CodeSystem/RevenueCodes"
TYPE_OF_BILL_SYSTEM = "https://www.nubc.org/CodeSystem/TypeOfBill"
POS_SYSTEM = "https://www.cms.gov/Medicare/Coding/place-of-service-codes/Place_of_Service_Code_Set"
CLAIM_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/claim-type"
C4BB = "http://hl7.org/fhir/us/carin-bb"
PDEX = "http://hl7.org/fhir/us/davinci-pdex"
X12_306_SYSTEM = "https://codesystem.x12.org/005010/306"  # X12 Action Code (review decision)
NUCC_SYSTEM = "http://nucc.org/provider-taxonomy"
DIAGNOSIS_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/ex-diagnosistype"
NCPDP_DAW_SYSTEM = "http://terminology.hl7.org/CodeSystem/NCPDPDispensedAsWrittenOrProductSelectionCode"
C4BB_CS = f"{C4BB}/CodeSystem"
C4BB_ADJUDICATION_DISCRIMINATOR = f"{C4BB_CS}/C4BBAdjudicationDiscriminator"
C4BB_PAYER_ADJUDICATION_STATUS = f"{C4BB_CS}/C4BBPayerAdjudicationStatus"
C4BB_CARE_TEAM_ROLE = f"{C4BB_CS}/C4BBClaimCareTeamRole"
C4BB_DIAGNOSIS_TYPE = f"{C4BB_CS}/C4BBClaimDiagnosisType"
C4BB_SUPPORTING_INFO = f"{C4BB_CS}/C4BBSupportingInfoType"
PDEX_ADJUDICATION_DISCRIMINATOR = f"{PDEX}/CodeSystem/PDexAdjudicationDiscriminator"
PDEX_REVIEW_ACTION = f"{PDEX}/StructureDefinition/extension-reviewAction"
PDEX_REVIEW_ACTION_CODE = f"{PDEX}/StructureDefinition/extension-reviewActionCode"
PDEX_WHEN_ADJUDICATED = f"{PDEX}/StructureDefinition/base-ext-when-adjudicated"
PAS_PREAUTH_ISSUE_DATE = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-itemPreAuthIssueDate"

UNITEDCARE_ORGANIZATION_ID = "unitedcare-health"
UNITEDCARE_NAME = "UnitedCare Health"

# CARIN BB STU 2 "Basis" profiles: "All of the requirements are an exact subset of the
# original profile ... The basis profile does not have requirements for financial data."
# Canonicals carry the business version the content was checked against (CARIN BB 2.1.0,
# the version PDex 2.1.0 depends on; tests/payer/conformance.py).
PROFILE_INPATIENT = f"{C4BB}/StructureDefinition/C4BB-ExplanationOfBenefit-Inpatient-Institutional-Basis|2.1.0"
PROFILE_OUTPATIENT = f"{C4BB}/StructureDefinition/C4BB-ExplanationOfBenefit-Outpatient-Institutional-Basis|2.1.0"
PROFILE_PROFESSIONAL = f"{C4BB}/StructureDefinition/C4BB-ExplanationOfBenefit-Professional-NonClinician-Basis|2.1.0"
PROFILE_PHARMACY = f"{C4BB}/StructureDefinition/C4BB-ExplanationOfBenefit-Pharmacy-Basis|2.1.0"
PROFILE_PRIOR_AUTH = f"{PDEX}/StructureDefinition/pdex-priorauthorization|2.1.0"

CLAIM_EOB_PREFIX = "eob-"
PA_EOB_PREFIX = "pa-"


def coverage_id_for(member_id: str) -> str:
    """Return the FHIR Coverage id of a member's UnitedCare coverage."""
    return f"coverage-{member_id.lower()}"


def location_id_for(organization_fhir_id: str) -> str:
    """Return the FHIR Location id of a provider organization's main site."""
    return f"loc-{organization_fhir_id}"


def eob_id_for_claim(claim_number: str) -> str:
    return _fhir_id(CLAIM_EOB_PREFIX + claim_number)


def eob_id_for_prior_auth(auth_number: str) -> str:
    return _fhir_id(PA_EOB_PREFIX + auth_number)


def _fhir_id(raw: str) -> str:
    # FHIR id: [A-Za-z0-9\-\.]{1,64}; claim numbers are alphanumeric with dashes.
    return "".join(c if c.isalnum() or c in "-." else "-" for c in raw.lower())[:64]


def eob_id_parse(eob_id: str) -> tuple[str, str]:
    """Return ("claim", claim_number) or ("pa", auth_number) for an EOB id; raise ValueError.

    The number is returned as stored ids are lowercased: look it up case-insensitively
    (``claim_number__iexact``).
    """
    for prefix, kind in ((CLAIM_EOB_PREFIX, "claim"), (PA_EOB_PREFIX, "pa")):
        if eob_id.startswith(prefix) and len(eob_id) > len(prefix):
            return kind, eob_id[len(prefix):]
    raise ValueError(f"Not an ExplanationOfBenefit id of this server: {eob_id!r}")


@dataclass
class ProviderDirectory:
    """NPI -> FHIR ids of the provider directory, so references point at known resources."""

    organizations: dict[str, tuple[str, str]] = field(default_factory=dict)  # npi -> (fhir_id, name)
    practitioners: dict[str, tuple[str, str]] = field(default_factory=dict)  # npi -> (fhir_id, name)
    locations: set[str] = field(default_factory=set)  # Location ids present in the repository
    taxonomies: dict[str, tuple[str, str]] = field(default_factory=dict)  # practitioner npi -> NUCC (code, display)
    # Organization and practitioner NPI -> the network contracts (start, end) of its organization.
    contracts: dict[str, list[tuple[date, date | None]]] = field(default_factory=dict)

    def network_status(self, npi: str, on: date) -> str:
        """Return the C4BBPayerAdjudicationStatus network code of a provider on a date of service.

        In network when its organization had a contract in force that day; out of network
        when the directory knows it without one; ``other`` (no network applies) for a
        provider outside the directory, such as the retail pharmacy.
        """
        if npi not in self.organizations and npi not in self.practitioners:
            return "other"
        in_force = any(start <= on and (end is None or on <= end) for start, end in self.contracts.get(npi, ()))
        return "innetwork" if in_force else "outofnetwork"

    def organization(self, npi: str) -> dict[str, Any]:
        if npi in self.organizations:
            fhir_id, name = self.organizations[npi]
            return {"reference": f"Organization/{fhir_id}", "display": name}
        return {"identifier": {"system": NPI_SYSTEM, "value": npi}}

    def provider(self, npi: str) -> dict[str, Any]:
        """Return a Reference to the practitioner or organization with this NPI."""
        if npi in self.practitioners:
            fhir_id, name = self.practitioners[npi]
            return {"reference": f"Practitioner/{fhir_id}", "display": name}
        return self.organization(npi)

    def facility(self, npi: str) -> dict[str, Any]:
        if npi in self.organizations:
            fhir_id, name = self.organizations[npi]
            if location_id_for(fhir_id) in self.locations:
                return {"reference": f"Location/{location_id_for(fhir_id)}", "display": name}
            return {"identifier": {"system": NPI_SYSTEM, "value": npi}, "display": name}
        return {"identifier": {"system": NPI_SYSTEM, "value": npi}}


def provider_directory_load(*, npis: Iterable[str] | None = None) -> ProviderDirectory:
    """Return the directory for ``npis`` (or the whole provider directory when None)."""
    orgs = ProviderOrganization.objects.all()
    pracs = ProviderPractitioner.objects.all()
    if npis is not None:
        npis = {n for n in npis if n}
        orgs, pracs = orgs.filter(npi__in=npis), pracs.filter(npi__in=npis)
    org_rows = list(orgs.only("id", "npi", "fhir_id", "name"))
    prac_rows = list(pracs.only("npi", "fhir_id", "given", "family", "taxonomy_code", "taxonomy_display", "organization_id"))
    directory = ProviderDirectory(
        organizations={o.npi: (o.fhir_id, o.name) for o in org_rows},
        practitioners={p.npi: (p.fhir_id, f"Dr. {p.given} {p.family}") for p in prac_rows},
        taxonomies={p.npi: (p.taxonomy_code, p.taxonomy_display) for p in prac_rows if p.taxonomy_code},
    )
    by_org: dict[int, list[tuple[date, date | None]]] = {}
    org_ids = {o.id for o in org_rows} | {p.organization_id for p in prac_rows}
    for organization_id, start, end in NetworkContract.objects.filter(organization_id__in=org_ids).values_list(
            "organization_id", "start", "end"):
        by_org.setdefault(organization_id, []).append((start, end))
    for o in org_rows:
        directory.contracts[o.npi] = by_org.get(o.id, [])
    for p in prac_rows:
        directory.contracts[p.npi] = by_org.get(p.organization_id, [])
    wanted = [location_id_for(fid) for fid, _ in directory.organizations.values()]
    directory.locations = set(
        ClinicalResource.objects.filter(resource_type="Location", resource_id__in=wanted).values_list(
            "resource_id", flat=True
        )
    )
    return directory


def _coding(system: str, code: str, display: str = "") -> dict[str, Any]:
    return {"system": system, "code": code, **({"display": display} if display else {})}


def _concept(system: str, code: str, display: str = "", text: str = "") -> dict[str, Any]:
    return {"coding": [_coding(system, code, display)], **({"text": text} if text else {})}


def _instant(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _quantity(value: Decimal | int) -> dict[str, Any]:
    # A count of units, never money (SimpleQuantity without a currency).
    number = Decimal(value)
    return {"value": int(number) if number == number.to_integral_value() else float(number)}


def _insurer() -> dict[str, Any]:
    return {"reference": f"Organization/{UNITEDCARE_ORGANIZATION_ID}", "display": UNITEDCARE_NAME}


def _insurance(member: Member) -> list[dict[str, Any]]:
    return [{"focal": True, "coverage": {"reference": f"Coverage/{coverage_id_for(member.member_id)}"}}]


_CLAIM_OUTCOME = {
    Claim.Status.PAID: "complete",
    Claim.Status.ADJUSTED: "complete",
    Claim.Status.DENIED: "complete",
    Claim.Status.PENDED: "queued",
}


def _claim_profile_and_subtype(claim: Claim) -> tuple[str, dict[str, Any] | None]:
    if claim.claim_type == Claim.ClaimType.INSTITUTIONAL:
        inpatient = _inpatient(claim)
        code = "inpatient" if inpatient else "outpatient"
        return (
            PROFILE_INPATIENT if inpatient else PROFILE_OUTPATIENT,
            _concept(f"{C4BB}/CodeSystem/C4BBInstitutionalClaimSubType", code, code.capitalize()),
        )
    if claim.claim_type == Claim.ClaimType.PHARMACY:
        return PROFILE_PHARMACY, None
    return PROFILE_PROFESSIONAL, None


def _inpatient(claim: Claim) -> bool:
    # UB-04 type of bill 011x is hospital inpatient; everything else is outpatient.
    return claim.claim_type == Claim.ClaimType.INSTITUTIONAL and claim.type_of_bill.startswith(("011", "11"))


def _network_adjudication(category: str, status: str) -> dict[str, Any]:
    """Return a CARIN BB network status adjudication (a code, never an amount).

    Basis profiles, slices benefitpaymentstatus / billingnetworkstatus /
    renderingnetworkstatus: category from C4BBAdjudicationDiscriminator, reason from
    C4BBPayerBenefitPaymentStatus or C4BBPayerProviderNetworkStatus (required).
    """
    displays = {"innetwork": "In Network", "outofnetwork": "Out Of Network", "other": "Other"}
    category_displays = {"benefitpaymentstatus": "Benefit Payment Status", "billingnetworkstatus": "Billing Network Status",
                         "renderingnetworkstatus": "Rendering Network Status"}
    if category != "benefitpaymentstatus" and status == "other":
        raise ValueError("C4BBPayerProviderNetworkStatus has no 'other'")
    return {"category": _concept(C4BB_ADJUDICATION_DISCRIMINATOR, category, category_displays[category]),
            "reason": _concept(C4BB_PAYER_ADJUDICATION_STATUS, status, displays[status])}


# diagnosis.type (required bindings): principal and admitting are HL7 ex-diagnosistype
# codes; other and secondary are C4BBClaimDiagnosisType codes.
_INPATIENT_DX = {"principal": (DIAGNOSIS_TYPE_SYSTEM, "principal", "Principal Diagnosis"),
                 "admitting": (DIAGNOSIS_TYPE_SYSTEM, "admitting", "Admitting Diagnosis"),
                 "other": (C4BB_DIAGNOSIS_TYPE, "other", "Other")}
# C4BBClaimOutpatientInstitutionalDiagnosisType has no admitting code: on an outpatient
# claim the admitting diagnosis is the patient's reason for the visit.
_OUTPATIENT_DX = {**_INPATIENT_DX, "admitting": (C4BB_DIAGNOSIS_TYPE, "patientreasonforvisit", "Patient Reason for Visit")}
_PROFESSIONAL_DX = {"principal": (DIAGNOSIS_TYPE_SYSTEM, "principal", "Principal Diagnosis"),
                    "admitting": (C4BB_DIAGNOSIS_TYPE, "secondary", "Secondary"),
                    "other": (C4BB_DIAGNOSIS_TYPE, "secondary", "Secondary")}


def _supporting_info(category: str, display: str, **value: Any) -> dict[str, Any]:
    return {"category": _concept(C4BB_SUPPORTING_INFO, category, display), **value}


def claim_to_eob(claim: Claim, *, directory: ProviderDirectory | None = None) -> dict[str, Any]:
    """Return the CARIN BB non-financial ("Basis") ExplanationOfBenefit for a claim.

    Pass ``directory`` when mapping many claims; otherwise it is looked up for this claim.
    Lines and diagnoses are read through ``claim.lines.all()`` / ``claim.diagnoses.all()``
    so that a prefetch is used when present. The rules each element meets are in
    /work/shared/spec/profiles/c4bb-EOB*Profile.fsh and tests/payer/conformance.py.
    """
    member = claim.member
    if directory is None:
        directory = provider_directory_load(npis=[claim.billing_npi, claim.rendering_npi, claim.facility_npi])
    profile, sub_type = _claim_profile_and_subtype(claim)
    institutional = claim.claim_type == Claim.ClaimType.INSTITUTIONAL
    pharmacy = claim.claim_type == Claim.ClaimType.PHARMACY
    inpatient = _inpatient(claim)
    billing_status = directory.network_status(claim.billing_npi, claim.service_start)

    care_team: list[dict[str, Any]] = []
    if claim.rendering_npi:
        # C4BBClaimInstitutionalCareTeamRole / ...PharmacyTeamRole / ...ProfessionalAndNonClinicianCareTeamRole.
        role, role_display = (("attending", "Attending") if institutional
                              else ("prescribing", "Prescribing provider") if pharmacy
                              else ("rendering", "Rendering provider"))
        member_of_team: dict[str, Any] = {
            "sequence": 1,
            "provider": directory.provider(claim.rendering_npi),
            "responsible": True,
            "role": _concept(C4BB_CARE_TEAM_ROLE, role, role_display),
        }
        if not pharmacy and claim.rendering_npi in directory.taxonomies:
            # careTeam.qualification from the NUCC Healthcare Provider Taxonomy (required).
            member_of_team["qualification"] = _concept(NUCC_SYSTEM, *directory.taxonomies[claim.rendering_npi])
        care_team.append(member_of_team)

    supporting_info: list[dict[str, Any]] = [
        _supporting_info("clmrecvddate", "Claim Received Date", timingDate=claim.received_date.isoformat()),
    ]
    if inpatient:
        # Inpatient Basis: supportingInfo:admissionperiod 1..1, timingPeriod 1..1 (the
        # statement covers the stay from admission to discharge).
        supporting_info.append(_supporting_info("admissionperiod", "Admission Period", timingPeriod={
            "start": claim.service_start.isoformat(), "end": claim.service_end.isoformat()}))
    if institutional and claim.type_of_bill:
        supporting_info.append(_supporting_info("typeofbill", "Type of Bill", code=_concept(TYPE_OF_BILL_SYSTEM, claim.type_of_bill)))
    if pharmacy:
        # Pharmacy Basis: dayssupply, dawcode, refillNum and refillsAuthorized are 1..1
        # (NCPDP 405-D5, 408-D8, 403-D3, 415-DF).
        if claim.days_supply is not None:
            supporting_info.append(_supporting_info("dayssupply", "Days Supply", valueQuantity={"value": claim.days_supply}))
        if claim.daw_code:
            supporting_info.append(_supporting_info("dawcode", "DAW (Dispense As Written) Code",
                                                    code=_concept(NCPDP_DAW_SYSTEM, claim.daw_code)))
        if claim.refill_number is not None:
            supporting_info.append(_supporting_info("refillnum", "Refill Number", valueQuantity={"value": claim.refill_number}))
        if claim.refills_authorized is not None:
            supporting_info.append(_supporting_info("refillsauthorized", "Refills Authorized",
                                                    valueQuantity={"value": claim.refills_authorized}))
    supporting_info = [{"sequence": sequence, **info} for sequence, info in enumerate(supporting_info, 1)]

    dx_types = _INPATIENT_DX if inpatient else _OUTPATIENT_DX if institutional else _PROFESSIONAL_DX
    diagnoses = []
    for dx in claim.diagnoses.all():
        system, code, display = dx_types.get(dx.kind, dx_types["other"])
        diagnoses.append(
            {
                "sequence": dx.sequence,
                "diagnosisCodeableConcept": _concept(ICD10CM_SYSTEM, _icd10_dotted(dx.icd10_code), dx.display),
                "type": [_concept(system, code, display)],
            }
        )
    dx_sequences = [d["sequence"] for d in diagnoses]

    items: list[dict[str, Any]] = []
    encounter = [{"reference": f"Encounter/{claim.encounter_id}"}] if claim.encounter_id else None
    lines = list(claim.lines.all())
    if pharmacy:
        # NCPDP: the dispensed drug (NDC, with its RxNorm concept) is the claim's single item;
        # its line holds the quantity dispensed.
        codings = []
        if claim.ndc_code:
            codings.append(_coding(NDC_SYSTEM, claim.ndc_code, claim.drug_name))
        if claim.rxnorm_code:
            codings.append(_coding(RXNORM_SYSTEM, claim.rxnorm_code, claim.drug_name))
        items.append(
            {
                "sequence": 1,
                "productOrService": {"coding": codings, **({"text": claim.drug_name} if claim.drug_name else {})},
                "servicedDate": claim.service_start.isoformat(),
                "quantity": _quantity(lines[0].quantity if lines else 1),
                **({"encounter": encounter} if encounter else {}),
            }
        )
        lines = []
    for line in lines:
        item: dict[str, Any] = {"sequence": line.sequence}
        if line.revenue_code:
            item["revenue"] = _concept(REVENUE_SYSTEM, line.revenue_code)
        if line.procedure_code:
            system = HCPCS_SYSTEM if line.procedure_system.upper() == "HCPCS" else CPT_SYSTEM
            item["productOrService"] = _concept(system, line.procedure_code, line.procedure_display)
        else:
            # productOrService is 1..1 and a line of the claims system may carry a revenue
            # code only. CARIN BB forbids this for non-vision claims
            # (EOB-vision-item-productorservice); the generated data never has such lines.
            item["productOrService"] = {
                "coding": [
                    _coding("http://terminology.hl7.org/CodeSystem/data-absent-reason", "not-applicable", "Not Applicable")
                ]
            }
        if line.modifier:
            item["modifier"] = [_concept(CPT_SYSTEM, line.modifier)]
        if line.place_of_service and not institutional:
            item["locationCodeableConcept"] = _concept(POS_SYSTEM, line.place_of_service)
        item["servicedDate"] = line.service_date.isoformat()
        item["quantity"] = _quantity(line.quantity)
        if dx_sequences and not institutional:
            item["diagnosisSequence"] = dx_sequences[:4]
        if claim.rendering_npi:
            item["careTeamSequence"] = [1]
        if encounter:
            item["encounter"] = encounter
        if not institutional:
            # Professional Basis: item.adjudication:benefitpaymentstatus 1..1 per line.
            item["adjudication"] = [_network_adjudication("benefitpaymentstatus",
                                                          directory.network_status(claim.billing_npi, line.service_date))]
        items.append(item)

    # Institutional and Pharmacy Basis: adjudication:benefitpaymentstatus 1..1 at the header;
    # every Basis profile allows the billing provider's network status there.
    adjudication: list[dict[str, Any]] = []
    if billing_status != "other":
        adjudication.append(_network_adjudication("billingnetworkstatus", billing_status))
    if institutional or pharmacy:
        adjudication.append(_network_adjudication("benefitpaymentstatus", billing_status))

    eob: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id_for_claim(claim.claim_number),
        "meta": {"lastUpdated": _instant(claim.updated_at), "profile": [profile]},
        "identifier": [
            {
                "type": _concept(f"{C4BB}/CodeSystem/C4BBIdentifierType", "uc", "Unique Claim ID"),
                "system": "https://unitedcare.example.org/fhir/sid/claim-number",
                "value": claim.claim_number,
            }
        ],
        "status": "active",
        "type": _concept(CLAIM_TYPE_SYSTEM, claim.claim_type, claim.get_claim_type_display()),
        **({"subType": sub_type} if sub_type else {}),
        "use": "claim",
        "patient": {"reference": f"Patient/{member.patient_id}"},
        "billablePeriod": {"start": claim.service_start.isoformat(), "end": claim.service_end.isoformat()},
        "created": (claim.processed_date or claim.received_date).isoformat(),
        "insurer": _insurer(),
        "provider": directory.organization(claim.billing_npi),
        **({"facility": directory.facility(claim.facility_npi)} if claim.facility_npi else {}),
        "outcome": _CLAIM_OUTCOME.get(claim.status, "complete"),
        **({"careTeam": care_team} if care_team else {}),
        "supportingInfo": supporting_info,
        **({"diagnosis": diagnoses} if diagnoses else {}),
        "insurance": _insurance(member),
        **({"item": items} if items else {}),
        **({"adjudication": adjudication} if adjudication else {}),
    }
    return eob


def _icd10_dotted(code: str) -> str:
    """Return an ICD-10-CM code with its dot (claims platforms store ``E119`` for ``E11.9``)."""
    code = code.strip().upper()
    return code if "." in code or len(code) <= 3 else f"{code[:3]}.{code[3:]}"


# X12 306 (278 HCR01) action codes express the review decision, as PAS and PDex do.
_PA_DECISION = {
    PriorAuthorization.Decision.PENDING: ("A4", "Pended", "queued"),
    PriorAuthorization.Decision.APPROVED: ("A1", "Certified in total", "complete"),
    PriorAuthorization.Decision.PARTIAL: ("A2", "Certified - partial", "partial"),
    PriorAuthorization.Decision.DENIED: ("A3", "Not Certified", "complete"),
    PriorAuthorization.Decision.CANCELLED: ("C", "Cancelled", "complete"),
}


def _units_approved(pa: PriorAuthorization) -> int:
    if pa.units_approved is not None:
        return pa.units_approved
    # Records written before the UM platform kept approved units: what the decision implies.
    return {PriorAuthorization.Decision.APPROVED: pa.quantity,
            PriorAuthorization.Decision.PARTIAL: max(1, pa.quantity // 2)}.get(pa.decision, 0)


def prior_auth_to_eob(pa: PriorAuthorization, *, directory: ProviderDirectory | None = None) -> dict[str, Any]:
    """Return the PDex Prior Authorization ExplanationOfBenefit (``use = preauthorization``).

    PDex 2.1 pdex-priorauthorization (pdex-pa.fsh): ``item.adjudication`` is sliced
    closed on ``category`` (required binding PDexAdjudicationCategoryDiscriminator), and
    without amounts only the ``allowedunits``, ``consumedunits`` and ``denialreason``
    slices are open to a non-financial payer. The decision is the reviewAction extension
    (X12 306 code) with its date in WhenAdjudicated, both on the allowedunits entry: the
    units approved so far (0 while pended, denied or cancelled). ``consumedunits`` holds
    the units used to date.
    """
    member = pa.member
    if directory is None:
        directory = provider_directory_load(npis=[pa.requesting_npi, pa.servicing_npi])
    action_code, action_display, outcome = _PA_DECISION[pa.decision]
    system = HCPCS_SYSTEM if pa.service_system.upper() == "HCPCS" else CPT_SYSTEM

    review_action = {"url": PDEX_REVIEW_ACTION, "extension": [
        {"url": PDEX_REVIEW_ACTION_CODE, "valueCodeableConcept": _concept(X12_306_SYSTEM, action_code, action_display)},
        {"url": "number", "valueString": pa.auth_number},
    ]}
    allowed: dict[str, Any] = {
        "extension": [review_action],
        "category": _concept(PDEX_ADJUDICATION_DISCRIMINATOR, "allowedunits", "allowed units"),
        **({"reason": {"text": pa.decision_reason}} if pa.decision_reason else {}),
        "value": _units_approved(pa),
    }
    if pa.decision_date:
        allowed["extension"].append({"url": PDEX_WHEN_ADJUDICATED, "valueDateTime": pa.decision_date.isoformat()})
    adjudication = [allowed]
    if pa.decision in (PriorAuthorization.Decision.APPROVED, PriorAuthorization.Decision.PARTIAL):
        adjudication.append({"category": _concept(PDEX_ADJUDICATION_DISCRIMINATOR, "consumedunits", "consumed units"),
                             "value": pa.units_used})

    item: dict[str, Any] = {
        "sequence": 1,
        "productOrService": _concept(system, pa.service_code, pa.service_display),
        "quantity": {"value": pa.quantity},
        "adjudication": adjudication,
    }
    if pa.decision_date and pa.decision in (PriorAuthorization.Decision.APPROVED, PriorAuthorization.Decision.PARTIAL):
        item["extension"] = [{"url": PAS_PREAUTH_ISSUE_DATE, "valueDate": pa.decision_date.isoformat()}]
    if pa.valid_start:
        item["servicedPeriod"] = {
            "start": pa.valid_start.isoformat(),
            **({"end": pa.valid_end.isoformat()} if pa.valid_end else {}),
        }
    care_team = [
        {
            "sequence": 1,
            "provider": directory.provider(pa.requesting_npi),
            "responsible": True,
            "role": _concept(C4BB_CARE_TEAM_ROLE, "referring", "Referring"),
        }
    ]
    if pa.servicing_npi:
        care_team.append(
            {
                "sequence": 2,
                "provider": directory.provider(pa.servicing_npi),
                "role": _concept(C4BB_CARE_TEAM_ROLE, "rendering", "Rendering provider"),
            }
        )
        item["careTeamSequence"] = [2]

    eob: dict[str, Any] = {
        "resourceType": "ExplanationOfBenefit",
        "id": eob_id_for_prior_auth(pa.auth_number),
        "meta": {"lastUpdated": _instant(pa.updated_at), "profile": [PROFILE_PRIOR_AUTH]},
        "identifier": [
            {
                "type": _concept(f"{C4BB}/CodeSystem/C4BBIdentifierType", "uc", "Unique Claim ID"),
                "system": "https://unitedcare.example.org/fhir/sid/prior-authorization-number",
                "value": pa.auth_number,
            }
        ],
        "status": "cancelled" if pa.decision == PriorAuthorization.Decision.CANCELLED else "active",
        "type": _concept(CLAIM_TYPE_SYSTEM, "professional", "Professional"),
        "use": "preauthorization",
        "patient": {"reference": f"Patient/{member.patient_id}"},
        "created": pa.requested_date.isoformat(),
        "insurer": _insurer(),
        "provider": directory.provider(pa.servicing_npi or pa.requesting_npi),
        "outcome": outcome,
        "disposition": pa.get_decision_display()
        + (f" on {pa.decision_date.isoformat()}" if pa.decision_date else "")
        + (f": {pa.decision_reason}" if pa.decision_reason else ""),
        "preAuthRef": [pa.auth_number],
        "careTeam": care_team,
        "insurance": _insurance(member),
        "item": [item],
    }
    if pa.valid_start:
        eob["preAuthRefPeriod"] = [item["servicedPeriod"]]
    if pa.diagnosis_code:
        eob["diagnosis"] = [
            {"sequence": 1, "diagnosisCodeableConcept": _concept(ICD10CM_SYSTEM, _icd10_dotted(pa.diagnosis_code))}
        ]
        item["diagnosisSequence"] = [1]
    return eob


def eobs_for_members(
    *,
    member_ids: Iterable[int],
    since: datetime | None = None,
    until: datetime | None = None,
    chunk_size: int = 500,
) -> Iterator[dict[str, Any]]:
    """Stream the EOBs (claims, then prior authorizations) of members, by Member primary key.

    ``since``/``until`` bound ``meta.lastUpdated`` (Bulk Data ``_since``: resources
    changed at or after; ``_until``: at or before). Lines and diagnoses are prefetched
    per chunk of ``.iterator()`` so there is no query per claim.
    """
    member_ids = list(member_ids)
    window = Q()
    if since is not None:
        window &= Q(updated_at__gte=since)
    if until is not None:
        window &= Q(updated_at__lte=until)
    directory = provider_directory_load()
    claims = (
        Claim.objects.filter(window, member_id__in=member_ids)
        .select_related("member")
        .prefetch_related("lines", "diagnoses")
        .order_by("member_id", "service_start", "id")
    )
    for claim in claims.iterator(chunk_size=chunk_size):
        yield claim_to_eob(claim, directory=directory)
    pas = (
        PriorAuthorization.objects.filter(window, member_id__in=member_ids)
        .select_related("member")
        .order_by("member_id", "requested_date", "id")
    )
    for pa in pas.iterator(chunk_size=chunk_size):
        yield prior_auth_to_eob(pa, directory=directory)


def eob_get(*, eob_id: str) -> dict[str, Any] | None:
    """Return the EOB with this id, or None when there is none."""
    try:
        kind, number = eob_id_parse(eob_id)
    except ValueError:
        return None
    if kind == "claim":
        claim = (
            Claim.objects.filter(claim_number__iexact=number)
            .select_related("member")
            .prefetch_related("lines", "diagnoses")
            .first()
        )
        return claim_to_eob(claim) if claim else None
    pa = PriorAuthorization.objects.filter(auth_number__iexact=number).select_related("member").first()
    return prior_auth_to_eob(pa) if pa else None
