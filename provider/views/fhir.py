"""The hospital's local FHIR API at /provider/fhir: metadata, read and search.

Who may read it: the store is shared by every organization of the deployment (a hospital
may host several, each fetching through its own payer connection), and it is not scoped
per organization, so the API is for the hospital's trusted systems and staff only: users
holding the ``provider.view_localresource`` permission (superusers have it). Anyone else
who signs in, a clinician included, gets 403; clinicians read their own organization's
patients through the EMR's pages, which scope every read to the organization. Callers
authenticate with a Django session, HTTP Basic, or ``Authorization: Bearer <token>`` (a
DRF authtoken of a user with the permission, for other systems). Every resource served
is the JSON the payer sent, as stored.
"""

import logging
from typing import Any

from django.conf import settings
from django.utils.http import http_date
from rest_framework.authentication import BasicAuthentication, SessionAuthentication, TokenAuthentication
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from fhirkit.bundles import count_parse, offset_page_links, offset_parse, searchset_bundle
from fhirkit.outcome import FHIRError
from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from provider.selectors import (
    INCLUDES,
    SEARCH_PARAMETERS,
    SORTS,
    includes_parse,
    local_read,
    local_search,
    local_search_includes,
)

# Who read which patient's data: the hospital's access log (HIPAA audit controls).
audit_logger = logging.getLogger("provider.audit")

FHIR_VERSION = "4.0.1"


def fhir_base_url(request: Request) -> str:
    """Return the absolute base URL of the local FHIR API, ending without a slash."""
    if settings.PA_BASE_URL:
        return f"{settings.PA_BASE_URL}/provider/fhir"
    return request.build_absolute_uri("/provider/fhir")


class BearerTokenAuthentication(TokenAuthentication):
    """``Authorization: Bearer <token>`` (RFC 6750) with DRF's authtoken tokens."""

    keyword = "Bearer"


class CanReadLocalStore(BasePermission):
    """Allow users with ``provider.view_localresource``: the store holds every
    organization's fetched patients, so signing in alone is not enough."""

    message = "This account may not read the local FHIR store."

    def has_permission(self, request: Request, view: APIView) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False  # 401 with a challenge
        if user.is_active and user.has_perm("provider.view_localresource"):
            return True
        audit_logger.warning("denied user=%s path=%s", user.pk, request.path[:300])
        return False


class ProviderFHIRView(APIView):
    """Base of the local FHIR endpoints: a user allowed to read the store (session,
    HTTP Basic or a bearer token).

    BasicAuthentication comes first so an unauthenticated request gets 401 with
    ``WWW-Authenticate: Basic`` (DRF answers 403 when the first class has no challenge).
    """

    authentication_classes = [BasicAuthentication, BearerTokenAuthentication, SessionAuthentication]
    permission_classes = [CanReadLocalStore]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]


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

    def get(self, request: Request, resource_type: str, resource_id: str) -> Response:
        row = local_read(resource_type=resource_type, resource_id=resource_id)
        if row is None:
            raise FHIRError(f"{resource_type}/{resource_id[:64]} is not in the local store.", status=404, code="not-found")
        audit_logger.info(
            "read user=%s resource=%s/%s patient=%s", request.user.pk, resource_type, resource_id, row.patient_id
        )
        headers = {}
        if row.version_id:
            headers["ETag"] = f'W/"{row.version_id}"'
        if row.last_updated:
            headers["Last-Modified"] = http_date(row.last_updated.timestamp())
        return Response(row.resource, headers=headers)


class ResourceSearchView(ProviderFHIRView):
    """``GET /[type]?...``: a searchset Bundle with ``total`` and paging links (R4 search.html)."""

    def get(self, request: Request, resource_type: str) -> Response:
        params = {key: request.query_params.getlist(key) for key in request.query_params}
        prefer = request.headers.get("Prefer", "")
        rows, total = local_search(resource_type=resource_type, params=params, prefer=prefer)
        includes = includes_parse(resource_type=resource_type, values=params.get("_include", []))
        included = local_search_includes(rows=rows, includes=includes) if includes else []
        base_url = fhir_base_url(request)
        self_url, next_url, previous_url = offset_page_links(
            base_url=f"{base_url}/{resource_type}",
            params={key: value for key, value in params.items() if key != "_offset"},
            offset=offset_parse((params.get("_offset") or [None])[-1]),
            count=count_parse((params.get("_count") or [None])[-1]),
            total=total,
        )
        bundle = searchset_bundle(
            resources=[row.resource for row in rows],
            base_url=base_url,
            self_url=self_url,
            total=total,
            next_url=next_url,
            previous_url=previous_url,
        )
        # R4 search.html#include: included resources are entries with search.mode "include".
        bundle["entry"] += [
            {
                "fullUrl": f"{base_url}/{row.resource_type}/{row.resource_id}",
                "resource": row.resource,
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
