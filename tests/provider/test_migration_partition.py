"""The migration to a store partitioned by source moves today's rows (provider 0005/0006)."""

import pytest
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

pytestmark = pytest.mark.django_db(transaction=True)

BEFORE = [("provider", "0004_organization_scope")]
AFTER = [("provider", "0006_source_partition")]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor.loader.project_state(targets).apps


def test_rows_keep_their_connection_orphans_take_their_jobs_and_unattributable_ones_go():
    apps = _migrate(BEFORE)
    PayerConnection = apps.get_model("provider", "PayerConnection")
    SyncJob = apps.get_model("provider", "SyncJob")
    LocalResource = apps.get_model("provider", "LocalResource")
    payer = PayerConnection.objects.create(name="uc", display_name="UC", fhir_base_url="https://uc.example/fhir",
                                           client_id="c", private_key_path="/k.pem", key_id="k")
    job = SyncJob.objects.create(connection=payer, level="group", scope_key="k")
    now = timezone.now()

    def row(resource_id: str, **fields):
        return LocalResource.objects.create(resource_type="Encounter", resource_id=resource_id, ingested_at=now,
                                            resource={"resourceType": "Encounter", "id": resource_id}, **fields)

    row("kept", connection=payer)
    row("orphan-with-job", sync_job=job)  # its connection was deleted once (SET_NULL)
    row("unattributable")

    try:
        apps = _migrate(AFTER)
        LocalResource = apps.get_model("provider", "LocalResource")
        assert sorted(LocalResource.objects.values_list("resource_id", "connection_id")) == [
            ("kept", payer.pk), ("orphan-with-job", payer.pk),
        ]
    finally:
        # Every app back to its newest state (unapplying provider 0005 took dependent apps back too).
        _migrate(MigrationExecutor(connection).loader.graph.leaf_nodes())
