"""A patient's history as a payer would export it (US Core / CARIN BB / PDex shapes), stored
straight into the provider's local store for the EMR page tests."""

from __future__ import annotations

import datetime as dt

from django.utils import timezone

from provider.models import LocalResource, PayerConnection

EXPORT_TIME = dt.datetime(2025, 6, 13, 9, 30, tzinfo=dt.UTC)

FACILITIES = [
    ("loc-st-marys", "St. Mary's Medical Center", "org-st-marys"),
    ("loc-riverside", "Riverside Community Hospital", "org-riverside"),
    ("loc-lakeview", "Lakeview Cardiology Clinic", "org-lakeview"),
    ("loc-northgate", "Northgate Urgent Care", "org-northgate"),
    ("loc-grace", "Grace Hospital", "org-grace"),
]
PRACTITIONERS = [("pr-adams", "Emily", "Adams"), ("pr-chen", "Wei", "Chen"), ("pr-okafor", "Ngozi", "Okafor")]
# (id, start, facility index, class, type, practitioner index, condition code, condition text)
ENCOUNTERS = [
    ("enc-1", "2018-03-14T09:00:00Z", 0, "AMB", "Annual wellness visit", 0, "I10", "Essential hypertension"),
    ("enc-2", "2019-07-02T22:15:00Z", 1, "EMER", "Emergency department visit", 1, "R07.9", "Chest pain, unspecified"),
    ("enc-3", "2019-07-03T08:00:00Z", 1, "IMP", "Inpatient admission", 1, "I21.4", "Non-ST elevation myocardial infarction"),
    ("enc-4", "2020-01-20T10:30:00Z", 2, "AMB", "Cardiology follow-up", 2, "I25.10", "Coronary artery disease"),
    ("enc-5", "2021-11-05T16:45:00Z", 3, "AMB", "Urgent care visit", 0, "J06.9", "Acute upper respiratory infection"),
    ("enc-6", "2023-04-18T11:00:00Z", 2, "AMB", "Cardiology follow-up", 2, "E11.9", "Type 2 diabetes mellitus"),
    ("enc-7", "2024-09-09T14:00:00Z", 4, "AMB", "Primary care visit", 0, "E78.5", "Hyperlipidemia"),
]


def _row(resource: dict, *, connection: PayerConnection | None, patient_id: str = "", date: str | None = None) -> LocalResource:
    return LocalResource(
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        patient_id=patient_id,
        date=dt.datetime.fromisoformat(date.replace("Z", "+00:00")) if date else None,
        status=resource.get("status", "") if isinstance(resource.get("status"), str) else "",
        resource=resource,
        connection=connection,
        export_time=EXPORT_TIME,
        ingested_at=timezone.now(),
    )


def history_resources(*, patient_id: str, member_id: str, family: str = "Shaw", given: str = "Jack") -> list[tuple[dict, str]]:
    """Return (resource, date) pairs for a patient's history across five facilities."""
    subject = {"reference": f"Patient/{patient_id}"}
    out: list[tuple[dict, str]] = [
        (
            {
                "resourceType": "Patient",
                "id": patient_id,
                "identifier": [
                    {
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MB"}]},
                        "system": "https://unitedcare.example/member-id",
                        "value": member_id,
                    }
                ],
                "name": [{"family": family, "given": [given]}],
                "gender": "male",
                "birthDate": "1961-02-17",
            },
            "",
        )
    ]
    for pid, first, last in PRACTITIONERS:
        out.append(({"resourceType": "Practitioner", "id": pid, "name": [{"prefix": ["Dr."], "given": [first], "family": last}]}, ""))
    for loc_id, name, org_id in FACILITIES:
        out.append(({"resourceType": "Organization", "id": org_id, "name": name}, ""))
        out.append(
            (
                {
                    "resourceType": "Location",
                    "id": loc_id,
                    "name": name,
                    "address": {"line": ["100 Main Street"], "city": "Springfield", "state": "IL"},
                    "managingOrganization": {"reference": f"Organization/{org_id}"},
                },
                "",
            )
        )
    for enc_id, start, fac, klass, type_text, prac, code, text in ENCOUNTERS:
        loc_id, _, org_id = FACILITIES[fac]
        cond_id = f"cond-{enc_id}"
        out.append(
            (
                {
                    "resourceType": "Encounter",
                    "id": enc_id,
                    "status": "finished",
                    "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": klass},
                    "type": [{"text": type_text}],
                    "subject": subject,
                    "participant": [
                        {
                            "type": [{"text": "Primary performer"}],
                            "individual": {"reference": f"Practitioner/{PRACTITIONERS[prac][0]}"},
                        }
                    ],
                    "period": {"start": start, "end": start[:11] + "23:00:00Z"},
                    "diagnosis": [{"condition": {"reference": f"Condition/{cond_id}"}}],
                    "location": [{"location": {"reference": f"Location/{loc_id}"}}],
                    "serviceProvider": {"reference": f"Organization/{org_id}"},
                },
                start,
            )
        )
        out.append(
            (
                {
                    "resourceType": "Condition",
                    "id": cond_id,
                    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
                    "category": [{"coding": [{"code": "encounter-diagnosis", "display": "Encounter Diagnosis"}]}],
                    "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code, "display": text}]},
                    "subject": subject,
                    "encounter": {"reference": f"Encounter/{enc_id}"},
                    "recordedDate": start,
                },
                start,
            )
        )
        out.append(
            (
                {
                    "resourceType": "ExplanationOfBenefit",
                    "id": f"eob-{enc_id}",
                    "identifier": [{"value": f"CLM-{enc_id.upper()}"}],
                    "status": "active",
                    "type": {"coding": [{"code": "institutional", "display": "Institutional"}]},
                    "use": "claim",
                    "patient": subject,
                    "billablePeriod": {"start": start[:10], "end": start[:10]},
                    "created": start,
                    "provider": {"reference": f"Organization/{org_id}"},
                    "outcome": "complete",
                    "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": {"coding": [{"code": code, "display": text}]}}],
                    "item": [
                        {
                            "sequence": 1,
                            "productOrService": {"coding": [{"code": "99214", "display": "Office visit, established patient"}]},
                            "encounter": [{"reference": f"Encounter/{enc_id}"}],
                        }
                    ],
                    "total": [{"category": {"text": "submitted"}, "amount": {"value": 987.65, "currency": "USD"}}],
                },
                start,
            )
        )
    first = ENCOUNTERS[2]
    out += [
        (
            {
                "resourceType": "Procedure",
                "id": "proc-cath",
                "status": "completed",
                "code": {"coding": [{"code": "93458", "display": "Left heart catheterization"}]},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{first[0]}"},
                "performedDateTime": first[1],
            },
            first[1],
        ),
        (
            {
                "resourceType": "Observation",
                "id": "obs-trop",
                "status": "final",
                "code": {"text": "Troponin I"},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{first[0]}"},
                "effectiveDateTime": first[1],
                "valueQuantity": {"value": 2.4, "unit": "ng/mL"},
            },
            first[1],
        ),
        (
            {
                "resourceType": "MedicationRequest",
                "id": "med-atorva",
                "status": "active",
                "intent": "order",
                "medicationCodeableConcept": {"text": "Atorvastatin 40 mg tablet"},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{first[0]}"},
                "authoredOn": first[1],
                "requester": {"reference": f"Practitioner/{PRACTITIONERS[1][0]}"},
                "dosageInstruction": [{"text": "1 tablet by mouth nightly"}],
            },
            first[1],
        ),
        (
            {
                "resourceType": "ExplanationOfBenefit",
                "id": "pa-mri",
                "identifier": [{"value": "PA-2024-0042"}],
                "status": "active",
                "type": {"coding": [{"code": "professional", "display": "Professional"}]},
                "use": "preauthorization",
                "patient": subject,
                "created": "2024-08-01T10:00:00Z",
                "billablePeriod": {"start": "2024-08-05", "end": "2024-11-05"},
                "provider": {"reference": "Organization/org-grace"},
                "outcome": "complete",
                "preAuthRef": ["PA-2024-0042"],
                "item": [{"sequence": 1, "productOrService": {"text": "MRI lumbar spine without contrast"}}],
            },
            "2024-08-01T10:00:00Z",
        ),
    ]
    return out


def history_store(*, connection: PayerConnection | None, patient_id: str, member_id: str, **names: str) -> int:
    """Store the patient's history in the local store; return how many resources."""
    rows = []
    for resource, date in history_resources(patient_id=patient_id, member_id=member_id, **names):
        about_patient = resource["resourceType"] == "Patient" or "subject" in resource or "patient" in resource
        pid = patient_id if about_patient else ""
        rows.append(_row(resource, connection=connection, patient_id=pid, date=date or None))
    LocalResource.objects.bulk_create(rows)
    return len(rows)
