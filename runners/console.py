"""Console pages: a tenant's runs, a live run page and the quota page; for operators, runner
nodes and chargeback (with a CSV export)."""

import csv
import json
from datetime import date

from django import forms
from django.contrib.auth.mixins import LoginRequiredMixin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views import View

from audit.log import Target, record
from tenants.access import actor_for, is_platform_admin
from tenants.console import TenantConsoleMixin, form_error
from tenants.errors import DomainError
from tenants.models import TenantQuota
from tenants import strict
from workflows.models import Stage, Workflow
from workflows.selectors import version_named

from . import admission, execution, selectors
from .models import Run, RunState


class RunRequestForm(strict.ExactValues, forms.Form):
    workflow = forms.ChoiceField()
    version = forms.IntegerField(min_value=1)
    stage = forms.ChoiceField(choices=Stage.choices)
    parameters = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                                 help_text='A JSON object, e.g. {"learning_rate": 0.01}.')

    def __init__(self, *args, workflows=(), **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["workflow"].choices = [(name, name) for name in workflows]

    def clean_parameters(self):
        text = self.cleaned_data["parameters"].strip() or "{}"
        try:
            value = json.loads(text)
        except ValueError:
            raise forms.ValidationError("This is not valid JSON.") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Parameters are a JSON object.")
        return value


class RunListPage(TenantConsoleMixin, View):
    def _page(self, request, form, status=200):
        runs = (Run.objects.restrict(request.user, "view").filter(tenant=self.tenant)
                .select_related("version__workflow", "flavor", "node", "requested_by"))
        state = request.GET.get("state", "")
        if state in RunState.values:
            runs = runs.filter(state=state)
        return render(request, "runners/runs.html", {
            "tenant": self.tenant, "runs": runs[:100], "form": form, "states": RunState.values, "state": state,
            "can_run": self.can("develop")}, status=status)

    def _form(self, request, data=None):
        names = (Workflow.objects.restrict(request.user, "view").filter(tenant=self.tenant)
                 .values_list("name", flat=True))
        return RunRequestForm(data, workflows=list(names), initial={"stage": Stage.DEVELOPMENT})

    def get(self, request, tenant):
        return self._page(request, self._form(request))

    def post(self, request, tenant):
        form = self._form(request, request.POST)
        if not form.is_valid():
            return self._page(request, form, status=400)
        data = form.cleaned_data
        version = version_named(request.user, self.tenant, data["workflow"], data["version"])
        if version is None:
            form.add_error("version", f"{data['workflow']} has no version {data['version']}.")
            return self._page(request, form, status=400)
        try:
            run, _ = admission.run_request(actor=request.user, tenant=self.tenant, version=version,
                                           stage=data["stage"], parameters=data["parameters"])
        except DomainError as exc:
            self.refuse_if_forbidden_unless_policy(exc)
            form_error(form, exc)
            return self._page(request, form, status=exc.status)
        return redirect("run", tenant=self.tenant.slug, run=run.public_id)

    def refuse_if_forbidden_unless_policy(self, exc: DomainError):
        """The run policy's refusals are answers to show next to the form; a role refusal is a 403."""
        if exc.code != "run_policy_denied":
            self.refuse_if_forbidden(exc)


class RunPage(TenantConsoleMixin, View):
    """The run as it stands; the page follows it live through the runs API (state, steps, log)."""

    def _run(self, request, run):
        found = (Run.objects.restrict(request.user, "view").filter(tenant=self.tenant, public_id=run)
                 .select_related("version__workflow", "flavor", "node", "requested_by").first())
        if found is None:
            raise Http404("No such run.")
        return found

    def get(self, request, tenant, run):
        found = self._run(request, run)
        steps = [s for s in found.steps.all() if s.fencing_token == found.fencing_token]
        return render(request, "runners/run.html", {"tenant": self.tenant, "run": found, "steps": steps,
                                                    "can_cancel": (self.can("develop") or self.can("admin"))
                                                                  and not found.is_finished})

    def post(self, request, tenant, run):
        found = self._run(request, run)
        try:
            execution.run_cancel(actor=request.user, run=found)
        except DomainError as exc:
            self.refuse_if_forbidden(exc)
        return redirect("run", tenant=self.tenant.slug, run=found.public_id)


class QuotaPage(TenantConsoleMixin, View):
    """Quota per flavor with what is held, borrowed and queued, the month's GPU-hours against
    the budget, soft-budget alerts, and a chart of GPU-hours per day over 30 days."""

    def get(self, request, tenant):
        quotas = list(TenantQuota.objects.restrict(request.user, "view").filter(tenant=self.tenant)
                      .select_related("flavor"))
        usage = selectors.quota_usage(quotas)
        days = selectors.daily_gpu_hours(tenant=self.tenant, days=30)
        return render(request, "runners/quota.html", {
            "tenant": self.tenant, "rows": [(q, usage[q.pk]) for q in quotas], "chart": selectors.bar_chart(days),
            "days": days})


class PlatformConsoleMixin(LoginRequiredMixin):
    def dispatch(self, request, *args, **kwargs):
        if request.user.is_authenticated and not is_platform_admin(request.user):
            raise PermissionDenied("Only platform admins see runner nodes and chargeback.")
        return super().dispatch(request, *args, **kwargs)


class NodesPage(PlatformConsoleMixin, View):
    def get(self, request):
        return render(request, "runners/nodes.html", {"nodes": selectors.node_utilisation(),
                                                      "pools": selectors.pools()})


class ChargebackPage(PlatformConsoleMixin, View):
    """GPU-hours per tenant and flavor in a month, weighted for billing, against the budget;
    ``?format=csv`` downloads it. Reading every tenant's usage is audited."""

    def get(self, request):
        month = _month(request.GET.get("month", ""))
        rows = selectors.chargeback(month)
        record(action="platform.chargeback_read", actor=actor_for(request.user), target=Target("chargeback",
               f"{month:%Y-%m}"), data={"format": request.GET.get("format", "html"), "rows": len(rows)})
        if request.GET.get("format") == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="chargeback-{month:%Y-%m}.csv"'
            writer = csv.writer(response)
            writer.writerow(selectors.CHARGEBACK_COLUMNS)
            for row in rows:
                writer.writerow([row[column] for column in selectors.CHARGEBACK_COLUMNS])
            return response
        return render(request, "runners/chargeback.html", {"rows": rows, "month": month,
                                                           "columns": selectors.CHARGEBACK_COLUMNS})


def _month(text: str) -> date:
    try:
        year, month = (int(part) for part in text.split("-"))
        return date(year, month, 1)
    except ValueError:
        return timezone.now().date().replace(day=1)


console_urlpatterns = [
    path("t/<slug:tenant>/runs/", RunListPage.as_view(), name="runs"),
    path("t/<slug:tenant>/runs/<uuid:run>/", RunPage.as_view(), name="run"),
    path("t/<slug:tenant>/quota/", QuotaPage.as_view(), name="quota"),
    path("platform/nodes/", NodesPage.as_view(), name="nodes"),
    path("platform/chargeback/", ChargebackPage.as_view(), name="chargeback"),
]
