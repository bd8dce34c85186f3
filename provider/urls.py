from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from fhirkit.views import fhir_not_found
from provider.views import fhir

app_name = "provider"
urlpatterns = [
    # The local FHIR store (FHIR R4 http.html): metadata, read, search.
    path("fhir/metadata", fhir.MetadataView.as_view(), name="fhir-metadata"),
    # One source's own view (a payer connection's resources only), where ids are unambiguous.
    re_path(
        r"^fhir/source/(?P<source>[-a-zA-Z0-9_]{1,50})/(?P<resource_type>[^/]+)/(?P<resource_id>[^/]+)$",
        fhir.ResourceReadView.as_view(), name="fhir-source-read",
    ),
    re_path(
        r"^fhir/source/(?P<source>[-a-zA-Z0-9_]{1,50})/(?P<resource_type>[^/]+)$",
        fhir.ResourceSearchView.as_view(), name="fhir-source-search",
    ),
    re_path(r"^fhir/(?P<resource_type>[^/]+)/(?P<resource_id>[^/]+)$", fhir.ResourceReadView.as_view(), name="fhir-read"),
    re_path(r"^fhir/(?P<resource_type>[^/]+)$", fhir.ResourceSearchView.as_view(), name="fhir-search"),
    # [\s\S]: a path with a newline (%0A) is still a FHIR path, answered with an OperationOutcome.
    re_path(r"^fhir/(?P<path>[\s\S]*)$", csrf_exempt(fhir_not_found)),
]
