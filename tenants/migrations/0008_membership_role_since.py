import django.utils.timezone
from django.db import migrations, models


def role_since_membership_start(apps, schema_editor):
    """Existing members have held their role since they joined, as far as the database knows:
    approvals they gave before this migration keep counting."""
    if schema_editor.connection.vendor == "postgresql":
        # The owner is subject to the table's forced row-level security; lift it for this statement only.
        schema_editor.execute("ALTER TABLE tenants_membership NO FORCE ROW LEVEL SECURITY")
        schema_editor.execute("UPDATE tenants_membership SET role_since = created_at")
        schema_editor.execute("ALTER TABLE tenants_membership FORCE ROW LEVEL SECURITY")
    else:
        schema_editor.execute("UPDATE tenants_membership SET role_since = created_at")


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0007_region_catalogue'),
    ]

    operations = [
        migrations.AddField(
            model_name='membership',
            name='role_since',
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.RunPython(role_since_membership_start, migrations.RunPython.noop),
    ]
