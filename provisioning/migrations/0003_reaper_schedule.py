from django.db import migrations

NAME = "provisioning-reaper"


def schedule(apps, schema_editor):
    Schedule = apps.get_model("django_q", "Schedule")
    Schedule.objects.update_or_create(
        name=NAME,
        defaults={
            "func": "provisioning.tasks.reap_expired_leases",
            "schedule_type": "I",  # MINUTES
            "minutes": 1,
            "repeats": -1,
        },
    )


def unschedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("provisioning", "0002_audit_append_only"),
        ("django_q", "0018_task_success_index"),
    ]
    operations = [migrations.RunPython(schedule, unschedule)]
