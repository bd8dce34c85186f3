"""SMART Backend Services: the token endpoint and the discovery document."""

from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import reverse
from django.utils.decorators import method_decorator
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.debug import sensitive_post_parameters
from rest_framework.permissions import AllowAny
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from payer.models import AuditEvent
from payer.services.audit import audit_record
from payer.services.auth import ASSERTION_ALGORITHMS, TokenError, token_grant

# SMART App Launch 2.x, conformance.html: the scopes a Backend Services client may ask for.
SCOPES_SUPPORTED = ["system/*.read", "system/*.rs"]


def absolute_url(request: HttpRequest, path: str) -> str:
    """Return ``path`` as an absolute URL under PA_BASE_URL (or the request's own host)."""
    if settings.PA_BASE_URL:
        return settings.PA_BASE_URL + path
    return request.build_absolute_uri(path)


def token_url(request: HttpRequest) -> str:
    """Return the token endpoint's absolute URL: the ``aud`` every client assertion must carry."""
    return absolute_url(request, reverse("payer:token"))


# The assertion is a credential: keep it out of Django's error reports.
@method_decorator(sensitive_post_parameters("client_assertion"), name="dispatch")
@method_decorator(csrf_exempt, name="dispatch")
class TokenView(View):
    """``POST /payer/auth/token``: client_credentials with a private_key_jwt assertion.

    Not a FHIR endpoint: errors follow RFC 6749 section 5.2 (``{"error": ...}``), not
    OperationOutcome. Every grant and refusal is audited, without the assertion or token.
    """

    http_method_names = ["post"]

    def post(self, request: HttpRequest) -> JsonResponse:
        # RFC 6749 section 4.4.2: the parameters come form-encoded in the body.
        if request.content_type != "application/x-www-form-urlencoded":
            error = TokenError("invalid_request", "The body must be application/x-www-form-urlencoded.")
            return self._refuse(request, error)
        form = request.POST
        try:
            grant = token_grant(
                grant_type=form.get("grant_type", ""),
                client_assertion_type=form.get("client_assertion_type", ""),
                client_assertion=form.get("client_assertion", ""),
                scope=form.get("scope", ""),
                token_url=token_url(request),
            )
        except TokenError as error:
            return self._refuse(request, error)
        audit_record(
            action="token", outcome=AuditEvent.Outcome.SUCCESS, client=grant.token.client, request=request,
            status_code=200, detail=f"granted {' '.join(grant.scopes)}",
        )
        return self._no_store(JsonResponse(grant.response_body()))

    def _refuse(self, request: HttpRequest, error: TokenError) -> JsonResponse:
        detail = f"{error.error}: {error.description}"
        if error.client is None and error.claimed:
            detail += f" (claimed client_id {error.claimed!r})"
        audit_record(
            action="token", outcome=AuditEvent.Outcome.DENIED, client=error.client, request=request,
            status_code=error.status, detail=detail,
        )
        response = JsonResponse({"error": error.error, "error_description": error.description}, status=error.status)
        if error.status == 401:
            # RFC 6749 section 5.2: a 401 for invalid_client carries WWW-Authenticate.
            response["WWW-Authenticate"] = 'Bearer realm="payer", error="invalid_client"'
        return self._no_store(response)

    @staticmethod
    def _no_store(response: JsonResponse) -> JsonResponse:
        # RFC 6749 section 5.1: token responses SHALL NOT be cached.
        response["Cache-Control"] = "no-store"
        response["Pragma"] = "no-cache"
        return response


class SmartConfigurationView(APIView):
    """``GET .well-known/smart-configuration`` (SMART App Launch 2.x conformance.html).

    Public: it tells a Backend Services client where and how to get a token.
    """

    authentication_classes: list = []
    permission_classes = [AllowAny]
    renderer_classes = [JSONRenderer]

    def get(self, request):
        return Response(
            {
                "token_endpoint": token_url(request),
                "token_endpoint_auth_methods_supported": ["private_key_jwt"],
                "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGORITHMS),
                "grant_types_supported": ["client_credentials"],
                "scopes_supported": SCOPES_SUPPORTED,
                "capabilities": ["client-confidential-asymmetric"],
            },
            content_type="application/json",
        )
