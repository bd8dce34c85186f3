"""The demo scenario: facts of the story, idempotence and validity of every resource."""

import datetime as dt
import io

import pytest
from django.core.management import call_command

from fhirkit.validation import resource_validate
from payer.mapping import eobs_for_members
from payer.models import (
    Claim,
    ClaimDiagnosis,
    ClaimLine,
    ClinicalResource,
    Member,
    NetworkContract,
    PriorAuthorization,
    ProviderOrganization,
    ProviderPractitioner,
)
from payer.services.demo import (
    DR_SMITH_NPI,
    GRACE_HOSPITAL_NPI,
    JACK_SHAW_MEMBER_ID,
    JACK_SHAW_PATIENT_ID,
    OAKVIEW_NPI,
    LAKEVIEW_PULMONARY_NPI,
    demo_today,
    seed_demo,
)

pytestmark = pytest.mark.django_db


def _snapshot() -> dict:
    """Return every row the seed writes, as comparable plain data (no surrogate keys)."""
    members = Member.objects.order_by("member_id")
    return {
        "counts": {m.__name__: m.objects.count() for m in (
            Member, ClinicalResource, Claim, ClaimLine, ClaimDiagnosis, PriorAuthorization,
            ProviderOrganization, ProviderPractitioner, NetworkContract)},
        "resources": list(ClinicalResource.objects.order_by("resource_type", "resource_id").values_list(
            "resource_type", "resource_id", "last_updated", "patient_id", "date", "status", "resource")),
        "eobs": list(eobs_for_members(member_ids=list(members.values_list("id", flat=True)))),
        "members": list(members.values_list("member_id", "patient_id", "family", "given", "birth_date", "gender")),
    }


def test_jack_shaw_story():
    summary = seed_demo(create_admin=False)
    assert summary.jack_shaw_member_id == JACK_SHAW_MEMBER_ID
    jack = Member.objects.get(member_id=JACK_SHAW_MEMBER_ID)
    assert (jack.given, jack.family, jack.gender, jack.birth_date.year) == ("Jack", "Shaw", "male", 1961)
    assert jack.patient_id == JACK_SHAW_PATIENT_ID
    encounters = [r.resource for r in ClinicalResource.objects.filter(patient_id=jack.patient_id, resource_type="Encounter")]
    assert len(encounters) >= 15
    assert len({e["serviceProvider"]["reference"] for e in encounters}) >= 4
    assert len({e["participant"][0]["individual"]["reference"] for e in encounters}) >= 6
    assert min(e["period"]["start"] for e in encounters) < "2016-12-31"
    types = set(ClinicalResource.objects.filter(patient_id=jack.patient_id).values_list("resource_type", flat=True))
    assert types >= {"Patient", "Coverage", "Encounter", "Condition", "Procedure", "Observation", "MedicationRequest",
                     "AllergyIntolerance", "Immunization", "DiagnosticReport"}
    codes = {c["code"] for r in ClinicalResource.objects.filter(patient_id=jack.patient_id, resource_type="Condition")
             for c in r.resource["code"]["coding"]}
    assert {"E11.9", "I10", "I25.10", "I50.22", "N18.30", "J44.9"} <= codes
    loincs = {r.resource["code"]["coding"][0]["code"] for r in ClinicalResource.objects.filter(
        patient_id=jack.patient_id, resource_type="Observation")}
    assert {"4548-4", "85354-9", "33914-3"} <= loincs
    # Series a clinician's summary trends (issue 14): A1c and eGFR over ten years, blood
    # pressure, and weight (up with fluid in the 2022 heart failure admission).
    series: dict[str, list] = {}
    for r in ClinicalResource.objects.filter(patient_id=jack.patient_id, resource_type="Observation").order_by("date"):
        value = r.resource.get("valueQuantity", {}).get("value") or tuple(
            c["valueQuantity"]["value"] for c in r.resource.get("component", []))
        series.setdefault(r.resource["code"]["coding"][0]["code"], []).append(value)
    assert series["4548-4"] == [8.1, 7.2, 7.0, 7.6, 8.4, 7.9, 7.7]
    assert series["33914-3"] == [82, 68, 55, 52, 48, 44, 45]
    assert series["29463-7"] == [104.3, 102.0, 98.7, 106.8, 100.4, 102.1, 101.2]
    assert len(series["85354-9"]) == 8 and series["85354-9"][-1] == (138, 84)
    a1c = ClinicalResource.objects.filter(patient_id=jack.patient_id, resource_type="Observation",
                                          resource__code__coding__0__code="4548-4").order_by("-date").first()
    assert a1c.resource["interpretation"][0]["coding"][0]["code"] == "H"
    assert a1c.resource["referenceRange"][0]["high"]["value"] == 5.6
    # Claims for the encounters: every encounter is billed, in all three claim types.
    claims = Claim.objects.filter(member=jack)
    assert {e["id"] for e in encounters} <= set(claims.values_list("encounter_id", flat=True))
    assert set(claims.values_list("claim_type", flat=True)) == {"institutional", "professional", "pharmacy"}
    assert ClaimDiagnosis.objects.filter(claim__member=jack, icd10_code="I214").exists()
    assert set(jack.prior_authorizations.values_list("decision", flat=True)) >= {"approved", "denied", "pending", "partial"}
    # Jack recently became Dr. Smith's patient at Grace Hospital.
    recent = claims.filter(rendering_npi=DR_SMITH_NPI, service_start__gte=demo_today() - dt.timedelta(days=730))
    assert recent.exists()


def test_directory_and_contracts():
    seed_demo(create_admin=False)
    grace = ProviderOrganization.objects.get(npi=GRACE_HOSPITAL_NPI)
    assert grace.name == "Grace Hospital"
    smith = ProviderPractitioner.objects.get(npi=DR_SMITH_NPI)
    assert (smith.given, smith.family, smith.taxonomy_code, smith.organization) == ("James", "Smith", "207Q00000X", grace)
    assert grace.practitioners.count() >= 3
    assert NetworkContract.objects.filter(organization=grace, end__isnull=True).exists()
    assert not NetworkContract.objects.filter(organization__npi=OAKVIEW_NPI).exists()
    ended = NetworkContract.objects.get(organization__npi=LAKEVIEW_PULMONARY_NPI)
    assert ended.end < dt.date.today()
    assert ProviderOrganization.objects.count() >= 6
    assert ClinicalResource.objects.filter(resource_type="Organization", resource_id="unitedcare-health").exists()
    for kind in ("Organization", "Practitioner", "PractitionerRole", "Location"):
        assert ClinicalResource.objects.filter(resource_type=kind, patient_id="").count() >= 6


def test_other_members_some_attributable_to_grace():
    seed_demo(create_admin=False)
    others = Member.objects.exclude(member_id=JACK_SHAW_MEMBER_ID)
    assert others.count() >= 50
    grace_npis = set(ProviderPractitioner.objects.filter(organization__npi=GRACE_HOSPITAL_NPI).values_list("npi", flat=True))
    cutoff = demo_today() - dt.timedelta(days=730)
    with_grace = set(Claim.objects.filter(member__in=others, rendering_npi__in=grace_npis, service_end__gte=cutoff)
                     .values_list("member_id", flat=True))
    assert 5 <= len(with_grace) < others.count() - 5
    assert all(Claim.objects.filter(member=m).exists() for m in others)


def test_seed_is_idempotent_and_every_resource_validates():
    out = io.StringIO()
    call_command("seed_demo", stdout=out)
    assert GRACE_HOSPITAL_NPI in out.getvalue() and "Oakview Family Practice" in out.getvalue()
    first = _snapshot()
    seed_demo(create_admin=False)
    second = _snapshot()
    assert first["counts"] == second["counts"]
    assert first == second
    for row in ClinicalResource.objects.iterator():
        assert resource_validate(row.resource) == [], (row.resource_type, row.resource_id)
        assert row.resource["id"] == row.resource_id and row.resource["resourceType"] == row.resource_type
        assert row.resource["meta"]["lastUpdated"] == row.last_updated.isoformat().replace("+00:00", "Z")


def test_demo_banner_prints_urls_and_login():
    out = io.StringIO()
    call_command("demo_banner", "--port", "8123", stdout=out)
    text = out.getvalue()
    for path in ("/admin/", "/payer/opt-out/", "/payer/my-data/", "/payer/providers/", "/payer/fhir/metadata"):
        assert f"http://127.0.0.1:8123{path}" in text
    assert "admin / admin" in text
    # The EMR's line is the hospital's banner's (emr_banner): `make demo` prints both, the EMR once.
    call_command("emr_banner", "--port", "8123", stdout=out)
    assert out.getvalue().count("http://127.0.0.1:8123/emr/") == 1
