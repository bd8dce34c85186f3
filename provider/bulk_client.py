"""A FHIR Bulk Data IG 2.0 client with SMART Backend Services authorization.

Plain Python on ``requests``: no Django inside, so it works on its own (a script, the
``bulk_fetch`` command) and from Celery tasks. It talks to any Bulk Data 2.0 server, not
only this project's payer. Nothing here sleeps to wait for the server: ``poll`` returns how
long to wait, and the caller (a task rescheduled with ``countdown``, or the command) waits.

Specs: Bulk Data IG 2.0.0 (https://hl7.org/fhir/uv/bulkdata/STU2/export.html), SMART App
Launch 2.x Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html),
Da Vinci PDex STU2 / ATR ``$davinci-data-export``.

One door: every request goes through ``BulkDataClient.request``, which enforces where the
client may go (``OriginPolicy``: the FHIR base's origin, the token endpoint, and origins the
connection lists; no private addresses unless the base is one), where the bearer token may
go (never across a redirect to another origin: redirects are followed by hand), and reads
bodies through a bounded decoder, so a gzip bomb or a giant line stops at the limit.
Error texts carry the payer's OperationOutcome diagnostics (truncated), never a body.
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import random
import re
import socket
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import jwt
import requests
import urllib3

logger = logging.getLogger(__name__)

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"
# PDex STU2 Provider Access: exportType values of $davinci-data-export.
PDEX_PROVIDER_DOWNLOAD = "hl7.fhir.us.davinci-pdex#provider-download"
PDEX_PROVIDER_DELTA = "hl7.fhir.us.davinci-pdex#provider-delta"
OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"

# Status codes worth another try later: throttled (429), unavailable (503), and the
# timeouts and bad gateways that intermediaries answer for a network failure (408, 502,
# 504). Any other 4xx/5xx is the payer's answer and fails at once, unless its
# OperationOutcome says the issue is transient or throttled (FHIR R4 issue-type codes).
TRANSIENT_STATUSES = frozenset({408, 429, 502, 503, 504})
TRANSIENT_ISSUE_CODES = frozenset({"transient", "throttled", "timeout"})
TRANSIENT_NETWORK_ERRORS = (
    requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError,
    urllib3.exceptions.ProtocolError, urllib3.exceptions.ReadTimeoutError,
)
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_REDIRECTS = 5
# Error texts show at most this much of the payer's diagnostics.
DIAGNOSTICS_LIMIT = 500


# FHIR R4 search.html "Search result parameters": they shape a search's response, and
# Bulk Data 2.0 "_typeFilter" says they SHALL NOT be used in a _typeFilter (req 114).
SEARCH_RESULT_PARAMETERS = frozenset(
    {"_sort", "_count", "_include", "_revinclude", "_summary", "_total", "_elements", "_contained", "_containedType"}
)


def type_filters_check(type_filters: list[str]) -> None:
    """Raise ValueError unless each ``_typeFilter`` is ``[type]?[search parameters]`` without
    search result parameters such as ``_include`` and ``_sort`` (Bulk Data 2.0 req 114)."""
    for type_filter in type_filters:
        resource_type, _, query = type_filter.partition("?")
        if not resource_type or not resource_type[:1].isupper() or not query:
            raise ValueError(f"_typeFilter {type_filter!r} is not of the form [type]?[search parameters].")
        for name, _ in parse_qsl(query, keep_blank_values=True):
            if name.split(":", 1)[0] in SEARCH_RESULT_PARAMETERS:
                raise ValueError(
                    f"_typeFilter {type_filter!r} uses {name.split(':', 1)[0]}: search result parameters such as "
                    "_include and _sort SHALL NOT be used in a _typeFilter (Bulk Data 2.0)."
                )


class BulkDataError(Exception):
    """The server refused or failed a request for good; ``outcome`` is its OperationOutcome, if any."""

    def __init__(self, message: str, *, status: int | None = None, outcome: dict | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.outcome = outcome


class TransientError(BulkDataError):
    """The server is busy or unreachable; try again after ``retry_after`` seconds (None: back off)."""

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message, status=status)
        self.retry_after = retry_after


class TokenRefused(BulkDataError):
    """The token endpoint refused the client's assertion (RFC 6749 §5.2): its credentials or registration."""


class CountMismatch(BulkDataError):
    """A downloaded file has not as many resources as the manifest's ``count`` said."""


class OriginRefused(BulkDataError):
    """A URL the connection does not allow: another origin, or a private address."""


class LimitExceeded(BulkDataError):
    """A body, file, line or manifest went past the connection's limit."""


class ManifestError(BulkDataError):
    """The completion manifest is not what Bulk Data 2.0 "Response - Complete Status" describes."""


@dataclass(frozen=True)
class Limits:
    """How much the client takes from a payer (per connection, safe defaults)."""

    max_file_bytes: int = 4 * 1024**3
    max_line_bytes: int = 16 * 1024**2
    max_manifest_files: int = 10_000
    # JSON answers (manifests, Bundles, tokens); a manifest entry is ~200 bytes.
    max_json_bytes: int = 64 * 1024**2
    max_manifest_pages: int = 1_000


def origin_of(url: str) -> str:
    """Return ``scheme://host:port`` of ``url`` (RFC 6454 origin), lower case, with the default port."""
    parts = urlsplit(url.strip())
    scheme = (parts.scheme or "").lower()
    try:
        port = parts.port
    except ValueError:
        raise OriginRefused("The URL has an invalid port.") from None
    port = port or {"http": 80, "https": 443}.get(scheme)
    return f"{scheme}://{(parts.hostname or '').lower()}:{port}"


def origins_parse(text: str | list[str] | tuple[str, ...] | None) -> set[str]:
    """Return the origins of a one-per-line (or whitespace or comma separated) list."""
    items = text.replace(",", " ").split() if isinstance(text, str) else list(text or [])
    return {origin_of(item) for item in items if item.strip()}


def host_is_private(host: str) -> bool:
    """Return whether ``host`` is (or resolves to) a private, loopback, link-local or otherwise non-public address.

    A name that does not resolve is not refused here; the request then fails as a
    network error. (The check and the connection resolve separately, so a DNS answer
    that changes in between is not caught; an egress proxy closes that gap.)
    """
    host = host.strip("[]")
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        try:
            addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in socket.getaddrinfo(host, None)]
        except (socket.gaierror, UnicodeError, ValueError):
            return False
    return any(not address.is_global or address.is_multicast for address in addresses)


class OriginPolicy:
    """Where requests may go and where the bearer token may go.

    Bulk Data 2.0 req 201 and SMART Backend Services: the access token is a bearer
    credential; it goes to the FHIR server that issued the export and to origins the
    connection names as token-bearing, nowhere else. Requests without it may also go to
    the token endpoint and to the file origins the connection lists (a storage bucket).
    Private, loopback and link-local addresses are refused unless the FHIR base itself
    is on one (a demo on 127.0.0.1, a payer inside the hospital's network).
    """

    def __init__(self, base_url: str, *, file_origins: Any = None, token_origins: Any = None) -> None:
        self.base_origin = origin_of(base_url)
        self.token_origins = {self.base_origin} | origins_parse(token_origins)
        self.allowed = self.token_origins | origins_parse(file_origins)
        self._private_ok: bool | None = None

    def allow(self, origin: str) -> None:
        """Allow requests (without the token) to ``origin``: the discovered token endpoint's."""
        self.allowed.add(origin)

    @property
    def private_ok(self) -> bool:
        if self._private_ok is None:
            self._private_ok = host_is_private(urlsplit(self.base_origin).hostname or "")
        return self._private_ok

    def check(self, url: str) -> bool:
        """Raise OriginRefused unless ``url`` may be requested; return whether it may carry the token."""
        parts = urlsplit(url)
        if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
            raise OriginRefused(f"Refused a request to {_url_text(url)}: not an absolute http(s) URL.")
        origin = origin_of(url)
        if origin not in self.allowed:
            raise OriginRefused(
                f"Refused a request to {_url_text(url)}: {origin} is neither the payer's FHIR server ({self.base_origin}) "
                "nor an origin the connection lists."
            )
        if not self.private_ok and host_is_private(parts.hostname):
            raise OriginRefused(f"Refused a request to {_url_text(url)}: it is a private or local address.")
        return origin in self.token_origins


def _url_text(url: str) -> str:
    """Return a URL for an error text: without its query (a pre-signed URL's signature), shortened."""
    parts = urlsplit(url)
    text = f"{parts.scheme}://{parts.netloc}{parts.path}"
    return text if len(text) <= 200 else text[:200] + "..."


def _decoded_chunks(response: requests.Response, *, chunk_size: int, limit: int, what: str) -> Iterator[bytes]:
    """Yield the body of a streamed response, decoded, and raise LimitExceeded past ``limit`` bytes.

    The decoding is ours, not urllib3's: ``max_length`` bounds what each compressed
    chunk may expand to, so a gzip bomb costs one chunk of memory, and counting stops it
    at the limit, not after it filled the disk.
    """
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding in {"gzip", "x-gzip"}:
        decoder = zlib.decompressobj(wbits=47)  # 32 + 15: gzip or zlib header
    elif encoding == "deflate":
        decoder = zlib.decompressobj()
    elif encoding == "identity":
        decoder = None
    else:
        raise BulkDataError(f"{what}: unsupported Content-Encoding {encoding[:40]!r}.")
    total = 0
    for raw in response.raw.stream(chunk_size, decode_content=False):
        pieces = [raw]
        if decoder is not None:
            pieces = []
            data = raw
            while data:
                try:
                    piece = decoder.decompress(data, chunk_size)
                except zlib.error as error:
                    raise BulkDataError(f"{what}: the compressed body is corrupt.") from error
                pieces.append(piece)
                data = decoder.unconsumed_tail
                if piece:
                    total += len(piece)
                    if total > limit:
                        raise LimitExceeded(f"{what} is larger than the limit of {limit} bytes.")
                    yield piece
                    pieces = []
                elif not data:
                    break
            continue
        for piece in pieces:
            total += len(piece)
            if total > limit:
                raise LimitExceeded(f"{what} is larger than the limit of {limit} bytes.")
            yield piece


def response_json(response: requests.Response, *, limit: int, what: str) -> Any:
    """Return a streamed response's JSON body, read up to ``limit`` bytes; ValueError if it is not JSON."""
    with response:
        body = b"".join(_decoded_chunks(response, chunk_size=64 * 1024, limit=limit, what=what))
    return json.loads(body)


def issue_is_transient(outcome: dict | None) -> bool:
    """Return whether an OperationOutcome's issues all say to try again (transient, throttled, timeout)."""
    issues = (outcome or {}).get("issue") or []
    return bool(issues) and all(isinstance(i, dict) and i.get("code") in TRANSIENT_ISSUE_CODES for i in issues)


@dataclass
class PollResult:
    """The answer to one status request.

    ``state`` is ``in_progress`` (202), ``complete`` (200, ``manifest`` set), ``retry``
    (429, transient 5xx or a network error: poll again later) or ``error`` (the export
    failed; ``outcome`` holds the server's OperationOutcome).
    """

    state: str
    status: int | None = None
    progress: str = ""
    retry_after: float | None = None
    manifest: dict | None = None
    outcome: dict | None = None
    message: str = ""

    @property
    def done(self) -> bool:
        return self.state in {"complete", "error"}


@dataclass
class MemberMatch:
    """Where a member id led: the attribution group and the member's Patient id (None: not listed)."""

    group_id: str | None
    patient_id: str | None
    groups_seen: list[str] = field(default_factory=list)


def retry_after_seconds(value: str | None, *, now: float | None = None) -> float | None:
    """Return the wait a ``Retry-After`` header asks for: delay-seconds or an HTTP-date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def poll_delay(*, attempt: int, retry_after: float | None, base: float = 1.0, cap: float = 120.0) -> float:
    """Return how long to wait before the next status request.

    Bulk Data 2.0 "Bulk Data Status Request": clients SHOULD follow an exponential backoff
    (req 124) and SHOULD use ``Retry-After`` when the server sends it (req 126). Without
    one: exponential backoff with "equal jitter", so that many clients do not poll in step.
    Either way capped, so a server asking for an hour does not park a job for an hour.
    """
    if retry_after is not None:
        return min(max(retry_after, 0.0), cap)
    ceiling = min(cap, base * (2 ** min(attempt, 16)))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _line_length_check(chunk: bytes, current: int, limit: int, url: str) -> int:
    """Return the length of the line still open after ``chunk``; raise LimitExceeded past ``limit``."""
    if current + len(chunk) <= limit:  # no line in here can be too long: find the tail only
        newline = chunk.rfind(b"\n")
        return current + len(chunk) if newline < 0 else len(chunk) - newline - 1
    start = 0
    while (newline := chunk.find(b"\n", start)) >= 0:
        if current + newline - start > limit:
            break
        current, start = 0, newline + 1
    else:
        current += len(chunk) - start
        if current <= limit:
            return current
    raise LimitExceeded(f"The file {_url_text(url)} has a line longer than the limit of {limit} bytes.")


def ndjson_line_count(path: Path) -> int:
    """Return the number of non-empty lines of an NDJSON file, reading it in blocks."""
    count = 0
    with open(path, "rb") as stream:
        for line in stream:
            if line.strip():
                count += 1
    return count


def _outcome_of(response: requests.Response) -> dict | None:
    """Return the response's OperationOutcome (read up to 1 MB), or None; the body is never kept otherwise."""
    try:
        body = response_json(response, limit=1024 * 1024, what="An error body")
    except (ValueError, BulkDataError, *TRANSIENT_NETWORK_ERRORS):
        return None
    return body if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome" else None


def outcome_diagnostics(outcome: dict | None) -> str:
    """Return an OperationOutcome's issues' diagnostics (or details text, or code), truncated; "" if none."""
    if not isinstance(outcome, dict) or not isinstance(outcome.get("issue"), list):
        return ""
    texts = [
        str(issue.get("diagnostics") or (issue.get("details") or {}).get("text") or issue.get("code", ""))
        for issue in outcome["issue"] if isinstance(issue, dict)
    ]
    return "; ".join(text for text in texts if text)[:DIAGNOSTICS_LIMIT]


def _outcome_text(outcome: dict | None, fallback: str) -> str:
    """Return the issues' diagnostics (truncated) after ``fallback``; never any other part of a body."""
    diagnostics = outcome_diagnostics(outcome)
    return f"{fallback} The payer said: {diagnostics}" if diagnostics else fallback


def _error_for(response: requests.Response, what: str) -> BulkDataError:
    """Return the error a failed answer means: TransientError (retry) or BulkDataError (fail now)."""
    outcome = _outcome_of(response)
    message = _outcome_text(outcome, f"{what} answered {response.status_code}.")
    if response.status_code in TRANSIENT_STATUSES or issue_is_transient(outcome):
        return TransientError(message, status=response.status_code,
                              retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    return BulkDataError(message, status=response.status_code, outcome=outcome)


_RESOURCE_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}")
MANIFEST_KINDS = (("output", None), ("deleted", "Bundle"), ("error", "OperationOutcome"))


def manifest_check(manifest: Any, *, policy: OriginPolicy, max_files: int) -> list[tuple[str, dict]]:
    """Return the manifest's files as (kind, entry), or raise ManifestError saying what is wrong.

    Bulk Data 2.0 "Response - Complete Status": a JSON object with ``transactionTime``
    (an instant), ``request``, ``requiresAccessToken`` (boolean) and ``output`` and
    ``error`` arrays (``deleted`` too, optionally) whose items have ``type`` and an
    absolute ``url``, and MAY have a non-negative integer ``count``. Checked whole before
    anything is recorded: one bad entry fails the job with this message, nothing half-stored.
    """
    if not isinstance(manifest, dict):
        raise ManifestError("The manifest is not a JSON object.")
    if not isinstance(manifest.get("transactionTime"), str):
        raise ManifestError("The manifest has no transactionTime.")
    if not isinstance(manifest.get("requiresAccessToken", False), bool):
        raise ManifestError("The manifest's requiresAccessToken is not true or false.")
    entries: list[tuple[str, dict]] = []
    urls: set[str] = set()
    for kind, fixed_type in MANIFEST_KINDS:
        items = manifest.get(kind, [])
        if items is None:
            items = []
        if not isinstance(items, list):
            raise ManifestError(f"The manifest's `{kind}` is not a list.")
        if len(entries) + len(items) > max_files:
            raise ManifestError(f"The manifest lists more than {max_files} files, this connection's limit.")
        for index, item in enumerate(items):
            where = f"The manifest's {kind}[{index}]"
            if not isinstance(item, dict):
                raise ManifestError(f"{where} is not an object.")
            url, resource_type, count = item.get("url"), item.get("type"), item.get("count")
            if not isinstance(url, str) or not url:
                raise ManifestError(f"{where} has no url.")
            if len(url) > 950:
                raise ManifestError(f"{where} has a url longer than 950 characters.")
            parts = urlsplit(url)
            if parts.scheme.lower() not in {"http", "https"} or not parts.hostname:
                raise ManifestError(f"{where} has a url that is not absolute http(s): {_url_text(url)}.")
            try:
                policy.check(url)
            except OriginRefused as error:
                raise ManifestError(f"{where}: {error}") from None
            if url in urls:
                raise ManifestError(f"{where} lists {_url_text(url)} a second time.")
            urls.add(url)
            if not isinstance(resource_type, str) or not _RESOURCE_TYPE_RE.fullmatch(resource_type):
                raise ManifestError(f"{where} has no valid resource type.")
            if fixed_type and resource_type != fixed_type:
                raise ManifestError(f"{where} has type {resource_type}, not {fixed_type}.")
            if count is not None and (isinstance(count, bool) or not isinstance(count, int) or not 0 <= count < 2**31):
                raise ManifestError(f"{where} has a count that is not a non-negative integer.")
            entries.append((kind, {"url": url, "type": resource_type, "count": count}))
    return entries


class BulkDataClient:
    """Talk to one Bulk Data server as one registered backend client.

    The access token is cached until shortly before it expires and renewed on a 401
    (one retry), so long polls and downloads outlive any one token.
    """

    # Renew the token this long before the server says it expires.
    TOKEN_EXPIRY_MARGIN = 30.0

    def __init__(
        self,
        fhir_base_url: str,
        client_id: str,
        private_key_pem: str | bytes,
        key_id: str,
        algorithm: str = "RS384",
        scopes: str = "system/*.read",
        token_url: str | None = None,
        *,
        session: requests.Session | None = None,
        timeout: float = 30.0,
        chunk_size: int = 64 * 1024,
        file_origins: Any = None,
        token_origins: Any = None,
        limits: Limits | None = None,
    ) -> None:
        if algorithm not in {"RS384", "ES384"}:
            # SMART Backend Services: clients SHALL sign with RS384 or ES384.
            raise ValueError(f"Unsupported signing algorithm {algorithm!r}; use RS384 or ES384.")
        self.base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        self._private_key = private_key_pem
        self.key_id = key_id
        self.algorithm = algorithm
        self.scopes = scopes
        self._token_url = token_url or None
        self.session = session or requests.Session()
        self.timeout = timeout
        self.chunk_size = chunk_size
        self._token: str | None = None
        self._token_expires_at = 0.0
        self._lock = threading.Lock()
        self.tokens_issued = 0
        self.policy = OriginPolicy(self.base_url, file_origins=file_origins, token_origins=token_origins)
        self.limits = limits or Limits()
        if self._token_url:
            self.policy.allow(origin_of(self._token_url))

    def __repr__(self) -> str:  # never show the key
        return f"BulkDataClient({self.base_url!r}, client_id={self.client_id!r})"

    # --- SMART Backend Services -------------------------------------------------

    @property
    def token_url(self) -> str:
        """Return the token endpoint, discovering it on first use."""
        if not self._token_url:
            url = self.token_url_discover()
            self.policy.allow(origin_of(url))
            self._token_url = url
        return self._token_url

    def token_url_discover(self) -> str:
        """Find the token endpoint: ``.well-known/smart-configuration``, else the CapabilityStatement.

        SMART App Launch 2.x §Conformance: servers SHALL publish ``token_endpoint`` at
        ``[base]/.well-known/smart-configuration``. Older servers declare it in the
        CapabilityStatement's ``oauth-uris`` extension on ``rest.security``.
        """
        try:
            response = self.request(
                "GET", f"{self.base_url}/.well-known/smart-configuration", authorize=False,
                headers={"Accept": "application/json"},
            )
            if response.status_code == 200:
                url = self._json(response, "The SMART configuration").get("token_endpoint")
                if isinstance(url, str) and url:
                    return urljoin(self.base_url + "/", url)
            response.close()
        except (requests.RequestException, ValueError, AttributeError, *TRANSIENT_NETWORK_ERRORS):
            pass
        statement = self.capability_statement()
        for rest in statement.get("rest", []):
            for extension in (rest.get("security") or {}).get("extension", []):
                if extension.get("url") == OAUTH_URIS_EXTENSION:
                    for inner in extension.get("extension", []):
                        if inner.get("url") == "token" and isinstance(inner.get("valueUri"), str):
                            return urljoin(self.base_url + "/", inner["valueUri"])
        raise BulkDataError(f"{self.base_url} publishes no token endpoint (smart-configuration nor oauth-uris).")

    def client_assertion(self) -> str:
        """Return a signed JWT authenticating this client (SMART Backend Services §Authenticating).

        ``iss`` = ``sub`` = client id, ``aud`` = the token URL, ``exp`` no more than five
        minutes ahead, a fresh ``jti`` each time (servers reject replays), ``kid`` in the header.
        """
        now = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + 300,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self._private_key, algorithm=self.algorithm, headers={"kid": self.key_id, "typ": "JWT"})

    def access_token(self, *, force: bool = False) -> str:
        """Return a valid access token, asking the token endpoint only when the cached one is (nearly) spent."""
        with self._lock:
            if not force and self._token and time.time() < self._token_expires_at - self.TOKEN_EXPIRY_MARGIN:
                return self._token
            response = self.request(
                "POST", self.token_url, authorize=False,
                data={
                    "grant_type": "client_credentials",
                    "scope": self.scopes,
                    "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                    "client_assertion": self.client_assertion(),
                },
                headers={"Accept": "application/json"},
            )
            if response.status_code in TRANSIENT_STATUSES:
                response.close()
                raise TransientError(
                    f"Token endpoint answered {response.status_code}.",
                    status=response.status_code,
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                )
            try:
                body = response_json(response, limit=1024 * 1024, what="The token response")
            except (ValueError, BulkDataError):
                body = {}
            body = body if isinstance(body, dict) else {}
            if response.status_code != 200 or not isinstance(body.get("access_token"), str):
                # RFC 6749 §5.2 error body: error + error_description (the OAuth
                # counterpart of diagnostics; shown truncated, nothing else of the body).
                detail = str(body.get("error_description") or body.get("error") or response.reason or "")[:DIAGNOSTICS_LIMIT]
                raise TokenRefused(f"The token request was refused ({response.status_code}): {detail}", status=response.status_code)
            self._token = body["access_token"]
            self._token_expires_at = time.time() + float(body.get("expires_in") or 300)
            self.tokens_issued += 1
            return self._token

    def request(self, method: str, url: str, *, authorize: bool = True, **kwargs: Any) -> requests.Response:
        """Send one request: the only way out of this client. Return the streamed final response.

        Every URL, the first and each redirect's, passes ``OriginPolicy.check``. The
        bearer token (``authorize``) goes only to a token-bearing origin, and never to a
        redirect onto another origin: redirects are followed here, by hand, at most
        ``MAX_REDIRECTS``. On a 401 a new token is got and the request tried once more: a
        401 in the middle of a job usually means the token expired early (a server clock
        or a revoked token); a fresh assertion fixes that, a second 401 does not. Bodies
        are streamed: read them with ``response_json`` or ``_decoded_chunks`` (bounded).
        """
        kwargs.setdefault("timeout", self.timeout)
        kwargs.pop("stream", None)
        base_headers = dict(kwargs.pop("headers", {}) or {})
        renewed = False
        for _ in range(MAX_REDIRECTS + 1):
            token_ok = self.policy.check(url)
            send_token = authorize and token_ok
            headers = dict(base_headers)
            if send_token:
                headers["Authorization"] = f"Bearer {self.access_token(force=renewed)}"
            response = self.session.request(method, url, headers=headers, allow_redirects=False, stream=True, **kwargs)
            if send_token and response.status_code == 401 and not renewed:
                response.close()
                renewed = True
                headers["Authorization"] = f"Bearer {self.access_token(force=True)}"
                response = self.session.request(method, url, headers=headers, allow_redirects=False, stream=True, **kwargs)
            location = response.headers.get("Location")
            if response.status_code not in REDIRECT_STATUSES or not location:
                return response
            response.close()
            target = urljoin(url, location)
            if origin_of(target) != origin_of(url):
                # RFC 9110 §15.4 leaves credentials on redirects to the client: ours
                # never follow the request onto another origin.
                authorize = False
            if response.status_code == 303 or (response.status_code in {301, 302} and method == "POST"):
                method = "GET"
                kwargs.pop("json", None)
                kwargs.pop("data", None)
            kwargs.pop("params", None)  # the Location carries the query
            url = target
        raise BulkDataError(f"More than {MAX_REDIRECTS} redirects from {_url_text(url)}.")

    def _json(self, response: requests.Response, what: str) -> Any:
        """Return a response's JSON body, bounded by ``Limits.max_json_bytes``; ValueError if not JSON."""
        return response_json(response, limit=self.limits.max_json_bytes, what=what)

    # --- Discovery and member lookup ----------------------------------------------

    def capability_statement(self) -> dict:
        """Return the server's CapabilityStatement (``GET [base]/metadata``, no token needed)."""
        response = self.request("GET", f"{self.base_url}/metadata", authorize=False, headers={"Accept": FHIR_JSON})
        if response.status_code != 200:
            raise _error_for(response, "GET metadata")
        body = self._json(response, "The CapabilityStatement")
        return body if isinstance(body, dict) else {}

    def supports_operation(self, name: str, *, resource_type: str = "Group") -> bool:
        """Return whether the CapabilityStatement declares ``$name`` (on ``resource_type`` or system-wide)."""
        try:
            statement = self.capability_statement()
        except (BulkDataError, requests.RequestException, ValueError, *TRANSIENT_NETWORK_ERRORS):
            return False
        for rest in statement.get("rest", []):
            operations = list(rest.get("operation", []))
            for resource in rest.get("resource", []):
                if resource.get("type") == resource_type:
                    operations += resource.get("operation", [])
            if any(op.get("name", "").lstrip("$") == name.lstrip("$") for op in operations):
                return True
        return False

    def search(self, resource_type: str, params: dict[str, str] | None = None) -> Iterator[dict]:
        """Yield every resource a search matches, following the Bundle's ``next`` links."""
        url: str | None = f"{self.base_url}/{resource_type}"
        while url:
            response = self.request("GET", url, params=params, headers={"Accept": FHIR_JSON})
            if response.status_code != 200:
                raise _error_for(response, f"GET {resource_type}")
            try:
                bundle = self._json(response, f"The {resource_type} search Bundle")
            except ValueError:
                raise BulkDataError(f"GET {resource_type} answered with a body that is not JSON.") from None
            if not isinstance(bundle, dict):
                raise BulkDataError(f"GET {resource_type} answered with something other than a Bundle.")
            for entry in bundle.get("entry") or []:
                if not isinstance(entry, dict):
                    continue
                resource = entry.get("resource") or {}
                # Only matches: a search may add included or OperationOutcome entries.
                if resource.get("resourceType") == resource_type and (entry.get("search") or {}).get("mode", "match") == "match":
                    yield resource
            links = [link for link in bundle.get("link") or [] if isinstance(link, dict)]
            url = next((link.get("url") for link in links if link.get("relation") == "next"), None)
            if url is not None and not isinstance(url, str):
                raise BulkDataError(f"The {resource_type} search Bundle has a next link that is not a URL.")
            # A next link is requested like any URL: through the policy (another origin is refused).
            params = None  # the next link carries the query

    def read(self, resource_type: str, resource_id: str) -> dict | None:
        """Return one resource, or None if the server does not have it (404/410)."""
        response = self.request("GET", f"{self.base_url}/{resource_type}/{resource_id}", headers={"Accept": FHIR_JSON})
        if response.status_code in {404, 410}:
            response.close()
            return None
        if response.status_code != 200:
            raise _error_for(response, f"GET {resource_type}/{resource_id}")
        try:
            body = self._json(response, f"{resource_type}/{resource_id}")
        except ValueError:
            raise BulkDataError(f"GET {resource_type}/{resource_id} answered with a body that is not JSON.") from None
        return body if isinstance(body, dict) else None

    def group_find_member(self, *, member_identifier: str, group_id: str | None = None) -> MemberMatch:
        """Find the attribution Group listing the member with this identifier, and their Patient id.

        The hospital knows its patient by the payer's member id (on the coverage card), not
        by the payer's FHIR id. Da Vinci ATR: the payer's ``Group`` lists attributed members
        in ``member.entity`` (Patient references); a server SHALL only show a client its own
        groups. Search ``Patient?identifier=`` first, and if the server refuses that search,
        read each member Patient and compare identifier values.
        """
        groups = [self.read("Group", group_id)] if group_id else list(self.search("Group"))
        groups = [group for group in groups if group]
        members_by_group: dict[str, set[str]] = {}
        for group in groups:
            members_by_group[group["id"]] = {
                reference.rsplit("/", 1)[-1]
                for member in group.get("member", [])
                if not member.get("inactive")
                and (reference := (member.get("entity") or {}).get("reference", "")).startswith(("Patient/", f"{self.base_url}/Patient/"))
            }
        seen = list(members_by_group)
        try:
            candidates = {patient["id"] for patient in self.search("Patient", {"identifier": member_identifier})}
        except BulkDataError as error:
            if error.status not in {400, 403, 404, 405, 501}:
                raise
            candidates = None
        for gid, members in members_by_group.items():
            if candidates is not None:
                if match := sorted(candidates & members):
                    return MemberMatch(group_id=gid, patient_id=match[0], groups_seen=seen)
                continue
            for patient_id in sorted(members):
                patient = self.read("Patient", patient_id) or {}
                if any(identifier.get("value") == member_identifier for identifier in patient.get("identifier", [])):
                    return MemberMatch(group_id=gid, patient_id=patient_id, groups_seen=seen)
        return MemberMatch(group_id=None, patient_id=None, groups_seen=seen)

    # --- PDex 2.2 $provider-member-match ------------------------------------------------


    def member_match_kick_off(self, *, member_bundles: list[dict]) -> str:
        """POST ``[base]/Group/$provider-member-match`` and return its status URL.

        The payer answers 202 with ``Content-Location`` (FHIR asynchronous request pattern);
        a 4xx carries an OperationOutcome (e.g. 422 for a missing attestation) raised as
        ``BulkDataError`` with its ``outcome``; 429/5xx are ``TransientError``.
        """
        url = f"{self.base_url}/Group/${MEMBER_MATCH_OPERATION}"
        response = self.request(
            "POST", url, json={"resourceType": "Parameters", "parameter": member_bundles},
            headers={"Accept": FHIR_JSON, "Prefer": "respond-async", "Content-Type": FHIR_JSON},
        )
        if response.status_code == 202 and response.headers.get("Content-Location"):
            return urljoin(url, response.headers["Content-Location"])
        if response.status_code in TRANSIENT_STATUSES:
            raise TransientError(
                f"$provider-member-match answered {response.status_code}.", status=response.status_code,
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        outcome = _outcome_of(response)
        raise BulkDataError(
            _outcome_text(outcome, f"$provider-member-match answered {response.status_code} without a status URL."),
            status=response.status_code, outcome=outcome,
        )

    def member_match_result(self, manifest: dict, *, work_dir: Path | str) -> MemberMatchResult:
        """Download the completed match's Group files (and error files) and parse them.

        §pdex-288a: the manifest lists Group NDJSON; a ``Parameters`` file MAY be there too,
        and requesters SHOULD prefer the Group files, so it is read only when no Group file is.
        """
        work_dir = Path(work_dir)
        requires_token = bool(manifest.get("requiresAccessToken"))
        outputs = [o for o in manifest.get("output") or [] if isinstance(o, dict) and o.get("url")]
        group_files = [o for o in outputs if o.get("type") == "Group"] or [o for o in outputs if o.get("type") == "Parameters"]
        groups: list[dict] = []
        errors: list[str] = []

        def lines(item: dict, index: int) -> Iterator[dict]:
            dest = work_dir / f"member-match-{index}.ndjson"
            self.download(item["url"], dest, requires_token=requires_token, resume=False)
            try:
                if dest.stat().st_size > MEMBER_MATCH_RESULT_MAX_BYTES:
                    raise BulkDataError(f"The member-match result {item['url']} is larger than expected.")
                with open(dest, "rb") as stream:
                    for raw in stream:
                        if raw.strip():
                            try:
                                value = json.loads(raw)
                            except ValueError as error:
                                raise BulkDataError(f"The member-match result {item['url']} is not NDJSON.") from error
                            if isinstance(value, dict):
                                yield value
            finally:
                dest.unlink(missing_ok=True)

        for index, item in enumerate(group_files):
            for resource in lines(item, index):
                if resource.get("resourceType") == "Group":
                    groups.append(resource)
                elif resource.get("resourceType") == "Parameters":
                    groups += [p.get("resource") for p in resource.get("parameter") or [] if isinstance(p, dict)
                               and isinstance(p.get("resource"), dict)]
        for index, item in enumerate(o for o in manifest.get("error") or [] if isinstance(o, dict) and o.get("url")):
            for outcome in lines(item, 1000 + index):
                errors.append(_outcome_text(outcome, "The payer reported an error."))
        result = member_match_groups_parse(groups)
        result.errors = errors
        return result

    # --- Kick-off, status, cancel ---------------------------------------------------

    def kick_off(
        self,
        *,
        level: str = "group",
        group_id: str | None = None,
        types: list[str] | None = None,
        since: str | None = None,
        type_filters: list[str] | None = None,
        export_type: str | None = None,
        patients: list[str] | None = None,
        operation: str = "$export",
    ) -> str:
        """Start an export and return its status URL (the ``Content-Location`` of the 202).

        Bulk Data 2.0 "Bulk Data Kick-off Request": ``Accept: application/fhir+json``
        (req 43) and ``Prefer: respond-async`` (req 45). The ``patient`` parameter exists
        only in a POST ``Parameters`` body, so a request naming patients is a POST (and so
        is any PDex ``$davinci-data-export``); others are a GET with query parameters.
        """
        type_filters_check(type_filters or [])
        if level == "group":
            if not group_id:
                raise ValueError("A group-level export needs a group id.")
            url = f"{self.base_url}/Group/{group_id}/{operation}"
        elif level == "patient":
            url = f"{self.base_url}/Patient/{operation}"
        elif level == "system":
            url = f"{self.base_url}/{operation}"
        else:
            raise ValueError(f"Unknown export level {level!r}.")
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        if patients or operation != "$export":
            parameters: list[dict[str, Any]] = []
            if types:
                parameters.append({"name": "_type", "valueString": ",".join(types)})
            if since:
                parameters.append({"name": "_since", "valueInstant": since})
            for type_filter in type_filters or []:
                # req 116: _typeFilter MAY repeat.
                parameters.append({"name": "_typeFilter", "valueString": type_filter})
            if export_type:
                parameters.append({"name": "exportType", "valueString": export_type})
            for patient in patients or []:
                reference = patient if "/" in patient else f"Patient/{patient}"
                parameters.append({"name": "patient", "valueReference": {"reference": reference}})
            response = self.request(
                "POST", url, json={"resourceType": "Parameters", "parameter": parameters},
                headers={**headers, "Content-Type": FHIR_JSON},
            )
        else:
            params: list[tuple[str, str]] = []
            if types:
                params.append(("_type", ",".join(types)))
            if since:
                params.append(("_since", since))
            params += [("_typeFilter", type_filter) for type_filter in type_filters or []]
            if export_type:
                params.append(("exportType", export_type))
            response = self.request("GET", url, params=params, headers=headers)
        if response.status_code == 202 and response.headers.get("Content-Location"):
            response.close()
            status_url = urljoin(url, response.headers["Content-Location"])
            if len(status_url) > 1000:
                raise BulkDataError("The kick-off's status URL (Content-Location) is longer than 1000 characters.")
            # Checked now, so a status URL on another origin fails the job at once
            # rather than on each poll; polls pass the same check.
            self.policy.check(status_url)
            return status_url
        if response.status_code == 202:
            response.close()
            raise BulkDataError("Kick-off answered 202 without a Content-Location (Bulk Data req 47).", status=202)
        # req 118: a server busy with our previous export answers 429 + Retry-After.
        raise _error_for(response, "Kick-off")

    def poll(self, status_url: str) -> PollResult:
        """Send one status request and say what it means; never waits.

        Bulk Data 2.0 "Bulk Data Status Request": 202 = in progress (``X-Progress``, maybe
        ``Retry-After``), 200 = complete with the manifest, 4xx/5xx = the export failed,
        except 429 (polling too often, req 128) and transient 5xx, which are worth a retry.
        The status request asks for ``application/json`` (req 130).
        """
        try:
            response = self.request("GET", status_url, headers={"Accept": "application/json"})
            retry_after = retry_after_seconds(response.headers.get("Retry-After"))
            progress = response.headers.get("X-Progress", "")[:200]
            if response.status_code == 202:
                response.close()
                return PollResult(state="in_progress", status=202, progress=progress, retry_after=retry_after)
            if response.status_code == 200:
                try:
                    manifest = self._json(response, "The manifest")
                except ValueError:
                    return PollResult(state="retry", status=200, retry_after=retry_after, message="The manifest is not JSON.")
                # Bulk Data 2.0: a big manifest MAY be paged with `link` (relation
                # "next"); the client follows every page and sees one manifest.
                manifest = self.manifest_pages_follow(manifest)
                return PollResult(state="complete", status=200, progress=progress, manifest=manifest)
        except TRANSIENT_NETWORK_ERRORS as error:
            return PollResult(state="retry", message=f"Network error: {error.__class__.__name__}")
        except TransientError as error:  # the token endpoint was busy
            return PollResult(state="retry", status=error.status, retry_after=error.retry_after, message=str(error))
        # 429 (req 128), 503, and a 5xx whose OperationOutcome issues are all transient
        # (req 140) are polling hiccups; any other error answer means the export failed.
        error = _error_for(response, "The status request")
        if isinstance(error, TransientError):
            return PollResult(state="retry", status=error.status, retry_after=error.retry_after, message=str(error))
        return PollResult(
            state="error", status=error.status, outcome=error.outcome,
            message=f"The export failed: {error}",
        )

    def manifest_pages_follow(self, manifest: Any) -> Any:
        """Return the manifest with the ``output``, ``deleted`` and ``error`` entries of every page.

        Each page is requested through the same door (origin policy, token rules), and
        the pages and their files are bounded by ``Limits`` so a paging loop ends.
        """
        if not isinstance(manifest, dict) or not manifest.get("link"):
            return manifest
        merged = {**manifest, "link": []}
        for key in ("output", "deleted", "error"):
            if key in merged and not isinstance(merged[key], list):
                return manifest  # manifest_check names the problem
            merged[key] = list(merged.get(key) or [])
        seen: set[str] = set()
        page = manifest
        for _ in range(self.limits.max_manifest_pages):
            links = page.get("link") if isinstance(page, dict) else None
            if not isinstance(links, list):
                raise ManifestError("The manifest's `link` is not a list.")
            url = next((link.get("url") for link in links if isinstance(link, dict) and link.get("relation") == "next"), None)
            if url is None:
                return merged
            if not isinstance(url, str) or url in seen:
                raise ManifestError("The manifest's next link is not a URL, or loops.")
            seen.add(url)
            response = self.request("GET", url, headers={"Accept": "application/json"})
            if response.status_code != 200:
                raise _error_for(response, "A manifest page")
            try:
                page = self._json(response, "A manifest page")
            except ValueError:
                raise ManifestError("A manifest page is not JSON.") from None
            if not isinstance(page, dict):
                raise ManifestError("A manifest page is not a JSON object.")
            for key in ("output", "deleted", "error"):
                items = page.get(key) or []
                if not isinstance(items, list):
                    raise ManifestError(f"A manifest page's `{key}` is not a list.")
                merged[key] += items
            if sum(len(merged[key]) for key in ("output", "deleted", "error")) > self.limits.max_manifest_files:
                raise ManifestError(f"The manifest lists more than {self.limits.max_manifest_files} files, this connection's limit.")
        raise ManifestError(f"The manifest has more than {self.limits.max_manifest_pages} pages.")

    def cancel(self, status_url: str) -> bool:
        """Cancel an export, or tell the server we are done with its files (``DELETE`` on the status URL).

        Bulk Data 2.0 "Bulk Data Delete Request" (req 119): 202 Accepted. Return False
        when the server no longer knows the export (404/410), True otherwise.
        """
        response = self.request("DELETE", status_url, headers={"Accept": FHIR_JSON})
        if response.status_code in {404, 410}:
            response.close()
            return False
        if response.status_code >= 400:
            raise _error_for(response, "DELETE")
        response.close()
        return True

    # --- Output files -----------------------------------------------------------------

    @staticmethod
    def _line_tail(path: Path) -> int:
        """Return the length of the unfinished last line of a partly downloaded file."""
        size = path.stat().st_size
        with open(path, "rb") as stream:
            stream.seek(max(0, size - 1024 * 1024))
            tail = stream.read()
        newline = tail.rfind(b"\n")
        return len(tail) - newline - 1 if newline >= 0 else size

    def download(
        self,
        url: str,
        dest: Path | str,
        *,
        requires_token: bool,
        resume: bool = True,
        attempts: int = 5,
        expected_count: int | None = None,
    ) -> int:
        """Download an output file to ``dest`` and return its size in bytes.

        Bulk Data 2.0 "Bulk Data Output File Request": send the token only when the
        manifest's ``requiresAccessToken`` is true (req 201; a pre-signed S3 URL rejects an
        unexpected Authorization header). Ask for gzip; a dropped connection is resumed with
        a ``Range`` request from the bytes already on disk, up to ``attempts`` times. 429
        and 5xx raise ``TransientError`` for the caller to reschedule. A file past
        ``Limits.max_file_bytes`` decoded, or with a line past ``max_line_bytes``, raises
        ``LimitExceeded`` and is removed; lines are checked here, as they arrive, so
        the ingest's line reader never meets one too long. With
        ``expected_count`` (the manifest's ``count``), a file with another number of
        resources raises ``CountMismatch``.
        """
        dest = Path(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if not resume and dest.exists():
            dest.unlink()
        failures = 0
        while True:
            offset = dest.stat().st_size if dest.exists() else 0
            headers = {"Accept": FHIR_NDJSON, "Accept-Encoding": "gzip"}
            if offset:
                # RFC 9110 §14: a range applies to the selected representation, which for
                # a gzip Content-Encoding is the compressed bytes, while we saved decoded
                # ones. So a resumed request asks for the identity encoding.
                headers.update({"Range": f"bytes={offset}-", "Accept-Encoding": "identity"})
            try:
                response = self.request("GET", url, authorize=requires_token, headers=headers, stream=True)
            except TRANSIENT_NETWORK_ERRORS as error:
                failures += 1
                if failures >= attempts:
                    raise TransientError(f"Download failed {failures} times: {error.__class__.__name__}") from error
                continue
            with response:
                if response.status_code == 416 and offset:
                    # Range Not Satisfiable: we already have every byte.
                    break
                if response.status_code not in {200, 206}:
                    raise _error_for(response, f"The download of {_url_text(url)}")
                # 200 to a Range request: the server ignored the range; start over.
                append = response.status_code == 206 and offset
                mode = "ab" if append else "wb"
                written = offset if append else 0
                line = self._line_tail(dest) if append else 0
                try:
                    with open(dest, mode) as out:
                        for chunk in _decoded_chunks(response, chunk_size=self.chunk_size,
                                                     limit=self.limits.max_file_bytes - written, what=f"The file {_url_text(url)}"):
                            line = _line_length_check(chunk, line, self.limits.max_line_bytes, url)
                            out.write(chunk)
                except TRANSIENT_NETWORK_ERRORS as error:
                    failures += 1
                    logger.info("Download of %s interrupted at %s bytes; resuming.", _url_text(url), dest.stat().st_size)
                    if failures >= attempts:
                        raise TransientError(f"Download interrupted {failures} times.") from error
                    continue
                except LimitExceeded:
                    dest.unlink(missing_ok=True)  # a bounded disk: nothing of a refused file stays
                    raise
            break
        if expected_count is not None:
            found = ndjson_line_count(dest)
            if found != expected_count:
                raise CountMismatch(f"{_url_text(url)}: the manifest says {expected_count} resources, the file has {found}.")
        return dest.stat().st_size


# --- PDex 2.2 $provider-member-match (Provider Access v2, "Attestation") -------------------
#
# provider-access-api-v2.md: the provider first POSTs Group/$provider-member-match with one
# MemberBundle per patient (MemberPatient = HRex Patient demographics, CoverageToMatch = HRex
# Coverage, Consent = the Provider Treatment Attestation; §pdex-255..257), as the FHIR
# asynchronous request pattern: Prefer: respond-async, 202 + Content-Location, poll, and a
# completion manifest whose output lists Group NDJSON files (§pdex-288a). The MatchedMembers
# Group's id is then the group of $davinci-data-export (§pdex-260, §pdex-262).

PDEX = "http://hl7.org/fhir/us/davinci-pdex"
MEMBER_MATCH_OPERATION = "provider-member-match"
MATCH_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-provider-member-match"
NO_MATCH_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-provider-member-no-match"
OPT_OUT_GROUP_PROFILE = f"{PDEX}/StructureDefinition/pdex-member-opt-out"
MATCH_RESULT_CS = f"{PDEX}/CodeSystem/PdexMultiMemberMatchResultCS"
# A Group ndjson of match results is small (one Group per bucket); anything bigger is refused.
MEMBER_MATCH_RESULT_MAX_BYTES = 8 * 1024 * 1024

MATCHED = "matched"
NON_MATCHED = "nonmatched"
CONSENT_CONSTRAINED = "consentconstrained"


@dataclass
class MemberMatchOutcome:
    """What the payer said about one submitted MemberPatient (by its id in the request)."""

    submitted_id: str
    outcome: str  # MATCHED, NON_MATCHED or CONSENT_CONSTRAINED
    patient_id: str | None = None  # the payer's Patient id (matched and consent-constrained)


@dataclass
class MemberMatchResult:
    """The Groups a completed member match returned, read from its manifest's Group files."""

    matched_group_id: str | None
    outcomes: list[MemberMatchOutcome] = field(default_factory=list)
    # OperationOutcome texts from the manifest's ``error`` files (e.g. an attestation refused).
    errors: list[str] = field(default_factory=list)

    def for_submitted(self, submitted_id: str) -> MemberMatchOutcome | None:
        return next((o for o in self.outcomes if o.submitted_id == submitted_id), None)


def member_bundle_parameter(*, patient: dict, coverage: dict, consent: dict) -> dict:
    """Return one ``MemberBundle`` parameter of the ProviderMemberMatch request (its three parts)."""
    return {
        "name": "MemberBundle",
        "part": [
            {"name": "MemberPatient", "resource": patient},
            {"name": "CoverageToMatch", "resource": coverage},
            {"name": "Consent", "resource": consent},
        ],
    }


def _group_bucket(group: dict) -> str | None:
    """Return which bucket a result Group is: by ``meta.profile`` (the authoritative
    discriminator, provider-access-api-v2.md), else by ``Group.code``."""
    profiles = set((group.get("meta") or {}).get("profile") or [])
    if MATCH_GROUP_PROFILE in profiles:
        return MATCHED
    if OPT_OUT_GROUP_PROFILE in profiles:
        return CONSENT_CONSTRAINED
    if NO_MATCH_GROUP_PROFILE in profiles:
        return NON_MATCHED
    codes = {c.get("code") for c in ((group.get("code") or {}).get("coding") or []) if c.get("system") == MATCH_RESULT_CS}
    return {"match": MATCHED, "nomatch": NON_MATCHED, "consentconstraint": CONSENT_CONSTRAINED}.get(next(iter(codes), ""))


def _submitted_ref(member: dict, group: dict) -> str:
    """Return the submitted MemberPatient id a Group.member entry stands for.

    The responder copies each submitted Patient into ``Group.contained`` with its original
    id (PDex MemberMatchGroup ``contained``) or a local one, and points at it from the
    entity's match extension (``valueReference`` "#id") or, for no-match entries, from
    ``entity.reference`` itself. A contained copy's id is mapped back to the submitted id by
    its identifiers when the responder renamed it.
    """
    entity = member.get("entity") or {}
    local = ""
    for extension in entity.get("extension") or []:
        reference = (extension.get("valueReference") or {}).get("reference") or ""
        if reference.startswith("#"):
            local = reference[1:]
    if not local and str(entity.get("reference") or "").startswith("#"):
        local = entity["reference"][1:]
    contained = next((c for c in group.get("contained") or [] if c.get("id") == local), None)
    if contained:
        for identifier in contained.get("identifier") or []:
            if identifier.get("system") == SUBMITTED_ID_SYSTEM and identifier.get("value"):
                return str(identifier["value"])
    return local


# The identifier the client puts on each MemberPatient so that it can find it again in the
# result Groups whatever local id the responder gives the contained copy.
SUBMITTED_ID_SYSTEM = "urn:provider-access:submitted-patient-id"


def member_match_groups_parse(groups: list[dict]) -> MemberMatchResult:
    """Return the outcomes the result Groups hold (MatchedMembers, NonMatchedMembers,
    ConsentConstrainedMembers; §pdex-259..261)."""
    result = MemberMatchResult(matched_group_id=None)
    for group in groups:
        if not isinstance(group, dict) or group.get("resourceType") != "Group":
            continue
        bucket = _group_bucket(group)
        if bucket is None:
            continue
        if bucket == MATCHED and group.get("id"):
            result.matched_group_id = str(group["id"])
        for member in group.get("member") or []:
            if not isinstance(member, dict) or member.get("inactive"):
                continue
            reference = str((member.get("entity") or {}).get("reference") or "")
            patient_id = reference.rsplit("/", 1)[-1] if "Patient/" in reference else None
            result.outcomes.append(
                MemberMatchOutcome(submitted_id=_submitted_ref(member, group), outcome=bucket, patient_id=patient_id)
            )
    return result
