import json

from django.http import HttpResponse

from fhirkit.outcome import FHIR_JSON, operation_outcome, outcome_issue


def fhir_not_found(request, path: str = "") -> HttpResponse:
    """Answer a path under a FHIR base that names no resource type or operation.

    FHIR R4 http.html: an unknown resource type is a 404 with an OperationOutcome,
    rather than the site's HTML error page.
    """
    body = operation_outcome(
        [outcome_issue(code="not-supported", diagnostics=f"This server has no resource type or operation at {request.path!r}.")]
    )
    return HttpResponse(json.dumps(body), status=404, content_type=f"{FHIR_JSON}; charset=utf-8")
