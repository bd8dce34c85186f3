"""Payer FHIR read and search over real HTTP: who may see whose data, paging, errors and audit.

Organization A never reads, searches or sees Organization B's Group or members; a member who
is not attributed, opted out, or whose organization's contract ended is never returned.
"""

import datetime

import pytest
import requests
from django.utils import timezone
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter
from fhir.resources.R4B.explanationofbenefit import ExplanationOfBenefit
from fhir.resources.R4B.group import Group
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient

from payer.models import AuditEvent
from payer.services.attribution import attribution_group_ensure
from tests.factories import (
    attribution_create,
    claim_create,
    clinical_resource_create,
    contract_create,
    member_create,
    opt_out_create,
    organization_create,
    practitioner_create,
)
from tests.payer.auth_helpers import bearer_token_for

pytestmark = pytest.mark.django_db

FHIR_JSON = "application/fhir+json"


class World:
    """A (in network), B (in network) and C (contract ended), with their members."""


@pytest.fixture
def world(live_server, settings):
    settings.PA_BASE_URL = ""
    w = World()
    w.base = f"{live_server.url}/payer/fhir"
    today = timezone.localdate()
    w.org_a = organization_create(name="Grace Hospital")
    w.org_b = organization_create(name="Other Clinic")
    w.org_c = organization_create(name="Former Partner")
    contract_create(organization=w.org_a)
    contract_create(organization=w.org_b)
    contract_create(organization=w.org_c, start=today - datetime.timedelta(days=400), end=today - datetime.timedelta(days=1))
    w.doctor = practitioner_create(organization=w.org_a)
    clinical_resource_create(resource_type="Practitioner", resource_id=w.doctor.fhir_id)

    w.jack = member_create(given="Jack", family="Shaw")  # attributed to A
    w.bob = member_create(given="Bob")  # attributed to B
    w.nat = member_create(given="Nat")  # attributed to nobody
    w.olive = member_create(given="Olive")  # attributed to A, opted out
    w.cara = member_create(given="Cara")  # attributed to C, whose contract ended
    attribution_create(organization=w.org_a, member=w.jack)
    attribution_create(organization=w.org_b, member=w.bob)
    attribution_create(organization=w.org_a, member=w.olive)
    attribution_create(organization=w.org_c, member=w.cara)
    opt_out_create(member=w.olive)
    w.encounters = {}
    for member in (w.jack, w.bob, w.nat, w.olive, w.cara):
        clinical_resource_create(
            resource_type="Patient",
            resource_id=member.patient_id,
            resource={
                "identifier": [{"system": "https://unitedcare.example/member-id", "value": member.member_id}],
                "name": [{"family": member.family, "given": [member.given]}],
            },
        )
        w.encounters[member.given] = clinical_resource_create(
            resource_type="Encounter", patient_id=member.patient_id, date=timezone.now()
        )
    clinical_resource_create(resource_type="Coverage", patient_id=w.jack.patient_id)
    w.claim_jack = claim_create(member=w.jack, billing_npi=w.org_a.npi, rendering_npi=w.doctor.npi)
    w.claim_bob = claim_create(member=w.bob, billing_npi=w.org_b.npi)
    w.token_a = bearer_token_for(w.org_a)
    w.token_b = bearer_token_for(w.org_b)
    w.token_c = bearer_token_for(w.org_c)
    w.group_a = attribution_group_ensure(organization=w.org_a)
    w.group_b = attribution_group_ensure(organization=w.org_b)
    return w


def get(url: str, token: str | None, params=None, **headers) -> requests.Response:
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(url, params=params, headers=headers, timeout=30)


def outcome(response: requests.Response, status: int, code: str) -> OperationOutcome:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = OperationOutcome.model_validate(response.json())
    assert body.issue[0].code == code
    return body


def bundle(response: requests.Response) -> dict:
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith(FHIR_JSON)
    body = response.json()
    Bundle.model_validate(body)
    assert body["type"] == "searchset"
    return body


def entry_ids(body: dict) -> list[str]:
    return [entry["resource"]["id"] for entry in body.get("entry", [])]


def last_audit(**filters) -> AuditEvent:
    return AuditEvent.objects.filter(**filters).order_by("-id").first()


def test_no_token_is_401_with_www_authenticate_and_audited(world):
    for url in (f"{world.base}/Encounter", f"{world.base}/Group", f"{world.base}/Patient/{world.jack.patient_id}"):
        response = get(url, None)
        outcome(response, 401, "login")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    response = get(f"{world.base}/Encounter", "not-a-token")
    outcome(response, 401, "login")
    assert AuditEvent.objects.filter(outcome="denied", status_code=401).count() == 4
    assert not AuditEvent.objects.filter(detail__contains="not-a-token").exists()


def test_group_search_returns_only_the_callers_group_in_pdex_shape(world):
    body = bundle(get(f"{world.base}/Group", world.token_a))
    assert body["total"] == 1 and entry_ids(body) == [world.group_a.fhir_id]
    group = body["entry"][0]["resource"]
    Group.model_validate(group)
    assert (group["type"], group["actual"], group["quantity"]) == ("person", True, 1)
    assert group["characteristic"][0]["valueReference"]["identifier"] == {
        "system": "http://hl7.org/fhir/sid/us-npi",
        "value": world.org_a.npi,
    }
    assert group["code"]["coding"][0]["code"] == "pdexprovidergroup"
    assert "managingEntity" in group
    # Jack only: Olive opted out (counted, not listed), Bob is B's, Nat nobody's.
    assert [m["entity"]["reference"] for m in group["member"]] == [f"Patient/{world.jack.patient_id}"]
    opted_out = next(e for e in group["extension"] if e["url"].endswith("base-ext-members-opted-out"))
    assert opted_out["valueQuantity"]["value"] == 1
    member_ext = {e["url"].rsplit("/", 1)[-1] for e in group["member"][0]["extension"]}
    assert {"ext-changeType", "ext-attributedProvider", "ext-coverageReference"} <= member_ext
    assert group["member"][0]["period"]["start"]
    event = last_audit(action="search", resource_types=["Group"])
    assert (event.outcome, event.patient_ids, event.organization_npi) == ("success", [world.jack.patient_id], world.org_a.npi)

    body_b = bundle(get(f"{world.base}/Group", world.token_b))
    assert entry_ids(body_b) == [world.group_b.fhir_id]


def test_group_search_params(world):
    assert entry_ids(bundle(get(f"{world.base}/Group", world.token_a, {"name": "members attributed to grace"}))) == [
        world.group_a.fhir_id
    ]
    assert entry_ids(bundle(get(f"{world.base}/Group", world.token_a, {"identifier": f"http://hl7.org/fhir/sid/us-npi|{world.org_a.npi}"}))) == [
        world.group_a.fhir_id
    ]
    # Another organization's group id or NPI finds nothing.
    assert bundle(get(f"{world.base}/Group", world.token_a, {"_id": world.group_b.fhir_id}))["total"] == 0
    assert bundle(get(f"{world.base}/Group", world.token_a, {"identifier": world.org_b.npi}))["total"] == 0
    outcome(get(f"{world.base}/Group", world.token_a, {"member": "x"}), 400, "not-supported")
    lenient = get(f"{world.base}/Group", world.token_a, {"member": "x"}, Prefer="handling=lenient")
    assert entry_ids(bundle(lenient)) == [world.group_a.fhir_id]


def test_another_organizations_group_is_404_and_audited(world):
    response = get(f"{world.base}/Group/{world.group_b.fhir_id}", world.token_a)
    outcome(response, 404, "not-found")
    # The same answer as for a Group that does not exist at all.
    absent = get(f"{world.base}/Group/no-such-group", world.token_a)
    outcome(absent, 404, "not-found")
    assert response.json()["issue"][0].keys() == absent.json()["issue"][0].keys()
    assert last_audit(action="read", resource_types=["Group"]).outcome == "error"
    event = last_audit(action="read", outcome="denied", resource_types=["Group"])
    assert event.status_code == 404 and event.organization_npi == world.org_a.npi
    ok = get(f"{world.base}/Group/{world.group_a.fhir_id}", world.token_a)
    assert ok.status_code == 200
    Group.model_validate(ok.json())


def test_out_of_network_organization_sees_no_member(world):
    group_c = attribution_group_ensure(organization=world.org_c)
    group = get(f"{world.base}/Group/{group_c.fhir_id}", world.token_c).json()
    assert group["quantity"] == 0 and "member" not in group
    outcome(get(f"{world.base}/Encounter/{world.encounters['Cara'].resource_id}", world.token_c), 404, "not-found")
    assert bundle(get(f"{world.base}/Encounter", world.token_c, {"patient": world.cara.patient_id}))["total"] == 0
    # The provider directory is for in-network clients only.
    outcome(get(f"{world.base}/Practitioner/{world.doctor.fhir_id}", world.token_c), 403, "forbidden")
    practitioner = get(f"{world.base}/Practitioner/{world.doctor.fhir_id}", world.token_a)
    assert practitioner.status_code == 200 and practitioner.json()["id"] == world.doctor.fhir_id


def test_read_only_for_visible_members(world):
    response = get(f"{world.base}/Encounter/{world.encounters['Jack'].resource_id}", world.token_a)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith(FHIR_JSON)
    Encounter.model_validate(response.json())
    assert response.headers["ETag"] == 'W/"1"'
    event = last_audit(action="read", outcome="success")
    assert event.patient_ids == [world.jack.patient_id] and event.resource_types == ["Encounter"]
    patient = get(f"{world.base}/Patient/{world.jack.patient_id}", world.token_a)
    Patient.model_validate(patient.json())

    for name, member in (("Bob", world.bob), ("Nat", world.nat), ("Olive", world.olive), ("Cara", world.cara)):
        hidden = get(f"{world.base}/Encounter/{world.encounters[name].resource_id}", world.token_a)
        absent = get(f"{world.base}/Encounter/encounter-does-not-exist", world.token_a)
        outcome(hidden, 404, "not-found")
        # Same answer as for a resource that does not exist: nothing leaks.
        assert hidden.json()["issue"][0]["code"] == absent.json()["issue"][0]["code"]
        event = AuditEvent.objects.filter(action="read", outcome="denied", patient_ids=[member.patient_id]).last()
        assert event is not None and event.status_code == 404
        outcome(get(f"{world.base}/Patient/{member.patient_id}", world.token_a), 404, "not-found")
    # The audit trail (not the caller) tells a hidden resource from an absent one.
    assert last_audit(action="read", request_path="/payer/fhir/Encounter/encounter-does-not-exist").outcome == "error"


def test_search_only_returns_visible_members(world):
    body = bundle(get(f"{world.base}/Encounter", world.token_a))
    assert entry_ids(body) == [world.encounters["Jack"].resource_id] and body["total"] == 1
    assert body["entry"][0]["fullUrl"] == f"{world.base}/Encounter/{world.encounters['Jack'].resource_id}"
    assert entry_ids(bundle(get(f"{world.base}/Patient", world.token_a))) == [world.jack.patient_id]
    assert entry_ids(bundle(get(f"{world.base}/Encounter", world.token_b))) == [world.encounters["Bob"].resource_id]
    # patient= of a member the caller may not see: an empty Bundle, audited as a denial.
    for member in (world.bob, world.nat, world.olive):
        body = bundle(get(f"{world.base}/Encounter", world.token_a, {"patient": f"Patient/{member.patient_id}"}))
        assert body["total"] == 0 and entry_ids(body) == []
        event = last_audit(action="search", outcome="denied")
        assert event.patient_ids == [member.patient_id] and event.organization_npi == world.org_a.npi
    mixed = bundle(get(f"{world.base}/Encounter", world.token_a, {"patient": f"{world.jack.patient_id},{world.bob.patient_id}"}))
    assert entry_ids(mixed) == [world.encounters["Jack"].resource_id]


def test_patient_search_by_id_and_identifier(world):
    for params in (
        {"_id": world.jack.patient_id},
        {"identifier": world.jack.member_id},
        {"identifier": f"https://unitedcare.example/member-id|{world.jack.member_id}"},
    ):
        assert entry_ids(bundle(get(f"{world.base}/Patient", world.token_a, params))) == [world.jack.patient_id]
    assert bundle(get(f"{world.base}/Patient", world.token_a, {"identifier": f"urn:other|{world.jack.member_id}"}))["total"] == 0
    assert bundle(get(f"{world.base}/Patient", world.token_a, {"identifier": world.bob.member_id}))["total"] == 0
    assert bundle(get(f"{world.base}/Patient", world.token_a, {"_id": world.bob.patient_id}))["total"] == 0


def test_opt_out_takes_effect_on_the_next_request(world):
    url = f"{world.base}/Encounter/{world.encounters['Jack'].resource_id}"
    assert get(url, world.token_a).status_code == 200
    opt_out_create(member=world.jack)
    outcome(get(url, world.token_a), 404, "not-found")
    assert bundle(get(f"{world.base}/Encounter", world.token_a))["total"] == 0
    group = get(f"{world.base}/Group/{world.group_a.fhir_id}", world.token_a).json()
    assert "member" not in group


def test_paging_with_next_links_and_total(world):
    now = timezone.now()
    for i in range(5):
        clinical_resource_create(
            resource_type="Encounter", patient_id=world.jack.patient_id, last_updated=now - datetime.timedelta(days=i + 1)
        )
    url, params, seen, pages = f"{world.base}/Encounter", {"_count": "2", "patient": world.jack.patient_id}, [], 0
    while url:
        body = bundle(get(url, world.token_a, params))
        params = None  # the next link carries the query
        assert body["total"] == 6 and len(body["entry"]) <= 2
        links = {link["relation"]: link["url"] for link in body["link"]}
        assert links["self"].startswith(f"{world.base}/Encounter?")
        seen += entry_ids(body)
        url = links.get("next")
        pages += 1
    assert pages == 3 and len(seen) == len(set(seen)) == 6
    assert AuditEvent.objects.filter(action="search", outcome="success").count() == 3
    # Oldest first (by lastUpdated), so the page order is stable.
    assert seen[-1] == world.encounters["Jack"].resource_id
    assert bundle(get(f"{world.base}/Encounter", world.token_a, {"_count": "0"}))["total"] == 6


def test_last_updated_prefixes(world):
    old = clinical_resource_create(
        resource_type="Encounter",
        patient_id=world.jack.patient_id,
        last_updated=datetime.datetime(2024, 3, 10, 12, 0, tzinfo=datetime.timezone.utc),
    )
    new_id = world.encounters["Jack"].resource_id

    def ids(value):
        return entry_ids(bundle(get(f"{world.base}/Encounter", world.token_a, {"_lastUpdated": value})))

    assert ids("gt2024-03-10") == [new_id]  # after the whole day
    assert ids("ge2024-03-10") == [old.resource_id, new_id]
    assert ids("lt2024-03-11") == [old.resource_id]
    assert ids("le2024-03-10") == [old.resource_id]
    assert ids("2024-03") == [old.resource_id]
    assert ids("eq2024-03-10T12:00:00Z") == [old.resource_id]
    assert ids("gt2024-03-10T12:30:00-01:00") == [new_id]  # 13:30Z
    assert ids("gt2024-03-10T13:00:00+02:00") == [old.resource_id, new_id]  # 11:00Z
    both = get(f"{world.base}/Encounter", world.token_a, [("_lastUpdated", "ge2024-01-01"), ("_lastUpdated", "lt2024-12-31")])
    assert entry_ids(bundle(both)) == [old.resource_id]


def test_bad_parameters_are_400_operation_outcomes_and_audited(world):
    for params in (
        {"_count": "abc"},
        {"_count": "-1"},
        {"_lastUpdated": "yesterday"},
        {"_lastUpdated": "2024-13-01"},
        {"_lastUpdated": "ne2024-01-01"},
        {"_offset": "x"},
        {"patient": "Group/123"},
        {"patient": "bad id!"},
        {"date": "20240101"},
    ):
        outcome(get(f"{world.base}/Encounter", world.token_a, params), 400, "invalid")
    outcome(get(f"{world.base}/Encounter", world.token_a, {"subject": "x"}), 400, "not-supported")
    outcome(get(f"{world.base}/Practitioner", world.token_a, {"patient": "x"}), 400, "not-supported")
    assert AuditEvent.objects.filter(action="search", outcome="error", status_code=400).count() == 11
    lenient = get(f"{world.base}/Encounter", world.token_a, {"subject": "x"}, Prefer="handling=lenient")
    body = bundle(lenient)
    assert "subject" not in body["link"][0]["url"]
    # _count above the maximum is capped, not refused.
    assert bundle(get(f"{world.base}/Encounter", world.token_a, {"_count": "5000"}))["total"] == 1


def test_scopes_that_do_not_grant_the_type_are_403(world):
    token = bearer_token_for(world.org_a, scopes="system/Patient.read")
    outcome(get(f"{world.base}/Encounter", token), 403, "forbidden")
    outcome(get(f"{world.base}/Encounter/{world.encounters['Jack'].resource_id}", token), 403, "forbidden")
    assert get(f"{world.base}/Patient/{world.jack.patient_id}", token).status_code == 200
    event = last_audit(outcome="denied", status_code=403)
    assert event.resource_types == ["Encounter"]
    v2_read_only = bearer_token_for(world.org_a, scopes="system/Encounter.r")
    outcome(get(f"{world.base}/Encounter", v2_read_only), 403, "forbidden")
    assert get(f"{world.base}/Encounter/{world.encounters['Jack'].resource_id}", v2_read_only).status_code == 200


def test_explanation_of_benefit_from_claims(world):
    body = bundle(get(f"{world.base}/ExplanationOfBenefit", world.token_a, {"patient": world.jack.patient_id}))
    assert body["total"] == 1
    eob = body["entry"][0]["resource"]
    ExplanationOfBenefit.model_validate(eob)
    assert eob["patient"]["reference"] == f"Patient/{world.jack.patient_id}"
    read = get(f"{world.base}/ExplanationOfBenefit/{eob['id']}", world.token_a)
    assert read.status_code == 200 and read.json()["id"] == eob["id"]
    assert entry_ids(bundle(get(f"{world.base}/ExplanationOfBenefit", world.token_a, {"_id": eob["id"]}))) == [eob["id"]]
    # Bob's claim is B's business.
    bob_eob = get(f"{world.base}/ExplanationOfBenefit", world.token_b).json()["entry"][0]["resource"]["id"]
    outcome(get(f"{world.base}/ExplanationOfBenefit/{bob_eob}", world.token_a), 404, "not-found")
    assert bundle(get(f"{world.base}/ExplanationOfBenefit", world.token_a))["total"] == 1
    assert last_audit(action="search", outcome="success").resource_types == ["ExplanationOfBenefit"]


def test_nul_in_search_parameters_is_400_and_audited(world):
    # Postgres text holds no NUL: these once answered an unaudited 500.
    for path, params in (
        ("Group", {"name": "\x00"}),
        ("Patient", {"identifier": "\x00"}),
        ("Encounter", {"_count": "x\x00"}),
        ("Encounter", {"sub\x00ject": "x"}),
    ):
        outcome(get(f"{world.base}/{path}", world.token_a, params), 400, "invalid")
    events = AuditEvent.objects.filter(outcome="error", status_code=400, client_id__gt="")
    assert events.count() == 4
    assert all("\x00" not in e.request_path and "\\x00" in e.request_path for e in events)


def test_non_ascii_digits_in_count_and_offset_are_400(world):
    for params in ({"_count": "²"}, {"_offset": "²"}, {"_count": "٣"}):
        outcome(get(f"{world.base}/Encounter", world.token_a, params), 400, "invalid")
    assert bundle(get(f"{world.base}/Encounter", world.token_a, {"_count": "9" * 3000}))["total"] == 1  # clamped
    # Past PA_FHIR_MAX_VALUE_LENGTH any value is refused as too costly (issue "hardening").
    outcome(get(f"{world.base}/Encounter", world.token_a, {"_count": "9" * 5000}), 400, "too-costly")


def test_unsupported_format_is_406_and_json_formats_are_fine(world):
    # R4 http.html#mime-type: _format=xml from a JSON-only server is 406.
    for value in ("xml", "application/fhir+xml", "text/turtle"):
        for url in (f"{world.base}/Encounter", f"{world.base}/Group", f"{world.base}/Patient/{world.jack.patient_id}"):
            outcome(get(url, world.token_a, {"_format": value}), 406, "not-supported")
    for value in ("json", "application/json", "application/fhir+json", "application/fhir+json; fhirVersion=4.0"):
        assert bundle(get(f"{world.base}/Encounter", world.token_a, {"_format": value}))["total"] == 1
    assert AuditEvent.objects.filter(status_code=406).count() == 9


def test_www_authenticate_names_an_error_only_for_a_bad_token(world):
    # RFC 6750 section 3.1: no error code when the request had no credentials.
    assert get(f"{world.base}/Encounter", None).headers["WWW-Authenticate"] == 'Bearer realm="payer"'
    bad = get(f"{world.base}/Encounter", "not-a-token")
    assert bad.headers["WWW-Authenticate"] == 'Bearer realm="payer", error="invalid_token"'
    narrow = bearer_token_for(world.org_a, scopes="system/Patient.read")
    denied = get(f"{world.base}/Encounter", narrow)
    outcome(denied, 403, "forbidden")
    assert 'error="insufficient_scope"' in denied.headers["WWW-Authenticate"]


def test_an_internal_error_is_audited(world):
    from payer.models import ClinicalResource

    # A stored row that is not a JSON object breaks rendering: the 500 still leaves an audit entry.
    broken = ClinicalResource.objects.create(resource_type="Encounter", resource_id="broken", patient_id=world.jack.patient_id,
                                             last_updated=timezone.now(), resource=["not", "an", "object"])
    outcome(get(f"{world.base}/Encounter/{broken.resource_id}", world.token_a), 500, "exception")
    event = last_audit(action="read", status_code=500)
    assert event.outcome == "error" and event.resource_types == ["Encounter"]


def test_costly_or_extreme_searches_answer_400_or_nothing_never_500(world):
    # Issue "hardening": 30,000 identifiers ran 30,000 queries (15 s); an extreme date was a 500 on SQLite.
    identifiers = ",".join(f"UCH{n:09d}" for n in range(300))
    outcome(get(f"{world.base}/Patient", world.token_a, {"identifier": identifiers}), 400, "too-costly")
    many = "&".join(f"identifier=UCH{n:09d}" for n in range(1200))
    outcome(get(f"{world.base}/Patient?{many}", world.token_a), 400, "too-costly")
    late = get(f"{world.base}/Encounter", world.token_a, {"date": "gt9999-12-31T23:59:59-12:00"})
    assert bundle(late)["total"] == 0


def test_every_refusal_is_audited_405_406_404(world):
    # Issue "hardening": 405 (PUT/DELETE), 406 (Accept: application/fhir+xml) and 404 for
    # unknown types left no record.
    before = AuditEvent.objects.count()
    url = f"{world.base}/Patient/{world.jack.patient_id}"
    assert requests.put(url, headers={"Authorization": f"Bearer {world.token_a}"}, json={}, timeout=10).status_code == 405
    assert requests.delete(url, headers={"Authorization": f"Bearer {world.token_a}"}, timeout=10).status_code == 405
    assert requests.get(url, headers={"Authorization": f"Bearer {world.token_a}", "Accept": "application/fhir+xml"},
                        timeout=10).status_code == 406
    assert requests.get(f"{world.base}/Spaceship/1", headers={"Authorization": f"Bearer {world.token_a}"}, timeout=10).status_code == 404
    events = list(AuditEvent.objects.order_by("pk")[before:])
    assert [event.status_code for event in events] == [405, 405, 406, 404]
    assert all(event.outcome == AuditEvent.Outcome.DENIED for event in events)
    assert not any(world.token_a in (event.detail + event.request_path) for event in events)


# --- Issue 11: CapabilityStatement, directory and Group searches, the service-date floor -----


def test_capability_statement_lists_guides_profiles_and_every_search_parameter_it_answers(world):
    from fhir.resources.R4B.capabilitystatement import CapabilityStatement

    statement = requests.get(f"{world.base}/metadata", timeout=10).json()
    CapabilityStatement.model_validate(statement)
    assert "http://hl7.org/fhir/us/core/ImplementationGuide/hl7.fhir.us.core|6.1.0" in statement["implementationGuide"]
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert all(p.endswith(("|6.1.0", "|2.1.0")) or "pdex-provider-group" in p
               for r in resources.values() for p in r.get("supportedProfile", []))
    assert "http://hl7.org/fhir/us/carin-bb/StructureDefinition/C4BB-ExplanationOfBenefit-Pharmacy-Basis|2.1.0" in \
        resources["ExplanationOfBenefit"]["supportedProfile"]
    # Every listed search parameter is answered (200), none refused as unsupported.
    sample = {"token": "x", "reference": world.jack.patient_id, "date": "ge2016-01-01", "string": "x"}
    for resource_type, resource in resources.items():
        for param in resource["searchParam"]:
            value = {"practitioner": world.doctor.fhir_id, "organization": "x"}.get(param["name"], sample[param["type"]])
            response = get(f"{world.base}/{resource_type}", world.token_a, {param["name"]: value})
            assert response.status_code == 200, (resource_type, param, response.text)


def test_group_search_by_characteristic(world):
    code = "http://hl7.org/fhir/us/davinci-pdex/CodeSystem/PdexMemberAttributionCS|pdexprovidergroup"
    assert entry_ids(bundle(get(f"{world.base}/Group", world.token_a, {"characteristic": code}))) == [world.group_a.fhir_id]
    assert entry_ids(bundle(get(f"{world.base}/Group", world.token_a, {"characteristic": "pdexprovidergroup"}))) == [
        world.group_a.fhir_id]
    assert bundle(get(f"{world.base}/Group", world.token_a, {"characteristic": "other|pdexprovidergroup"}))["total"] == 0


def test_practitioner_role_search_by_practitioner_and_organization(world):
    role = clinical_resource_create(resource_type="PractitionerRole", resource_id="role-1", resource={
        "practitioner": {"reference": f"Practitioner/{world.doctor.fhir_id}"},
        "organization": {"reference": f"Organization/{world.org_a.fhir_id}"}})
    clinical_resource_create(resource_type="PractitionerRole", resource_id="role-2", resource={
        "practitioner": {"reference": "Practitioner/someone-else"}})
    found = bundle(get(f"{world.base}/PractitionerRole", world.token_a, {"practitioner": f"Practitioner/{world.doctor.fhir_id}"}))
    assert entry_ids(found) == [role.resource_id]
    assert entry_ids(bundle(get(f"{world.base}/PractitionerRole", world.token_a,
                                {"organization": world.org_a.fhir_id}))) == [role.resource_id]
    outcome(get(f"{world.base}/PractitionerRole", world.token_a, {"practitioner": "Patient/x"}), 400, "invalid")


def test_service_date_floor_holds_in_read_and_search(world):
    # CMS-0057-F, 42 CFR 422.121(a): dates of service from 2016-01-01 on, as in the export.
    old = clinical_resource_create(resource_type="Encounter", patient_id=world.jack.patient_id,
                                   date=datetime.datetime(2015, 12, 31, tzinfo=datetime.UTC))
    outcome(get(f"{world.base}/Encounter/{old.resource_id}", world.token_a), 404, "not-found")
    ids = entry_ids(bundle(get(f"{world.base}/Encounter", world.token_a, {"patient": world.jack.patient_id})))
    assert old.resource_id not in ids and world.encounters["Jack"].resource_id in ids
    old_claim = claim_create(member=world.jack, billing_npi=world.org_a.npi, service_start=datetime.date(2015, 6, 1),
                             service_end=datetime.date(2015, 6, 1))
    eobs = entry_ids(bundle(get(f"{world.base}/ExplanationOfBenefit", world.token_a, {"patient": world.jack.patient_id})))
    assert f"eob-{old_claim.claim_number.lower()}" not in eobs and len(eobs) == 1
    outcome(get(f"{world.base}/ExplanationOfBenefit/eob-{old_claim.claim_number.lower()}", world.token_a), 404, "not-found")
