"""SMART Backend Services authorization server, discovery, CapabilityStatement and audit, over real HTTP."""

import base64
import datetime
import hashlib
import hmac
import http.server
import json
import os
import stat
import threading
import time
from collections.abc import Iterator

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from payer.models import AuditEvent, ProviderOrganization, SmartClient, UsedAssertion
from payer.services.auth import access_token_resolve, client_register
from payer.services.demo_keys import demo_client_ensure, demo_key_kid, demo_key_path
from tests.payer.auth_helpers import (
    bearer_token_for,
    client_assertion,
    jwks_for,
    make_ec_key,
    make_rsa_key,
    shared_rsa_key,
)

pytestmark = pytest.mark.django_db

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
KID = "grace-key-1"


def _organization(npi: str = "1234567893", name: str = "Grace Hospital") -> ProviderOrganization:
    return ProviderOrganization.objects.create(npi=npi, name=name, fhir_id=f"org-{npi}")


@pytest.fixture(autouse=True)
def _fresh_jwks_cache() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def base(live_server, settings) -> str:
    settings.PA_BASE_URL = ""
    return live_server.url


@pytest.fixture
def token_url(base) -> str:
    return f"{base}/payer/auth/token"


@pytest.fixture
def org() -> ProviderOrganization:
    return _organization()


@pytest.fixture
def client(org) -> SmartClient:
    return client_register(organization=org, jwks=jwks_for(shared_rsa_key(), KID), scopes="system/*.read", name="EHR")


def post_token(token_url: str, assertion: str | None, *, scope: str = "system/*.read", **form) -> requests.Response:
    data = {
        "grant_type": "client_credentials",
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion,
        "scope": scope,
        **form,
    }
    return requests.post(token_url, data={k: v for k, v in data.items() if v is not None}, timeout=10)


def assert_refused(response: requests.Response, error: str, *, status: int | None = None) -> dict:
    """Check an RFC 6749 section 5.2 error body and that the refusal was audited without secrets."""
    expected_status = status or (401 if error == "invalid_client" else 400)
    assert response.status_code == expected_status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["error"] == error
    assert body["error_description"]
    event = AuditEvent.objects.order_by("-id").first()
    assert event is not None and event.action == "token" and event.outcome == AuditEvent.Outcome.DENIED
    assert event.status_code == expected_status
    assert error in event.detail
    assert event.request_path == "/payer/auth/token"
    return body


def assert_no_secret_in_audit(*secrets: str) -> None:
    for event in AuditEvent.objects.all():
        text = json.dumps([event.detail, event.request_path, event.patient_ids, event.resource_types, event.client_id])
        for secret in secrets:
            assert secret not in text


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned_or_hmac(claims: dict, *, alg: str, secret: bytes = b"") -> str:
    """Build a JWT by hand with alg none or HS256 (PyJWT rightly refuses to sign HS256 with a PEM)."""
    signing_input = f"{_b64(json.dumps({'alg': alg, 'typ': 'JWT', 'kid': KID}).encode())}.{_b64(json.dumps(claims).encode())}"
    if alg == "none":
        return signing_input + "."
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


# --- Accepted assertions ---------------------------------------------------------------


def test_rs384_assertion_gets_a_usable_token(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, alg="RS384")
    response = post_token(token_url, assertion, scope="system/*.read")
    assert response.status_code == 200, response.text
    assert response.headers["Cache-Control"] == "no-store"
    body = response.json()
    assert body["token_type"] == "bearer"
    assert 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/*.read"
    assert "refresh_token" not in body
    token = access_token_resolve(raw_token=body["access_token"])
    assert token is not None and token.client == client
    assert token.client.organization.npi == "1234567893"
    assert (token.expires_at - token.issued_at).total_seconds() <= 300
    event = AuditEvent.objects.get(action="token", outcome=AuditEvent.Outcome.SUCCESS)
    assert event.client_id == client.client_id and event.organization_npi == "1234567893"
    assert event.status_code == 200
    assert_no_secret_in_audit(body["access_token"], assertion)


def test_es384_assertion_gets_a_token(token_url, org):
    key = make_ec_key()
    client = client_register(organization=org, jwks=jwks_for(key, "ec-1"), scopes="system/*.rs")
    assertion = client_assertion(key, client_id=client.client_id, aud=token_url, kid="ec-1", alg="ES384")
    response = post_token(token_url, assertion, scope="system/*.rs")
    assert response.status_code == 200, response.text
    assert access_token_resolve(raw_token=response.json()["access_token"]).client == client


def test_kid_selects_the_right_key_among_several(token_url, org):
    rsa_key, ec_key = shared_rsa_key(), make_ec_key()
    jwks = {"keys": [*jwks_for(rsa_key, "rsa-1")["keys"], *jwks_for(ec_key, "ec-1")["keys"]]}
    client = client_register(organization=org, jwks=jwks, scopes="system/*.read")
    for key, kid in ((rsa_key, "rsa-1"), (ec_key, "ec-1")):
        response = post_token(token_url, client_assertion(key, client_id=client.client_id, aud=token_url, kid=kid))
        assert response.status_code == 200, response.text
    # A key signed under the other kid does not verify.
    wrong = client_assertion(rsa_key, client_id=client.client_id, aud=token_url, kid="ec-1", alg="RS384")
    assert_refused(post_token(token_url, wrong), "invalid_client")


def test_v1_and_v2_scopes_granted_only_within_pre_authorization(token_url, org):
    key = shared_rsa_key()
    wide = client_register(organization=org, jwks=jwks_for(key, KID), scopes="system/*.read")
    narrow = client_register(organization=org, jwks=jwks_for(key, KID), scopes="system/Encounter.rs system/Patient.read")

    def granted(client: SmartClient, scope: str) -> str:
        assertion = client_assertion(key, client_id=client.client_id, aud=token_url, kid=KID)
        response = post_token(token_url, assertion, scope=scope)
        assert response.status_code == 200, response.text
        return response.json()["scope"]

    # v2 requests inside a v1 pre-authorization are granted as asked.
    assert granted(wide, "system/Encounter.rs system/Patient.r") == "system/Encounter.rs system/Patient.r"
    # A write scope is dropped, the read one kept: the grant is a subset of the request.
    assert granted(wide, "system/*.read system/*.write") == "system/*.read"
    # A wide request by a narrowly authorized client gets only what it was pre-authorized for.
    assert granted(narrow, "system/*.read").split() == ["system/Encounter.rs", "system/Patient.read"]
    assert granted(narrow, "system/Encounter.read") == "system/Encounter.read"
    token = access_token_resolve(raw_token=bearer_token_for(org, scopes="system/Encounter.rs"))
    assert token.scopes == "system/Encounter.rs"


def test_scope_not_pre_authorized_is_invalid_scope(token_url, org):
    key = shared_rsa_key()
    client = client_register(organization=org, jwks=jwks_for(key, KID), scopes="system/Encounter.read")
    assertion = client_assertion(key, client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion, scope="system/Patient.read system/*.write"), "invalid_scope")
    assertion = client_assertion(key, client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion, scope="patient/*.read openid"), "invalid_scope")


# --- Refusals ------------------------------------------------------------------------------


def test_unknown_client(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id="nobody", aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion), "invalid_client")
    event = AuditEvent.objects.get()
    assert event.client_id == "" and "nobody" in event.detail


def test_inactive_client(token_url, client):
    SmartClient.objects.filter(pk=client.pk).update(active=False)
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion), "invalid_client")


def test_bad_signature(token_url, client):
    assertion = client_assertion(make_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion), "invalid_client")
    assert AuditEvent.objects.get().client_id == client.client_id
    # A tampered payload under a genuine signature fails too.
    genuine = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    head, _, sig = genuine.split(".")
    claims = jwt.decode(genuine, options={"verify_signature": False})
    claims["exp"] += 10
    tampered = f"{head}.{_b64(json.dumps(claims).encode())}.{sig}"
    assert_refused(post_token(token_url, tampered), "invalid_client")


def test_alg_none_is_refused(token_url, client):
    now = int(time.time())
    claims = {"iss": client.client_id, "sub": client.client_id, "aud": token_url, "exp": now + 120, "jti": "n-1"}
    assert_refused(post_token(token_url, _unsigned_or_hmac(claims, alg="none")), "invalid_client")


def test_hs256_signed_with_the_public_key_is_refused(token_url, client):
    # The classic algorithm-confusion attack: HMAC keyed with the (public) RSA key.
    public_pem = shared_rsa_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    now = int(time.time())
    claims = {"iss": client.client_id, "sub": client.client_id, "aud": token_url, "exp": now + 120, "jti": "h-1"}
    assert_refused(post_token(token_url, _unsigned_or_hmac(claims, alg="HS256", secret=public_pem)), "invalid_client")


def test_wrong_aud(token_url, client):
    for aud in ("https://elsewhere.example/token", token_url + "/", f"{token_url}x"):
        assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=aud, kid=KID)
        assert_refused(post_token(token_url, assertion), "invalid_client")


def test_iss_differs_from_sub(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, sub="other")
    assert_refused(post_token(token_url, assertion), "invalid_client")


def test_expired_and_too_far_exp(token_url, client):
    now = int(time.time())
    for exp in (now - 120, now + 600, None):
        assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, exp=exp)
        assert_refused(post_token(token_url, assertion), "invalid_client")
    # A few seconds of clock skew is tolerated on both sides.
    for exp in (now - 5, now + 300 + 5):
        assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, exp=exp)
        assert post_token(token_url, assertion).status_code == 200


def test_replayed_jti(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    assert post_token(token_url, assertion).status_code == 200
    body = assert_refused(post_token(token_url, assertion), "invalid_client")
    assert "jti" in body["error_description"]
    # A new assertion reusing the jti is a replay too.
    again = client_assertion(
        shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID,
        jti=jwt.decode(assertion, options={"verify_signature": False})["jti"],
    )
    assert_refused(post_token(token_url, again), "invalid_client")
    assert UsedAssertion.objects.filter(client=client).count() == 1
    missing = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, jti=None)
    assert_refused(post_token(token_url, missing), "invalid_client")


def test_unknown_or_missing_kid(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid="not-registered")
    assert_refused(post_token(token_url, assertion), "invalid_client")
    no_kid = jwt.encode(
        {"iss": client.client_id, "sub": client.client_id, "aud": token_url, "exp": int(time.time()) + 60, "jti": "k"},
        shared_rsa_key(), algorithm="RS384",
    )
    assert_refused(post_token(token_url, no_kid), "invalid_client")


def test_bad_grant_type_and_assertion_type(token_url, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion, grant_type="authorization_code"), "unsupported_grant_type")
    assert_refused(post_token(token_url, assertion, grant_type=None), "invalid_request")
    assert_refused(post_token(token_url, assertion, client_assertion_type="urn:example:other"), "invalid_request")
    assert_refused(post_token(token_url, None), "invalid_request")
    assert_refused(post_token(token_url, assertion, scope=""), "invalid_request")
    assert_refused(post_token(token_url, "not-a-jwt"), "invalid_client")
    # The body must be form-encoded (RFC 6749 section 4.4.2).
    response = requests.post(token_url, json={"grant_type": "client_credentials"}, timeout=10)
    assert_refused(response, "invalid_request")
    # None of these consumed the jti: the untouched assertion still works.
    assert post_token(token_url, assertion).status_code == 200
    assert requests.get(token_url, timeout=10).status_code == 405


def test_every_refusal_is_audited_without_secrets(token_url, client):
    assertions = [
        client_assertion(make_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID),
        client_assertion(shared_rsa_key(), client_id=client.client_id, aud="https://x.example", kid=KID),
    ]
    for assertion in assertions:
        post_token(token_url, assertion)
    assert AuditEvent.objects.filter(action="token", outcome=AuditEvent.Outcome.DENIED).count() == len(assertions)
    assert_no_secret_in_audit(*assertions, *(a.split(".")[2] for a in assertions))


# --- JWKS served at a URL ---------------------------------------------------------------------


class _JWKSServer:
    """A tiny JWKS host on 127.0.0.1 that counts its requests."""

    def __init__(self, jwks: dict | None) -> None:
        self.jwks, self.hits = jwks, 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits += 1
                outer.answer(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        body = json.dumps(self.jwks).encode()
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks_server(settings) -> Iterator[_JWKSServer]:
    # A plain-http JWKS URL is only accepted with DEBUG on (SMART: TLS); the local test
    # server speaks http.
    settings.DEBUG = True
    server = _JWKSServer(jwks_for(shared_rsa_key(), KID))
    yield server
    server.close()


def test_jwks_url_is_fetched_and_cached(token_url, org, jwks_server):
    client = client_register(organization=org, jwks_url=jwks_server.url, scopes="system/*.read")
    for _ in range(3):
        assertion = client_assertion(
            shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, headers={"jku": jwks_server.url}
        )
        assert post_token(token_url, assertion).status_code == 200
    assert jwks_server.hits == 1


def test_key_rotation_at_jwks_url_is_picked_up(token_url, org, jwks_server):
    client = client_register(organization=org, jwks_url=jwks_server.url, scopes="system/*.read")
    assert post_token(token_url, client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)).status_code == 200
    new_key = make_ec_key()
    jwks_server.jwks = jwks_for(new_key, "rotated")
    assertion = client_assertion(new_key, client_id=client.client_id, aud=token_url, kid="rotated")
    assert post_token(token_url, assertion).status_code == 200
    assert jwks_server.hits == 2


def test_foreign_jku_is_refused_and_never_fetched(token_url, org, jwks_server):
    attacker_key = make_rsa_key()
    attacker = _JWKSServer(jwks_for(attacker_key, KID))
    try:
        client = client_register(organization=org, jwks_url=jwks_server.url, scopes="system/*.read")
        assertion = client_assertion(
            attacker_key, client_id=client.client_id, aud=token_url, kid=KID, headers={"jku": attacker.url}
        )
        assert_refused(post_token(token_url, assertion), "invalid_client")
        assert attacker.hits == 0
        # A client registered with an inline JWKS accepts no jku at all.
        inline = client_register(organization=org, jwks=jwks_for(shared_rsa_key(), KID), scopes="system/*.read")
        assertion = client_assertion(
            shared_rsa_key(), client_id=inline.client_id, aud=token_url, kid=KID, headers={"jku": attacker.url}
        )
        assert_refused(post_token(token_url, assertion), "invalid_client")
        assert attacker.hits == 0
    finally:
        attacker.close()


def test_unreachable_jwks_url_is_invalid_client(token_url, org, settings):
    settings.DEBUG = True  # a plain-http URL
    client = client_register(organization=org, jwks_url="http://127.0.0.1:9/jwks.json", scopes="system/*.read")
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion), "invalid_client")


class _HostileJWKSServer(_JWKSServer):
    """A JWKS host that drips its body a byte at a time, or cuts it short."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        super().__init__(None)

    def answer(self, handler: http.server.BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", "5000")
        handler.end_headers()
        try:
            if self.mode == "drip":
                for _ in range(40):  # 20 s in all, unless the client gives up
                    handler.wfile.write(b" ")
                    handler.wfile.flush()
                    time.sleep(0.5)
            else:
                handler.wfile.write(b'{"keys": [')  # then the connection closes
        except OSError:
            pass


@pytest.mark.parametrize("mode", ["drip", "cut"])
def test_a_slow_or_cut_short_jwks_is_refused_within_the_deadline_and_audited(token_url, org, settings, mode):
    # Issue "hardening": a dripping JWKS held a token request for 60 s, and a body cut
    # short answered 500 with nothing audited.
    settings.DEBUG = True  # the test host speaks plain http
    settings.PA_JWKS_DEADLINE_SECONDS = 1.5
    server = _HostileJWKSServer(mode)
    try:
        client = client_register(organization=org, jwks_url=server.url, scopes="system/*.read")
        assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
        started = time.monotonic()
        response = post_token(token_url, assertion)
        elapsed = time.monotonic() - started
    finally:
        server.close()
    assert_refused(response, "invalid_client")
    assert elapsed < 5, elapsed
    assert AuditEvent.objects.filter(action="token", outcome=AuditEvent.Outcome.DENIED).count() == 1


# --- Discovery and the CapabilityStatement ---------------------------------------------------


@pytest.mark.parametrize("path", ["/payer/fhir/.well-known/smart-configuration", "/.well-known/smart-configuration"])
def test_smart_configuration(base, token_url, path):
    response = requests.get(base + path, timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    config = response.json()
    assert config["token_endpoint"] == token_url
    assert config["token_endpoint_auth_methods_supported"] == ["private_key_jwt"]
    assert config["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert config["grant_types_supported"] == ["client_credentials"]
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert "system/*.read" in config["scopes_supported"]


def test_smart_configuration_uses_pa_base_url(live_server, settings):
    settings.PA_BASE_URL = "https://payer.example.org"
    config = requests.get(f"{live_server.url}/.well-known/smart-configuration", timeout=10).json()
    assert config["token_endpoint"] == "https://payer.example.org/payer/auth/token"


def test_capability_statement(base, token_url):
    response = requests.get(f"{base}/payer/fhir/metadata", timeout=10)  # no token needed
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    statement = CapabilityStatement.model_validate(body)
    assert statement.fhirVersion == "4.0.1"
    # Bulk Data req 1: instantiates the Bulk Data CapabilityStatement.
    assert "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in body["instantiates"]
    assert "http://hl7.org/fhir/us/davinci-pdex/CapabilityStatement/pdex-provider-access-server" in body["instantiates"]
    rest = body["rest"][0]
    assert rest["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    oauth = next(e for e in rest["security"]["extension"] if e["url"].endswith("/oauth-uris"))
    assert {"url": "token", "valueUri": token_url} in oauth["extension"]
    types = {r["type"]: r for r in rest["resource"]}
    for resource_type in ("Patient", "Encounter", "ExplanationOfBenefit", "Group", "Practitioner", "Location"):
        assert {i["code"] for i in types[resource_type]["interaction"]} == {"read", "search-type"}
    assert {o["name"] for o in types["Group"]["operation"]} == {"group-export", "davinci-data-export", "provider-member-match"}
    assert [o["name"] for o in types["Patient"]["operation"]] == ["patient-export"]
    assert [o["name"] for o in rest["operation"]] == ["export"]
    assert body["implementation"]["url"] == f"{base}/payer/fhir"


# --- Registration ----------------------------------------------------------------------------


def test_register_client_command_with_jwks_file(org, tmp_path, capsys, token_url):
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(jwks_for(shared_rsa_key(), KID)))
    call_command(
        "register_client", "--organization-npi", org.npi, "--jwks-file", str(jwks_file),
        "--scope", "system/Encounter.rs", "--scope", "system/Patient.rs", "--name", "Grace EHR",
    )
    client_id = capsys.readouterr().out.strip().splitlines()[-1]
    client = SmartClient.objects.get(client_id=client_id)
    assert client.organization == org and client.name == "Grace EHR"
    assert client.scopes == "system/Encounter.rs system/Patient.rs"
    # The registered client can get a token.
    assertion = client_assertion(shared_rsa_key(), client_id=client_id, aud=token_url, kid=KID)
    assert post_token(token_url, assertion, scope="system/Encounter.rs").json()["scope"] == "system/Encounter.rs"


def test_register_client_command_with_jwks_url(org, capsys):
    call_command("register_client", "--organization-npi", org.npi, "--jwks-url", "https://ehr.example.org/jwks.json")
    client = SmartClient.objects.get(client_id=capsys.readouterr().out.strip().splitlines()[-1])
    assert client.jwks_url == "https://ehr.example.org/jwks.json" and client.jwks is None
    assert client.scopes == "system/*.read"


def test_register_client_command_refuses_bad_input(org, tmp_path):
    key = shared_rsa_key()
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True) | {"kid": "p"}
    no_kid = {k: v for k, v in jwks_for(key, "x")["keys"][0].items() if k != "kid"}
    symmetric = {"kty": "oct", "k": "c2VjcmV0", "kid": "s"}
    for keys in ([private_jwk], [no_kid], [symmetric], []):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({"keys": keys}))
        with pytest.raises(CommandError):
            call_command("register_client", "--organization-npi", org.npi, "--jwks-file", str(path))
    good = tmp_path / "good.json"
    good.write_text(json.dumps(jwks_for(key, KID)))
    with pytest.raises(CommandError):
        call_command("register_client", "--organization-npi", "0000000000", "--jwks-file", str(good))
    with pytest.raises(CommandError):
        call_command("register_client", "--organization-npi", org.npi, "--jwks-file", str(good), "--scope", "user/*.read")
    assert not SmartClient.objects.exists()


def test_demo_client_ensure_is_idempotent_and_its_key_works(org, tmp_path, token_url):
    first = demo_client_ensure(organization=org, key_dir=tmp_path / "keys", client_id="grace-demo")
    pem_path = demo_key_path(key_dir=tmp_path / "keys", client_id="grace-demo")
    assert stat.S_IMODE(os.stat(pem_path).st_mode) == 0o600
    pem = pem_path.read_bytes()
    second = demo_client_ensure(organization=org, key_dir=tmp_path / "keys", client_id="grace-demo")
    assert first.pk == second.pk and pem_path.read_bytes() == pem
    assert SmartClient.objects.count() == 1
    assert "d" not in second.jwks["keys"][0]
    key = serialization.load_pem_private_key(pem, password=None)
    assertion = client_assertion(key, client_id="grace-demo", aud=token_url, kid=demo_key_kid(client_id="grace-demo"))
    assert post_token(token_url, assertion).status_code == 200


# --- Admin -----------------------------------------------------------------------------------


def test_admin_registers_a_client_and_audit_is_read_only(admin_client, org, token_url):
    response = admin_client.post(
        "/admin/payer/smartclient/add/",
        {
            "name": "Grace EHR", "organization": org.pk, "jwks_url": "",
            "jwks": json.dumps(jwks_for(shared_rsa_key(), KID)), "scopes": "system/*.read",
            "active": "on", "max_concurrent_exports": "5",
        },
    )
    assert response.status_code == 302, response.content
    client = SmartClient.objects.get(name="Grace EHR")
    assert len(client.client_id) >= 20
    # A private key is refused with a form error.
    private_jwk = jwt.algorithms.RSAAlgorithm.to_jwk(shared_rsa_key(), as_dict=True) | {"kid": "p"}
    response = admin_client.post(
        "/admin/payer/smartclient/add/",
        {"name": "Leaky", "organization": org.pk, "jwks": json.dumps({"keys": [private_jwk]}),
         "scopes": "system/*.read", "active": "on", "max_concurrent_exports": "5"},
    )
    assert response.status_code == 200 and b"private key" in response.content
    assert not SmartClient.objects.filter(name="Leaky").exists()

    post_token(token_url, client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID))
    event = AuditEvent.objects.get()
    changelist = admin_client.get("/admin/payer/auditevent/", {"q": client.client_id})
    assert changelist.status_code == 200 and client.client_id.encode() in changelist.content
    assert admin_client.get("/admin/payer/auditevent/", {"outcome__exact": "success"}).status_code == 200
    assert admin_client.get("/admin/payer/auditevent/add/").status_code == 403
    assert admin_client.post(f"/admin/payer/auditevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert AuditEvent.objects.filter(pk=event.pk).exists()


def test_issued_token_opens_a_protected_fhir_endpoint(token_url, base, client):
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    access_token = post_token(token_url, assertion).json()["access_token"]
    response = requests.get(f"{base}/payer/fhir/Group", headers={"Authorization": f"Bearer {access_token}"}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "Bundle"
    # Without a token, or with a made-up one: 401, WWW-Authenticate and an OperationOutcome.
    for headers in ({}, {"Authorization": "Bearer not-a-real-token"}):
        response = requests.get(f"{base}/payer/fhir/Group", headers=headers, timeout=10)
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
        assert response.json()["resourceType"] == "OperationOutcome"


# --- NUL characters, TLS for JWKS URLs, refetch limit, secrets in error reports, purge -------


@pytest.mark.parametrize("claims", [{"iss": "a\x00b", "sub": "a\x00b"}, {"jti": "x\x00y"}])
def test_nul_in_assertion_claims_is_invalid_client_and_audited(token_url, client, claims):
    # Postgres text holds no NUL: such a claim once reached the client lookup (iss) or the
    # UsedAssertion insert (jti) and answered an unaudited 500.
    if "iss" not in claims:
        claims = {**claims, "iss": client.client_id, "sub": client.client_id}
    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID, **claims)
    assert_refused(post_token(token_url, assertion), "invalid_client")
    assert "NUL" in AuditEvent.objects.order_by("-id").first().detail
    assert not UsedAssertion.objects.exists()


def test_plain_http_jwks_url_is_refused_unless_debug(token_url, org, jwks_server, settings):
    # SMART App Launch 2.x: TLS for every exchange; keys read over plain http could be swapped.
    settings.DEBUG = False
    with pytest.raises(ValidationError):
        client_register(organization=org, jwks_url=jwks_server.url, scopes="system/*.read")
    https = client_register(organization=org, jwks_url="https://ehr.example.org/jwks.json", scopes="system/*.read")
    # A client registered earlier with an http URL (or while DEBUG was on) gets no token,
    # and its URL is never fetched.
    legacy = SmartClient.objects.create(client_id="legacy", name="Legacy", organization=org,
                                        jwks_url=jwks_server.url, scopes="system/*.read")
    assertion = client_assertion(shared_rsa_key(), client_id=legacy.client_id, aud=token_url, kid=KID)
    assert_refused(post_token(token_url, assertion), "invalid_client")
    assert jwks_server.hits == 0
    assert https.jwks_url.startswith("https://")


def test_unknown_kid_refetches_the_jwks_at_most_once_per_interval(token_url, org, jwks_server):
    client = client_register(organization=org, jwks_url=jwks_server.url, scopes="system/*.read")
    assert post_token(token_url, client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)).status_code == 200
    assert jwks_server.hits == 1
    for n in range(5):  # made-up kids: one refetch, then refused from the cache
        assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=f"made-up-{n}")
        assert_refused(post_token(token_url, assertion), "invalid_client")
    assert jwks_server.hits == 2
    # Once the interval has passed (the marker expired), a rotated key is picked up again.
    cache.delete("payer:jwks-refetch:" + hashlib.sha256(jwks_server.url.encode()).hexdigest())
    new_key = make_ec_key()
    jwks_server.jwks = jwks_for(new_key, "rotated")
    assert post_token(token_url, client_assertion(new_key, client_id=client.client_id, aud=token_url, kid="rotated")).status_code == 200
    assert jwks_server.hits == 3


def test_token_view_keeps_the_assertion_out_of_error_reports(rf, client, token_url):
    from django.views.debug import SafeExceptionReporterFilter

    from payer.views.auth import TokenView

    assertion = client_assertion(shared_rsa_key(), client_id=client.client_id, aud=token_url, kid=KID)
    request = rf.post("/payer/auth/token", {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE,
                                            "client_assertion": assertion, "scope": "system/*.read"})
    TokenView.as_view()(request)
    shown = SafeExceptionReporterFilter().get_post_parameters(request)
    assert shown["client_assertion"] != assertion and "*" in shown["client_assertion"]
    assert shown["grant_type"] == "client_credentials"


def test_expired_access_tokens_are_purged_by_the_beat_task(client, settings):
    from payer.models import AccessToken
    from payer.services.auth import access_token_issue
    from payer.tasks import access_tokens_purge_task

    _, live = access_token_issue(client=client, scopes=["system/*.read"])
    _, old = access_token_issue(client=client, scopes=["system/*.read"])
    AccessToken.objects.filter(pk=old.pk).update(expires_at=old.issued_at - datetime.timedelta(seconds=1))
    assert access_tokens_purge_task() == 1
    assert list(AccessToken.objects.values_list("pk", flat=True)) == [live.pk]
    assert any(entry["task"] == "payer.tasks.access_tokens_purge_task" for entry in settings.CELERY_BEAT_SCHEDULE.values())


def test_capability_statement_lists_every_supported_search_parameter(base):
    rest = requests.get(f"{base}/payer/fhir/metadata", timeout=10).json()["rest"][0]
    params = {r["type"]: {p["name"]: p["type"] for p in r["searchParam"]} for r in rest["resource"]}
    assert params["Patient"] == {"_id": "token", "_lastUpdated": "date", "identifier": "token"}
    assert params["Encounter"] == {"_id": "token", "_lastUpdated": "date", "patient": "reference", "date": "date"}
    assert params["Group"] == {"_id": "token", "identifier": "token", "name": "string", "characteristic": "token"}
    assert params["Observation"]["patient"] == "reference" and params["ExplanationOfBenefit"]["patient"] == "reference"
    assert "patient" not in params["Practitioner"]
