from rest_framework import exceptions
from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from payer.authentication import BearerTokenAuthentication
from payer.models import AuditEvent
from payer.services.audit import audit_record


class PayerFHIRView(APIView):
    """Base of every payer FHIR endpoint: a valid bearer token is required.

    Without one DRF answers 401 with ``WWW-Authenticate: Bearer ...`` and the exception
    handler turns the body into an OperationOutcome. Each refusal is audited.
    """

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]
    audit_action = "request"

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
