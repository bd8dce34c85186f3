"""The payer FHIR server's CapabilityStatement (FHIR R4 capabilitystatement.html)."""

from typing import Any

from payer.mapping import PROFILE_INPATIENT, PROFILE_OUTPATIENT, PROFILE_PHARMACY, PROFILE_PRIOR_AUTH, PROFILE_PROFESSIONAL
from payer.services.fhir import GROUP_SEARCH_PARAMS, SEARCH_PARAM_TYPES, allowed_search_params
from payer.services.synthetic import C4BB_COVERAGE, OBSERVATION_PROFILES, us_core

# Bulk Data req 1: a conforming server lists this in CapabilityStatement.instantiates.
BULK_DATA_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
PDEX_PROVIDER_ACCESS_CAPABILITY = "http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-provider-access-server"

# SMART App Launch 2.x conformance.html: the oauth-uris extension on rest.security.
SMART_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# Member data types in the patient compartment: read, and search by patient and _lastUpdated.
PATIENT_DATA_TYPES = (
    "Coverage", "Encounter", "Condition", "Procedure", "Observation", "MedicationRequest",
    "AllergyIntolerance", "Immunization", "DiagnosticReport", "ExplanationOfBenefit",
)
# Types read by id and searched by _id only (Patient, Group, and those referenced by clinical data).
OTHER_TYPES = ("Patient", "Group", "Practitioner", "PractitionerRole", "Organization", "Location")

# The implementation guides whose profiles the content declares (R4 CapabilityStatement.implementationGuide).
IMPLEMENTATION_GUIDES = [
    "http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core|6.1.0",
    "http://hl7.org/fhir/us/carin-bb/ImplementationGuide/hl7.fhir.us.carin-bb|2.1.0",
    "http://hl7.org/fhir/us/davinci-pdex/ImplementationGuide/hl7.fhir.us.davinci-pdex|2.1.0",
    "http://hl7.org/fhir/uv/bulkdata/ImplementationGuide/hl7.fhir.uv.bulkdata|2.0.0",
]
# The profiles each type's resources declare in meta.profile (issue 11: exactly those they
# meet, versioned; tests/payer/test_conformance.py checks every exported resource).
SUPPORTED_PROFILES = {
    "Patient": [us_core("us-core-patient")],
    "Coverage": [us_core("us-core-coverage"), C4BB_COVERAGE],
    "Encounter": [us_core("us-core-encounter")],
    "Condition": [us_core("us-core-condition-problems-health-concerns"), us_core("us-core-condition-encounter-diagnosis")],
    "Procedure": [us_core("us-core-procedure")],
    "Observation": sorted({us_core(p) for p in OBSERVATION_PROFILES.values()} | {us_core("us-core-blood-pressure")}),
    "MedicationRequest": [us_core("us-core-medicationrequest")],
    "AllergyIntolerance": [us_core("us-core-allergyintolerance")],
    "Immunization": [us_core("us-core-immunization")],
    "DiagnosticReport": [us_core("us-core-diagnosticreport-lab"), us_core("us-core-diagnosticreport-note")],
    "ExplanationOfBenefit": [PROFILE_INPATIENT, PROFILE_OUTPATIENT, PROFILE_PROFESSIONAL, PROFILE_PHARMACY, PROFILE_PRIOR_AUTH],
    "Group": ["http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-provider-group"],
    "Practitioner": [us_core("us-core-practitioner")],
    "PractitionerRole": [us_core("us-core-practitionerrole")],
    "Organization": [us_core("us-core-organization")],
    "Location": [us_core("us-core-location")],
}

OPERATIONS = {
    "export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
    "patient-export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
    "group-export": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
    "davinci-data-export": "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export",
    # PDex 2.2 Provider Access v2 (§pdex-241a: payers SHALL support it).
    "provider-member-match": "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/ProviderMemberMatch",
}


def _operation(name: str) -> dict[str, str]:
    return {"name": name, "definition": OPERATIONS[name]}


def _search_param(name: str, type_: str) -> dict[str, str]:
    return {"name": name, "type": type_}


def _resource(resource_type: str) -> dict[str, Any]:
    # The parameters the search service accepts for the type, so the statement never
    # drifts from what the API does.
    names = GROUP_SEARCH_PARAMS if resource_type == "Group" else allowed_search_params(resource_type)
    params = [_search_param(name, SEARCH_PARAM_TYPES[name]) for name in names if name in SEARCH_PARAM_TYPES]
    resource: dict[str, Any] = {
        "type": resource_type,
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": params,
    }
    if resource_type in SUPPORTED_PROFILES:
        resource["supportedProfile"] = SUPPORTED_PROFILES[resource_type]
    if resource_type == "Patient":
        resource["operation"] = [_operation("patient-export")]
    elif resource_type == "Group":
        resource["operation"] = [_operation("group-export"), _operation("davinci-data-export"),
                                 _operation("provider-member-match")]
    return resource


def capability_statement(*, fhir_base_url: str, token_url: str, software_version: str = "0.1.0") -> dict[str, Any]:
    """Return the CapabilityStatement of the payer FHIR server at ``fhir_base_url``."""
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2025-01-01",
        "publisher": "Provider Access",
        "kind": "instance",
        "instantiates": [BULK_DATA_CAPABILITY, PDEX_PROVIDER_ACCESS_CAPABILITY],
        "software": {"name": "Provider Access payer server", "version": software_version},
        "implementation": {"description": "Payer Provider Access API (CMS-0057-F)", "url": fhir_base_url},
        "fhirVersion": "4.0.1",
        "implementationGuide": IMPLEMENTATION_GUIDES,
        "format": ["json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {"url": SMART_OAUTH_URIS, "extension": [{"url": "token", "valueUri": token_url}]}
                    ],
                    "description": "SMART Backend Services: private_key_jwt client assertions signed with "
                    "RS384 or ES384 are exchanged for a bearer token at the token endpoint.",
                },
                "resource": [_resource(t) for t in (*OTHER_TYPES[:1], *PATIENT_DATA_TYPES, *OTHER_TYPES[1:])],
                "operation": [_operation("export")],
            }
        ],
    }
