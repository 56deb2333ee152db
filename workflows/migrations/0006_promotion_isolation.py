from django.db import migrations

from audit.appendonly import MakeAppendOnly
from tenants.db import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("workflows", "0005_promotions"), ("audit", "0002_append_only")]

    operations = [
        EnableTenantRLS("workflows_promotion"),
        EnableTenantRLS("workflows_approval"),
        MakeAppendOnly("workflows_approval", updates_only=True),
        EnableTenantRLS("workflows_promotionoverride"),
    ]
