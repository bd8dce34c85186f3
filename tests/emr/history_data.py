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


def _aware(when: dt.datetime) -> dt.datetime:
    return when if when.tzinfo else when.replace(tzinfo=dt.UTC)


def _row(resource: dict, *, connection: PayerConnection | None, patient_id: str = "", date: str | None = None) -> LocalResource:
    return LocalResource(
        resource_type=resource["resourceType"],
        resource_id=resource["id"],
        patient_id=patient_id,
        date=_aware(dt.datetime.fromisoformat(date.replace("Z", "+00:00"))) if date else None,
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
    return out + clinical_resources(subject=subject)


LOINC, UCUM = "http://loinc.org", "http://unitsofmeasure.org"
X12_306 = "https://codesystem.x12.org/005010/306"
PDEX = "http://hl7.org/fhir/us/davinci-pdex/StructureDefinition"
# (id, LOINC, name, value, unit, date, (low, high) reference range or None)
LABS = [
    ("obs-a1c-1", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 8.4, "%", "2020-01-20T10:40:00Z", (4.0, 5.6)),
    ("obs-a1c-2", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 7.6, "%", "2023-04-18T11:20:00Z", (4.0, 5.6)),
    ("obs-a1c-3", "4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", 6.9, "%", "2024-09-09T14:20:00Z", (4.0, 5.6)),
    ("obs-egfr-1", "33914-3", "Glomerular filtration rate/1.73 sq M.predicted", 71, "mL/min/{1.73_m2}", "2020-01-20T10:40:00Z", (60, None)),
    ("obs-egfr-2", "33914-3", "Glomerular filtration rate/1.73 sq M.predicted", 52, "mL/min/{1.73_m2}", "2024-09-09T14:20:00Z", (60, None)),
    ("obs-wt-1", "29463-7", "Body weight", 96.2, "kg", "2020-01-20T10:35:00Z", None),
    ("obs-wt-2", "29463-7", "Body weight", 99.0, "kg", "2023-04-18T11:05:00Z", None),
    ("obs-wt-3", "29463-7", "Body weight", 101.4, "kg", "2024-09-09T14:05:00Z", None),
]
BLOOD_PRESSURES = [("obs-bp-1", 152, 94, "2020-01-20T10:35:00Z"), ("obs-bp-2", 141, 88, "2023-04-18T11:05:00Z"),
                   ("obs-bp-3", 134, 82, "2024-09-09T14:05:00Z")]


def _quantity(value: float, unit: str) -> dict:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def clinical_resources(*, subject: dict) -> list[tuple[dict, str]]:
    """Allergies, immunizations, labs and vitals in series, medications active and stopped,
    and prior authorizations with PDex decisions: what the summary is made of."""
    out: list[tuple[dict, str]] = []
    for oid, code, name, value, unit, when, normal in LABS:
        vital = code == "29463-7"
        resource = {
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                      "code": "vital-signs" if vital else "laboratory"}]}],
            "code": {"coding": [{"system": LOINC, "code": code, "display": name}], "text": name},
            "subject": subject, "effectiveDateTime": when, "valueQuantity": _quantity(value, unit),
        }
        if normal:
            resource["referenceRange"] = [{k: _quantity(v, unit) for k, v in zip(("low", "high"), normal) if v is not None}]
        out.append((resource, when))
    for oid, systolic, diastolic, when in BLOOD_PRESSURES:
        out.append(({
            "resourceType": "Observation", "id": oid, "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
            "code": {"coding": [{"system": LOINC, "code": "85354-9", "display": "Blood pressure panel with all children optional"}]},
            "subject": subject, "effectiveDateTime": when,
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": _quantity(systolic, "mm[Hg]")},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": _quantity(diastolic, "mm[Hg]")},
            ],
        }, when))
    out += [
        ({"resourceType": "AllergyIntolerance", "id": "alg-pcn",
          "clinicalStatus": {"coding": [{"code": "active"}]}, "verificationStatus": {"coding": [{"code": "confirmed"}]},
          "type": "allergy", "category": ["medication"], "criticality": "high",
          "code": {"coding": [{"system": "http://snomed.info/sct", "code": "764146007", "display": "Penicillin (substance)"}]},
          "patient": subject, "recordedDate": "2018-03-14T10:00:00Z",
          "reaction": [{"manifestation": [{"text": "Hives and facial swelling"}], "severity": "severe"}]}, "2018-03-14T10:00:00Z"),
        # Ruled out: listed in the Allergies tab, never in the summary.
        ({"resourceType": "AllergyIntolerance", "id": "alg-latex",
          "clinicalStatus": {"coding": [{"code": "inactive"}]}, "verificationStatus": {"coding": [{"code": "refuted"}]},
          "code": {"coding": [{"system": "http://snomed.info/sct", "code": "111088007", "display": "Latex (substance)"}]},
          "patient": subject, "recordedDate": "2019-07-03T10:00:00Z"}, "2019-07-03T10:00:00Z"),
        ({"resourceType": "Immunization", "id": "imm-flu-1", "status": "completed",
          "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "150", "display": "Influenza, injectable, quadrivalent, preservative free"}]},
          "patient": subject, "occurrenceDateTime": "2023-10-02T11:00:00Z", "primarySource": True}, "2023-10-02T11:00:00Z"),
        ({"resourceType": "Immunization", "id": "imm-flu-2", "status": "completed",
          "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "150", "display": "Influenza, injectable, quadrivalent, preservative free"}]},
          "patient": subject, "occurrenceDateTime": "2024-10-07T11:00:00Z", "primarySource": True,
          "location": {"display": "Grace Hospital"}}, "2024-10-07T11:00:00Z"),
        ({"resourceType": "Immunization", "id": "imm-tdap", "status": "completed",
          "vaccineCode": {"coding": [{"system": "http://hl7.org/fhir/sid/cvx", "code": "115", "display": "Tdap"}]},
          "patient": subject, "occurrenceDateTime": "2018-03-14T11:00:00Z", "primarySource": True}, "2018-03-14T11:00:00Z"),
        # Structured dosage with no text: the sig is written from its parts.
        ({"resourceType": "MedicationRequest", "id": "med-metformin", "status": "active", "intent": "order",
          "medicationCodeableConcept": {"coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "860975",
                                                    "display": "metformin 500 MG Extended Release Oral Tablet"}]},
          "subject": subject, "authoredOn": "2023-04-18T11:40:00Z",
          "dosageInstruction": [{"timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
                                 "route": {"coding": [{"system": "http://snomed.info/sct", "code": "26643006", "display": "Oral route"}]},
                                 "doseAndRate": [{"doseQuantity": _quantity(1, "{tbl}")}]}]}, "2023-04-18T11:40:00Z"),
        ({"resourceType": "MedicationRequest", "id": "med-clopidogrel", "status": "stopped", "intent": "order",
          "medicationCodeableConcept": {"text": "Clopidogrel 75 mg tablet"}, "subject": subject,
          "authoredOn": "2019-07-03T12:00:00Z", "dosageInstruction": [{"text": "1 tablet by mouth daily"}]}, "2019-07-03T12:00:00Z"),
    ]
    # Pharmacy claims (CARIN BB): fills of the active metformin, a recent antibiotic with no
    # prescription in the data, and an old one.
    for eob_id, rxnorm, name, day, days in [
        ("rx-metformin-1", "860975", "metformin 500 MG Extended Release Oral Tablet", "2024-06-20", 90),
        ("rx-metformin-2", "860975", "metformin 500 MG Extended Release Oral Tablet", "2024-09-20", 90),
        ("rx-amoxicillin", "308182", "amoxicillin 500 MG Oral Capsule", "2024-08-15", 10),
        ("rx-old", "197361", "amlodipine 5 MG Oral Tablet", "2020-02-01", 30),
    ]:
        out.append(({
            "resourceType": "ExplanationOfBenefit", "id": eob_id, "status": "active", "use": "claim", "outcome": "complete",
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "pharmacy"}]},
            "patient": subject, "billablePeriod": {"start": day, "end": day}, "created": day,
            "supportingInfo": [{"sequence": 1, "category": {"coding": [{"code": "dayssupply"}]}, "valueQuantity": {"value": days}}],
            "item": [{"sequence": 1, "productOrService": {"coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": rxnorm, "display": name}]}, "servicedDate": day}],
        }, day))
    for pa_id, service, action, display, created, period, decided in [
        ("pa-sleep", "Polysomnography", "A4", "Pended", "2024-09-10", None, None),
        ("pa-rehab", "Cardiac rehabilitation", "A2", "Certified - partial", "2024-09-12", ("2024-09-20", "2024-12-20"), "2024-09-15"),
        ("pa-ct", "CT coronary angiography", "A3", "Not Certified", "2020-01-21", None, "2020-01-24"),
    ]:
        extensions = [{"url": f"{PDEX}/extension-reviewAction", "extension": [
            {"url": f"{PDEX}/extension-reviewActionCode",
             "valueCodeableConcept": {"coding": [{"system": X12_306, "code": action, "display": display}]}}]}]
        if decided:
            extensions.append({"url": f"{PDEX}/base-ext-when-adjudicated", "valueDateTime": decided})
        item = {"sequence": 1, "productOrService": {"text": service}, "quantity": {"value": 36},
                "adjudication": [{"extension": extensions, "category": {"coding": [{"code": "allowedunits"}]},
                                  "value": 18 if action == "A2" else 0}]}
        if period:
            item["servicedPeriod"] = {"start": period[0], "end": period[1]}
        out.append(({"resourceType": "ExplanationOfBenefit", "id": pa_id, "status": "active", "use": "preauthorization",
                     "type": {"coding": [{"code": "professional"}]}, "patient": subject, "created": created,
                     "outcome": "queued" if action == "A4" else "partial" if action == "A2" else "complete",
                     "preAuthRef": [f"AUTH-{pa_id.upper()}"], "item": [item]}, created))
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
