"""Admin pages of the hospital's side: connections with their panel sync, jobs with their deletions."""

import pytest
from django.urls import reverse

from provider.models import PayerConnection, SyncJob

pytestmark = pytest.mark.django_db


@pytest.fixture
def connection(key_file) -> PayerConnection:
    return PayerConnection.objects.create(
        name="unitedcare", display_name="UnitedCare Health", fhir_base_url="https://payer.example/fhir",
        client_id="c" * 300, private_key_path=str(key_file), key_id="k1", panel_group_id="g1",
    )


def test_connection_list_shows_the_panel_sync_and_its_counts(admin_client, connection):
    SyncJob.objects.create(connection=connection, level="group", scope_key="k", group_id="g1", panel=True,
                           status=SyncJob.Status.COMPLETED, counts={"Encounter": 7, "Patient": 1}, deleted_count=3)
    page = admin_client.get(reverse("admin:provider_payerconnection_changelist")).content.decode()
    assert "nightly" in page and "Completed: 8 resources stored, 3 deleted" in page
    assert "c" * 300 not in page  # a long client id is shortened in the list
    form = admin_client.get(reverse("admin:provider_payerconnection_change", args=[connection.pk])).content.decode()
    for name in ("file_origins", "token_origins", "poll_deadline", "max_file_bytes", "max_line_bytes",
                 "max_manifest_files", "max_job_resources", "panel_sync_hours"):
        assert f'name="{name}"' in form


def test_sync_panel_action_starts_a_panel_job(admin_client, connection, django_capture_on_commit_callbacks):
    other = PayerConnection.objects.create(name="nopanel", display_name="No panel", fhir_base_url="https://p2.example/fhir",
                                           client_id="c2", private_key_path="x.pem", key_id="k")
    with django_capture_on_commit_callbacks(execute=False):
        response = admin_client.post(reverse("admin:provider_payerconnection_changelist"),
                                     {"action": "sync_panel", "_selected_action": [connection.pk, other.pk]}, follow=True)
    job = SyncJob.objects.get()
    assert job.panel and job.group_id == "g1" and job.connection == connection
    text = response.content.decode()
    assert f"Panel sync job {job.pk} started" in text and "has no panel group" in text


def test_job_list_shows_deletions(admin_client, connection):
    SyncJob.objects.create(connection=connection, level="group", scope_key="k", group_id="g1",
                           status=SyncJob.Status.COMPLETED, deleted_count=49)
    page = admin_client.get(reverse("admin:provider_syncjob_changelist")).content.decode()
    assert "column-deleted_count" in page and ">49<" in page
