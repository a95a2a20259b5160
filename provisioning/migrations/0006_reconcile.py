from django.db import migrations, models

NAME = "provisioning-reconcile"


def schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={
            "func": "provisioning.tasks.reconcile_report",
            "schedule_type": "I",  # MINUTES
            "minutes": 5,
            "repeats": -1,
        },
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0005_steprun_stalled_at"),
        ("django_q", "0018_task_success_index"),
    ]

    operations = [
        migrations.CreateModel(
            name="ReconcileReport",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("checked_at", models.DateTimeField()),
                ("findings", models.JSONField(blank=True, default=list)),
                ("errors", models.JSONField(blank=True, default=list)),
            ],
        ),
        migrations.RunPython(schedule, unschedule),
    ]
