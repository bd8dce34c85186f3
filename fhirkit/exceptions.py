"""Turn every error a FHIR endpoint raises into an OperationOutcome."""

import logging

from django.core.exceptions import RequestDataTooBig, SuspiciousOperation, TooManyFieldsSent
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from fhirkit.outcome import FHIRError, operation_outcome, outcome_issue

logger = logging.getLogger(__name__)

# DRF exception class -> OperationOutcome.issue.code (R4 valueset issue-type).
ISSUE_CODES = {
    exceptions.NotAuthenticated: "login",
    exceptions.AuthenticationFailed: "login",
    exceptions.PermissionDenied: "forbidden",
    exceptions.NotFound: "not-found",
    exceptions.MethodNotAllowed: "not-supported",
    exceptions.NotAcceptable: "not-supported",
    exceptions.UnsupportedMediaType: "not-supported",
    exceptions.Throttled: "throttled",
    exceptions.ParseError: "structure",
    exceptions.ValidationError: "invalid",
}


def _detail_text(detail) -> str:
    if isinstance(detail, dict):
        return "; ".join(f"{key}: {_detail_text(value)}" for key, value in detail.items())
    if isinstance(detail, list):
        return "; ".join(_detail_text(item) for item in detail)
    return str(detail)


def fhir_exception_handler(exc, context):
    """Call DRF's handler first (it keeps its headers and rolls back), then rewrite the
    body as an OperationOutcome. Unknown exceptions become a 500 without internals."""
    if isinstance(exc, FHIRError):
        response = Response(exc.outcome, status=exc.status, headers=exc.headers)
        exceptions_set_rollback()
        return response

    if isinstance(exc, RequestDataTooBig):
        exceptions_set_rollback()
        return Response(operation_outcome([outcome_issue(code="too-costly", diagnostics="The request body is too large.")]),
                        status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
    if isinstance(exc, (TooManyFieldsSent, SuspiciousOperation)):
        # Django refuses a query or form with more than DATA_UPLOAD_MAX_NUMBER_FIELDS
        # fields (and other hostile input) with SuspiciousOperation: a client error.
        exceptions_set_rollback()
        message = "Too many parameters." if isinstance(exc, TooManyFieldsSent) else "The request was refused."
        return Response(operation_outcome([outcome_issue(code="too-costly" if isinstance(exc, TooManyFieldsSent) else "security",
                                                         diagnostics=message)]), status=status.HTTP_400_BAD_REQUEST)

    response = exception_handler(exc, context)
    if response is None:
        logger.exception("Unhandled error in %s", context.get("view").__class__.__name__)
        exceptions_set_rollback()
        return Response(
            operation_outcome([outcome_issue(code="exception", diagnostics="Internal server error.")]),
            status=status.HTTP_500_INTERNAL_SERVER_ERROR,
        )
    if isinstance(exc, Http404):
        code = "not-found"
    else:
        code = next((c for cls, c in ISSUE_CODES.items() if isinstance(exc, cls)), "processing")
    detail = getattr(exc, "detail", None) or str(exc) or "Not found."
    response.data = operation_outcome([outcome_issue(code=code, diagnostics=_detail_text(detail))])
    return response


def exceptions_set_rollback() -> None:
    from rest_framework.views import set_rollback

    set_rollback()
