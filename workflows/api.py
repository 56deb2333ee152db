"""Workflow API: thin views over the choke point and the domain functions."""

from django.db.models import Max, Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response

from tenants.api import TenantScopedAPIView
from tenants.errors import Invalid, NotFound

from . import services
from .diff import version_diff
from .models import StagePointer, Workflow, WorkflowVersion
from .serializers import VersionRegisterSerializer, VersionSerializer, WorkflowSerializer


class _Workflows:
    model = Workflow
    serializer_class = WorkflowSerializer

    def get_queryset(self):
        return super().get_queryset().annotate(latest_number=Max("versions__number")).prefetch_related(
            Prefetch("stage_pointers", queryset=StagePointer.objects.select_related("version")))


class WorkflowList(_Workflows, TenantScopedAPIView, generics.ListAPIView):
    pass


class WorkflowDetail(_Workflows, TenantScopedAPIView, generics.RetrieveAPIView):
    lookup_field = "name"
    lookup_url_kwarg = "workflow"


class _InWorkflow(TenantScopedAPIView):
    """Base for routes under /workflows/<workflow>/: the workflow is found through the choke point."""

    def workflow(self) -> Workflow:
        workflow = Workflow.objects.restrict(self.request.user, "view").filter(
            tenant=self.tenant, name=self.kwargs["workflow"]).first()
        if workflow is None:
            raise NotFound("No such workflow.")
        return workflow

    def version(self, number) -> WorkflowVersion:
        version = WorkflowVersion.objects.restrict(self.request.user, "view").filter(
            workflow=self.workflow(), number=number).select_related("workflow", "created_by").first()
        if version is None:
            raise NotFound(f"No version {number} of this workflow.")
        return version


class VersionList(_InWorkflow, generics.ListAPIView):
    """Versions of a workflow, newest first. POST registers a version of the workflow the spec
    names (which must match the path); the same content returns the existing version with 200."""

    model = WorkflowVersion
    serializer_class = VersionSerializer

    def get_queryset(self):
        if self.tenant is None:
            return WorkflowVersion.objects.none()
        return super().get_queryset().filter(workflow=self.workflow()).select_related("workflow", "created_by")

    @extend_schema(request=VersionRegisterSerializer, responses={201: VersionSerializer, 200: VersionSerializer})
    def post(self, request, tenant, workflow):
        serializer = VersionRegisterSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        version, created = services.workflow_version_register(
            actor=request.user, tenant=self.tenant, spec=serializer.validated_data["spec"],
            artifact_digests=serializer.validated_data["artifacts"], workflow_name=workflow)
        return Response(VersionSerializer(version).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class VersionDetail(_InWorkflow):
    serializer_class = VersionSerializer

    def get(self, request, tenant, workflow, number):
        return Response(VersionSerializer(self.version(number)).data)


class VersionDiff(_InWorkflow):
    """What changed from another version (by default the one before) to this one."""

    @extend_schema(parameters=[OpenApiParameter("against", int, description="The version to compare with; "
                                                "default: the previous one.")], responses={200: dict})
    def get(self, request, tenant, workflow, number):
        against = request.query_params.get("against")
        if against is not None and not against.isdigit():
            raise Invalid("Give the version to compare with as ?against=<number>.", field="against")
        version = self.version(number)
        if against is not None:
            base = self.version(int(against))
        else:
            base = version.workflow.versions.filter(number__lt=number).order_by("-number").first()
        return Response(version_diff(base, version))
