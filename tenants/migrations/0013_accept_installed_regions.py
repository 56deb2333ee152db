from django.db import migrations, models


def accept_installed_regions(apps, schema_editor):
    """The regions a platform starts with (and any added before a second platform admin had to
    accept one) are in force, as the install put them there."""
    Region = apps.get_model("tenants", "Region")
    db = schema_editor.connection.alias
    Region.objects.using(db).filter(accepted_at__isnull=True, proposed_by__isnull=True).update(
        accepted_at=models.F("created_at"))


class Migration(migrations.Migration):

    dependencies = [
        ("tenants", "0012_regions_accepted_and_quota_revisions"),
    ]

    operations = [
        migrations.RunPython(accept_installed_regions, migrations.RunPython.noop),
    ]
