"""Partition the local store by source (see 0005): unique per connection, connection required.

Apart from 0005 so that its row updates are committed before the table is altered
(PostgreSQL refuses ALTER TABLE with the deferred foreign-key checks of those updates pending).
"""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ("provider", "0005_source_rows"),
    ]

    operations = [
        migrations.RemoveConstraint(model_name="localresource", name="local_type_id_unique"),
        migrations.RemoveIndex(model_name="localresource", name="local_type_patient_date_idx"),
        migrations.AlterField(
            model_name="localresource",
            name="connection",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="resources", to="provider.payerconnection"
            ),
        ),
        migrations.AddConstraint(
            model_name="localresource",
            constraint=models.UniqueConstraint(
                fields=("connection", "resource_type", "resource_id"), name="local_source_type_id_unique"
            ),
        ),
        migrations.AddIndex(
            model_name="localresource",
            index=models.Index(
                fields=["connection", "resource_type", "patient_id", "date"], name="local_source_patient_date_idx"
            ),
        ),
    ]
