"""Platform-scope API for runner nodes and pools (platform admins only)."""

from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from tenants.access import is_platform_admin
from tenants.errors import Forbidden, NotFound

from . import selectors, services
from .models import RunnerNode


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


api_urlpatterns = [
    path("runners/", RunnerNodeList.as_view(), name="api-runner-list"),
    path("runners/<str:hostname>/", RunnerNodeDetail.as_view(), name="api-runner-detail"),
    path("pools/", PoolList.as_view(), name="api-pool-list"),
]
