"""Partition the local store by source: every row belongs to one payer connection.

Rows ingested before this migration carry their connection already, unless it was
deleted (the old foreign key set it to NULL). Such a row is given its sync job's
connection; a row with neither cannot be attributed to any source and is removed (it is
a copy of payer data that the connection that wants it fetches again).
"""

from django.db import migrations


def rows_attribute(apps, schema_editor):
    LocalResource = apps.get_model("provider", "LocalResource")
    SyncJob = apps.get_model("provider", "SyncJob")
    orphans = LocalResource.objects.filter(connection__isnull=True)
    for job_id, connection_id in SyncJob.objects.filter(
        pk__in=orphans.exclude(sync_job__isnull=True).values("sync_job")
    ).values_list("pk", "connection_id"):
        orphans.filter(sync_job_id=job_id).update(connection_id=connection_id)
    orphans.filter(connection__isnull=True).delete()


class Migration(migrations.Migration):

    dependencies = [
        ("provider", "0004_organization_scope"),
    ]

    operations = [
        migrations.RunPython(rows_attribute, migrations.RunPython.noop),
    ]
