"""The local FHIR API at /provider/fhir over real HTTP (FHIR R4 http.html and search.html)."""

import datetime
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome

from provider.models import PayerConnection
from provider.selectors import local_read, local_search
from provider.services.ingest import ndjson_ingest
from tests.provider import fhir_samples as fx

pytestmark = pytest.mark.django_db

PASSWORD = "correct horse battery staple"

ENCOUNTERS = [
    # id, start, status, class, type
    ("e1", "2023-01-15T08:00:00Z", "finished", "AMB", "185349003"),
    ("e2", "2023-06-30T23:30:00Z", "finished", "AMB", "185349003"),
    ("e3", "2024-01-10T14:00:00Z", "finished", "EMER", "50849002"),
    ("e4", "2024-03-01T09:00:00Z", "in-progress", "IMP", "32485007"),
]


@pytest.fixture(autouse=True)
def fast_password_hasher(settings) -> None:
    # HTTP Basic checks the password on every request; PBKDF2 would make each one slow.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


def connection_create(name: str = "unitedcare", npi: str = "1345678902") -> PayerConnection:
    return PayerConnection.objects.create(
        name=name, display_name=name.title(), fhir_base_url=f"https://{name}.example/fhir", client_id=f"{name}-client",
        private_key_path="/dev/null", key_id="k", organization_npi=npi,
    )


@pytest.fixture
def store(transactional_db) -> PayerConnection:
    """Jack Shaw's history, another patient's encounter, and the people and places they name."""
    resources = [
        fx.patient("jack"),
        fx.patient("amy", family="Jones", given="Amy", birth="1985-07-01", member_id="UC00009999"),
        fx.practitioner("smith"),
        fx.practitioner("lee"),
        fx.location("grace-er"),
        *[
            fx.encounter(eid, start=start, status=status, class_code=cls, type_code=typ,
                         practitioner="lee" if eid == "e3" else "smith")
            for eid, start, status, cls, typ in ENCOUNTERS
        ],
        fx.encounter("e9", pid="amy", start="2024-01-10T10:00:00Z"),
        fx.condition("c1", onset="2023-11-02"), fx.condition("c2", pid="amy"),
        fx.observation("o1"), fx.procedure("p1"), fx.medication_request("m1"),
        fx.eob("x1"), fx.claim("cl1"), fx.claim_response("cr1"),
    ]
    connection = connection_create()
    result = ndjson_ingest(stream=fx.ndjson(*resources), file_name="all.ndjson", expected_type=None,
                           connection=connection, export_time=None)
    assert result.errors == 0
    return connection


def store_reader_create(username: str, **extra):
    """Return a user allowed to read the local store (provider.view_localresource)."""
    user = get_user_model().objects.create_user(username, password=PASSWORD, **extra)
    user.user_permissions.add(Permission.objects.get(codename="view_localresource", content_type__app_label="provider"))
    return user


@pytest.fixture
def http(live_server, store) -> requests.Session:
    """A hospital system calling with HTTP Basic."""
    store_reader_create("emr-system")
    session = requests.Session()
    session.auth = ("emr-system", PASSWORD)
    session.headers["Accept"] = "application/fhir+json"
    session.base = f"{live_server.url}/provider/fhir"
    return session


def search(http, resource_type: str, **params) -> dict:
    response = http.get(f"{http.base}/{resource_type}", params=params)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    Bundle.model_validate(body)
    assert body["type"] == "searchset"
    return body


def ids(bundle: dict, mode: str = "match") -> list[str]:
    return [entry["resource"]["id"] for entry in bundle.get("entry", []) if entry["search"]["mode"] == mode]


def assert_outcome(response: requests.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    OperationOutcome.model_validate(body)
    if code:
        assert body["issue"][0]["code"] == code
    return body


def test_metadata_is_a_valid_capability_statement(live_server):
    response = requests.get(f"{live_server.url}/provider/fhir/metadata")

    assert response.status_code == 200
    statement = response.json()
    CapabilityStatement.model_validate(statement)
    assert statement["fhirVersion"] == "4.0.1"
    encounter = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Encounter")
    assert {p["name"] for p in encounter["searchParam"]} >= {"patient", "date", "status", "class", "type"}
    assert "Encounter:location" in encounter["searchInclude"]


def test_login_is_required(live_server, store):
    store_reader_create("emr-system")
    url = f"{live_server.url}/provider/fhir/Encounter?patient=jack"

    anonymous = requests.get(url)
    assert_outcome(anonymous, 401, "login")
    assert anonymous.headers["WWW-Authenticate"].startswith("Basic")
    assert_outcome(requests.get(url, auth=("emr-system", "wrong")), 401, "login")
    assert_outcome(requests.get(f"{live_server.url}/provider/fhir/Encounter/e1"), 401, "login")

    # A clinician's browser session works as well as HTTP Basic.
    client = Client()
    client.force_login(get_user_model().objects.get(username="emr-system"))
    cookies = {"sessionid": client.cookies["sessionid"].value}
    assert requests.get(url, cookies=cookies).json()["total"] == 4
    assert requests.get(url, auth=("emr-system", PASSWORD)).json()["total"] == 4


def test_only_store_readers_get_in_clinicians_and_other_users_get_403(live_server, store):
    # The local store holds the patients every organization of the deployment fetched: a
    # user who may sign in (an EMR clinician of another organization, say) reads none of it.
    from emr.models import Clinician

    outsider = get_user_model().objects.create_user("rlee", password=PASSWORD)
    Clinician.objects.create(user=outsider, display_name="Dr. Robert Lee", organization_name="Oakview Family Practice",
                             organization_npi="1244668806")
    get_user_model().objects.create_user("payer-staff", password=PASSWORD, is_staff=True)
    base = f"{live_server.url}/provider/fhir"
    for username in ("rlee", "payer-staff"):
        for url in (f"{base}/Encounter?patient=jack", f"{base}/Encounter/e1", f"{base}/Patient?identifier=UC00009999"):
            assert_outcome(requests.get(url, auth=(username, PASSWORD)), 403, "forbidden")
    client = Client()
    client.force_login(outsider)
    session = requests.get(f"{base}/Encounter?patient=jack", cookies={"sessionid": client.cookies["sessionid"].value})
    assert_outcome(session, 403, "forbidden")

    # A superuser, and a user granted the permission, read everything.
    get_user_model().objects.create_superuser("root", password=PASSWORD)
    assert requests.get(f"{base}/Encounter?patient=jack", auth=("root", PASSWORD)).json()["total"] == 4


def test_other_systems_use_a_bearer_token(live_server, store):
    from rest_framework.authtoken.models import Token

    token = Token.objects.create(user=store_reader_create("lab-system"))
    url = f"{live_server.url}/provider/fhir/Encounter?patient=jack"
    response = requests.get(url, headers={"Authorization": f"Bearer {token.key}"})
    assert response.status_code == 200, response.text
    Bundle.model_validate(response.json())
    assert response.json()["total"] == 4
    assert_outcome(requests.get(url, headers={"Authorization": "Bearer not-a-token"}), 401, "login")
    # A token of a user without the permission is a 403, like its password would be.
    plain = Token.objects.create(user=get_user_model().objects.create_user("kiosk", password=PASSWORD))
    assert_outcome(requests.get(url, headers={"Authorization": f"Bearer {plain.key}"}), 403, "forbidden")


def test_read_serves_the_stored_json(http):
    response = http.get(f"{http.base}/Encounter/e1")

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Last-Modified"] == "Wed, 01 May 2024 10:00:00 GMT"
    # The JSON the payer sent, with meta.source naming the payer it came from.
    stored = fx.encounter("e1", start=ENCOUNTERS[0][1])
    assert response.json() == {**stored, "meta": {**stored["meta"], "source": "https://unitedcare.example/fhir"}}
    assert response.headers["Content-Location"] == f"{http.base}/source/unitedcare/Encounter/e1"
    assert http.get(f"{http.base}/Location/grace-er").json()["name"] == "Grace Hospital Emergency"


def test_read_unknown_id_or_type_is_404(http):
    assert_outcome(http.get(f"{http.base}/Encounter/nope"), 404, "not-found")
    assert_outcome(http.get(f"{http.base}/Encounter/bad$id"), 404, "not-found")
    assert_outcome(http.get(f"{http.base}/Spaceship/e1"), 404, "not-supported")
    assert_outcome(http.get(f"{http.base}/Spaceship"), 404, "not-supported")
    assert_outcome(http.get(f"{http.base}/Location"), 404, "not-supported")  # read only


def test_patient_search_by_name_birthdate_identifier(http):
    assert ids(search(http, "Patient", name="sha")) == ["jack"]  # starts-with, any case
    assert ids(search(http, "Patient", name="JACK")) == ["jack"]
    assert ids(search(http, "Patient", name="Jack Shaw")) == ["jack"]
    assert ids(search(http, "Patient", name="haw")) == []  # not a prefix of any part
    assert ids(search(http, "Patient", birthdate="1970")) == ["jack"]
    assert ids(search(http, "Patient", birthdate="1985-07")) == ["amy"]
    assert ids(search(http, "Patient", birthdate="ge1980-01-01")) == ["amy"]
    assert ids(search(http, "Patient", identifier="https://unitedcare.example/member-id|UC00001234")) == ["jack"]
    assert ids(search(http, "Patient", identifier="UC00009999")) == ["amy"]
    assert ids(search(http, "Patient", identifier="https://other.example|UC00009999")) == []
    assert search(http, "Patient", _id="jack,amy")["total"] == 2


DATE_CASES = [
    ("2023", ["e1", "e2"]),
    ("eq2023-06", ["e2"]),
    ("2023-06-30", ["e2"]),
    ("2023-06-30T23:30:00Z", ["e2"]),
    ("2023-07-01T01:30:00+02:00", ["e2"]),  # the same instant in another zone
    ("ge2024-01-10", ["e3", "e4"]),
    ("gt2024-01-10", ["e4"]),  # after the whole of that day
    ("le2024-01-10", ["e1", "e2", "e3"]),  # up to the end of that day
    ("lt2024-01-10", ["e1", "e2"]),
    ("lt2023", []),
]


def test_encounter_date_prefixes_and_partial_dates(http):
    for date, expected in DATE_CASES:
        assert sorted(ids(search(http, "Encounter", patient="jack", date=date))) == expected, date


def test_encounter_search_parameters(http):
    assert search(http, "Encounter", patient="jack")["total"] == 4
    assert search(http, "Encounter", patient="Patient/jack")["total"] == 4
    assert search(http, "Encounter", subject="Patient/amy")["total"] == 1
    assert search(http, "Encounter", patient="jack,amy")["total"] == 5
    assert ids(search(http, "Encounter", patient="jack", status="in-progress")) == ["e4"]
    assert ids(search(http, "Encounter", patient="jack", **{"class": "EMER"})) == ["e3"]
    assert ids(search(http, "Encounter", **{"class": "http://terminology.hl7.org/CodeSystem/v3-ActCode|IMP"})) == ["e4"]
    assert ids(search(http, "Encounter", type="50849002")) == ["e3"]
    assert ids(search(http, "Encounter", type="http://snomed.info/sct|32485007")) == ["e4"]
    assert ids(search(http, "Encounter", type="http://loinc.org|32485007")) == []
    assert sorted(ids(search(http, "Encounter", type="50849002,32485007"))) == ["e3", "e4"]  # comma is OR
    # Repeated parameters are ANDed: a range.
    response = http.get(f"{http.base}/Encounter?patient=jack&date=ge2023-06-01&date=lt2024-02")
    assert sorted(ids(response.json())) == ["e2", "e3"]


def test_encounter_sort_count_and_paging_links(http):
    newest_first = search(http, "Encounter", patient="jack", _sort="-date")
    assert ids(newest_first) == ["e4", "e3", "e2", "e1"]
    assert ids(search(http, "Encounter", patient="jack", _sort="date")) == ["e1", "e2", "e3", "e4"]

    page = search(http, "Encounter", patient="jack", _sort="-date", _count="3")
    assert page["total"] == 4 and ids(page) == ["e4", "e3", "e2"]
    links = {link["relation"]: link["url"] for link in page["link"]}
    assert set(links) == {"self", "next"}
    assert parse_qs(urlparse(links["self"]).query) == {"patient": ["jack"], "_sort": ["-date"], "_count": ["3"]}

    second = http.get(links["next"]).json()
    Bundle.model_validate(second)
    assert ids(second) == ["e1"] and second["total"] == 4
    second_links = {link["relation"]: link["url"] for link in second["link"]}
    assert "next" not in second_links
    assert ids(http.get(second_links["previous"]).json()) == ["e4", "e3", "e2"]

    only_total = search(http, "Encounter", patient="jack", _count="0")
    assert only_total["total"] == 4 and "entry" not in only_total or only_total["entry"] == []
    assert all(
        entry["fullUrl"] == f"{http.base}/source/unitedcare/Encounter/{entry['resource']['id']}"
        for entry in newest_first["entry"]
    )


def test_encounter_include_practitioner_participant_and_location(http):
    bundle = search(http, "Encounter", patient="jack", _include=["Encounter:practitioner", "Encounter:location"])
    assert sorted(ids(bundle)) == ["e1", "e2", "e3", "e4"]
    assert sorted(ids(bundle, "include")) == ["grace-er", "lee", "smith"]  # each once
    assert bundle["total"] == 4  # included resources do not count

    bundle = search(http, "Encounter", patient="jack", date="2024-01-10", _include="Encounter:participant")
    assert ids(bundle) == ["e3"] and ids(bundle, "include") == ["lee"]
    bundle = search(http, "Encounter", _id="e1", _include="Encounter:participant:Practitioner")
    assert ids(bundle, "include") == ["smith"]


TYPE_CASES = [
    ("Condition", "jack", "2023-11", ["c1"]),
    ("Observation", "jack", "ge2024-03-01", ["o1"]),
    ("Procedure", "Patient/jack", "2024-02-10", ["p1"]),
    ("MedicationRequest", "jack", "2024", ["m1"]),
    ("ExplanationOfBenefit", "jack", "2024-03-01", ["x1"]),
    ("Claim", "jack", "le2024-03-02", ["cl1"]),
    ("ClaimResponse", "jack", "gt2024-03-02", ["cr1"]),
]


def test_clinical_and_claims_types_by_patient_and_date(http):
    for resource_type, patient, date, expected in TYPE_CASES:
        assert ids(search(http, resource_type, patient=patient, date=date)) == expected, resource_type
        assert ids(search(http, resource_type, patient=patient, date="lt2000")) == [], resource_type
        assert search(http, resource_type, patient="amy")["total"] == (1 if resource_type == "Condition" else 0)


BAD_QUERIES = [
    ("patient=jack&colour=blue", "colour"),
    ("date=2024-13-01", "date"),
    ("date=soon", "date"),
    ("date=ap2024", "date"),
    ("date=ne2024", "date"),
    ("_count=-1", "_count"),
    ("_count=ten", "_count"),
    ("_sort=status", "_sort"),
    ("_include=Encounter:service-provider", "_include"),
    ("_include=Patient:organization", "_include"),
    ("patient=Practitioner/smith", "patient"),
    ("patient=", "patient"),
    ("_id=bad$id", "_id"),
    ("_offset=x", "_offset"),
]


def test_bad_parameters_are_400_operation_outcomes(http):
    for query, expression in BAD_QUERIES:
        body = assert_outcome(http.get(f"{http.base}/Encounter?{query}"), 400)
        assert body["issue"][0]["expression"] == [expression], query


def test_unknown_parameter_is_ignored_with_prefer_lenient(http):
    response = http.get(f"{http.base}/Encounter?patient=jack&colour=blue", headers={"Prefer": "handling=lenient"})
    assert response.status_code == 200 and response.json()["total"] == 4


def test_selectors_serve_the_emr_directly(store):
    sources = [store.pk]
    rows, total = local_search(
        resource_type="Encounter", params={"patient": "jack", "_sort": "-date", "_count": "2"}, connection_ids=sources
    )
    assert total == 4 and [row.resource_id for row in rows] == ["e4", "e3"]
    [jack] = local_read(resource_type="Patient", resource_id="jack", connection_ids=sources)
    assert jack.resource["birthDate"] == "1970-03-14"
    assert local_read(resource_type="Patient", resource_id="nobody", connection_ids=sources) == []
    # Another source's view holds none of it.
    assert local_read(resource_type="Patient", resource_id="jack", connection_ids=[connection_create("other").pk]) == []
    assert datetime.datetime(2024, 3, 1, 9, tzinfo=datetime.timezone.utc) == rows[0].date


def test_hostile_searches_get_400_or_an_answer_never_a_500(http, caplog):
    # Issue "hardening": each of these answered 500 (or ran for 15 s) before.
    extreme = http.get(f"{http.base}/Encounter", params={"patient": "jack", "date": "gt9999-12-31T23:59:59-12:00"})
    assert extreme.status_code == 200 and extreme.json()["total"] == 0
    early = http.get(f"{http.base}/Encounter", params={"patient": "jack", "date": "ge0001-01-01T00:00:00+14:00"})
    assert early.status_code == 200 and early.json()["total"] == 4
    many_fields = "&".join(f"p{n}=1" for n in range(1500))
    assert_outcome(http.get(f"{http.base}/Encounter?{many_fields}"), 400, "too-costly")
    assert_outcome(http.get(f"{http.base}/Encounter?" + "&".join(["patient=jack"] * 150)), 400, "too-costly")
    ids = ",".join(f"e{n}" for n in range(30_000))
    assert_outcome(http.get(f"{http.base}/Encounter", params={"_id": ids[:3900]}), 400, "too-costly")
    assert_outcome(http.get(f"{http.base}/Patient", params={"identifier": "x" * 5000}), 400, "too-costly")
    assert_outcome(http.get(f"{http.base}/Encounter?patient=%ED%A0%80"), 400)  # a lone surrogate, as UTF-8
    assert_outcome(http.get(f"{http.base}/Encounter?patient=ja%00ck"), 400)


def test_every_refusal_is_audited(http, caplog):
    caplog.set_level("WARNING", logger="provider.audit")
    assert_outcome(http.put(f"{http.base}/Encounter/e1", json={}), 405)
    assert http.get(f"{http.base}/Encounter/e1", headers={"Accept": "application/fhir+xml"}).status_code == 406
    assert_outcome(http.get(f"{http.base}/Spaceship/e1"), 404)
    assert_outcome(requests.get(f"{http.base}/Encounter/e1"), 401)
    statuses = [line.split("status=")[1].split()[0] for line in caplog.messages if line.startswith("refused")]
    assert statuses == ["405", "406", "404", "401"]
    assert not any("correct horse" in line for line in caplog.messages)
