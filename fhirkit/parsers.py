from rest_framework.parsers import JSONParser


class FHIRJSONParser(JSONParser):
    """Parse ``application/fhir+json`` (and plain ``application/json``) request bodies."""

    # DRF matches media types by exact subtype ("application/*json" matches nothing), so
    # this parser takes FHIR's own type and settings add DRF's JSONParser for plain JSON.
    media_type = "application/fhir+json"
