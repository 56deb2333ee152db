from django.db import migrations

from tenants.db import EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("runners", "0002_runs")]

    operations = [EnableTenantRLS("runners_run")]
