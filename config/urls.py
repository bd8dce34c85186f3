from django.conf import settings
from django.contrib import admin
from django.urls import include, path
from django.views.generic import TemplateView

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
