from rest_framework.parsers import JSONParser


class FHIRJSONParser(JSONParser):
    """Parse ``application/fhir+json`` (and plain ``application/json``) request bodies."""

    media_type = "application/*json"
