from django.db import migrations, models


class Migration(migrations.Migration):
    """Parked runs (issue 8): a run waits in the database, not in a worker."""

    dependencies = [("provisioning", "0008_audit_refuse_truncate")]

    operations = [
        migrations.AddField(
            model_name="provisioningrun",
            name="wait_reason",
            field=models.CharField(blank=True, max_length=300),
        ),
        migrations.AddField(
            model_name="provisioningrun",
            name="wake_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="steprun",
            name="attempt_started_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name="steprun",
            name="memo",
            field=models.JSONField(blank=True, default=dict),
        ),
        migrations.AddIndex(
            model_name="provisioningrun",
            index=models.Index(
                condition=models.Q(("wake_at__isnull", False)),
                fields=["wake_at"],
                name="run_parked_wake_at",
            ),
        ),
    ]
