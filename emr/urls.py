from django.contrib.auth import views as auth_views
from django.urls import path

from emr import views

app_name = "emr"
urlpatterns = [
    path(
        "login/",
        auth_views.LoginView.as_view(template_name="emr/login.html", redirect_authenticated_user=True),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(next_page="emr:login"), name="logout"),
    path("", views.patient_list, name="patients"),
    path("patients/add/", views.patient_add, name="patient_add"),
    path("patients/<int:pk>/", views.patient_detail, name="patient"),
    path("patients/<int:pk>/member-id/", views.patient_member_id, name="patient_member_id"),
    path("patients/<int:pk>/fetch/<int:connection_id>/", views.patient_fetch, name="patient_fetch"),
    path("patients/<int:pk>/syncs/<int:job_id>/", views.sync_status, name="sync_status"),
    path("patients/<int:pk>/syncs/<int:job_id>/cancel/", views.sync_cancel, name="sync_cancel"),
    path("patients/<int:pk>/syncs/<int:job_id>/retry/", views.sync_retry, name="sync_retry"),
    path("patients/<int:pk>/print/<slug:section>/", views.patient_print, name="patient_print"),
    path("patients/<int:pk>/encounters/<str:encounter_id>/", views.encounter_detail, name="encounter"),
]
