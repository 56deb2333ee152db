from django.db import migrations

from audit.appendonly import MakeAppendOnly
from tenants.db import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("policies", "0003_tenant_policy_and_waivers"), ("audit", "0002_append_only")]

    operations = [
        EnableTenantRLS("policies_tenantpolicy"),
        MakeAppendOnly("policies_tenantpolicy", updates_only=True),
        EnableTenantRLS("policies_waiver"),
    ]
