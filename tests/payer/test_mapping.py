"""Claims and prior authorizations become non-financial ExplanationOfBenefit resources."""

import datetime as dt
from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit

from payer.mapping import (
    NPI_SYSTEM,
    PROFILE_PRIOR_AUTH,
    claim_to_eob,
    eob_get,
    eob_id_parse,
    eobs_for_members,
    prior_auth_to_eob,
)
from payer.models import Claim, ClaimDiagnosis, ClaimLine, Member, PriorAuthorization
from payer.services.demo import JACK_SHAW_MEMBER_ID, JACK_SHAW_PATIENT_ID, seed_demo

pytestmark = pytest.mark.django_db

# CMS-0057-F: Provider Access shares claims "without provider remittances and enrollee
# cost-sharing information". These element names carry money in an EOB.
FINANCIAL_KEYS = {"total", "payment", "benefitBalance", "net", "unitPrice", "amount", "factor", "benefit"}


def _financial_paths(node, path="ExplanationOfBenefit"):
    """Yield the path of every financial element or Money-shaped value in a JSON tree."""
    if isinstance(node, dict):
        if "currency" in node:
            yield f"{path} (Money)"
        for key, value in node.items():
            if key in FINANCIAL_KEYS:
                yield f"{path}.{key}"
            yield from _financial_paths(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _financial_paths(value, f"{path}[{i}]")


@pytest.fixture
def demo():
    return seed_demo(create_admin=False)


def test_every_demo_eob_validates_and_has_no_financial_element(demo):
    member_ids = list(Member.objects.values_list("id", flat=True))
    eobs = list(eobs_for_members(member_ids=member_ids))
    assert len(eobs) == Claim.objects.count() + PriorAuthorization.objects.count()
    kinds = set()
    for eob in eobs:
        ExplanationOfBenefit.model_validate(eob)
        assert list(_financial_paths(eob)) == [], eob["id"]
        for item in eob.get("item", []):
            for adjudication in item.get("adjudication", []):
                assert "amount" not in adjudication
        kinds.add((eob["use"], eob["type"]["coding"][0]["code"], eob["meta"]["profile"][0].rsplit("/", 1)[1].partition("|")[0]))
    assert {k[2] for k in kinds} >= {
        "C4BB-ExplanationOfBenefit-Inpatient-Institutional-Basis",
        "C4BB-ExplanationOfBenefit-Outpatient-Institutional-Basis",
        "C4BB-ExplanationOfBenefit-Professional-NonClinician-Basis",
        "C4BB-ExplanationOfBenefit-Pharmacy-Basis",
        "pdex-priorauthorization",
    }


def test_financial_walker_catches_money():
    # The walker itself must see money wherever it hides.
    eob = {"item": [{"adjudication": [{"category": {}, "amount": {"value": 1, "currency": "USD"}}]}], "total": []}
    assert set(_financial_paths(eob)) == {
        "ExplanationOfBenefit.item[0].adjudication[0].amount",
        "ExplanationOfBenefit.item[0].adjudication[0].amount (Money)",
        "ExplanationOfBenefit.total",
    }


def test_claim_eob_content(demo):
    claim = (
        Claim.objects.filter(member__member_id=JACK_SHAW_MEMBER_ID, claim_type="institutional", type_of_bill="0111")
        .order_by("service_start").first()
    )
    eob = claim_to_eob(claim)
    ExplanationOfBenefit.model_validate(eob)
    assert eob["id"] == f"eob-{claim.claim_number.lower()}"
    assert eob["use"] == "claim"
    assert eob["patient"] == {"reference": f"Patient/{JACK_SHAW_PATIENT_ID}"}
    assert eob["meta"]["lastUpdated"] == claim.updated_at.isoformat().replace("+00:00", "Z")
    assert eob["insurer"]["display"] == "UnitedCare Health"
    assert eob["provider"]["reference"] == "Organization/org-st-marys-medical-center"
    assert eob["facility"]["reference"] == "Location/loc-org-st-marys-medical-center"
    assert eob["careTeam"][0]["provider"]["reference"].startswith("Practitioner/")
    assert eob["billablePeriod"] == {"start": claim.service_start.isoformat(), "end": claim.service_end.isoformat()}
    assert {d["diagnosisCodeableConcept"]["coding"][0]["code"] for d in eob["diagnosis"]} >= {"I21.4"}
    assert all(i["encounter"] == [{"reference": f"Encounter/{claim.encounter_id}"}] for i in eob["item"])
    cpts = {i["productOrService"]["coding"][0]["code"] for i in eob["item"]}
    assert {"92928", "93458"} <= cpts
    assert eob_id_parse(eob["id"]) == ("claim", claim.claim_number.lower())
    assert eob_get(eob_id=eob["id"]) == eob


def test_claim_with_unknown_npis_and_no_encounter_identifies_by_npi():
    member = Member.objects.create(member_id="UCT000000001", patient_id="pat-uct000000001", family="Doe",
                                   given="Ann", birth_date=dt.date(1980, 5, 1), gender="female")
    claim = Claim.objects.create(
        claim_number="CLM-X-1", member=member, claim_type="professional", status="paid", billing_npi="1234567893",
        rendering_npi="1245319599", service_start=dt.date(2024, 1, 5), service_end=dt.date(2024, 1, 5),
        received_date=dt.date(2024, 1, 8), processed_date=dt.date(2024, 1, 20), total_charged=Decimal("150.00"),
        total_paid=Decimal("90.00"), member_liability=Decimal("25.00"),
        updated_at=dt.datetime(2024, 1, 20, 10, tzinfo=dt.timezone.utc),
    )
    ClaimLine.objects.create(claim=claim, sequence=1, procedure_code="99213", procedure_system="CPT",
                             service_date=dt.date(2024, 1, 5), charged_amount=Decimal("150.00"),
                             paid_amount=Decimal("90.00"), copay_amount=Decimal("25.00"))
    ClaimDiagnosis.objects.create(claim=claim, sequence=1, icd10_code="J209", kind="principal")
    eob = claim_to_eob(claim)
    ExplanationOfBenefit.model_validate(eob)
    assert eob["provider"] == {"identifier": {"system": NPI_SYSTEM, "value": "1234567893"}}
    assert eob["careTeam"][0]["provider"] == {"identifier": {"system": NPI_SYSTEM, "value": "1245319599"}}
    assert eob["diagnosis"][0]["diagnosisCodeableConcept"]["coding"][0]["code"] == "J20.9"
    assert "encounter" not in eob["item"][0]
    assert list(_financial_paths(eob)) == []
    assert "150" not in str(eob) and "90.0" not in str(eob)


def _review_actions(eob):
    """Return (X12 306 code, when adjudicated, units) of each item adjudication carrying a reviewAction."""
    found = []
    for adjudication in eob["item"][0]["adjudication"]:
        extensions = {e["url"].rsplit("/", 1)[1]: e for e in adjudication.get("extension", [])}
        if "extension-reviewAction" in extensions:
            code = [e["valueCodeableConcept"]["coding"][0]["code"] for e in extensions["extension-reviewAction"]["extension"]
                    if e["url"].endswith("extension-reviewActionCode")]
            when = extensions.get("base-ext-when-adjudicated", {}).get("valueDateTime")
            found.append((code[0], when, adjudication["value"]))
    return found


@pytest.mark.parametrize("decision,outcome,action", [
    ("approved", "complete", "A1"), ("partial", "partial", "A2"), ("denied", "complete", "A3"), ("pending", "queued", "A4"),
])
def test_prior_authorization_eob(demo, decision, outcome, action):
    # PDex Prior Authorization (pdex-pa.fsh): the decision is the reviewAction extension with
    # its X12 306 code and WhenAdjudicated date, on the closed allowedunits slice.
    pa = PriorAuthorization.objects.filter(decision=decision, member__member_id=JACK_SHAW_MEMBER_ID).first()
    eob = prior_auth_to_eob(pa)
    ExplanationOfBenefit.model_validate(eob)
    assert eob["use"] == "preauthorization"
    assert eob["meta"]["profile"] == [PROFILE_PRIOR_AUTH]
    assert eob["id"] == f"pa-{pa.auth_number.lower()}"
    assert eob["status"] == "active" and eob["outcome"] == outcome
    assert eob["preAuthRef"] == [pa.auth_number]
    approved = {"approved": pa.quantity, "partial": pa.quantity // 2}.get(decision, 0)
    assert _review_actions(eob) == [(action, pa.decision_date.isoformat() if pa.decision_date else None, approved)]
    categories = [a["category"]["coding"][0]["code"] for a in eob["item"][0]["adjudication"]]
    assert set(categories) <= {"allowedunits", "consumedunits"}
    if decision in ("approved", "partial"):
        assert eob["preAuthRefPeriod"] == [{"start": pa.valid_start.isoformat(), "end": pa.valid_end.isoformat()}]
        assert categories == ["allowedunits", "consumedunits"]
    else:
        assert "preAuthRefPeriod" not in eob
    if decision != "pending":
        assert pa.decision_date.isoformat() in eob["disposition"]
    assert list(_financial_paths(eob)) == []
    assert eob_id_parse(eob["id"]) == ("pa", pa.auth_number.lower())


def test_cancelled_prior_authorization_is_cancelled_not_pended(demo):
    pa = PriorAuthorization.objects.filter(decision="approved", member__member_id=JACK_SHAW_MEMBER_ID).first()
    pa.decision = PriorAuthorization.Decision.CANCELLED
    eob = prior_auth_to_eob(pa)
    assert eob["status"] == "cancelled" and eob["outcome"] == "complete"
    assert [code for code, _, _ in _review_actions(eob)] == ["C"]


def test_units_used_come_from_the_claims_billed_under_the_authorization(demo):
    # Jack Shaw's cardiac rehabilitation: 36 units approved, 12 billed on 2020-04-06.
    pa = PriorAuthorization.objects.get(member__member_id=JACK_SHAW_MEMBER_ID, service_code="93798")
    eob = prior_auth_to_eob(pa)
    consumed = [a["value"] for a in eob["item"][0]["adjudication"] if a["category"]["coding"][0]["code"] == "consumedunits"]
    assert pa.units_approved == 36 and consumed == [12]


def test_eob_id_parse_rejects_foreign_ids():
    for bad in ("x-1", "eob-", "pa-", "claim-1"):
        with pytest.raises(ValueError):
            eob_id_parse(bad)
    assert eob_get(eob_id="eob-nope") is None


def test_eobs_for_members_streams_without_a_query_per_claim_and_honours_since(demo):
    jack = Member.objects.get(member_id=JACK_SHAW_MEMBER_ID)
    claims = Claim.objects.filter(member=jack).count()
    assert claims > 50
    with CaptureQueriesContext(connection) as queries:
        eobs = list(eobs_for_members(member_ids=[jack.pk], chunk_size=20))
    assert len(eobs) == claims + jack.prior_authorizations.count()
    assert len(queries) < 40  # a few queries per chunk of 20, not one per claim
    assert {e["patient"]["reference"] for e in eobs} == {f"Patient/{JACK_SHAW_PATIENT_ID}"}
    since = dt.datetime(2025, 1, 1, tzinfo=dt.timezone.utc)
    recent = list(eobs_for_members(member_ids=[jack.pk], since=since))
    assert recent and all(e["meta"]["lastUpdated"] >= "2025-01-01" for e in recent)
    assert len(recent) < len(eobs)
    until = list(eobs_for_members(member_ids=[jack.pk], until=since))
    assert len(until) + len(recent) == len(eobs)
