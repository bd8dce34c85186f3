"""Valid R4 resources and NDJSON for the local store's tests (Jack Shaw at UnitedCare)."""

import io
import json
from typing import Any


def patient(pid: str = "jack", *, family: str = "Shaw", given: str = "Jack", birth: str = "1970-03-14",
            member_id: str = "UC00001234", updated: str = "2024-05-01T10:00:00Z", version: str = "1") -> dict:
    return {
        "resourceType": "Patient", "id": pid, "meta": {"versionId": version, "lastUpdated": updated},
        "identifier": [{"system": "https://unitedcare.example/member-id", "value": member_id}],
        "name": [{"family": family, "given": [given]}], "gender": "male", "birthDate": birth,
    }


def encounter(eid: str, *, pid: str = "jack", start: str = "2024-03-01T09:00:00Z", status: str = "finished",
              class_code: str = "AMB", type_code: str = "185349003", practitioner: str = "smith",
              location: str = "grace-er", updated: str = "2024-05-01T10:00:00Z", version: str = "1") -> dict:
    return {
        "resourceType": "Encounter", "id": eid, "meta": {"versionId": version, "lastUpdated": updated},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": class_code},
        "type": [{"coding": [{"system": "http://snomed.info/sct", "code": type_code}]}],
        "subject": {"reference": f"Patient/{pid}"},
        "participant": [{"individual": {"reference": f"Practitioner/{practitioner}"}}],
        "period": {"start": start},
        "location": [{"location": {"reference": f"Location/{location}"}}],
    }


def practitioner(prid: str = "smith") -> dict:
    return {"resourceType": "Practitioner", "id": prid, "name": [{"family": "Smith", "given": ["James"]}]}


def location(lid: str = "grace-er") -> dict:
    return {"resourceType": "Location", "id": lid, "name": "Grace Hospital Emergency"}


def condition(cid: str, *, pid: str = "jack", onset: str = "2023-11-02") -> dict:
    return {
        "resourceType": "Condition", "id": cid, "subject": {"reference": f"Patient/{pid}"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}], "text": "Hypertension"},
        "onsetDateTime": onset,
    }


def observation(oid: str, *, pid: str = "jack", when: str = "2024-03-01T09:30:00Z") -> dict:
    return {
        "resourceType": "Observation", "id": oid, "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when,
        "valueQuantity": {"value": 72, "unit": "/min"},
    }


def procedure(prid: str, *, pid: str = "jack", when: str = "2024-02-10") -> dict:
    return {
        "resourceType": "Procedure", "id": prid, "status": "completed",
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "80146002"}]},
        "subject": {"reference": f"Patient/{pid}"}, "performedDateTime": when,
    }


def medication_request(mid: str, *, pid: str = "jack", authored: str = "2024-01-15") -> dict:
    return {
        "resourceType": "MedicationRequest", "id": mid, "status": "active", "intent": "order",
        "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                                                  "code": "197361"}]},
        "subject": {"reference": f"Patient/{pid}"}, "authoredOn": authored,
    }


def eob(eid: str, *, pid: str = "jack", start: str = "2024-03-01") -> dict:
    return {
        "resourceType": "ExplanationOfBenefit", "id": eid, "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "billablePeriod": {"start": start},
        "created": "2024-03-05T00:00:00Z", "insurer": {"display": "UnitedCare Health"},
        "provider": {"display": "Grace Hospital"}, "outcome": "complete",
        "insurance": [{"focal": True, "coverage": {"display": "UnitedCare PPO"}}],
    }


def claim(cid: str, *, pid: str = "jack", created: str = "2024-03-02T00:00:00Z") -> dict:
    return {
        "resourceType": "Claim", "id": cid, "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "created": created,
        "provider": {"display": "Grace Hospital"}, "priority": {"coding": [{"code": "normal"}]},
        "insurance": [{"sequence": 1, "focal": True, "coverage": {"display": "UnitedCare PPO"}}],
    }


def claim_response(cid: str, *, pid: str = "jack", created: str = "2024-03-03T00:00:00Z") -> dict:
    return {
        "resourceType": "ClaimResponse", "id": cid, "status": "active",
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "use": "claim", "patient": {"reference": f"Patient/{pid}"}, "created": created,
        "insurer": {"display": "UnitedCare Health"}, "outcome": "complete",
    }


def ndjson(*items: Any) -> io.BytesIO:
    """Return a binary stream of NDJSON; str items are written as they are (bad lines)."""
    lines = [item if isinstance(item, str) else json.dumps(item) for item in items]
    return io.BytesIO(("\n".join(lines) + "\n").encode())
