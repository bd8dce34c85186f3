"""``GET [base]/metadata``: the CapabilityStatement (FHIR R4 http.html#capabilities)."""

from django.urls import reverse
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from fhirkit.renderers import FHIRJSONRenderer, JSONAliasRenderer
from payer.services.metadata import capability_statement
from payer.views.auth import absolute_url, token_url


class MetadataView(APIView):
    """Public: a client reads it before it has a token, to find the token endpoint."""

    authentication_classes: list = []
    permission_classes = [AllowAny]
    renderer_classes = [FHIRJSONRenderer, JSONAliasRenderer]

    def get(self, request):
        fhir_base = absolute_url(request, reverse("payer:metadata")).removesuffix("/metadata")
        return Response(capability_statement(fhir_base_url=fhir_base, token_url=token_url(request)))
