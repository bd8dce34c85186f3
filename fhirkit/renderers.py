import json

from rest_framework.renderers import BaseRenderer

from fhirkit.outcome import FHIR_JSON


class FHIRJSONRenderer(BaseRenderer):
    """Render FHIR resources as ``application/fhir+json``.

    FHIR R4 http.html#mime-type: servers SHALL support ``application/fhir+json`` and
    should accept ``application/json`` and ``_format=json`` as the same thing.
    """

    media_type = FHIR_JSON
    format = "json"
    charset = "utf-8"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        if data is None:
            return b""
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


class JSONAliasRenderer(FHIRJSONRenderer):
    """Accept ``application/json`` but still answer with the FHIR media type."""

    media_type = "application/json"

    def render(self, data, accepted_media_type=None, renderer_context=None) -> bytes:
        response = (renderer_context or {}).get("response")
        if response is not None:
            response["Content-Type"] = f"{FHIR_JSON}; charset=utf-8"
        return super().render(data, accepted_media_type, renderer_context)
