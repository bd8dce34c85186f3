from django.urls import path

from storage import views

app_name = "storage"
urlpatterns: list = [
    path("files/<str:file_id>", views.ExportFileView.as_view(), name="export-file"),
]
