"""Console pages for workflows and their versions."""

import json

from django.db.models import Max, Prefetch
from django.http import Http404
from django.shortcuts import render
from django.views import View

from tenants.console import TenantConsoleMixin

from .diff import version_diff
from .models import Artifact, StagePointer, Workflow, WorkflowVersion


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
        artifacts = Artifact.objects.restrict(request.user, "view").filter(
            tenant=self.tenant, version_links__version=version).order_by("name")
        return render(request, "workflows/version.html", {
            "tenant": self.tenant, "workflow": flow, "version": version, "artifacts": artifacts,
            "spec_json": json.dumps(version.spec, indent=2, sort_keys=False),
            "diff": version_diff(base, version), "base": base,
            "other_versions": versions.exclude(pk=version.pk).values_list("number", flat=True),
        })
