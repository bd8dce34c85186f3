from django.urls import path  # noqa: F401

app_name = "provider"
urlpatterns: list = []

# The local FHIR store (FHIR R4 http.html): metadata, read, search.
from django.urls import re_path  # noqa: E402

from provider.views import fhir as fhir_views  # noqa: E402

urlpatterns += [
    path("fhir/metadata", fhir_views.MetadataView.as_view(), name="fhir-metadata"),
    re_path(
        r"^fhir/(?P<resource_type>[^/]+)/(?P<resource_id>[^/]+)$",
        fhir_views.ResourceReadView.as_view(),
        name="fhir-read",
    ),
    re_path(r"^fhir/(?P<resource_type>[^/]+)$", fhir_views.ResourceSearchView.as_view(), name="fhir-search"),
]
