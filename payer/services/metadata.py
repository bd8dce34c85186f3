"""The payer FHIR server's CapabilityStatement (FHIR R4 capabilitystatement.html)."""

from typing import Any

from payer.services.fhir import GROUP_SEARCH_PARAMS, SEARCH_PARAM_TYPES, allowed_search_params

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
