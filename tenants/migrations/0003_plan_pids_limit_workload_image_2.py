import django.core.validators
from django.db import migrations, models

# The workload image's entrypoint changed with version 2 (it runs as a non-root
# user and writes its page to a tmpfs), so plans on the built-in image move to
# the new tag: an engine that still holds version 1 would otherwise reuse it.
OLD_IMAGE = "tenant-console/workload:1"
NEW_IMAGE = "tenant-console/workload:2"


def move_image(old: str, new: str):
    def move(apps, schema_editor):
        apps.get_model("tenants", "Plan").objects.filter(image=old).update(image=new)

    return move


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_seed_plans_and_groups")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="pids_limit",
            field=models.PositiveIntegerField(
                default=64, validators=[django.core.validators.MinValueValidator(1)]
            ),
        ),
        migrations.RunPython(move_image(OLD_IMAGE, NEW_IMAGE), move_image(NEW_IMAGE, OLD_IMAGE)),
    ]
