from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("payer", "0005_member_match")]

    operations = [
        migrations.AddField(model_name="claim", name="daw_code",
                            field=models.CharField(blank=True, default="", max_length=1)),
        migrations.AddField(model_name="claim", name="refill_number",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="claim", name="refills_authorized",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="priorauthorization", name="units_approved",
                            field=models.PositiveIntegerField(blank=True, null=True)),
        migrations.AddField(model_name="priorauthorization", name="units_used",
                            field=models.PositiveIntegerField(default=0)),
    ]
