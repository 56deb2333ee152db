"""Console pages for workflows and their versions."""

import json

from django import forms
from django.db.models import Max, Prefetch
from django.http import Http404
from django.shortcuts import redirect, render
from django.views import View

from tenants.console import TenantConsoleMixin
from tenants.errors import DomainError

from . import trust

from .diff import version_diff
from .models import Artifact, StagePointer, Workflow, WorkflowVersion
from .selectors import signature_status, with_verifications


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


class TrustKeyForm(forms.Form):
    key_id = forms.CharField(max_length=100, label="Key id")
    public_key = forms.CharField(widget=forms.Textarea, label="Public key (PEM)")


class TrustListsForm(forms.Form):
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

    def post(self, request, tenant):
        config = trust.trust_config_of(self.tenant)
        action = request.POST.get("action")
        key_form = lists_form = None
        try:
            if action == "add-key":
                key_form = TrustKeyForm(request.POST, auto_id="key_%s")
                if key_form.is_valid():
                    keys = {**config.public_keys, key_form.cleaned_data["key_id"]: key_form.cleaned_data["public_key"]}
                    trust.trust_config_update(actor=request.user, tenant=self.tenant, public_keys=keys)
                    return redirect("trust", tenant=self.tenant.slug)
            elif action == "remove-key":
                keys = {k: v for k, v in config.public_keys.items() if k != request.POST.get("key_id")}
                trust.trust_config_update(actor=request.user, tenant=self.tenant, public_keys=keys)
                return redirect("trust", tenant=self.tenant.slug)
            else:
                lists_form = TrustListsForm(request.POST, auto_id="lists_%s")
                if lists_form.is_valid():
                    trust.trust_config_update(actor=request.user, tenant=self.tenant, **lists_form.cleaned_data)
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
