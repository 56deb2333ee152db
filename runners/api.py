"""Platform-scope API for runner nodes and pools (platform admins only)."""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.access import is_platform_admin
from tenants.api import TenantScopedAPIView
from tenants.errors import Forbidden, NotFound
from workflows.models import Stage
from workflows.selectors import version_named

from . import admission, selectors, services
from .models import Run, RunnerNode


class RunnerNodeSerializer(serializers.ModelSerializer):
    flavor = serializers.CharField(source="flavor.name", read_only=True)
    live = serializers.SerializerMethodField()
    queue = serializers.CharField(read_only=True)

    class Meta:
        model = RunnerNode
        fields = ["hostname", "flavor", "device_ids", "device_names", "discovered_by", "region", "jurisdiction",
                  "state", "live", "queue", "registered_at", "last_heartbeat_at"]
        read_only_fields = fields

    def get_live(self, node) -> bool:
        return node.is_live()


class NodeStateSerializer(serializers.Serializer):
    state = serializers.CharField(max_length=16)


def _platform_admin_only(request):
    if not is_platform_admin(request.user):
        raise Forbidden("Only platform admins see runner nodes and pools.")


class RunnerNodeList(generics.ListAPIView):
    """Runner nodes with their devices, where they are, and whether they are live."""

    serializer_class = RunnerNodeSerializer
    filterset_fields = ["state", "jurisdiction"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return RunnerNode.objects.none()
        _platform_admin_only(self.request)
        return RunnerNode.objects.select_related("flavor")


class RunnerNodeDetail(APIView):
    serializer_class = RunnerNodeSerializer

    def _node(self, request, hostname):
        _platform_admin_only(request)
        node = RunnerNode.objects.select_related("flavor").filter(hostname=hostname).first()
        if node is None:
            raise NotFound("No such runner node.")
        return node

    def get(self, request, hostname):
        return Response(RunnerNodeSerializer(self._node(request, hostname)).data)

    @extend_schema(request=NodeStateSerializer, responses=RunnerNodeSerializer)
    def patch(self, request, hostname):
        serializer = NodeStateSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        node = services.runner_set_state(actor=request.user, node=self._node(request, hostname),
                                         state=serializer.validated_data["state"])
        return Response(RunnerNodeSerializer(node).data)


class PoolList(APIView):
    """Pools (flavor x jurisdiction) with the capacity of their live nodes."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        _platform_admin_only(request)
        return Response({"results": [
            {"flavor": p.flavor, "jurisdiction": p.jurisdiction, "capacity": p.capacity,
             "live_nodes": p.live_nodes, "other_nodes": p.other_nodes} for p in selectors.pools()]})


class RunSerializer(serializers.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    workflow = serializers.CharField(source="version.workflow.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    flavor = serializers.CharField(source="flavor.name", read_only=True, default=None)
    node = serializers.CharField(source="node.hostname", read_only=True, default=None)
    requested_by = serializers.CharField(source="requested_by.username", read_only=True)

    class Meta:
        model = Run
        fields = ["id", "workflow", "version", "stage", "parameters", "priority", "state", "reason", "flavor", "gpus",
                  "max_runtime_seconds", "node", "device_ids", "requested_by", "created_at", "admitted_at",
                  "finished_at"]
        read_only_fields = fields


class RunRequestSerializer(serializers.Serializer):
    workflow = serializers.CharField(max_length=64)
    version = serializers.IntegerField(min_value=1)
    stage = serializers.ChoiceField(choices=Stage.choices)
    parameters = serializers.DictField(required=False, default=dict)


class _Runs(TenantScopedAPIView):
    model = Run
    serializer_class = RunSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("version__workflow", "flavor", "node", "requested_by")


class RunList(_Runs, generics.ListAPIView):
    """Runs, newest first. POST records a pending run after the run policy; the admission cycle
    admits it when quota and capacity allow. Send an ``Idempotency-Key`` header to retry safely."""

    filterset_fields = ["state", "stage"]

    @extend_schema(request=RunRequestSerializer, responses={201: RunSerializer, 200: RunSerializer})
    def post(self, request, tenant):
        serializer = RunRequestSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        data = serializer.validated_data
        version = version_named(request.user, self.tenant, data["workflow"], data["version"])
        if version is None:
            raise NotFound(f"No version {data['version']} of workflow {data['workflow']}.")
        run, created = admission.run_request(actor=request.user, tenant=self.tenant, version=version,
                                             stage=data["stage"], parameters=data["parameters"],
                                             idempotency_key=request.headers.get("Idempotency-Key", "").strip())
        run = self.get_queryset().get(pk=run.pk)
        return Response(RunSerializer(run).data, status=201 if created else 200)


class RunDetail(_Runs):
    def get(self, request, tenant, run):
        found = self.get_queryset().filter(public_id=run).first()
        if found is None:
            raise NotFound("No such run.")
        return Response(RunSerializer(found).data)


api_urlpatterns = [
    path("tenants/<slug:tenant>/runs/", RunList.as_view(), name="api-run-list"),
    path("tenants/<slug:tenant>/runs/<uuid:run>/", RunDetail.as_view(), name="api-run-detail"),
    path("runners/", RunnerNodeList.as_view(), name="api-runner-list"),
    path("runners/<str:hostname>/", RunnerNodeDetail.as_view(), name="api-runner-detail"),
    path("pools/", PoolList.as_view(), name="api-pool-list"),
]
