from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.urls import NoReverseMatch, reverse
from django.views import View

from audit.verify import inclusion_status, latest_checkpoint_status
from audit.witnessing import witness_status
from tenants.access import allowed_tenant_ids, is_platform_admin
from tenants.console import TenantConsoleMixin

from .filters import AuditEventFilter
from .selectors import event_page, events_visible_to

# The app role reads the audit tables (they hold no tenant rows under row-level security).
AUDIT_READS = "default"


def _cursor(request, name: str) -> int | None:
    raw = request.GET.get(name, "")
    return int(raw) if raw.isascii() and raw.isdigit() else None  # "²".isdigit() is true


def _render_events(request, events, context):
    filterset = AuditEventFilter(request.GET, queryset=events.select_related("leaf"))
    # A filter that does not parse lists nothing (its error shows by the field), never everything.
    matching = filterset.qs if filterset.is_valid() else events.none()
    page = event_page(matching, before=_cursor(request, "before"), after=_cursor(request, "after"))
    query = request.GET.copy()
    for name in ("before", "after"):
        query.pop(name, None)
    status = latest_checkpoint_status(using=AUDIT_READS, tenant=context["tenant"].slug if context["tenant"] else None)
    return render(request, "compliance/audit.html", {
        **context, "filter": filterset, "page": page, "query": query.urlencode(), "status": status,
        "witnesses": witness_status(status.checkpoint, using=AUDIT_READS),
        # The trail filtered to one promotion offers its evidence pack.
        "evidence_url": _evidence_url(context["tenant"].slug if context["tenant"] else "",
                                      request.GET.get("target_type", ""), request.GET.get("target", "")),
    })


class TenantAuditView(TenantConsoleMixin, View):
    def get(self, request, tenant):
        if not self.can("audit"):
            raise PermissionDenied("Your role here does not include the audit trail.")
        return _render_events(request, events_visible_to(request.user, tenant=self.tenant), {"tenant": self.tenant})


class AuditView(LoginRequiredMixin, View):
    def get(self, request):
        _require_some_audit_access(request.user)
        return _render_events(request, events_visible_to(request.user), {"tenant": None})


class AuditEventView(LoginRequiredMixin, View):
    """One event: its exact canonical JSON, its sequencing entry, and its inclusion proof in
    the latest checkpoint, checked here against the signed root."""

    def get(self, request, event):
        _require_some_audit_access(request.user)
        found = events_visible_to(request.user).select_related("leaf").filter(pk=event).first()
        if found is None:
            raise Http404("No such event.")
        status = latest_checkpoint_status(using=AUDIT_READS, tenant=found.tenant)
        leaf = getattr(found, "leaf", None)
        inclusion = None
        if leaf is not None and status.checkpoint is not None and leaf.position < status.checkpoint.tree_size:
            inclusion = inclusion_status(leaf, status.checkpoint, using=AUDIT_READS)
        return render(request, "compliance/event.html", {
            "event": found, "leaf": leaf, "status": status, "inclusion": inclusion,
            "evidence_url": _evidence_url(found.tenant, found.target_type, found.target_id)})


def _evidence_url(tenant: str, target_type: str, target_id: str) -> str:
    """The evidence pack's link when the target is one of a tenant's promotions, else ""."""
    if target_type != "promotion" or not tenant:
        return ""
    try:
        return reverse("api-promotion-evidence", args=[tenant, target_id])
    except NoReverseMatch:  # not a promotion id this platform issued
        return ""


def _require_some_audit_access(user):
    """Someone who may read some audit events: a tenant's auditors and admins, and platform
    admins, who read the platform's own events (compliance.selectors.events_visible_to)."""
    allowed = allowed_tenant_ids(user, "audit")
    if allowed is not None and not allowed and not is_platform_admin(user):
        raise Http404("No audit access.")
