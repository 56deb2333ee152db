from django.db import migrations

from audit.appendonly import MakeAppendOnly
from tenants.db import EnableTenantRLS

TABLE = "policies_policydecision"


def platform_scope_policy(apps, schema_editor):
    """Platform-scope decisions (no tenant) are readable and writable outside any tenant."""
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"CREATE POLICY platform_scope ON {TABLE} USING (tenant_id IS NULL) "
                              f"WITH CHECK (tenant_id IS NULL)")


def drop_platform_scope_policy(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(f"DROP POLICY IF EXISTS platform_scope ON {TABLE}")


class Migration(migrations.Migration):
    dependencies = [("policies", "0001_initial"), ("audit", "0002_append_only")]

    operations = [
        EnableTenantRLS(TABLE),
        migrations.RunPython(platform_scope_policy, drop_platform_scope_policy),
        MakeAppendOnly(TABLE, updates_only=True),
    ]
