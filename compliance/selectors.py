"""What each viewer may read of the audit log, and how it is paged.

Audit events name their tenant by slug (the log outlives tenants), so visibility is the
set of slugs of tenants where the viewer holds ``audit``. Platform admins see the
platform-scope events (blank tenant), and a tenant's only through a membership or an explicit
grant, as any auditor (docs/roles.md).

Pages are keyset pages on the event id (newest first): a page at any depth costs one indexed
range read, where an offset would scan everything before it and a count would scan it all.
"""

from dataclasses import dataclass

from django.db.models import Q

from audit.models import AuditEvent
from tenants.access import allowed_tenant_ids, is_platform_admin
from tenants.models import Tenant

PAGE_SIZE = 50


def events_visible_to(user, *, tenant: Tenant | None = None):
    events = AuditEvent.objects.all()
    if tenant is not None:
        events = events.filter(tenant=tenant.slug)
    allowed = allowed_tenant_ids(user, "audit")
    if allowed is None:
        return events
    visible = Q(tenant__in=Tenant.objects.filter(pk__in=allowed).values_list("slug", flat=True))
    if is_platform_admin(user):
        visible |= Q(tenant="")  # the platform's own events; a tenant's are for its auditors
    return events.filter(visible)


@dataclass(frozen=True)
class EventPage:
    events: list
    newer: int | None  # pass as ?after= for the page of newer events
    older: int | None  # pass as ?before= for the page of older events


def event_page(events, *, before: int | None = None, after: int | None = None, size: int = PAGE_SIZE) -> EventPage:
    """One page of ``events``, newest first: the newest ones, those older than event ``before``,
    or those just newer than event ``after``."""
    if after is not None:
        rows = list(events.filter(id__gt=after).order_by("id")[:size + 1])
        more_newer = len(rows) > size
        rows = rows[:size][::-1]
        return EventPage(rows, newer=rows[0].id if more_newer else None, older=rows[-1].id if rows else after + 1)
    if before is not None:
        events = events.filter(id__lt=before)
    rows = list(events.order_by("-id")[:size + 1])
    more_older = len(rows) > size
    rows = rows[:size]
    return EventPage(rows, newer=rows[0].id if before is not None and rows else None,
                     older=rows[-1].id if more_older else None)
