"""Property-based tests of the hospital side's parsers (Hypothesis): whatever comes in, the
answer is never a 500, and every error is a valid OperationOutcome.

Entry points: the local FHIR API's read and search (every search parameter, raw bytes in
the query, extreme dates), FHIR date values, and NDJSON lines for ingest. `make test` runs
the "ci" profile (tests/conftest.py); `HYPOTHESIS_PROFILE=long` runs thousands more.
"""

import io
import json
from urllib.parse import quote, quote_from_bytes

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from fhir.resources.R4B.operationoutcome import OperationOutcome
from hypothesis import given
from hypothesis import strategies as st

from fhirkit.bundles import date_range_parse
from fhirkit.outcome import FHIRError
from provider.models import IngestIssue, LocalResource, PayerConnection
from provider.selectors import SEARCH_PARAMETERS
from provider.services.ingest import ndjson_ingest
from tests.provider import fhir_samples as fx
from tests.strategies import DATE_TEXT, value_bytes

pytestmark = pytest.mark.django_db

NAMES = sorted({name for parameters in SEARCH_PARAMETERS.values() for name in parameters}
               | {"_count", "_offset", "_sort", "_include", "_format", "_elements"})
VALUE_BYTES = value_bytes(b"jack", b"Patient/jack", b"e1,e2", b"-date", b"Encounter:practitioner")


@pytest.fixture
def api(db) -> Client:
    connection = PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare", fhir_base_url="https://unitedcare.example/fhir",
        client_id="c", private_key_path="/dev/null", key_id="k",
    )
    ndjson_ingest(stream=fx.ndjson(fx.patient("jack"), fx.encounter("e1"), fx.condition("c1")), file_name="seed.ndjson",
                  expected_type=None, connection=connection, export_time=None)
    user = get_user_model().objects.create_user("records-office")
    user.user_permissions.add(Permission.objects.get(codename="view_localresource", content_type__app_label="provider"))
    client = Client()
    client.force_login(user)
    return client


def _assert_fhir_answer(response) -> None:
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert response["Content-Type"].startswith("application/fhir+json")
        OperationOutcome.model_validate(json.loads(response.content))


@given(
    resource_type=st.sampled_from([*SEARCH_PARAMETERS, "Practitioner", "Spaceship", "patient", ""]),
    pairs=st.lists(st.tuples(st.one_of(st.sampled_from(NAMES), st.text(max_size=12)), VALUE_BYTES), max_size=6),
)
def test_properties_local_search_never_answers_500(api, resource_type, pairs):
    query = "&".join(f"{quote(name)}={quote_from_bytes(value)}" for name, value in pairs)
    _assert_fhir_answer(api.get(f"/provider/fhir/{quote(resource_type)}?{query}"))


@given(resource_type=st.sampled_from(["Patient", "Encounter", "Spaceship"]), resource_id=st.binary(min_size=1, max_size=80))
def test_properties_local_read_never_answers_500(api, resource_type, resource_id):
    _assert_fhir_answer(api.get(f"/provider/fhir/{resource_type}/{quote_from_bytes(resource_id, safe='')}"))


@given(value=st.one_of(DATE_TEXT, st.text(max_size=40)))
def test_properties_dates_parse_to_an_ordered_utc_range_or_a_fhir_error(value):
    try:
        low, high = date_range_parse(value, name="date")
    except FHIRError as error:
        assert error.status == 400
        OperationOutcome.model_validate(error.outcome)
        return
    assert low.utcoffset().total_seconds() == 0 and high.utcoffset().total_seconds() == 0
    assert low <= high


JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
                           max_leaves=10)
RESOURCE_LINES = st.builds(
    lambda base, extra: json.dumps({**base, **extra}).encode(),
    st.sampled_from([fx.patient("p1"), fx.encounter("e1"), fx.condition("c1"), {"resourceType": "Encounter"}, {}]),
    st.dictionaries(st.sampled_from(["id", "subject", "meta", "status", "period", "resourceType", "text", "extra"]),
                    JSON_VALUES, max_size=3),
)
LINES = st.lists(st.one_of(RESOURCE_LINES, st.binary(max_size=60).filter(lambda b: b"\n" not in b and b"\r" not in b)),
                 min_size=1, max_size=8)


@given(lines=LINES)
def test_properties_ndjson_lines_are_stored_or_recorded_never_raised(db, lines):
    connection, _ = PayerConnection.objects.get_or_create(
        name="prop", defaults={"display_name": "P", "fhir_base_url": "https://p.example/fhir", "client_id": "c",
                               "private_key_path": "/dev/null", "key_id": "k"},
    )
    IngestIssue.objects.filter(file_name="prop.ndjson").delete()
    result = ndjson_ingest(stream=io.BytesIO(b"\n".join(lines) + b"\n"), file_name="prop.ndjson", expected_type=None,
                           connection=connection, export_time=None)
    non_blank = [line for line in lines if line.strip()]
    assert result.lines == len(non_blank)
    assert result.stored + result.unchanged + result.errors == result.lines
    issues = list(IngestIssue.objects.filter(file_name="prop.ndjson"))
    assert len(issues) == result.errors
    for issue in issues:
        OperationOutcome.model_validate(issue.outcome)
    assert LocalResource.objects.filter(connection=connection).count() <= LocalResource.objects.count()
