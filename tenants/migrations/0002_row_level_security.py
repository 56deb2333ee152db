from django.db import migrations

from tenants.db import USER_MATCH, EnableTenantRLS


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]

    operations = [
        # A person may read their own memberships in every tenant (to list where they belong).
        EnableTenantRLS("tenants_membership", select_also=[USER_MATCH]),
        EnableTenantRLS("tenants_serviceaccount"),
        # Authentication finds a token by its hash before it knows the tenant.
        EnableTenantRLS(
            "tenants_apitoken",
            select_also=["key_hash = current_setting('app.token_hash', true)", USER_MATCH],
        ),
    ]
