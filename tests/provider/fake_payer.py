"""A small Bulk Data IG 2.0 server for the client's tests: a real HTTP peer on 127.0.0.1.

It is not a mock of our code: it speaks HTTP like any payer would, checks SMART Backend
Services assertions with the client's public key, and can be told to misbehave the way
real servers do (429, 503, Retry-After as seconds or an HTTP-date, a connection dropped
mid-download, an expired token, a corrupt NDJSON line) while recording what it was sent.
Hostile modes, for the client's limits: a manifest rewritten by ``manifest_hook``, a
``Content-Location`` or a Group Bundle ``next`` link elsewhere, 202 for ever, and file
faults that redirect, send a gzip bomb or a giant line, or trickle slowly.
"""

from __future__ import annotations

import email.utils
import gzip
import json
import threading
import time
import uuid
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa


def key_pair(algorithm: str = "RS384") -> tuple[bytes, bytes]:
    """Return a fresh (private PEM, public PEM) pair for ``algorithm``."""
    if algorithm == "ES384":
        key = ec.generate_private_key(ec.SECP384R1())
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return private, public


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any = None


@dataclass
class Export:
    id: str
    request: str
    transaction_time: str
    files: dict[str, bytes]  # name -> NDJSON
    manifest_files: list[dict]
    deleted: list[dict]
    errors: list[dict]
    polls: int = 0
    cancelled: bool = False


@dataclass
class FakePayer:
    """The server's state and its programmable faults (set attributes from the test)."""

    client_id: str
    public_key: bytes
    key_id: str = "test-key"
    resources: dict[str, list[dict]] = field(default_factory=dict)
    groups: list[dict] = field(default_factory=list)
    deleted_refs: list[str] = field(default_factory=list)
    error_outcomes: list[dict] = field(default_factory=list)
    # Before the manifest: one status answer per item, e.g. (202, {"X-Progress": "50%"}),
    # (429, {"Retry-After": "1"}), (503, {}). After the list is used up: 200 + manifest.
    poll_script: list[tuple[int, dict[str, str]]] = field(default_factory=lambda: [(202, {"X-Progress": "Preparing", "Retry-After": "1"})])
    kickoff_script: list[tuple[int, dict[str, str]]] = field(default_factory=list)
    # File faults by resource type: "drop" (close after half the bytes, once), "503"
    # (once), "corrupt" (append a broken line, counted), "short" (count one more than served),
    # "expire" (every token expires as the file is first asked for, once).
    file_faults: dict[str, list[str]] = field(default_factory=dict)
    requires_access_token: bool = True
    token_lifetime: int = 300
    identifier_search: bool = True
    davinci: bool = False
    well_known: bool = True
    # Hostile modes: rewrite the manifest; send the status URL or the Group Bundle's next
    # link elsewhere; answer 202 to every poll; manifest pages of this many entries (link).
    manifest_hook: Callable[[dict], dict] | None = None
    content_location: str | None = None
    group_next: str | None = None
    poll_forever: bool = False
    poll_forever_progress: str = "Still working"
    # Set: each kick-off waits until it is set before answering (a slow payer; lets a test
    # act, e.g. cancel, while the kick-off is in flight).
    kickoff_hold: threading.Event | None = None
    manifest_page_size: int = 0
    # More file faults by resource type: ("redirect", url), ("bomb", decoded bytes),
    # ("longline", bytes), ("trickle", seconds per 1/20 of the body).
    file_hostile: dict[str, tuple[str, Any]] = field(default_factory=dict)
    # PDex 2.2 $provider-member-match: declared in the CapabilityStatement and served.
    member_match: bool = False
    # Patient ids that have opted out; reported in ConsentConstrainedMembers only when
    # disclose_opt_out (else in NonMatchedMembers, PDex §pdex-261a).
    opted_out: set[str] = field(default_factory=set)
    disclose_opt_out: bool = True
    # Refuse every treatment attestation: NonMatchedMembers plus an OperationOutcome in the
    # manifest's error file saying why.
    refuse_attestation: bool = False

    def __post_init__(self) -> None:
        self.log: list[Recorded] = []
        self.tokens: dict[str, float] = {}
        self.used_jti: set[str] = set()
        self.exports: dict[str, Export] = {}
        self.assertion_claims: list[dict] = []
        self.assertion_headers: list[dict] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle and helpers for tests -------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/fhir"

    @property
    def token_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/auth/token"

    def start(self) -> FakePayer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def expire_tokens(self) -> None:
        """Make every issued token invalid, as if it had expired."""
        with self.lock:
            self.tokens.clear()

    def requests_to(self, fragment: str, method: str | None = None) -> list[Recorded]:
        return [r for r in self.log if fragment in r.path and (method is None or r.method == method)]

    # -- the export itself -------------------------------------------------------------

    def _patient_of(self, resource: dict) -> str | None:
        if resource.get("resourceType") == "Patient":
            return resource.get("id")
        for key in ("subject", "patient", "beneficiary"):
            reference = (resource.get(key) or {}).get("reference", "")
            if reference.startswith("Patient/"):
                return reference.split("/", 1)[1]
        return None

    def export_create(self, *, request: str, types: list[str] | None, since: str | None, patients: list[str] | None) -> Export:
        export_id = uuid.uuid4().hex[:12]
        since_dt = datetime.fromisoformat(since.replace("Z", "+00:00")) if since else None
        files: dict[str, bytes] = {}
        manifest_files: list[dict] = []
        for resource_type, items in sorted(self.resources.items()):
            if types and resource_type not in types:
                continue
            chosen = []
            for resource in items:
                # Resources about no patient (Practitioner, Location) go with every
                # export, as a payer sends the directory entries its data references.
                owner = self._patient_of(resource)
                if patients is not None and owner is not None and owner not in patients:
                    continue
                updated = (resource.get("meta") or {}).get("lastUpdated")
                if since_dt and updated and datetime.fromisoformat(updated.replace("Z", "+00:00")) <= since_dt:
                    continue
                chosen.append(resource)
            if not chosen:
                continue
            lines = [json.dumps(resource) for resource in chosen]
            faults = self.file_faults.get(resource_type, [])
            if "corrupt" in faults:
                lines.insert(len(lines) // 2, '{"resourceType": "%s", "id": "broken", ' % resource_type)
            count = len(lines) + (1 if "short" in faults else 0)
            name = f"{export_id}-{resource_type}.ndjson"
            files[name] = ("\n".join(lines) + "\n").encode()
            manifest_files.append({"type": resource_type, "url": f"{self.base_url}/files/{name}", "count": count})
        deleted = []
        if self.deleted_refs and since:
            bundle = {
                "resourceType": "Bundle", "type": "transaction",
                "entry": [{"request": {"method": "DELETE", "url": ref}} for ref in self.deleted_refs],
            }
            name = f"{export_id}-deleted.ndjson"
            files[name] = (json.dumps(bundle) + "\n").encode()
            deleted.append({"type": "Bundle", "url": f"{self.base_url}/files/{name}"})
        errors = []
        if self.error_outcomes:
            name = f"{export_id}-errors.ndjson"
            files[name] = ("\n".join(json.dumps(o) for o in self.error_outcomes) + "\n").encode()
            errors.append({"type": "OperationOutcome", "url": f"{self.base_url}/files/{name}"})
        export = Export(
            id=export_id, request=request, transaction_time=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            files=files, manifest_files=manifest_files, deleted=deleted, errors=errors,
        )
        self.exports[export_id] = export
        return export

    def member_match_create(self, *, request: str, body: Any) -> Export | dict:
        """Decide each MemberBundle and write the result Groups as one Group NDJSON file
        (PDex 2.2 §pdex-288a); return the export, or an OperationOutcome for a bad request.

        A member matches when a Patient has the coverage's subscriberId as an identifier and
        the same birth date, family name (case-insensitive) and gender.
        """
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters" or not body.get("parameter"):
            return _outcome("structure", "The body must be a Parameters resource with MemberBundle parameters.")
        buckets: dict[str, list[tuple[dict, str | None]]] = {"match": [], "nomatch": [], "consentconstraint": []}
        errors: list[dict] = []
        for parameter in body["parameter"]:
            parts = {part.get("name"): part.get("resource") for part in parameter.get("part", [])}
            if parameter.get("name") != "MemberBundle" or not parts.get("MemberPatient") or not parts.get("CoverageToMatch"):
                return _outcome("structure", "A MemberBundle needs MemberPatient and CoverageToMatch.")
            if not parts.get("Consent"):
                return {**_outcome("required", "MemberBundle part Consent (the treatment attestation) is required."), "status": 422}
            submitted, coverage = parts["MemberPatient"], parts["CoverageToMatch"]
            name = (submitted.get("name") or [{}])[0]
            found = next((p for p in self.resources.get("Patient", [])
                          if any(i.get("value") == coverage.get("subscriberId") for i in p.get("identifier", []))
                          and p.get("birthDate") == submitted.get("birthDate")
                          and (p.get("name") or [{}])[0].get("family", "").lower() == (name.get("family") or "").lower()
                          and p.get("gender") == submitted.get("gender")), None)
            if found is None:
                buckets["nomatch"].append((submitted, None))
            elif self.refuse_attestation:
                buckets["nomatch"].append((submitted, None))
                errors.append(_outcome("forbidden", "The treatment attestation was not accepted: the practitioner is unknown."))
            elif found["id"] in self.opted_out:
                buckets["consentconstraint" if self.disclose_opt_out else "nomatch"].append((submitted, found["id"]))
            else:
                buckets["match"].append((submitted, found["id"]))
        export_id = uuid.uuid4().hex[:12]
        pdex = "http://hl7.org/fhir/us/davinci-pdex"
        profiles = {"match": "pdex-provider-member-match", "nomatch": "pdex-provider-member-no-match",
                    "consentconstraint": "pdex-member-opt-out"}
        lines = []
        for code, entries in buckets.items():
            if code != "match" and not entries:
                continue
            group_id = f"{code}-{export_id}"
            contained, members = [], []
            for index, (submitted, patient_id) in enumerate(entries):
                local = f"submitted-{index}"
                contained.append({**submitted, "id": local})
                link = [{"url": f"{pdex}/StructureDefinition/base-ext-match-parameters", "valueReference": {"reference": f"#{local}"}}]
                reference = f"#{local}" if patient_id is None else f"Patient/{patient_id}"
                members.append({"entity": {"reference": reference, "extension": link}, "inactive": False})
            group = {"resourceType": "Group", "id": group_id, "meta": {"profile": [f"{pdex}/StructureDefinition/{profiles[code]}"]},
                     "type": "person", "actual": True,
                     "code": {"coding": [{"system": f"{pdex}/CodeSystem/PdexMultiMemberMatchResultCS", "code": code}]},
                     "contained": contained, "member": members, "quantity": len(members)}
            lines.append(json.dumps(group))
            if code == "match":
                # The MatchedMembers Group is what $davinci-data-export is then asked for.
                self.groups.append({"resourceType": "Group", "id": group_id, "type": "person", "actual": True,
                                    "member": [{"entity": {"reference": m["entity"]["reference"]}} for m in members]})
        name = f"{export_id}-Group.ndjson"
        files = {name: ("\n".join(lines) + "\n").encode()}
        manifest_errors = []
        if errors:
            files[f"{export_id}-errors.ndjson"] = ("\n".join(json.dumps(o) for o in errors) + "\n").encode()
            manifest_errors.append({"type": "OperationOutcome", "url": f"{self.base_url}/files/{export_id}-errors.ndjson"})
        export = Export(
            id=export_id, request=request, transaction_time=datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            files=files, manifest_files=[{"type": "Group", "url": f"{self.base_url}/files/{name}", "count": len(lines)}],
            deleted=[], errors=manifest_errors,
        )
        self.exports[export_id] = export
        return export

    def manifest(self, export: Export) -> dict:
        return {
            "transactionTime": export.transaction_time,
            "request": export.request,
            "requiresAccessToken": self.requires_access_token,
            "output": export.manifest_files,
            "deleted": export.deleted,
            "error": export.errors,
        }

    def capability_statement(self) -> dict:
        operations = [{"name": "export", "definition": "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"}]
        if self.member_match:
            operations.append({"name": "provider-member-match",
                               "definition": "http://hl7.org/fhir/us/davinci-pdex/OperationDefinition/ProviderMemberMatch"})
        if self.davinci:
            operations.append({"name": "davinci-data-export", "definition": "http://hl7.org/fhir/us/davinci-atr/OperationDefinition/davinci-data-export"})
        return {
            "resourceType": "CapabilityStatement", "status": "active", "date": "2026-01-01", "kind": "instance",
            "fhirVersion": "4.0.1", "format": ["json"],
            "rest": [{
                "mode": "server",
                "security": {"extension": [{
                    "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                    "extension": [{"url": "token", "valueUri": self.token_url}],
                }]},
                "resource": [{"type": "Group", "operation": operations}, {"type": "Patient"}],
            }],
        }


def _outcome(code: str, text: str) -> dict:
    return {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}


def _code_for(status: int) -> str:
    """Return the OperationOutcome issue code a scripted error answer carries: 503 transient, 429 throttled, else processing."""
    return {503: "transient", 429: "throttled"}.get(status, "processing")


def _handler_for(payer: FakePayer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        # -- plumbing --
        def _send(self, status: int, body: Any = None, headers: dict[str, str] | None = None, content_type: str = "application/fhir+json") -> None:
            data = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if data:
                self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if data and self.command != "HEAD":
                self.wfile.write(data)

        def _record(self) -> tuple[str, dict[str, list[str]], Any]:
            parts = urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body: Any = raw.decode() if raw else None
            if raw and "json" in (self.headers.get("Content-Type") or ""):
                body = json.loads(raw)
            elif raw and "x-www-form-urlencoded" in (self.headers.get("Content-Type") or ""):
                body = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            query = parse_qs(parts.query)
            with payer.lock:
                payer.log.append(Recorded(self.command, parts.path, query, dict(self.headers.items()), body))
            return parts.path, query, body

        def _authorized(self) -> bool:
            header = self.headers.get("Authorization", "")
            token = header[7:] if header.startswith("Bearer ") else ""
            with payer.lock:
                expires = payer.tokens.get(token)
            if expires is None or expires < time.time():
                self._send(401, _outcome("login", "The access token is missing, invalid or expired."),
                           {"WWW-Authenticate": 'Bearer error="invalid_token"'})
                return False
            return True

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def do_DELETE(self) -> None:
            self._route()

        def _route(self) -> None:
            path, query, body = self._record()
            base = "/fhir"
            if path == "/auth/token" and self.command == "POST":
                return self._token(body or {})
            if path == f"{base}/.well-known/smart-configuration":
                if not payer.well_known:
                    return self._send(404, _outcome("not-found", "No SMART configuration."))
                return self._send(200, {"token_endpoint": payer.token_url, "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                                        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"]}, content_type="application/json")
            if path == f"{base}/metadata":
                return self._send(200, payer.capability_statement())
            if path.startswith(f"{base}/files/"):
                return self._file(path.rsplit("/", 1)[1])
            if not self._authorized():
                return None
            rest = path[len(base):]
            if rest == "/Group/$provider-member-match" and self.command == "POST" and payer.member_match:
                return self._member_match(body)
            if rest.endswith("/$export") or rest.endswith("/$davinci-data-export") or rest in {"/$export"}:
                return self._kick_off(rest, query, body)
            if rest.startswith("/status/"):
                return self._status(rest.split("/")[2])
            if rest.startswith("/manifest/"):
                _, _, export_id, page = rest.split("/")
                export = payer.exports[export_id]
                return self._send(200, self._manifest_page(export, payer.manifest(export), int(page)), content_type="application/json")
            if rest == "/Group":
                links = [{"relation": "next", "url": payer.group_next}] if payer.group_next else []
                return self._bundle(payer.groups, links)
            if rest.startswith("/Group/"):
                group = next((g for g in payer.groups if g["id"] == rest.split("/")[2]), None)
                return self._send(200, group) if group else self._send(404, _outcome("not-found", "No such Group."))
            if rest == "/Patient":
                if not payer.identifier_search:
                    return self._send(400, _outcome("not-supported", "Search by identifier is not supported."))
                value = (query.get("identifier") or [""])[0].split("|")[-1]
                matches = [p for p in payer.resources.get("Patient", []) if any(i.get("value") == value for i in p.get("identifier", []))]
                return self._bundle(matches)
            if rest.startswith("/Patient/"):
                patient = next((p for p in payer.resources.get("Patient", []) if p["id"] == rest.split("/")[2]), None)
                return self._send(200, patient) if patient else self._send(404, _outcome("not-found", "No such Patient."))
            return self._send(404, _outcome("not-found", f"Unknown path {path}"))

        def _bundle(self, resources: list[dict], links: list[dict] | None = None) -> None:
            self._send(200, {"resourceType": "Bundle", "type": "searchset", "total": len(resources), "link": links or [],
                             "entry": [{"resource": r, "search": {"mode": "match"}} for r in resources]})

        # -- SMART Backend Services token endpoint --
        def _token(self, form: dict[str, str]) -> None:
            def refuse(text: str) -> None:
                self._send(400, {"error": "invalid_client", "error_description": text}, content_type="application/json")

            if form.get("grant_type") != "client_credentials":
                return refuse("grant_type must be client_credentials")
            if form.get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer":
                return refuse("wrong client_assertion_type")
            assertion = form.get("client_assertion", "")
            try:
                header = jwt.get_unverified_header(assertion)
                claims = jwt.decode(assertion, payer.public_key, algorithms=["RS384", "ES384"], audience=payer.token_url,
                                    options={"require": ["iss", "sub", "aud", "exp", "jti"]})
            except jwt.PyJWTError as error:
                return refuse(f"bad assertion: {error}")
            if header.get("kid") != payer.key_id:
                return refuse("unknown kid")
            if claims["iss"] != payer.client_id or claims["sub"] != payer.client_id:
                return refuse("iss and sub must be the client id")
            if claims["exp"] > time.time() + 300 + 5:
                return refuse("exp is more than five minutes away")
            with payer.lock:
                if claims["jti"] in payer.used_jti:
                    return refuse("jti replayed")
                payer.used_jti.add(claims["jti"])
                payer.assertion_claims.append(claims)
                payer.assertion_headers.append(header)
                token = uuid.uuid4().hex
                payer.tokens[token] = time.time() + payer.token_lifetime
            self._send(200, {"access_token": token, "token_type": "bearer", "expires_in": payer.token_lifetime,
                             "scope": form.get("scope", "")}, content_type="application/json")

        # -- Bulk Data --
        def _kick_off(self, rest: str, query: dict[str, list[str]], body: Any) -> None:
            if payer.kickoff_hold is not None:
                payer.kickoff_hold.wait(timeout=30)
            if payer.kickoff_script:
                status, headers = payer.kickoff_script.pop(0)
                return self._send(status, _outcome(_code_for(status), "Busy"), headers)
            if self.headers.get("Prefer") != "respond-async":
                return self._send(400, _outcome("invalid", "Prefer: respond-async is required."))
            params: dict[str, list[str]] = {k: list(v) for k, v in query.items()}
            patients: list[str] | None = None
            if isinstance(body, dict) and body.get("resourceType") == "Parameters":
                for parameter in body.get("parameter", []):
                    if parameter["name"] == "patient":
                        patients = (patients or []) + [parameter["valueReference"]["reference"].split("/")[-1]]
                    else:
                        value = next(v for k, v in parameter.items() if k.startswith("value"))
                        params.setdefault(parameter["name"], []).append(value)
            if rest.startswith("/Group/"):
                group = next((g for g in payer.groups if g["id"] == rest.split("/")[2]), None)
                if group is None:
                    return self._send(404, _outcome("not-found", "No such Group."))
                members = [m["entity"]["reference"].split("/")[-1] for m in group.get("member", [])]
                if patients is not None and not set(patients) <= set(members):
                    return self._send(422, _outcome("invalid", "A requested patient is not a member of the group."))
                patients = patients if patients is not None else members
            types = [t for value in params.get("_type", []) for t in value.split(",")] or None
            since = (params.get("_since") or [None])[0]
            export = payer.export_create(request=f"{payer.base_url}{rest}", types=types, since=since, patients=patients)
            location = payer.content_location or f"{payer.base_url}/status/{export.id}"
            self._send(202, _outcome("informational", "Accepted"), {"Content-Location": location})

        def _member_match(self, body: Any) -> None:
            if self.headers.get("Prefer") != "respond-async":
                return self._send(400, _outcome("invalid", "Prefer: respond-async is required."))
            export = payer.member_match_create(request=f"{payer.base_url}/Group/$provider-member-match", body=body)
            if isinstance(export, dict):
                status = export.pop("status", 400)
                return self._send(status, export)
            self._send(202, _outcome("informational", "Accepted"), {"Content-Location": f"{payer.base_url}/status/{export.id}"})

        def _status(self, export_id: str) -> None:
            export = payer.exports.get(export_id)
            if export is None or export.cancelled:
                return self._send(404, _outcome("not-found", "No such export."))
            if self.command == "DELETE":
                export.cancelled = True
                return self._send(202, _outcome("informational", "Deleted"))
            export.polls += 1
            if payer.poll_forever:
                return self._send(202, None, {"X-Progress": payer.poll_forever_progress, "Retry-After": "1"})
            if payer.poll_script:
                status, headers = payer.poll_script.pop(0)
                body = None if status == 202 else _outcome(_code_for(status), "Try later")
                return self._send(status, body, headers)
            manifest = payer.manifest(export)
            if payer.manifest_page_size:
                manifest = self._manifest_page(export, manifest, 0)
            if payer.manifest_hook:
                manifest = payer.manifest_hook(manifest)
            self._send(200, manifest, {"Expires": email.utils.formatdate(time.time() + 3600, usegmt=True)},
                       content_type="application/json")

        def _manifest_page(self, export: Export, manifest: dict, page: int) -> dict:
            size = payer.manifest_page_size
            items = manifest["output"][page * size:(page + 1) * size]
            more = len(manifest["output"]) > (page + 1) * size
            link = [{"relation": "next", "url": f"{payer.base_url}/manifest/{export.id}/{page + 1}"}] if more else []
            return {**manifest, "output": items, "deleted": manifest["deleted"] if page == 0 else [],
                    "error": manifest["error"] if page == 0 else [], "link": link}

        def _file(self, name: str) -> None:
            faults = payer.file_faults.get(name.split("-", 1)[-1].rsplit(".", 1)[0], [])
            if "expire" in faults:
                faults.remove("expire")
                payer.expire_tokens()  # the token dies in the middle of the downloads
            if payer.requires_access_token and not self._authorized():
                return None
            export = next((e for e in payer.exports.values() if name in e.files), None)
            if export is None:
                return self._send(404, _outcome("not-found", "No such file."))
            resource_type = name.split("-", 1)[1].rsplit(".", 1)[0]
            if resource_type in payer.file_hostile:
                return self._hostile_file(*payer.file_hostile[resource_type], data=export.files[name])
            faults = payer.file_faults.get(resource_type, [])
            if "503" in faults:
                faults.remove("503")
                return self._send(503, _outcome("transient", "Busy"), {"Retry-After": "1"})
            data = export.files[name]
            range_header = self.headers.get("Range", "")
            if range_header.startswith("bytes="):
                start = int(range_header[6:].split("-")[0])
                if start >= len(data):
                    return self._send(416, None, {"Content-Range": f"bytes */{len(data)}"})
                part = data[start:]
                return self._send(206, part, {"Content-Range": f"bytes {start}-{len(data) - 1}/{len(data)}", "Accept-Ranges": "bytes"},
                                  content_type="application/fhir+ndjson")
            headers = {"Accept-Ranges": "bytes"}
            body = data
            if "gzip" in (self.headers.get("Accept-Encoding") or ""):
                body = gzip.compress(data)
                headers["Content-Encoding"] = "gzip"
            if "drop" in faults:
                # Send the headers for the whole body, half of it, then hang up.
                faults.remove("drop")
                self.send_response(200)
                for key, value in {**headers, "Content-Type": "application/fhir+ndjson", "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            self._send(200, body, headers, content_type="application/fhir+ndjson")

        def _hostile_file(self, mode: str, value: Any, *, data: bytes) -> None:
            if mode == "redirect":
                return self._send(302, None, {"Location": value})
            if mode == "bomb":
                # Newlines only: short lines, so only the decoded-size limit can stop it.
                return self._send(200, _gzip_bomb(value), {"Content-Encoding": "gzip"}, content_type="application/fhir+ndjson")
            if mode == "longline":
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+ndjson")
                self.send_header("Content-Length", str(value + 1))
                self.end_headers()
                block = b"x" * 65536
                try:
                    for start in range(0, value, len(block)):
                        self.wfile.write(block[: min(len(block), value - start)])
                    self.wfile.write(b"\n")
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client hung up at its limit
                return None
            if mode == "trickle":
                self.send_response(200)
                self.send_header("Content-Type", "application/fhir+ndjson")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                step = max(1, len(data) // 20)
                try:
                    for start in range(0, len(data), step):
                        self.wfile.write(data[start:start + step])
                        self.wfile.flush()
                        time.sleep(value)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                return None
            raise ValueError(mode)

    return Handler


_BOMBS: dict[int, bytes] = {}


def _gzip_bomb(size: int) -> bytes:
    if size not in _BOMBS:
        compressor = zlib.compressobj(9, wbits=31)
        block = b"\n" * (1 << 20)
        parts = [compressor.compress(block) for _ in range(size >> 20)]
        _BOMBS[size] = b"".join(parts) + compressor.flush()
    return _BOMBS[size]


class RecordingServer:
    """Another origin (an internal page, a foreign host): answers anything with 200 and records each request."""

    def __init__(self, body: bytes = b"<html>internal admin page: secret</html>") -> None:
        self.log: list[Recorded] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                recorder.log.append(Recorded(self.command, urlsplit(self.path).path, {}, dict(self.headers.items())))
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
