"""Every resource the payer exports meets the profiles it declares (issue 11).

Rules: tests/payer/conformance.py (US Core 6.1.0 read from its StructureDefinitions, CARIN BB
2.1.0 Basis, PDex 2.1 Prior Authorization and PDex 2.2 Provenance transcribed from FSH).
Applied to a whole Bulk Data export of Grace Hospital's Group from the demo, and to every
resource of a generated population. Run with ``-s`` to see the per-type, per-profile report.
"""

import datetime
import os

import pytest

from payer.mapping import eobs_for_members, provider_directory_load
from payer.models import AttributionGroup, ClinicalResource, Member
from payer.services.attribution import attribution_refresh
from payer.services.demo import GRACE_HOSPITAL_NPI, demo_today, seed_demo
from payer.services.export_params import SUPPORTED_TYPES
from payer.services.population import population_generate
from tests.payer import conformance
from tests.payer.auth_helpers import bearer_token_for
from tests.payer.test_export import _resources, _run

# Members of the generated population (issue 11 asks for 1,000; CONFORMANCE_MEMBERS overrides).
POPULATION_MEMBERS = int(os.environ.get("CONFORMANCE_MEMBERS", "1000"))


def _print_report(title: str, resources: list[dict]) -> tuple:
    checked, failed, sample = conformance.report(resources)
    print(f"\n== {title}: {sum(1 for _ in resources)} resources")
    for (resource_type, profile), count in sorted(checked.items()):
        failures = sum(n for (t, p, _), n in failed.items() if t == resource_type and p == profile.split("|")[0])
        print(f"  {resource_type:22} {profile:70} {count:6}  failures {failures}")
    for (resource_type, profile, rule), count in sorted(failed.items()):
        print(f"  FAIL {resource_type} {profile} {rule}: {count}")
    unmet = [f for r in resources for f in conformance.known_unmet_failures(r)]
    for (profile, rule), why in conformance.KNOWN_UNMET.items():
        print(f"  KNOWN UNMET {profile} {rule} ({sum(1 for f in unmet if f.rule == rule)} resources): {why}")
    for name, why in conformance.UNCHECKED.items():
        print(f"  UNCHECKED {name}: {why}")
    for name in sorted(conformance.UNVERIFIED_BINDINGS):
        print(f"  UNVERIFIED {name}")
    return checked, failed, sample


def test_rules_catch_the_findings_of_the_issue():
    # The rules must fail what issue 11 found; a rule module that passes everything proves nothing.
    eob = {
        "resourceType": "ExplanationOfBenefit", "id": "x",
        "meta": {"lastUpdated": "2024-01-01T00:00:00Z",
                 "profile": ["http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit-Professional-NonClinician-Basis"]},
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
        "careTeam": [{"sequence": 1, "provider": {"reference": "Practitioner/p"},
                      "role": {"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBClaimCareTeamRole", "code": "performing"}]}}],
        "diagnosis": [{"sequence": 1, "diagnosisCodeableConcept": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "I10"}]},
                       "type": [{"coding": [{"system": "http://hl7.org/fhir/us/carin-bb/ValueSet/C4BBClaimDiagnosisType", "code": "principal"}]}]}],
        "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
                  "servicedDate": "2024-01-01"}],
    }
    rules = {f.rule for f in conformance.check(eob)}
    assert "versioned canonical" in rules
    assert any("care team role" in r for r in rules)
    assert any("diagnosis type" in r for r in rules)
    assert any("benefitpaymentstatus" in r for r in rules)
    role = {"resourceType": "PractitionerRole", "id": "r", "practitioner": {"reference": "Practitioner/p"},
            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-practitionerrole|6.1.0"]}}
    assert [f.rule for f in conformance.check(role)] == ["PractitionerRole invariant pd-1"]
    condition = {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                 "code": {"coding": [{"system": "http://snomed.info/sct", "code": "38341003"}]},
                 "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
                 "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-condition|3.1.1"]}}
    assert {f.rule for f in conformance.check(condition)} == {"versioned canonical", "known profile"}
    pa = {"resourceType": "ExplanationOfBenefit", "id": "p", "use": "preauthorization", "status": "active",
          "meta": {"profile": ["http://hl7.org/fhir/us/davinci-pdex/StructureDefinition/pdex-priorauthorization|2.1.0"]},
          "item": [{"sequence": 1, "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "72148"}]},
                    "adjudication": [{"category": {"coding": [{"system": "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PriorAuthorizationValueCodes", "code": "submitted"}]},
                                      "value": 1}]}]}
    rules = {f.rule for f in conformance.check(pa)}
    assert any("outside PDexAdjudicationCategoryDiscriminator" in r for r in rules)
    assert any("reviewAction" in r for r in rules)


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_demo_export_of_grace_hospitals_group_conforms(live_server, celery_worker):
    seed_demo(create_admin=False)
    attribution_refresh(today=demo_today())
    group = AttributionGroup.objects.get(organization__npi=GRACE_HOSPITAL_NPI)
    token = bearer_token_for(group.organization)
    manifest = _run(live_server, token, f"Group/{group.fhir_id}/$export", celery_worker)
    exported = _resources(manifest, token)
    resources = [r for rows in exported.values() for r in rows]
    checked, failed, sample = _print_report("Demo: Grace Hospital's Group export", resources)
    assert not failed, sample
    # No exported type goes unchecked: every type in the files was checked against a profile.
    assert set(exported) == {t for t, _ in checked}
    assert {"ExplanationOfBenefit", "Provenance", "Coverage", "Patient", "PractitionerRole"} <= set(exported)
    assert all(profile != "-" for _, profile in checked)

    # includeAssociatedData=RelevantProvenanceResources returns the Provenance of what is sent.
    encounters = _run(live_server, token, f"Group/{group.fhir_id}/$export", celery_worker,
                      params={"_type": "Encounter", "includeAssociatedData": "RelevantProvenanceResources"})
    associated = _resources(encounters, token)
    sent = {f"Encounter/{e['id']}" for e in associated["Encounter"]}
    assert associated.get("Provenance")
    assert all(sent & {t["reference"] for t in p["target"]} for p in associated["Provenance"])
    assert sent <= {t["reference"] for p in associated["Provenance"] for t in p["target"]}


@pytest.mark.django_db
def test_generated_population_conforms():
    seed_demo(create_admin=False)
    population_generate(members=POPULATION_MEMBERS, seed=11, today=datetime.date(2026, 12, 1), grace_npi=GRACE_HOSPITAL_NPI)
    member_pks = list(Member.objects.values_list("pk", flat=True))
    assert len(member_pks) >= POPULATION_MEMBERS

    def resources():
        for resource_type, resource in ClinicalResource.objects.values_list("resource_type", "resource").iterator(chunk_size=2000):
            if resource_type in SUPPORTED_TYPES:
                yield resource
        yield from eobs_for_members(member_ids=member_pks)

    checked, failed, sample = _print_report(f"Generated population ({POPULATION_MEMBERS} members + demo)", list(resources()))
    assert not failed, sample
    assert {"ExplanationOfBenefit", "Provenance", "Coverage", "MedicationRequest"} <= {t for t, _ in checked}
    assert provider_directory_load().contracts
