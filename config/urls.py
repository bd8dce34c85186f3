from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

# One admin site; its sections are the apps of the roles this deployment runs (PA_ROLES), each
# named for its side ("Health plan: ...", "Hospital: ..."), so staff never see the other side's.
admin.site.site_header = {
    frozenset({"payer"}): "Health plan administration",
    frozenset({"provider", "emr"}): "Hospital administration",
    frozenset({"provider"}): "Hospital administration",
}.get(frozenset(settings.ROLES), "Provider Access administration (health plan and hospital)")
admin.site.site_title = admin.site.index_title = admin.site.site_header

urlpatterns = [
    path("", TemplateView.as_view(template_name="index.html"), name="home"),
    path("admin/", admin.site.urls),
]

if "payer" in settings.ROLES:
    from payer.views import auth as payer_auth_views

    urlpatterns += [
        path("payer/", include("payer.urls")),
        path("storage/", include("storage.urls")),
        # SMART App Launch 2.x: discovery also at the host root.
        path(".well-known/smart-configuration", payer_auth_views.SmartConfigurationView.as_view()),
    ]
if "provider" in settings.ROLES:
    urlpatterns += [path("provider/", include("provider.urls"))]
if "emr" in settings.ROLES:
    urlpatterns += [path("emr/", include("emr.urls"))]
