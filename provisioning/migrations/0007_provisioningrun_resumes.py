from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0006_reconcile")]

    operations = [
        migrations.AddField(
            model_name="provisioningrun",
            name="resumes",
            field=models.PositiveIntegerField(default=0),
        ),
    ]
