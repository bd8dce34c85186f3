from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from rest_framework.parsers import JSONParser


class BoundedJSONParser(JSONParser):
    """Parse a JSON body of at most ``DATA_UPLOAD_MAX_MEMORY_SIZE`` bytes.

    DRF reads the body from the request stream, past the bound Django applies to
    ``request.body``: a larger one answers 413 (fhirkit.exceptions) before it is read.
    """

    def parse(self, stream, media_type=None, parser_context=None):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        request = (parser_context or {}).get("request")
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0) if request is not None else 0
        except ValueError:
            length = 0
        if limit is not None and length > limit:
            raise RequestDataTooBig(f"The request body is larger than {limit} bytes.")
        return super().parse(stream, media_type, parser_context)


class FHIRJSONParser(BoundedJSONParser):
    """Parse ``application/fhir+json`` (and plain ``application/json``) request bodies."""

    # DRF matches media types by exact subtype ("application/*json" matches nothing), so
    # this parser takes FHIR's own type and settings add DRF's JSONParser for plain JSON.
    media_type = "application/fhir+json"
