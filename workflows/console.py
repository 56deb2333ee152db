"""Console pages for workflows and their versions."""

import json

from django import forms
from django.contrib import messages
from django.db.models import Max, Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.views import View

from policies.console import proposed_message
from policies.rules import RULES
from policies.services import tenant_policy_of
from tenants.console import TenantConsoleMixin, form_error
from tenants.db import tenant_reads
from tenants.errors import DomainError
from tenants import strict

from . import promotions, trust

from .diff import version_diff
from .models import Artifact, Promotion, PromotionState, Stage, StagePointer, Workflow, WorkflowVersion
from .selectors import promotion_by_id, signature_status, version_named, with_verifications


class WorkflowListPage(TenantConsoleMixin, View):
    def get(self, request, tenant):
        workflows = (Workflow.objects.restrict(request.user, "view").filter(tenant=self.tenant)
                     .annotate(latest_number=Max("versions__number"))
                     .prefetch_related(Prefetch("stage_pointers", queryset=StagePointer.objects.select_related("version"))))
        return render(request, "workflows/list.html", {"tenant": self.tenant, "workflows": workflows})


class _WorkflowPage(TenantConsoleMixin, View):
    def workflow(self):
        workflow = Workflow.objects.restrict(self.request.user, "view").filter(
            tenant=self.tenant, name=self.kwargs["workflow"]).first()
        if workflow is None:
            raise Http404("No such workflow.")
        return workflow


class WorkflowPage(_WorkflowPage):
    def get(self, request, tenant, workflow):
        flow = self.workflow()
        versions = WorkflowVersion.objects.restrict(request.user, "view").filter(workflow=flow).select_related("created_by")
        stages = {p.stage: p.version.number for p in flow.stage_pointers.select_related("version")}
        return render(request, "workflows/detail.html",
                      {"tenant": self.tenant, "workflow": flow, "versions": versions, "stages": stages})


class VersionPage(_WorkflowPage):
    def get(self, request, tenant, workflow, number):
        flow = self.workflow()
        versions = WorkflowVersion.objects.restrict(request.user, "view").filter(workflow=flow)
        version = versions.filter(number=number).select_related("created_by").first()
        if version is None:
            raise Http404("No such version.")
        against = request.GET.get("against")
        if against and against.isdigit():
            base = versions.filter(number=int(against)).first()
        else:
            base = versions.filter(number__lt=number).order_by("-number").first()
        artifacts = with_verifications(Artifact.objects.restrict(request.user, "view").filter(
            tenant=self.tenant, version_links__version=version).order_by("name"))
        artifacts = [(artifact, signature_status(artifact)) for artifact in artifacts]
        return render(request, "workflows/version.html", {
            "tenant": self.tenant, "workflow": flow, "version": version, "artifacts": artifacts,
            "spec_json": json.dumps(version.spec, indent=2, sort_keys=False),
            "diff": version_diff(base, version), "base": base,
            "other_versions": versions.exclude(pk=version.pk).values_list("number", flat=True),
        })


class ArtifactListPage(TenantConsoleMixin, View):
    def get(self, request, tenant):
        artifacts = with_verifications(Artifact.objects.restrict(request.user, "view").filter(
            tenant=self.tenant).select_related("created_by"))
        rows = [(artifact, signature_status(artifact)) for artifact in artifacts]
        return render(request, "workflows/artifacts.html", {"tenant": self.tenant, "rows": rows})


class TrustKeyForm(strict.ExactValues, forms.Form):
    key_id = forms.CharField(max_length=100, label="Key id")
    public_key = forms.CharField(widget=forms.Textarea, label="Public key (PEM)")


class TrustListsForm(strict.ExactValues, forms.Form):
    ca_roots = forms.CharField(widget=forms.Textarea, required=False, label="CA root certificates (PEM, one after another)")
    allowed_identities = forms.CharField(widget=forms.Textarea, required=False,
                                         label="Allowed certificate identities (one SAN per line)")
    sigstore_identities = forms.CharField(widget=forms.Textarea, required=False,
                                          label="Sigstore identities (one per line: identity, a space, issuer)")

    def clean_ca_roots(self):
        text = self.cleaned_data["ca_roots"]
        end = "-----END CERTIFICATE-----"
        return [block.strip() + "\n" + end + "\n" for block in text.split(end) if block.strip()]

    def clean_allowed_identities(self):
        return [line.strip() for line in self.cleaned_data["allowed_identities"].splitlines() if line.strip()]

    def clean_sigstore_identities(self):
        pairs = []
        for number, line in enumerate(self.cleaned_data["sigstore_identities"].splitlines(), start=1):
            if line.strip():
                parts = line.split()
                if len(parts) != 2:
                    raise forms.ValidationError(f"Line {number} needs an identity and an issuer separated by a space.")
                pairs.append(parts)
        return pairs


class TrustPage(TenantConsoleMixin, View):
    """The tenant's trust configuration; tenant admins change it here."""

    def get(self, request, tenant, key_form=None, lists_form=None, status=200):
        config = trust.trust_config_of(self.tenant)
        initial = {
            "ca_roots": "".join(config.ca_roots),
            "allowed_identities": "\n".join(config.allowed_identities),
            "sigstore_identities": "\n".join(" ".join(pair) for pair in config.sigstore_identities),
        }
        return render(request, "workflows/trust.html", {
            "tenant": self.tenant, "config": config, "is_admin": self.can("admin"),
            "key_form": key_form or TrustKeyForm(auto_id="key_%s"),
            "lists_form": lists_form or TrustListsForm(initial=initial, auto_id="lists_%s"),
        }, status=status)

    def _update(self, request, **changes):
        message = proposed_message(trust.trust_config_update(actor=request.user, tenant=self.tenant, **changes))
        if message:  # a loosening waits for a second tenant admin
            messages.success(request, message)

    def post(self, request, tenant):
        config = trust.trust_config_of(self.tenant)
        action = request.POST.get("action")
        key_form = lists_form = None
        try:
            if action == "add-key":
                key_form = TrustKeyForm(request.POST, auto_id="key_%s")
                if key_form.is_valid():
                    keys = {**config.public_keys, key_form.cleaned_data["key_id"]: key_form.cleaned_data["public_key"]}
                    self._update(request, public_keys=keys)
                    return redirect("trust", tenant=self.tenant.slug)
            elif action == "remove-key":
                keys = {k: v for k, v in config.public_keys.items() if k != request.POST.get("key_id")}
                self._update(request, public_keys=keys)
                return redirect("trust", tenant=self.tenant.slug)
            else:
                lists_form = TrustListsForm(request.POST, auto_id="lists_%s")
                if lists_form.is_valid():
                    self._update(request, **lists_form.cleaned_data)
                    return redirect("trust", tenant=self.tenant.slug)
        except DomainError as exc:
            self.refuse_if_forbidden(exc)
            form = key_form or lists_form
            if form is None:
                raise
            field = exc.field.split(".")[0].split("[")[0] if exc.field else None
            field = {"public_keys": "public_key"}.get(field, field)  # the API's name for the form's field
            form.add_error(field if field in form.fields else None, exc.detail)
        return self.get(request, tenant, key_form=key_form, lists_form=lists_form, status=400)


# Promotions ------------------------------------------------------------------------------


class PromotionRequestForm(strict.ExactValues, forms.Form):
    workflow = forms.CharField(max_length=64)
    version = forms.IntegerField(min_value=1)
    stage = forms.ChoiceField(choices=Stage.choices)
    justification = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))


class StepUpForm(strict.ExactValues, forms.Form):
    otp_token = forms.CharField(max_length=8, label="One-time password", required=False,
                                widget=forms.TextInput(attrs={"autocomplete": "one-time-code", "inputmode": "numeric"}))
    comment = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))
    binding_digest = forms.CharField(max_length=71, required=False, widget=forms.HiddenInput)


class OverrideForm(strict.ExactValues, forms.Form):
    rule = forms.CharField(max_length=100)
    justification = forms.CharField(max_length=2000, widget=forms.Textarea(attrs={"rows": 2}))


def _promotions(request, tenant):
    return (Promotion.objects.restrict(request.user, "view").filter(tenant=tenant)
            .select_related("workflow", "version", "requested_by"))


class PromotionQueuePage(TenantConsoleMixin, View):
    """The approver's queue (what waits for a decision) and recent requests."""

    def get(self, request, tenant, form=None, status=200):
        promotions = _promotions(request, self.tenant)
        return render(request, "workflows/promotions.html", {
            "tenant": self.tenant,
            "waiting": promotions.filter(state=PromotionState.AWAITING_APPROVAL).order_by("requested_at"),
            "held": promotions.filter(state=PromotionState.CHECKED).order_by("requested_at"),
            "recent": promotions.exclude(state__in=[PromotionState.AWAITING_APPROVAL, PromotionState.CHECKED])[:50],
            "can_request": self.can("develop"),
            "form": form or PromotionRequestForm(auto_id="promotion_%s"),
        }, status=status)

    def post(self, request, tenant):
        form = PromotionRequestForm(request.POST, auto_id="promotion_%s")
        if form.is_valid():
            data = form.cleaned_data
            version = version_named(request.user, self.tenant, data["workflow"], data["version"])
            if version is None:
                form.add_error("version", f"No version {data['version']} of workflow {data['workflow']}.")
            else:
                try:
                    promotion = promotions.promotion_request(actor=request.user, tenant=self.tenant, version=version,
                                                             stage=data["stage"], justification=data["justification"])
                except DomainError as exc:
                    self.refuse_if_forbidden(exc)
                    form_error(form, exc)
                else:
                    return redirect("promotion", tenant=self.tenant.slug, promotion=promotion.public_id)
        return self.get(request, tenant, form=form, status=400)


class PromotionPage(TenantConsoleMixin, View):
    """One promotion, explained rule by rule, with what approvers decide on."""

    def promotion(self):
        try:
            return promotion_by_id(actor=self.request.user, tenant=self.tenant,
                                              public_id=self.kwargs["promotion"])
        except DomainError:
            raise Http404("No such promotion.") from None

    def get(self, request, tenant, promotion, forms=None, status=200):
        with tenant_reads(request.user, self.tenant):
            return self._render(request, self.promotion(), forms or {}, status)

    def _render(self, request, promotion, forms, status):
        version, policy = promotion.version, tenant_policy_of(self.tenant)
        artifacts = with_verifications(Artifact.objects.restrict(request.user, "view").filter(
            tenant=self.tenant, version_links__version=version).order_by("name"))
        metrics = promotions.metrics_of(promotion.metrics_artifact)
        thresholds = [{"name": name, "minimum": minimum, "value": metrics.get(name),
                       "met": isinstance(metrics.get(name), (int, float)) and metrics[name] >= minimum}
                      for name, minimum in sorted(policy.metrics_thresholds.items())]
        pointer = StagePointer.objects.filter(workflow=promotion.workflow, stage=promotion.stage).select_related(
            "version").first()
        current = pointer.version if pointer and pointer.version_id != version.pk else None
        overrides = list(promotion.overrides.select_related("requested_by", "confirmed_by"))
        return render(request, "workflows/promotion.html", {
            "tenant": self.tenant, "promotion": promotion, "version": version,
            "violations": promotion.violations, "rules": RULES,
            "artifacts": [(a, signature_status(a)) for a in artifacts],
            "thresholds": thresholds, "metrics_artifact": promotion.metrics_artifact,
            "current": current, "diff": version_diff(current, version) if current else None,
            "approvals": promotions.approvals_with_standing(promotion), "overrides": overrides,
            "can_audit": self.can("audit"),
            "can_approve": self.can("approve") and promotion.state == PromotionState.AWAITING_APPROVAL,
            "can_override": self.can("admin") and promotion.state == PromotionState.CHECKED,
            "can_confirm": (self.can("admin") or self.can("approve")) and promotion.state == PromotionState.CHECKED,
            "can_withdraw": promotion.is_open and (request.user.pk == promotion.requested_by_id or self.can("admin")),
            "can_recheck": promotion.state in (PromotionState.CHECKED, PromotionState.AWAITING_APPROVAL)
                           and (self.can("develop") or self.can("admin") or self.can("approve")),
            "stepup_form": forms.get("stepup") or StepUpForm(initial={"binding_digest": promotion.binding_digest},
                                                             auto_id="stepup_%s"),
            "override_form": forms.get("override") or OverrideForm(auto_id="override_%s"),
            "confirm_form": forms.get("confirm") or StepUpForm(auto_id="confirm_%s"),
        }, status=status)

    def post(self, request, tenant, promotion):
        """Every decision here commits in steps of its own (the OTP is spent first), so this
        route is non-atomic; reads bind the tenant in transactions of their own."""
        action = request.POST.get("action", "")
        with tenant_reads(request.user, self.tenant):
            subject = self.promotion()
        form_key = {"approve": "stepup", "reject": "stepup", "override": "override", "confirm": "confirm"}.get(action)
        form_class = {"stepup": StepUpForm, "override": OverrideForm, "confirm": StepUpForm}.get(form_key)
        form = form_class(request.POST, auto_id=f"{form_key}_%s") if form_class else None
        if form is None or form.is_valid():
            data = form.cleaned_data if form else {}
            try:
                self._perform(request, action, subject, data)
            except DomainError as exc:
                self.refuse_if_forbidden(exc)
                if form is None:
                    messages.error(request, exc.detail)
                    return redirect("promotion", tenant=self.tenant.slug, promotion=subject.public_id)
                form_error(form, exc)
            else:
                return redirect("promotion", tenant=self.tenant.slug, promotion=subject.public_id)
        with tenant_reads(request.user, self.tenant):
            return self._render(request, self.promotion(), {form_key: form}, 400)

    def _perform(self, request, action, subject, data):
        user = request.user
        if action == "approve":
            promotions.promotion_approve(actor=user, promotion=subject, otp_token=data["otp_token"],
                                         comment=data["comment"], via="console",
                                         binding_digest=data["binding_digest"] or None)
        elif action == "reject":
            promotions.promotion_reject(actor=user, promotion=subject, otp_token=data["otp_token"],
                                        comment=data["comment"], via="console")
        elif action == "override":
            promotions.promotion_override_request(actor=user, promotion=subject, rule=data["rule"],
                                                  justification=data["justification"])
        elif action == "confirm":
            override_id = request.POST.get("override", "")
            with tenant_reads(user, self.tenant):
                override = subject.overrides.filter(pk=override_id).first() if override_id.isdigit() else None
            if override is None:
                raise DomainError("No such override.", field="otp_token")
            promotions.promotion_override_confirm(actor=user, override=override, otp_token=data["otp_token"])
        elif action == "withdraw":
            promotions.promotion_withdraw(actor=user, promotion=subject)
        elif action == "recheck":
            promotions.promotion_recheck(actor=user, promotion=subject)
        else:
            raise DomainError("Unknown action.")
