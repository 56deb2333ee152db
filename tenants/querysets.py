"""The choke point for reads: every queryset of tenant data goes through ``restrict``.

The API and console base classes call it, so an endpoint cannot forget it. On PostgreSQL,
row-level security is the second line behind it (see tenants.db).
"""

from django.db import models


class TenantQuerySet(models.QuerySet):
    def restrict(self, user, action: str = "view"):
        from .access import allowed_tenant_ids

        allowed = allowed_tenant_ids(user, action)
        return self if allowed is None else self.filter(pk__in=allowed)


class TenantOwnedQuerySet(models.QuerySet):
    """For models with a ``tenant`` foreign key."""

    def restrict(self, user, action: str = "view"):
        from .access import allowed_tenant_ids

        allowed = allowed_tenant_ids(user, action)
        return self if allowed is None else self.filter(tenant_id__in=allowed)
