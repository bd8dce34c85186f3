"""Test data of the test payer (tests/provider/fake_payer.py): patients, encounters, groups."""

CLIENT_ID = "grace-hospital"


def patient(patient_id: str, member_id: str, family: str) -> dict:
    return {
        "resourceType": "Patient", "id": patient_id, "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
        "identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                        "system": "https://unitedcare.example/member-id", "value": member_id}],
        "name": [{"family": family, "given": ["Jack"]}], "gender": "male", "birthDate": "1970-03-04",
    }


def encounter(encounter_id: str, patient_id: str, start: str, updated: str = "2025-01-01T00:00:00Z") -> dict:
    return {
        "resourceType": "Encounter", "id": encounter_id, "meta": {"lastUpdated": updated}, "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"}, "period": {"start": start, "end": start},
    }


def condition(condition_id: str, patient_id: str) -> dict:
    return {
        "resourceType": "Condition", "id": condition_id, "meta": {"lastUpdated": "2025-01-01T00:00:00Z"},
        "code": {"coding": [{"system": "http://snomed.info/sct", "code": "44054006", "display": "Diabetes"}]},
        "subject": {"reference": f"Patient/{patient_id}"},
    }


def dataset() -> tuple[dict[str, list[dict]], list[dict]]:
    """Return (resources by type, groups): Jack Shaw (M100) and Ann Lee (M200) attributed, Bob Ray (M300) not."""
    resources = {
        "Patient": [patient("p1", "M100", "Shaw"), patient("p2", "M200", "Lee"), patient("p3", "M300", "Ray")],
        "Encounter": [encounter(f"e1-{n}", "p1", f"2024-0{n}-10T09:00:00Z") for n in range(1, 8)]
        + [encounter("e2-1", "p2", "2024-02-01T10:00:00Z"), encounter("e3-1", "p3", "2024-02-01T10:00:00Z")],
        "Condition": [condition("c1", "p1"), condition("c2", "p2")],
    }
    groups = [{
        "resourceType": "Group", "id": "g1", "type": "person", "actual": True,
        "member": [{"entity": {"reference": "Patient/p1"}}, {"entity": {"reference": "Patient/p2"}}],
    }]
    return resources, groups
