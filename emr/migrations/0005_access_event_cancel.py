"""A clinician's cancel of a fetch is recorded as an access event of its own.

Choices only: no change in the database (``sqlmigrate`` prints "no-op" on SQLite and
PostgreSQL), so the table is not rebuilt and 0003's append-only triggers stay.
"""

from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('emr', '0004_access_event_print'),
    ]

    operations = [
        migrations.AlterField(
            model_name='accessevent',
            name='action',
            field=models.CharField(choices=[('view', 'Viewed the record'), ('view_encounter', 'Viewed an encounter'), ('fetch', 'Fetched history from a payer'), ('cancel_fetch', 'Cancelled a fetch from a payer'), ('create', 'Registered the patient'), ('attest', 'Attested a treatment relationship'), ('correct_member_id', 'Corrected the member id'), ('print', 'Printed part of the record')], max_length=20),
        ),
    ]
