from django.urls import path  # noqa: F401

app_name = "payer"
urlpatterns: list = []

# Plain-language pages for members and providers (CMS-0057-F).
from payer.views import pages as payer_pages  # noqa: E402

urlpatterns += [
    path("opt-out/", payer_pages.opt_out_page, name="opt-out"),
    path("providers/", payer_pages.providers_page, name="providers"),
]

# SMART Backend Services authorization server and discovery; the public CapabilityStatement.
from payer.views import auth as payer_auth, metadata as payer_metadata  # noqa: E402

urlpatterns += [
    path("auth/token", payer_auth.TokenView.as_view(), name="token"),
    path("fhir/.well-known/smart-configuration", payer_auth.SmartConfigurationView.as_view(), name="smart-configuration"),
    path("fhir/metadata", payer_metadata.MetadataView.as_view(), name="metadata"),
]

# FHIR read and search: attribution Groups, member data and the provider directory (payer/views/fhir.py).
from django.urls import re_path  # noqa: E402

from payer.views import fhir as payer_fhir  # noqa: E402

urlpatterns += [
    path("fhir/Group", payer_fhir.GroupSearchView.as_view(), name="fhir-group-search"),
    re_path(rf"^fhir/Group/(?P<group_id>{payer_fhir.ID_PATTERN})$", payer_fhir.GroupReadView.as_view(), name="fhir-group-read"),
    re_path(rf"^fhir/{payer_fhir.TYPE_PATTERN}$", payer_fhir.ResourceSearchView.as_view(), name="fhir-search"),
    re_path(
        rf"^fhir/{payer_fhir.TYPE_PATTERN}/(?P<resource_id>{payer_fhir.ID_PATTERN})$",
        payer_fhir.ResourceReadView.as_view(),
        name="fhir-read",
    ),
]

# Bulk Data $export (system, Patient, Group), PDex $davinci-data-export, and the status URL.
from payer.views import export as payer_export  # noqa: E402

urlpatterns += [
    path("fhir/$export", payer_export.SystemExportView.as_view(), name="export-system"),
    path("fhir/Patient/$export", payer_export.PatientExportView.as_view(), name="export-patient"),
    path("fhir/Group/<str:group_id>/$export", payer_export.GroupExportView.as_view(), name="export-group"),
    path("fhir/Group/<str:group_id>/$davinci-data-export", payer_export.GroupDavinciExportView.as_view(),
         name="export-davinci"),
    path("fhir/bulkstatus/<str:job_id>", payer_export.ExportStatusView.as_view(), name="export-status"),
]
