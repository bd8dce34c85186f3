"""Payer FHIR read and search: member data, the provider directory and attribution Groups.

One APIView per FHIR interaction. Each checks the token's scopes, asks
``payer.services.fhir`` (which applies the access policy) and records an audit event for
every outcome, denials included.
"""

from django.conf import settings
from rest_framework.response import Response

from fhirkit.outcome import FHIRError
from fhirkit.views import fhir_not_found
from payer.models import AuditEvent
from payer.services import fhir as fhir_services
from payer.services.audit import audit_record
from payer.services.auth import scope_grants
from payer.services.member_match import match_group_read
from payer.views.base import PayerFHIRView


def fhir_base_url(request) -> str:
    """Return the absolute base URL of the payer FHIR API, for fullUrl and paging links."""
    root = settings.PA_BASE_URL or f"{request.scheme}://{request.get_host()}"
    return f"{root}/payer/fhir"


def _query_params(request) -> dict[str, list[str]]:
    return {name: request.query_params.getlist(name) for name in request.query_params}


class _AuditedFHIRView(PayerFHIRView):
    """Record one audit event per request; FHIR errors are audited, then re-raised.

    A missing or bad token is audited by ``PayerFHIRView`` (action ``audit_action``).
    """

    audit_action = "read"

    def _audit(self, request, *, outcome, resource_type, status_code, patient_ids=(), detail=""):
        audit_record(
            action=self.audit_action,
            outcome=outcome,
            client=request.auth.client,
            request=request,
            patient_ids=patient_ids,
            resource_types=[resource_type],
            status_code=status_code,
            detail=detail,
        )

    def _scopes_check(self, request, resource_type: str) -> None:
        # SMART scopes: the token must grant this type for this interaction (v1 .read, v2 r / s).
        interaction = "search" if self.audit_action == "search" else "read"
        if not scope_grants(scopes=request.auth.scopes, resource_type=resource_type, interaction=interaction):
            needed = f"system/{resource_type}.{'s' if interaction == 'search' else 'r'}"
            raise FHIRError(
                f"The access token's scopes do not allow {interaction} of {resource_type}.",
                status=403,
                code="forbidden",
                # RFC 6750 section 3.1: a token lacking the scope gets insufficient_scope.
                headers={"WWW-Authenticate": f'Bearer realm="payer", error="insufficient_scope", scope="{needed}"'},
            )

    def _handle(self, request, resource_type: str, run):
        try:
            self._scopes_check(request, resource_type)
            return run()
        except FHIRError as error:
            outcome = getattr(error, "audit_outcome", None) or ("denied" if error.status == 403 else "error")
            self._audit(
                request,
                outcome=outcome,
                resource_type=resource_type,
                status_code=error.status,
                patient_ids=getattr(error, "patient_ids", ()),
                detail=str(error)[:500],
            )
            raise
        except Exception as exc:
            # A 500 must leave its audit entry too (issue 3: every access and its outcome).
            self._audit(request, outcome="error", resource_type=resource_type, status_code=500,
                        detail=f"Internal error: {type(exc).__name__}")
            raise


def _not_found(resource_type: str, resource_id: str, *, patient_id: str = "", hidden: bool = False) -> FHIRError:
    # The same answer whether the resource is absent or belongs to a member the caller may not
    # see, so that nothing about other organizations' members leaks.
    error = FHIRError(f"{resource_type}/{resource_id} is not known.", status=404, code="not-found")
    error.patient_ids = [patient_id] if patient_id else []
    # The audit trail does tell: hidden from this caller (denied) or truly absent (error).
    error.audit_outcome = "denied" if hidden else "error"
    return error


def _shared_types_check(request, resource_type: str) -> None:
    if resource_type in fhir_services.SHARED_TYPES and not fhir_services.shared_types_allowed(
        organization=request.auth.client.organization
    ):
        raise FHIRError(
            "The organization has no network contract in force with the payer.", status=403, code="forbidden"
        )


class ResourceReadView(_AuditedFHIRView):
    """``GET [base]/[type]/[id]`` (R4 http.html#read)."""

    audit_action = "read"

    def get(self, request, resource_type: str, resource_id: str):
        def run():
            _shared_types_check(request, resource_type)
            result = fhir_services.resource_read(
                organization=request.auth.client.organization, resource_type=resource_type, resource_id=resource_id
            )
            if result.resource is None:
                raise _not_found(resource_type, resource_id, patient_id=result.patient_id, hidden=result.hidden)
            self._audit(
                request,
                outcome="success",
                resource_type=resource_type,
                status_code=200,
                patient_ids=[result.patient_id] if result.patient_id else [],
            )
            headers = {}
            meta = result.resource.get("meta") or {}
            if meta.get("versionId"):
                headers["ETag"] = f'W/"{meta["versionId"]}"'
            return Response(result.resource, headers=headers)

        return self._handle(request, resource_type, run)


class ResourceSearchView(_AuditedFHIRView):
    """``GET [base]/[type]?...`` (R4 http.html#search) over member data and the directory."""

    audit_action = "search"

    def get(self, request, resource_type: str):
        def run():
            _shared_types_check(request, resource_type)
            result = fhir_services.resource_search(
                organization=request.auth.client.organization,
                resource_type=resource_type,
                params=_query_params(request),
                base_url=fhir_base_url(request),
                prefer=request.headers.get("Prefer", ""),
            )
            if result.denied_patient_ids:
                # The search answers as if those patients had no data; the audit says why.
                self._audit(
                    request,
                    outcome="denied",
                    resource_type=resource_type,
                    status_code=200,
                    patient_ids=result.denied_patient_ids,
                    detail="Patient not visible to the organization: answered as no match.",
                )
            self._audit(
                request, outcome="success", resource_type=resource_type, status_code=200, patient_ids=result.patient_ids
            )
            return Response(result.bundle)

        return self._handle(request, resource_type, run)


class GroupSearchView(_AuditedFHIRView):
    """``GET [base]/Group``: the caller's own attribution Group(s), never another organization's."""

    audit_action = "search"

    def get(self, request):
        def run():
            result = fhir_services.group_search(
                organization=request.auth.client.organization,
                params=_query_params(request),
                base_url=fhir_base_url(request),
                prefer=request.headers.get("Prefer", ""),
            )
            self._audit(request, outcome="success", resource_type="Group", status_code=200, patient_ids=result.patient_ids)
            return Response(result.bundle)

        return self._handle(request, "Group", run)


class GroupReadView(_AuditedFHIRView):
    """``GET [base]/Group/[id]``; another organization's Group answers 404, as if absent."""

    audit_action = "read"

    def get(self, request, group_id: str):
        def run():
            resource, patient_ids = fhir_services.group_read(
                organization=request.auth.client.organization, group_id=group_id
            )
            if resource is None and (match_group := match_group_read(fhir_id=group_id, client=request.auth.client)):
                # PDex 2.2 §pdex-266/291: the client reads its own $provider-member-match result.
                resource = match_group.resource
                patient_ids = set(match_group.members.values_list("patient_id", flat=True))
            if resource is None:
                # Another organization's Group, or none at all: the caller cannot tell which.
                raise _not_found("Group", group_id, hidden=fhir_services.group_exists(group_id=group_id))
            self._audit(request, outcome="success", resource_type="Group", status_code=200, patient_ids=patient_ids)
            return Response(resource)

        return self._handle(request, "Group", run)


# Route patterns: only the types this server serves, and FHIR ids (R4 datatypes.html#id), so
# that ``metadata``, ``$export`` and ``.well-known`` stay free for their own views.
TYPE_PATTERN = "(?P<resource_type>" + "|".join(fhir_services.READABLE_TYPES) + ")"
ID_PATTERN = r"[A-Za-z0-9\-.]{1,64}"


def unknown_path(request, path: str = ""):
    """Answer an unknown path or operation under the FHIR base with a 404 OperationOutcome,
    audited like every refusal (the caller is not authenticated here: none is named)."""
    audit_record(action="request", outcome=AuditEvent.Outcome.DENIED, request=request, status_code=404,
                 detail=f"{request.method} of an unknown FHIR path.")
    return fhir_not_found(request, path)
