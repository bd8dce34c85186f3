from rest_framework.permissions import IsAuthenticated
from rest_framework.views import APIView

from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from payer.authentication import BearerTokenAuthentication


class PayerFHIRView(APIView):
    """Base of every payer FHIR endpoint: a valid bearer token is required.

    Without one DRF answers 401 with ``WWW-Authenticate: Bearer ...`` and the exception
    handler turns the body into an OperationOutcome.
    """

    authentication_classes = [BearerTokenAuthentication]
    permission_classes = [IsAuthenticated]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]
