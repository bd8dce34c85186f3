"""The hospital's local FHIR API at /provider/fhir: metadata, read and search.

The store is partitioned by source: each resource belongs to the payer connection that
fetched it, and so to one organization (a hospital deployment may host several). Who
reads what (``provider.selectors.store_connections``):

- a user with a ``StoreReader`` grant (an organization's own systems) reads that
  organization's sources only;
- a user with the ``provider.view_localresource`` permission and no grant (hospital staff,
  superusers) reads every source, merged;
- anyone else who signs in, a clinician included, gets 403: clinicians read their own
  organization's patients through the EMR's pages.

Two sources may hold the same ``Type/id`` for different things, so every source also has
its own base, ``/provider/fhir/source/<connection name>``, where ids are unambiguous. In
the merged base each entry's ``fullUrl`` is its source's URL, ``meta.source`` names the
payer (when the payer did not set it), and a read of an id two sources hold answers 300
Multiple Choices naming them. Callers authenticate with a Django session, HTTP Basic, or
``Authorization: Bearer <token>`` (a DRF authtoken). Every resource served is the JSON the
payer sent, as stored, with only ``meta.source`` added.
"""

import logging
from typing import Any

from django.conf import settings
from django.utils.http import http_date
from axes.handlers.proxy import AxesProxyHandler
from rest_framework import exceptions
from rest_framework.authentication import BasicAuthentication, SessionAuthentication, TokenAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from config.security import login_cooloff
from fhirkit.bundles import count_parse, offset_page_links, offset_parse, searchset_bundle
from fhirkit.outcome import FHIRError
from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from provider.models import LocalResource, PayerConnection
from provider.selectors import (
    INCLUDES,
    SEARCH_PARAMETERS,
    SORTS,
    includes_parse,
    local_read,
    local_search,
    local_search_includes,
    store_connections,
)

# Who read which patient's data: the hospital's access log (HIPAA audit controls).
audit_logger = logging.getLogger("provider.audit")

FHIR_VERSION = "4.0.1"


def fhir_base_url(request: Request) -> str:
    """Return the absolute base URL of the local FHIR API, ending without a slash."""
    if settings.PA_BASE_URL:
        return f"{settings.PA_BASE_URL}/provider/fhir"
    return request.build_absolute_uri("/provider/fhir")


class LimitedBasicAuthentication(BasicAuthentication):
    """HTTP Basic under the same login limits as the sign-in forms (django-axes).

    DRF's request wraps Django's, so axes marks the lockout on the wrapper; a locked-out
    user name or address gets 429 with Retry-After instead of a 401 to try again.
    """

    def authenticate_credentials(self, userid, password, request=None):
        try:
            return super().authenticate_credentials(userid, password, request)
        except exceptions.AuthenticationFailed:
            if request is not None and not AxesProxyHandler.is_allowed(request, {"username": userid}):
                audit_logger.warning("denied-locked user=%s path=%s", str(userid)[:150], request.path[:300])
                raise exceptions.Throttled(
                    wait=login_cooloff(request).total_seconds(),
                    detail="Too many failed sign-in attempts; try again later.",
                ) from None
            raise


class BearerTokenAuthentication(TokenAuthentication):
    """``Authorization: Bearer <token>`` (RFC 6750) with DRF's authtoken tokens."""

    keyword = "Bearer"


def source_url(request: Request, connection: PayerConnection) -> str:
    """Return the base URL of one source's own view of the store."""
    return f"{fhir_base_url(request)}/source/{connection.name}"


def resource_served(row: LocalResource) -> dict:
    """Return the stored JSON with ``meta.source`` naming the payer when it names none
    (R4 resource.html#Meta: "a uri that identifies the source system of the resource")."""
    meta = row.resource.get("meta")
    if isinstance(meta, dict) and meta.get("source"):
        return row.resource
    return {**row.resource, "meta": {**(meta if isinstance(meta, dict) else {}), "source": row.connection.fhir_base_url}}


class CanReadLocalStore(BasePermission):
    """Allow users who may read at least one source (``store_connections``), and, under
    ``/source/<name>``, only users who may read that one. The sources are left on the
    request for the view."""

    message = "This account may not read the local FHIR store."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False  # 401 with a challenge
        connections = store_connections(user=user)
        source = view.kwargs.get("source")
        if source is not None:
            connections = [c for c in connections if c.name == source]
        if connections:
            request.store_connections = connections
            return True
        audit_logger.warning("denied user=%s path=%s", user.pk, request.path[:300])
        return False


class ProviderFHIRView(APIView):
    """Base of the local FHIR endpoints: a user allowed to read the store (session,
    HTTP Basic or a bearer token).

    LimitedBasicAuthentication comes first so an unauthenticated request gets 401 with
    ``WWW-Authenticate: Basic`` (DRF answers 403 when the first class has no challenge).
    """

    authentication_classes = [LimitedBasicAuthentication, BearerTokenAuthentication, SessionAuthentication]
    permission_classes = [CanReadLocalStore]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]

    def finalize_response(self, request, response, *args, **kwargs):
        # Every refusal is on record (who, what, why), never a credential or the body.
        if response.status_code >= 400:
            user = getattr(request, "user", None)
            audit_logger.warning(
                "refused status=%s method=%s user=%s path=%s", response.status_code, request.method,
                getattr(user, "pk", None), request.path[:300],
            )
        return super().finalize_response(request, response, *args, **kwargs)


class MetadataView(ProviderFHIRView):
    """``GET /metadata``: the CapabilityStatement (R4 http.html#capabilities), open to all."""

    authentication_classes: list = []
    permission_classes: list = []

    def get(self, request: Request) -> Response:
        resources = []
        for resource_type, parameters in SEARCH_PARAMETERS.items():
            entry: dict[str, Any] = {
                "type": resource_type,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": name, "type": "token" if kind in ("token", "status", "id") else
                     {"patient": "reference", "date": "date", "name": "string"}[kind]}
                    for name, kind in parameters.items()
                ],
            }
            if resource_type in INCLUDES:
                entry["searchInclude"] = [f"{resource_type}:{name}" for name in INCLUDES[resource_type]]
            resources.append(entry)
        statement = {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": "2025-01-01",
            "kind": "instance",
            "software": {"name": "Provider Access (hospital local store)"},
            "implementation": {"description": "Local FHIR store of payer data", "url": fhir_base_url(request)},
            "fhirVersion": FHIR_VERSION,
            "format": ["application/fhir+json", "application/json"],
            "rest": [
                {
                    "mode": "server",
                    "security": {"description": "A session, HTTP Basic or a Bearer token of a user allowed to read the "
                                                "local store (permission provider.view_localresource)."},
                    "resource": resources,
                    "searchParam": [
                        {"name": "_count", "type": "number"},
                        {"name": "_sort", "type": "string", "documentation": ", ".join(SORTS)},
                    ],
                }
            ],
        }
        return Response(statement)


class ResourceReadView(ProviderFHIRView):
    """``GET /[type]/[id]``: one stored resource (R4 http.html#read)."""

    def get(self, request: Request, resource_type: str, resource_id: str, source: str | None = None) -> Response:
        connections = request.store_connections
        rows = local_read(resource_type=resource_type, resource_id=resource_id, connection_ids=[c.pk for c in connections])
        if not rows:
            raise FHIRError(f"{resource_type}/{resource_id[:64]} is not in the local store.", status=404, code="not-found")
        if len(rows) > 1:
            # Two sources hold the same id for (possibly) different things: never pick one.
            choices = ", ".join(f"{source_url(request, row.connection)}/{resource_type}/{resource_id}" for row in rows)
            audit_logger.info("read-ambiguous user=%s resource=%s/%s", request.user.pk, resource_type, resource_id)
            raise FHIRError(
                f"{len(rows)} sources hold {resource_type}/{resource_id}; read it from one of: {choices}",
                status=300, code="multiple-matches",
            )
        row = rows[0]
        audit_logger.info(
            "read user=%s source=%s resource=%s/%s patient=%s",
            request.user.pk, row.connection.name, resource_type, resource_id, row.patient_id,
        )
        headers = {}
        if row.version_id:
            headers["ETag"] = f'W/"{row.version_id}"'
        if row.last_updated:
            headers["Last-Modified"] = http_date(row.last_updated.timestamp())
        headers["Content-Location"] = f"{source_url(request, row.connection)}/{resource_type}/{resource_id}"
        return Response(resource_served(row), headers=headers)


class ResourceSearchView(ProviderFHIRView):
    """``GET /[type]?...``: a searchset Bundle with ``total`` and paging links (R4 search.html)."""

    def get(self, request: Request, resource_type: str, source: str | None = None) -> Response:
        params = {key: request.query_params.getlist(key) for key in request.query_params}
        prefer = request.headers.get("Prefer", "")
        connections = {c.pk: c for c in request.store_connections}
        rows, total = local_search(
            resource_type=resource_type, params=params, prefer=prefer, connection_ids=list(connections)
        )
        includes = includes_parse(resource_type=resource_type, values=params.get("_include", []))
        included = local_search_includes(rows=rows, includes=includes) if includes else []
        for row in rows:
            row.connection = connections[row.connection_id]
        base_url = source_url(request, request.store_connections[0]) if source else fhir_base_url(request)
        self_url, next_url, previous_url = offset_page_links(
            base_url=f"{base_url}/{resource_type}",
            params={key: value for key, value in params.items() if key != "_offset"},
            offset=offset_parse((params.get("_offset") or [None])[-1]),
            count=count_parse((params.get("_count") or [None])[-1]),
            total=total,
        )
        bundle = searchset_bundle(
            resources=[resource_served(row) for row in rows],
            base_url=base_url,
            self_url=self_url,
            total=total,
            next_url=next_url,
            previous_url=previous_url,
        )
        # Each entry's fullUrl is its own source's URL: unambiguous in the merged view.
        for entry, row in zip(bundle["entry"], rows):
            entry["fullUrl"] = f"{source_url(request, row.connection)}/{row.resource_type}/{row.resource_id}"
        # R4 search.html#include: included resources are entries with search.mode "include".
        bundle["entry"] += [
            {
                "fullUrl": f"{source_url(request, row.connection)}/{row.resource_type}/{row.resource_id}",
                "resource": resource_served(row),
                "search": {"mode": "include"},
            }
            for row in included
        ]
        patients = sorted({row.patient_id for row in rows if row.patient_id})
        audit_logger.info(
            "search user=%s type=%s query=%s matches=%s patients=%s",
            request.user.pk, resource_type, request.GET.urlencode()[:500], total, ",".join(patients[:50]),
        )
        return Response(bundle)
