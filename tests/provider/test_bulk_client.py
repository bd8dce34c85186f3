"""The Bulk Data client against a real HTTP Bulk Data server (tests/provider/fake_payer.py)."""

import email.utils
import json
import time

import jwt
import pytest

from provider.bulk_client import BulkDataClient, CountMismatch, TransientError, poll_delay, retry_after_seconds
from tests.provider.bulk_data import CLIENT_ID
from tests.provider.fake_payer import FakePayer, key_pair


def make_client(payer: FakePayer, private_pem: bytes, **kwargs) -> BulkDataClient:
    return BulkDataClient(payer.base_url, CLIENT_ID, private_pem, payer.key_id, **kwargs)


def test_token_discovered_signed_and_cached(fake_payer, rsa_keys):
    # Bulk Data req 15/16: the client requests and receives access tokens (SMART Backend Services).
    client = make_client(fake_payer, rsa_keys[0])
    client.search("Group").__next__()
    list(client.search("Group"))
    assert client.token_url == fake_payer.token_url  # from .well-known/smart-configuration
    assert fake_payer.requests_to("/.well-known/smart-configuration")
    assert len(fake_payer.requests_to("/auth/token")) == 1  # cached for the second request
    claims, header = fake_payer.assertion_claims[0], fake_payer.assertion_headers[0]
    assert claims["iss"] == claims["sub"] == CLIENT_ID
    assert claims["aud"] == fake_payer.token_url
    assert 0 < claims["exp"] - time.time() <= 300
    assert header == {"alg": "RS384", "kid": fake_payer.key_id, "typ": "JWT"}
    assert fake_payer.requests_to("/auth/token")[0].body["scope"] == "system/*.read"
    assert "BEGIN" not in repr(client)


def test_token_url_falls_back_to_capability_statement_and_es384(fake_payer):
    private, public = key_pair("ES384")
    fake_payer.public_key = public
    fake_payer.well_known = False
    client = make_client(fake_payer, private, algorithm="ES384")
    assert client.token_url == fake_payer.token_url  # the oauth-uris extension
    token = client.access_token()
    assert token and fake_payer.assertion_headers[0]["alg"] == "ES384"
    first_jti = fake_payer.assertion_claims[0]["jti"]
    client.access_token(force=True)
    assert fake_payer.assertion_claims[1]["jti"] != first_jti  # a fresh jti per assertion


def test_token_renewed_shortly_before_expiry(fake_payer, rsa_keys):
    fake_payer.token_lifetime = 31  # inside the client's 30 s margin once a second passes
    client = make_client(fake_payer, rsa_keys[0])
    client.access_token()
    time.sleep(1.1)
    client.access_token()
    assert client.tokens_issued == 2


def test_kick_off_group_get_parameters_and_headers(fake_payer, rsa_keys):
    client = make_client(fake_payer, rsa_keys[0])
    status_url = client.kick_off(
        level="group", group_id="g1", types=["Encounter", "Condition"], since="2024-01-01T00:00:00Z",
        type_filters=["Encounter?status=finished", "Condition?clinical-status=active"],
    )
    assert status_url.startswith(f"{fake_payer.base_url}/status/")
    request = fake_payer.requests_to("/Group/g1/$export", "GET")[0]
    assert request.headers["Accept"] == "application/fhir+json"  # Bulk Data req 43
    assert request.headers["Prefer"] == "respond-async"  # Bulk Data req 45
    assert request.query["_type"] == ["Encounter,Condition"]  # req 61
    assert request.query["_since"] == ["2024-01-01T00:00:00Z"]  # req 54
    assert request.query["_typeFilter"] == ["Encounter?status=finished", "Condition?clinical-status=active"]  # req 116


def test_kick_off_patient_post_and_davinci_export(fake_payer, rsa_keys):
    client = make_client(fake_payer, rsa_keys[0])
    client.kick_off(level="patient", patients=["p1", "Patient/p2"], types=["Encounter"])
    body = fake_payer.requests_to("/Patient/$export", "POST")[0].body
    assert body["resourceType"] == "Parameters"
    assert {"name": "patient", "valueReference": {"reference": "Patient/p1"}} in body["parameter"]
    assert {"name": "patient", "valueReference": {"reference": "Patient/p2"}} in body["parameter"]
    assert {"name": "_type", "valueString": "Encounter"} in body["parameter"]

    client.kick_off(level="group", group_id="g1", patients=["p1"], since="2025-01-01T00:00:00Z",
                    operation="$davinci-data-export", export_type="hl7.fhir.us.davinci-pdex#provider-delta")
    body = fake_payer.requests_to("/Group/g1/$davinci-data-export", "POST")[0].body
    assert {"name": "exportType", "valueString": "hl7.fhir.us.davinci-pdex#provider-delta"} in body["parameter"]
    assert {"name": "_since", "valueInstant": "2025-01-01T00:00:00Z"} in body["parameter"]

    client.kick_off(level="system")
    assert fake_payer.requests_to("/fhir/$export", "GET")


@pytest.mark.parametrize("type_filter", [
    "Encounter?status=finished&_sort=-date",
    "Encounter?_include=Encounter:practitioner",
    "Encounter?_include:iterate=Encounter:location",
    "Observation?_count=10",
    "Encounter",  # not [type]?[query]
])
def test_type_filter_with_search_result_parameters_is_refused(fake_payer, rsa_keys, type_filter):
    # Bulk Data req 114 (and 104 for Patient/$export): in a _typeFilter, FHIR search result
    # parameters such as _include and _sort SHALL NOT be used; the client never sends one.
    client = make_client(fake_payer, rsa_keys[0])
    for operation in ("$export", "$davinci-data-export"):
        with pytest.raises(ValueError, match="_typeFilter"):
            client.kick_off(level="group", group_id="g1", type_filters=["Condition?clinical-status=active", type_filter],
                            operation=operation)
    assert fake_payer.requests_to("$export") == [] and fake_payer.requests_to("$davinci-data-export") == []


def test_kick_off_busy_server_is_transient(fake_payer, rsa_keys):
    # Bulk Data req 118: a server busy with an export answers 429 + Retry-After.
    fake_payer.kickoff_script = [(429, {"Retry-After": "7"})]
    client = make_client(fake_payer, rsa_keys[0])
    with pytest.raises(TransientError) as caught:
        client.kick_off(level="group", group_id="g1")
    assert caught.value.retry_after == 7


def test_poll_honours_retry_after_progress_429_and_503(fake_payer, rsa_keys):
    http_date = email.utils.formatdate(time.time() + 20, usegmt=True)
    fake_payer.poll_script = [
        (202, {"X-Progress": "Exporting 30%", "Retry-After": "3"}),
        (429, {"Retry-After": http_date}),
        (503, {}),
        (202, {}),
    ]
    client = make_client(fake_payer, rsa_keys[0])
    status_url = client.kick_off(level="group", group_id="g1")
    first = client.poll(status_url)
    assert (first.state, first.progress, first.retry_after) == ("in_progress", "Exporting 30%", 3)  # req 126, 135
    throttled = client.poll(status_url)
    assert throttled.state == "retry" and 17 <= throttled.retry_after <= 20  # req 128: HTTP-date
    unavailable = client.poll(status_url)
    assert unavailable.state == "retry" and unavailable.status == 503 and unavailable.retry_after is None
    assert client.poll(status_url).state == "in_progress"
    done = client.poll(status_url)
    assert done.state == "complete" and done.manifest["requiresAccessToken"] is True
    assert {f["type"] for f in done.manifest["output"]} == {"Patient", "Encounter", "Condition"}
    assert fake_payer.requests_to("/status/")[0].headers["Accept"] == "application/json"  # req 130


def test_poll_delay_backs_off_with_jitter_and_caps():
    # Bulk Data req 124: exponential backoff; req 126: Retry-After wins, but capped.
    assert poll_delay(attempt=3, retry_after=5) == 5
    assert poll_delay(attempt=3, retry_after=3600, cap=60) == 60
    delays = {poll_delay(attempt=4, retry_after=None, base=1, cap=120) for _ in range(50)}
    assert all(8 <= d <= 16 for d in delays) and len(delays) > 1
    assert all(poll_delay(attempt=30, retry_after=None, cap=120) <= 120 for _ in range(20))
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    assert retry_after_seconds("soon") is None


def test_token_expired_mid_way_is_renewed_once(fake_payer, rsa_keys):
    client = make_client(fake_payer, rsa_keys[0])
    status_url = client.kick_off(level="group", group_id="g1")
    fake_payer.expire_tokens()
    assert client.poll(status_url).state == "in_progress"
    assert client.tokens_issued == 2
    assert [r.path for r in fake_payer.log if r.path.endswith(status_url.rsplit("/", 1)[1])].count(f"/fhir/status/{status_url.rsplit('/', 1)[1]}") == 2


def _manifest(client: BulkDataClient, payer: FakePayer, **kick) -> dict:
    payer.poll_script = []
    return client.poll(client.kick_off(level="group", group_id="g1", **kick)).manifest


def test_download_asks_gzip_resumes_with_range_and_renews_token(fake_payer, rsa_keys, tmp_path):
    fake_payer.file_faults = {"Encounter": ["drop"]}
    client = make_client(fake_payer, rsa_keys[0], chunk_size=64)
    manifest = _manifest(client, fake_payer, types=["Encounter"])
    item = manifest["output"][0]
    fake_payer.expire_tokens()  # the token dies between the manifest and the download
    dest = tmp_path / "Encounter.ndjson"
    size = client.download(item["url"], dest, requires_token=True, expected_count=item["count"])
    expected = next(iter(fake_payer.exports.values())).files[item["url"].rsplit("/", 1)[1]]
    assert dest.read_bytes() == expected and size == len(expected)  # nothing lost, nothing doubled
    gets = fake_payer.requests_to("/files/")
    assert gets[0].headers["Accept-Encoding"] == "gzip"
    assert gets[0].headers["Accept"] == "application/fhir+ndjson"
    ranged = [g for g in gets if "Range" in g.headers]
    assert len(ranged) == 1 and ranged[0].headers["Range"].startswith("bytes=")
    assert int(ranged[0].headers["Range"][6:-1]) > 0
    assert client.tokens_issued == 2
    assert len(json.loads(dest.read_text().splitlines()[0])) > 0


def test_download_without_token_when_not_required(fake_payer, rsa_keys, tmp_path):
    # Bulk Data req 201: a token only when requiresAccessToken is true.
    fake_payer.requires_access_token = False
    client = make_client(fake_payer, rsa_keys[0])
    item = _manifest(client, fake_payer, types=["Condition"])["output"][0]
    client.download(item["url"], tmp_path / "c.ndjson", requires_token=False, expected_count=item["count"])
    assert "Authorization" not in fake_payer.requests_to("/files/")[0].headers


def test_download_503_is_transient_and_count_mismatch_detected(fake_payer, rsa_keys, tmp_path):
    fake_payer.file_faults = {"Encounter": ["503", "short"]}
    client = make_client(fake_payer, rsa_keys[0])
    item = _manifest(client, fake_payer, types=["Encounter"])["output"][0]
    with pytest.raises(TransientError) as caught:
        client.download(item["url"], tmp_path / "e.ndjson", requires_token=True)
    assert caught.value.status == 503 and caught.value.retry_after == 1
    with pytest.raises(CountMismatch, match="says 9 resources, the file has 8"):
        client.download(item["url"], tmp_path / "e.ndjson", requires_token=True, expected_count=item["count"])


def test_download_gzip_body_is_decoded(fake_payer, rsa_keys, tmp_path):
    client = make_client(fake_payer, rsa_keys[0])
    item = _manifest(client, fake_payer, types=["Patient"])["output"][0]
    client.download(item["url"], tmp_path / "p.ndjson", requires_token=True, expected_count=item["count"])
    lines = (tmp_path / "p.ndjson").read_text().splitlines()
    assert [json.loads(line)["id"] for line in lines] == ["p1", "p2"]
    assert fake_payer.requests_to("/files/")[0].headers["Accept-Encoding"] == "gzip"


def test_cancel_deletes_the_export(fake_payer, rsa_keys):
    # Bulk Data req 119: DELETE on the status URL.
    client = make_client(fake_payer, rsa_keys[0])
    status_url = client.kick_off(level="group", group_id="g1")
    assert client.cancel(status_url) is True
    assert fake_payer.requests_to("/status/", "DELETE")
    assert client.poll(status_url).state == "error"
    assert client.cancel(status_url) is False


def test_group_find_member_by_identifier_and_by_reading_patients(fake_payer, rsa_keys):
    client = make_client(fake_payer, rsa_keys[0])
    match = client.group_find_member(member_identifier="M100")
    assert (match.group_id, match.patient_id) == ("g1", "p1")
    assert fake_payer.requests_to("/fhir/Patient")[0].query == {"identifier": ["M100"]}
    assert client.group_find_member(member_identifier="M300").patient_id is None  # exists, not attributed
    assert client.group_find_member(member_identifier="M999").patient_id is None

    fake_payer.identifier_search = False  # a server without identifier search
    match = client.group_find_member(member_identifier="M200", group_id="g1")
    assert (match.group_id, match.patient_id) == ("g1", "p2")
    assert fake_payer.requests_to("/fhir/Patient/p2")


def test_assertion_verifies_with_public_key(rsa_keys):
    client = BulkDataClient("http://example.invalid/fhir", CLIENT_ID, rsa_keys[0], "k1", token_url="http://example.invalid/token")
    claims = jwt.decode(client.client_assertion(), rsa_keys[1], algorithms=["RS384"], audience="http://example.invalid/token")
    assert claims["sub"] == CLIENT_ID and claims["exp"] - claims["iat"] == 300
