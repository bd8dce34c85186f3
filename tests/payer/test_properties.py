"""Property-based tests of the payer's entry points (Hypothesis): whatever comes in, the answer
is never a 500, and every error is a valid OperationOutcome (or, for the token endpoint, an
RFC 6749 error body).

Entry points: read and search of every type with generated parameters (raw bytes included),
`$export` and `$davinci-data-export` kick-offs as query parameters and as Parameters bodies
(lone surrogates, NULs, odd types), `_since` values, and token requests with generated form
fields and assertions. `make test` runs the "ci" profile (tests/conftest.py);
`HYPOTHESIS_PROFILE=long` runs thousands more.
"""

import json
from urllib.parse import quote, quote_from_bytes

import pytest
from django.test import Client
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import given
from hypothesis import strategies as st

from payer.models import ExportJob, SmartClient
from payer.services.export_params import EXPORT_PARAMS, PDEX_PARAMS
from payer.services.fhir import READABLE_TYPES, allowed_search_params
from tests.factories import attribution_create, clinical_resource_create, contract_create, member_create, organization_create
from tests.payer.auth_helpers import bearer_token_for, client_assertion, shared_rsa_key
from tests.strategies import DATE_TEXT, value_bytes

KID = "test-key-1"  # register_test_client's default

pytestmark = pytest.mark.django_db

NAMES = sorted({name for resource_type in READABLE_TYPES for name in allowed_search_params(resource_type)}
               | {"_format", "_elements", "_sort", "_include"})
VALUE_BYTES = value_bytes(b"UCH100000001", b"Patient/pat-1")


@pytest.fixture
def world(db):
    org = organization_create(name="Grace Hospital")
    contract_create(organization=org)
    member = member_create()
    attribution_create(organization=org, member=member)
    clinical_resource_create(resource_type="Patient", resource_id=member.patient_id)
    clinical_resource_create(resource_type="Encounter", patient_id=member.patient_id)
    token = bearer_token_for(org)
    SmartClient.objects.filter(organization=org).update(max_concurrent_exports=100_000)
    client = Client(HTTP_AUTHORIZATION=f"Bearer {token}")
    return {"client": client, "group": org.attribution_group.fhir_id, "patient": member.patient_id}


def _assert_fhir_answer(response) -> None:
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert response["Content-Type"].startswith("application/fhir+json"), response.content[:300]
        OperationOutcome.model_validate(json.loads(response.content))


def _query(pairs) -> str:
    return "&".join(f"{quote(name)}={quote_from_bytes(value)}" for name, value in pairs)


@given(resource_type=st.sampled_from([*READABLE_TYPES, "Group", "Spaceship", "Claim"]),
       pairs=st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=10)), VALUE_BYTES), max_size=6))
def test_properties_payer_search_never_answers_500(world, resource_type, pairs):
    _assert_fhir_answer(world["client"].get(f"/payer/fhir/{resource_type}?{_query(pairs)}"))


@given(resource_type=st.sampled_from([*READABLE_TYPES, "Group"]), resource_id=st.binary(min_size=1, max_size=70))
def test_properties_payer_read_never_answers_500(world, resource_type, resource_id):
    _assert_fhir_answer(world["client"].get(f"/payer/fhir/{resource_type}/{quote_from_bytes(resource_id, safe='')}"))


KICKOFF_NAMES = st.one_of(st.sampled_from(sorted(EXPORT_PARAMS | PDEX_PARAMS)), st.text(max_size=10))
KICKOFF_VALUES = st.one_of(
    VALUE_BYTES,
    st.sampled_from([b"Encounter", b"Patient,Encounter", b"Encounter?status=finished", b"Encounter?date=ge2020",
                     b"hl7.fhir.us.davinci-pdex#provider-delta", b"RelevantProvenanceResources", b"2024-01-01T00:00:00Z"]),
)


@given(pairs=st.lists(st.tuples(KICKOFF_NAMES, KICKOFF_VALUES), max_size=5),
       path=st.sampled_from(["$export", "Patient/$export", "GROUP/$export", "GROUP/$davinci-data-export"]),
       lenient=st.booleans())
def test_properties_kick_off_query_never_answers_500(world, pairs, path, lenient):
    path = path.replace("GROUP", f"Group/{world['group']}")
    prefer = "respond-async, handling=lenient" if lenient else "respond-async"
    method = world["client"].post if "davinci" in path else world["client"].get
    response = method(f"/payer/fhir/{path}?{_query(pairs)}", HTTP_PREFER=prefer, HTTP_ACCEPT="application/fhir+json")
    _assert_fhir_answer(response)
    ExportJob.objects.all().delete()  # no example holds a concurrency slot for the next


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20),
                         st.sampled_from(["\ud800", "a\x00", "Encounter", "Patient/pat-1", "2024-01-01"]))
PARAMETER = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(sorted(EXPORT_PARAMS | PDEX_PARAMS)), st.text(max_size=8))},
    optional={"valueString": JSON_SCALARS, "valueReference": st.dictionaries(st.just("reference"), JSON_SCALARS),
              "valueInstant": JSON_SCALARS, "part": st.lists(st.dictionaries(st.text(max_size=5), JSON_SCALARS), max_size=2)},
)
BODIES = st.one_of(
    st.builds(lambda parameters: {"resourceType": "Parameters", "parameter": parameters}, st.lists(PARAMETER, max_size=4)),
    st.dictionaries(st.text(max_size=8), JSON_SCALARS, max_size=3),
    st.lists(JSON_SCALARS, max_size=3),
)


@given(body=BODIES, path=st.sampled_from(["GROUP/$export", "GROUP/$davinci-data-export", "$export"]))
def test_properties_kick_off_parameters_bodies_never_answer_500(world, body, path):
    path = path.replace("GROUP", f"Group/{world['group']}")
    # ensure_ascii: a lone surrogate travels as the JSON escape "\\ud800", as a hostile client sends it.
    response = world["client"].post(f"/payer/fhir/{path}", data=json.dumps(body), content_type="application/fhir+json",
                                    HTTP_PREFER="respond-async", HTTP_ACCEPT="application/fhir+json")
    _assert_fhir_answer(response)
    ExportJob.objects.all().delete()


TOKEN_FIELDS = st.dictionaries(
    st.sampled_from(["grant_type", "client_assertion_type", "client_assertion", "scope", "client_id", "extra"]),
    st.one_of(st.text(max_size=60), st.sampled_from(["client_credentials", "system/*.read",
                                                      "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"])),
    max_size=6,
)


@given(fields=TOKEN_FIELDS, forged=st.booleans(), claims=st.dictionaries(
    st.sampled_from(["iss", "sub", "aud", "exp", "jti", "iat", "nbf"]), JSON_SCALARS, max_size=4))
def test_properties_token_requests_answer_an_oauth_error_never_500(world, fields, forged, claims):
    form = dict(fields)
    if forged:
        smart = SmartClient.objects.first()
        try:
            form["client_assertion"] = client_assertion(shared_rsa_key(), client_id=smart.client_id,
                                                        aud="http://testserver/payer/auth/token", kid=KID, **claims)
        except TypeError:
            form["client_assertion"] = "not.a.jwt"
    response = Client().post("/payer/auth/token", data=form)
    assert response.status_code < 500, response.content[:300]
    if response.status_code >= 400:
        body = json.loads(response.content)
        assert isinstance(body.get("error"), str) and body["error"]
