from django.db import migrations

WORKLOAD_IMAGE = "tenant-console/workload:1"

PLANS = [
    {
        "name": "free",
        "display_name": "Free",
        "description": "One replica, for trying things out.",
        "replicas": 1,
        "memory_mb": 64,
        "sort_order": 1,
        "step_budgets": {"wait_ready": {"attempts": 2, "seconds": 30}},
    },
    {
        "name": "pro",
        "display_name": "Pro",
        "description": "Two replicas behind the tenant's route.",
        "replicas": 2,
        "memory_mb": 128,
        "sort_order": 2,
        "step_budgets": {"wait_ready": {"attempts": 2, "seconds": 45}},
    },
    {
        "name": "enterprise",
        "display_name": "Enterprise",
        "description": "Three replicas and the longest time budgets.",
        "replicas": 3,
        "memory_mb": 256,
        "sort_order": 3,
        "step_budgets": {
            "deploy_workloads": {"attempts": 3, "seconds": 120},
            "wait_ready": {"attempts": 3, "seconds": 60},
        },
    },
]


def seed(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    for plan in PLANS:
        Plan.objects.update_or_create(name=plan["name"], defaults={**plan, "image": WORKLOAD_IMAGE})
    Group = apps.get_model("auth", "Group")
    for name in ("operators", "viewers"):
        Group.objects.get_or_create(name=name)


def unseed(apps, schema_editor):
    apps.get_model("tenants", "Plan").objects.filter(
        name__in=[p["name"] for p in PLANS], tenants__isnull=True
    ).delete()


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial"), ("auth", "0012_alter_user_first_name_max_length")]
    operations = [migrations.RunPython(seed, unseed)]
