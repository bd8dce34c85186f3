from django.urls import path, re_path

from fhirkit.views import fhir_not_found
from payer.views import auth, export, fhir, metadata, pages

app_name = "payer"
urlpatterns = [
    # Plain-language pages for members and providers (CMS-0057-F).
    path("opt-out/", pages.opt_out_page, name="opt-out"),
    path("my-data/", pages.access_history_page, name="access-history"),
    path("providers/", pages.providers_page, name="providers"),
    # SMART Backend Services authorization server and discovery; the public CapabilityStatement.
    path("auth/token", auth.TokenView.as_view(), name="token"),
    path("fhir/.well-known/smart-configuration", auth.SmartConfigurationView.as_view(), name="smart-configuration"),
    path("fhir/metadata", metadata.MetadataView.as_view(), name="metadata"),
    # Bulk Data $export (system, Patient, Group), PDex $davinci-data-export, and the status URL.
    path("fhir/$export", export.SystemExportView.as_view(), name="export-system"),
    path("fhir/Patient/$export", export.PatientExportView.as_view(), name="export-patient"),
    path("fhir/Group/<str:group_id>/$export", export.GroupExportView.as_view(), name="export-group"),
    path(
        "fhir/Group/<str:group_id>/$davinci-data-export",
        export.GroupDavinciExportView.as_view(),
        name="export-davinci",
    ),
    path("fhir/bulkstatus/<str:job_id>", export.ExportStatusView.as_view(), name="export-status"),
    # Read and search: attribution Groups, member data and the provider directory.
    path("fhir/Group", fhir.GroupSearchView.as_view(), name="fhir-group-search"),
    re_path(rf"^fhir/Group/(?P<group_id>{fhir.ID_PATTERN})$", fhir.GroupReadView.as_view(), name="fhir-group-read"),
    re_path(rf"^fhir/{fhir.TYPE_PATTERN}$", fhir.ResourceSearchView.as_view(), name="fhir-search"),
    re_path(
        rf"^fhir/{fhir.TYPE_PATTERN}/(?P<resource_id>{fhir.ID_PATTERN})$",
        fhir.ResourceReadView.as_view(),
        name="fhir-read",
    ),
    re_path(r"^fhir/(?P<path>.*)$", fhir_not_found),
]
