"""Console page for a tenant's policy: its policy data (tenant admins edit it) and waivers."""

import json

from django import forms
from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import path
from django.utils import timezone
from django.views import View

from tenants.api import committing
from tenants.console import TenantConsoleMixin, form_error
from tenants.db import tenant_reads
from tenants.errors import DomainError
from tenants import strict

from . import governance, services
from .models import GovernedChangeProposal, Waiver
from .rules import RULES


def proposed_message(result) -> str:
    """What the console says when a change was held as a loosening proposal ("" otherwise)."""
    if not isinstance(result, GovernedChangeProposal):
        return ""
    return (f"This change loosens the setting ({'; '.join(result.diff['loosening'])}), so it is not applied yet: "
            f"proposal {result.pk} waits for a second tenant admin to confirm it with a one-time password.")


class PolicyDataForm(strict.ExactValues, forms.Form):
    min_approvals = forms.IntegerField(label="Production approvals (at least 2)")
    rollback_min_approvals = forms.IntegerField(label="Rollback approvals (at least 1)")
    base_model_allowlist = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                           label="Allowed base models (one glob per line)")
    metrics_thresholds = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                         label="Metric thresholds (one per line: name minimum)")
    allowed_regions = forms.CharField(required=False, label="Allowed dataset regions (space separated; empty: any)")
    comment = forms.CharField(required=False, max_length=500)

    def clean_base_model_allowlist(self):
        return [line.strip() for line in self.cleaned_data["base_model_allowlist"].splitlines() if line.strip()]

    def clean_allowed_regions(self):
        return self.cleaned_data["allowed_regions"].split()

    def clean_metrics_thresholds(self):
        thresholds = {}
        for number, line in enumerate(self.cleaned_data["metrics_thresholds"].splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                thresholds[parts[0]] = json.loads(parts[1]) if len(parts) == 2 else None
            except ValueError:
                thresholds[parts[0]] = None
            if not isinstance(thresholds[parts[0]], (int, float)):
                raise forms.ValidationError(f"Line {number} needs a metric name and a number, e.g. 'accuracy 0.9'.")
        return thresholds


class WaiverForm(strict.ExactValues, forms.Form):
    rule = forms.ChoiceField(choices=[(r, r) for r in RULES])
    reason = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))
    ticket_url = forms.URLField(max_length=500, label="Ticket link", assume_scheme="https")
    expires_at = forms.DateTimeField(label="Expires at (UTC, YYYY-MM-DD HH:MM)")


class WaiverApproveForm(strict.ExactValues, forms.Form):
    otp_token = forms.CharField(max_length=8, label="One-time password", required=False)


class ProposalConfirmForm(strict.ExactValues, forms.Form):
    """A second tenant admin confirms exactly the diff shown: its digest travels with the form."""

    proposal = forms.IntegerField(widget=forms.HiddenInput)
    diff_digest = forms.CharField(max_length=71, widget=forms.HiddenInput)
    otp_token = forms.CharField(max_length=8, label="One-time password", required=False)


class PolicyPage(TenantConsoleMixin, View):
    def get(self, request, tenant, forms=None, status=200):
        forms = forms or {}
        with tenant_reads(request.user, self.tenant):
            policy = services.tenant_policy_of(self.tenant)
            initial = {
                "min_approvals": policy.min_approvals, "rollback_min_approvals": policy.rollback_min_approvals,
                "base_model_allowlist": "\n".join(policy.base_model_allowlist),
                "metrics_thresholds": "\n".join(f"{k} {v}" for k, v in policy.metrics_thresholds.items()),
                "allowed_regions": " ".join(policy.allowed_regions),
            }
            now = timezone.now()
            waivers = [(w, w.state_at(now)) for w in Waiver.objects.restrict(request.user, "view").filter(
                tenant=self.tenant).select_related("requested_by", "approved_by")]
            is_admin = self.can("admin")
            proposals = [(p, state, reason, governance.may_confirm(request.user, p, state, is_tenant_admin=is_admin))
                         for p in governance.proposals_of(request.user, self.tenant)
                         for state, reason in [governance.judged(p, now)]]
            return render(request, "policies/policy.html", {
                "tenant": self.tenant, "policy": policy, "rules": RULES, "waivers": waivers,
                "is_admin": is_admin, "can_approve_waivers": is_admin,
                "data_form": forms.get("data") or PolicyDataForm(initial=initial, auto_id="data_%s"),
                "waiver_form": forms.get("waiver") or WaiverForm(auto_id="waiver_%s"),
                "approve_form": forms.get("approve") or WaiverApproveForm(auto_id="approve_%s"),
                "proposals": proposals, "confirm_form": forms.get("confirm"),
            }, status=status)

    def post(self, request, tenant):
        action = request.POST.get("action")
        form_class = {"data": PolicyDataForm, "waiver": WaiverForm, "approve": WaiverApproveForm,
                      "confirm": ProposalConfirmForm}.get(action)
        form = form_class(request.POST, auto_id=f"{action}_%s") if form_class else None
        if form is not None and form.is_valid():
            try:
                self._perform(request, action, form.cleaned_data)
            except DomainError as exc:
                self.refuse_if_forbidden(exc)
                form_error(form, exc)
            else:
                return redirect("policy", tenant=self.tenant.slug)
        elif form is None and action == "revoke":
            try:
                self._perform(request, action, {})
            except DomainError as exc:
                self.refuse_if_forbidden(exc)
                messages.error(request, exc.detail)
            return redirect("policy", tenant=self.tenant.slug)
        return self.get(request, tenant, forms={action: form}, status=400)

    def _waiver(self, request):
        waiver_id = request.POST.get("waiver", "")
        with tenant_reads(request.user, self.tenant):
            waiver = Waiver.objects.restrict(request.user, "view").filter(
                tenant=self.tenant, pk=int(waiver_id) if waiver_id.isdigit() else 0).select_related("tenant").first()
        if waiver is None:
            raise DomainError("No such waiver.")
        return waiver

    def _perform(self, request, action, data):
        user = request.user
        if action == "data":
            comment = data.pop("comment")
            result = services.tenant_policy_update(actor=user, tenant=self.tenant, comment=comment, **data)
            messages.success(request, proposed_message(result) or "Policy data saved as a new revision.")
        elif action == "waiver":
            services.waiver_request(actor=user, tenant=self.tenant, **data)
            messages.success(request, "Waiver requested; a second person must approve it.")
        elif action == "approve":
            services.waiver_approve(actor=user, waiver=self._waiver(request), otp_token=data["otp_token"])
            messages.success(request, "Waiver approved.")
        elif action == "revoke":
            services.waiver_revoke(actor=user, waiver=self._waiver(request))
        elif action == "confirm":
            with tenant_reads(user, self.tenant):
                proposal = governance.proposals_of(user, self.tenant).filter(pk=data["proposal"]).first()
            if proposal is None:
                raise DomainError("No such proposal.")
            governance.governed_change_confirm(actor=user, proposal=proposal, otp_token=data["otp_token"],
                                               diff_digest=data["diff_digest"])
            messages.success(request, f"Proposal {proposal.pk} confirmed and applied.")


console_urlpatterns = [
    path("t/<slug:tenant>/policy/", committing(PolicyPage), name="policy"),
]
