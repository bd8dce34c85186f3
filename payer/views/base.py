from rest_framework import exceptions
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from fhirkit.outcome import FHIRError
from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from payer.authentication import BearerTokenAuthentication
from payer.models import AuditEvent, SmartClient
from payer.services.audit import audit_record, audit_recorded

# R4 http.html#mime-type: ``_format`` may name json by its short name or a JSON mime type.
JSON_FORMATS = frozenset({"json", "application/json", "application/fhir+json"})


def _format_base(value: str) -> str:
    # "application/fhir+json; fhirVersion=4.0" names the same format as "application/fhir+json";
    # a "+" in a query string decodes to a space ("application/fhir json").
    return value.split(";", 1)[0].strip().lower().replace(" ", "+")


class PayerFHIRView(APIView):
    """Base of every payer FHIR endpoint: a valid bearer token is required.

    Without one DRF answers 401 with ``WWW-Authenticate: Bearer ...`` and the exception
    handler turns the body into an OperationOutcome. Each refusal is audited.
    """

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]
    audit_action = "request"
    # Values of ``_format`` this endpoint can answer in (R4 http.html#mime-type).
    supported_formats = JSON_FORMATS

    def initial(self, request, *args, **kwargs):
        super().initial(request, *args, **kwargs)
        self._nul_check(request, kwargs)
        self._format_check(request)

    def _refuse(self, request, error: FHIRError, *, outcome: str) -> None:
        audit_record(action=self.audit_action, outcome=outcome, client=request.user, request=request,
                     status_code=error.status, detail=error.issues[0]["diagnostics"])
        raise error

    def _nul_check(self, request, kwargs) -> None:
        # A NUL character is no part of any FHIR id, token or string (R4 datatypes.html#string
        # allows no control characters but whitespace), and Postgres text cannot hold one:
        # refuse it with a 400 before any query sees it.
        values = [*kwargs.values(), *(
            text for name, items in request.query_params.lists() for text in (name, *items)
        )]
        if any(isinstance(value, str) and "\x00" in value for value in values):
            self._refuse(request, FHIRError("The request holds a NUL character.", code="invalid"), outcome="error")

    def _format_check(self, request) -> None:
        # R4 http.html#mime-type: a ``_format`` the server does not support is answered 406.
        for value in request.query_params.getlist("_format"):
            if _format_base(value) not in self.supported_formats:
                self._refuse(request, FHIRError(
                    f"_format {value!r} is not supported; this server answers in application/fhir+json.",
                    status=406, code="not-supported", expression=["_format"],
                ), outcome="error")

    def finalize_response(self, request, response, *args, **kwargs):
        # Every refusal is on record: what the views and services did not audit themselves
        # (405 for PUT/DELETE, 406 from content negotiation, a 404 of DRF's) is audited here.
        if response.status_code >= 400 and not audit_recorded(request):
            client = request.user if isinstance(getattr(request, "user", None), SmartClient) else None
            audit_record(
                action=self.audit_action,
                outcome=AuditEvent.Outcome.DENIED if response.status_code in (401, 403, 404, 405, 406, 429) else AuditEvent.Outcome.ERROR,
                client=client, request=request, status_code=response.status_code,
                detail=f"{request.method} refused with {response.status_code}.",
            )
        return super().finalize_response(request, response, *args, **kwargs)

    def handle_exception(self, exc):
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            audit_record(
                action=self.audit_action,
                outcome=AuditEvent.Outcome.DENIED,
                request=self.request,
                status_code=401,
                detail="No bearer token." if isinstance(exc, exceptions.NotAuthenticated) else str(exc.detail),
            )
        return super().handle_exception(exc)
