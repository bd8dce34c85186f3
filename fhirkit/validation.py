"""Validate FHIR resources with the fhir.resources R4B models.

The package ships R5, R4B and STU3 models but no R4; R4B is the nearest to R4 4.0.1
for every resource type this project uses.
"""

from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from fhirkit.outcome import outcome_issue


def _expression(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        else:
            parts.append(str(item))
    return ".".join(parts)


def validation_error_issues(error: ValidationError, *, resource_type: str) -> list[dict[str, Any]]:
    """Return OperationOutcome issues for a pydantic error; ``loc`` becomes ``expression``."""
    return [
        outcome_issue(
            code="invalid" if err.get("type") != "missing" else "required",
            diagnostics=err.get("msg", "Invalid value"),
            expression=[".".join(filter(None, [resource_type, _expression(err.get("loc", ()))]))],
        )
        for err in error.errors()
    ]


def resource_validate(resource: Any) -> list[dict[str, Any]]:
    """Return the issues that keep ``resource`` from being a valid R4B resource (empty if valid)."""
    if not isinstance(resource, dict):
        return [outcome_issue(code="structure", diagnostics="A resource must be a JSON object.")]
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or not resource_type:
        return [outcome_issue(code="required", diagnostics="resourceType is missing.", expression=["resourceType"])]
    try:
        model = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        return [
            outcome_issue(
                code="not-supported",
                diagnostics=f"Unknown resourceType {resource_type!r}.",
                expression=["resourceType"],
            )
        ]
    try:
        model.model_validate(resource)
    except ValidationError as error:
        return validation_error_issues(error, resource_type=resource_type)
    return []
