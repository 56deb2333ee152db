from django.db import migrations

from audit.appendonly import MakeAppendOnly
from tenants.db import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("workflows", "0001_initial"), ("audit", "0002_append_only")]

    operations = [
        *[EnableTenantRLS(f"workflows_{table}")
          for table in ("artifact", "workflow", "workflowversion", "versionartifact", "stagepointer")],
        MakeAppendOnly("workflows_workflowversion", updates_only=True),
        MakeAppendOnly("workflows_versionartifact", updates_only=True),
    ]
