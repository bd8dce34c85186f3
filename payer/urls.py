from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

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
    # PDex 2.2 $provider-member-match (its result files are served like export files).
    path("fhir/Group/$provider-member-match", export.MemberMatchView.as_view(), name="member-match"),
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
    # Unknown paths and operations: 404 OperationOutcome for every method. A bearer-token
    # API takes no cookies, so no CSRF check (else a POST got Django's 403 HTML page).
    # [\s\S]: a path holding a newline (%0A) too.
    re_path(r"^fhir/(?P<path>[\s\S]*)$", csrf_exempt(fhir.unknown_path)),
]
