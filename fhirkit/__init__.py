"""FHIR plumbing shared by the payer and the provider: OperationOutcome, rendering,
parsing, errors and validation with the fhir.resources R4B models."""
