from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.paginator import Paginator
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import render
from django.views import View

from tenants.access import allowed_tenant_ids
from tenants.console import TenantConsoleMixin

from .filters import AuditEventFilter
from .selectors import events_visible_to


def _render_events(request, events, context):
    filterset = AuditEventFilter(request.GET, queryset=events.select_related("leaf"))
    page = Paginator(filterset.qs, 50).get_page(request.GET.get("page"))
    return render(request, "compliance/audit.html", {**context, "filter": filterset, "page": page})


class TenantAuditView(TenantConsoleMixin, View):
    def get(self, request, tenant):
        if not self.can("audit"):
            raise PermissionDenied("Your role here does not include the audit trail.")
        return _render_events(request, events_visible_to(request.user, tenant=self.tenant), {"tenant": self.tenant})


class AuditView(LoginRequiredMixin, View):
    def get(self, request):
        allowed = allowed_tenant_ids(request.user, "audit")
        if allowed is not None and not allowed:
            raise Http404("No audit access.")
        return _render_events(request, events_visible_to(request.user), {"tenant": None})
