"""What each viewer may read of the audit log.

Audit events name their tenant by slug (the log outlives tenants), so visibility is the
set of slugs of tenants where the viewer holds ``audit``; platform admins see everything,
including platform-scope events.
"""

from audit.models import AuditEvent
from tenants.access import allowed_tenant_ids
from tenants.models import Tenant


def events_visible_to(user, *, tenant: Tenant | None = None):
    events = AuditEvent.objects.all()
    if tenant is not None:
        events = events.filter(tenant=tenant.slug)
    allowed = allowed_tenant_ids(user, "audit")
    if allowed is None:
        return events
    slugs = Tenant.objects.filter(pk__in=allowed).values_list("slug", flat=True)
    return events.filter(tenant__in=slugs)
