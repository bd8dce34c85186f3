"""OperationOutcome bodies and the exception that carries one."""

from typing import Any

FHIR_JSON = "application/fhir+json"
FHIR_NDJSON = "application/fhir+ndjson"


def outcome_issue(
    *, code: str, diagnostics: str, severity: str = "error", expression: list[str] | None = None
) -> dict[str, Any]:
    """Return one OperationOutcome.issue (R4 codes: invalid, not-found, forbidden, ...)."""
    # A FHIR string is never empty (R4 datatypes.html#string): an empty parameter name
    # (``?=x``) names no expression, and empty diagnostics say the code instead.
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics.strip() or code}
    expression = [item[:200] for item in expression or [] if item.strip()]
    if expression:
        issue["expression"] = expression
    return issue


def operation_outcome(issues: list[dict[str, Any]]) -> dict[str, Any]:
    """Return an OperationOutcome resource holding ``issues``."""
    return {"resourceType": "OperationOutcome", "issue": issues}


class FHIRError(Exception):
    """An error a FHIR endpoint answers with an OperationOutcome.

    Raise it from services and views; the exception handler renders it with its status
    and headers (``Retry-After``, ``WWW-Authenticate``).
    """

    def __init__(
        self,
        diagnostics: str,
        *,
        status: int = 400,
        code: str = "invalid",
        severity: str = "error",
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
        issues: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.headers = headers or {}
        self.issues = issues or [
            outcome_issue(code=code, diagnostics=diagnostics, severity=severity, expression=expression)
        ]

    @property
    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)
