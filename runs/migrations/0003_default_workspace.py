from django.db import migrations


def create_default(apps, schema_editor):
    Workspace = apps.get_model("runs", "Workspace")
    Workspace.objects.get_or_create(slug="default", defaults={"name": "Default"})


class Migration(migrations.Migration):
    dependencies = [("runs", "0002_initial")]

    operations = [migrations.RunPython(create_default, migrations.RunPython.noop)]
