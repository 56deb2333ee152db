"""Runs and quota (tenant routes: request, list, detail, cancel, logs; quota with its usage)
and runner nodes and pools (platform admins only)."""

import time

from django.conf import settings
from django.http import StreamingHttpResponse
from django.urls import path
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from policies import quotas
from policies.models import GovernedChangeProposal
from policies.tenant_api import ProposalSerializer
from tenants.access import is_platform_admin
from tenants.api import TenantScopedAPIView
from tenants.db import tenant_reads
from tenants.errors import Forbidden, Invalid, NotFound
from tenants.models import GpuFlavor, TenantQuota
from tenants.schema import IDEMPOTENCY_KEY_REUSED
from tenants.serializers import TenantQuotaSerializer
from tenants import strict
from workflows.models import Stage, Workflow
from workflows.selectors import version_named

from . import admission, execution, selectors, services
from .models import Run, RunLogChunk, RunnerNode, RunStep


class RunnerNodeSerializer(strict.ModelSerializer):
    flavor = strict.CharField(source="flavor.name", read_only=True)
    live = serializers.SerializerMethodField()
    queue = strict.CharField(read_only=True)

    class Meta:
        model = RunnerNode
        fields = ["hostname", "flavor", "device_ids", "device_names", "discovered_by", "region", "jurisdiction",
                  "state", "live", "queue", "registered_at", "last_heartbeat_at"]
        read_only_fields = fields

    def get_live(self, node) -> bool:
        return node.is_live()


class NodeStateSerializer(serializers.Serializer):
    state = strict.CharField(max_length=16)


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


class RunStepSerializer(strict.ModelSerializer):
    class Meta:
        model = RunStep
        fields = ["name", "position", "state", "attempts", "exit_code", "reason", "started_at", "finished_at"]
        read_only_fields = fields


class RunSerializer(strict.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    workflow = strict.CharField(source="version.workflow.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    flavor = strict.CharField(source="flavor.name", read_only=True, default=None)
    node = strict.CharField(source="node.hostname", read_only=True, default=None)
    requested_by = strict.CharField(source="requested_by.username", read_only=True)

    class Meta:
        model = Run
        fields = ["id", "workflow", "version", "stage", "parameters", "priority", "state", "reason", "flavor", "gpus",
                  "max_runtime_seconds", "node", "device_ids", "requested_by", "requeues", "cancel_requested_at",
                  "log_bytes", "log_dropped_bytes", "created_at", "admitted_at", "started_at", "finished_at"]
        read_only_fields = fields


class RunDetailSerializer(RunSerializer):
    steps = serializers.SerializerMethodField()

    class Meta(RunSerializer.Meta):
        fields = [*RunSerializer.Meta.fields, "steps"]
        read_only_fields = fields

    def get_steps(self, run) -> list[dict]:
        """The steps of the run's latest admission (a requeued run starts them again)."""
        steps = [s for s in run.steps.all() if s.fencing_token == run.fencing_token]
        return RunStepSerializer(steps, many=True).data


class RunRequestSerializer(serializers.Serializer):
    workflow = strict.CharField(max_length=64)
    version = serializers.IntegerField(min_value=1)
    stage = serializers.ChoiceField(choices=Stage.choices)
    parameters = serializers.DictField(required=False, default=dict)

    def validate(self, attrs):
        if "priority" in self.initial_data:
            raise serializers.ValidationError({"priority": "A run's priority comes from its workflow, which a "
                                                           "tenant admin sets; a request cannot choose it."})
        return attrs


class _Runs(TenantScopedAPIView):
    model = Run
    serializer_class = RunSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("version__workflow", "flavor", "node", "requested_by")


class RunList(_Runs, generics.ListAPIView):
    """Runs, newest first. POST records a pending run after the run policy; the admission cycle
    admits it when quota and capacity allow. Send an ``Idempotency-Key`` header to retry safely."""

    filterset_fields = ["state", "stage"]

    @extend_schema(request=RunRequestSerializer, responses={201: RunSerializer, 200: RunSerializer, **IDEMPOTENCY_KEY_REUSED})
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


class _OneRun(_Runs):
    def run(self, run_id) -> Run:
        found = self.get_queryset().prefetch_related("steps").filter(public_id=run_id).first()
        if found is None:
            raise NotFound("No such run.")
        return found


class RunDetail(_OneRun):
    serializer_class = RunDetailSerializer

    def get(self, request, tenant, run):
        return Response(RunDetailSerializer(self.run(run)).data)


class RunCancel(_OneRun):
    """Cancel a run: one that waits ends now; a running one ends when its runner sees the
    request (within about a second) and kills the steps' processes."""

    serializer_class = RunDetailSerializer

    @extend_schema(request=None, responses=RunDetailSerializer)
    def post(self, request, tenant, run):
        execution.run_cancel(actor=request.user, run=self.run(run))
        return Response(RunDetailSerializer(self.run(run)).data)


class RunLogs(_OneRun):
    """The run's output, from chunk ``after`` on (``step``: one step's only), as JSON; with
    ``follow=1``, as plain text that streams while the run is running and ends when it ends
    (or after RUN_LOG_FOLLOW_SECONDS)."""

    @extend_schema(responses={200: dict})
    def get(self, request, tenant, run):
        found = self.run(run)
        try:
            after = int(request.query_params.get("after", "0"))
        except ValueError:
            raise Invalid("after is a chunk id, a whole number.", field="after") from None
        if request.query_params.get("follow") in ("1", "true"):
            response = StreamingHttpResponse(self._follow(request.user, self.tenant, found.pk, after),
                                             content_type="text/plain; charset=utf-8")
            response["X-Accel-Buffering"] = "no"  # let a proxy pass each piece on as it comes
            return response
        chunks = RunLogChunk.objects.filter(run=found, id__gt=after).order_by("id")
        if "step" in request.query_params:  # one step's output only
            chunks = chunks.filter(step=request.query_params["step"])
        chunks = list(chunks[:500])
        return Response({"chunks": [{"id": c.id, "step": c.step, "text": c.text} for c in chunks],
                         "next": chunks[-1].id if chunks else after, "finished": found.is_finished,
                         "log_bytes": found.log_bytes, "log_dropped_bytes": found.log_dropped_bytes})

    @staticmethod
    def _follow(user, tenant, run_pk: int, after: int):
        deadline = time.monotonic() + settings.RUN_LOG_FOLLOW_SECONDS
        while time.monotonic() < deadline:
            with tenant_reads(user, tenant):
                finished = Run.objects.get(pk=run_pk).is_finished
                chunks = list(RunLogChunk.objects.filter(run_id=run_pk, id__gt=after).order_by("id")[:500])
            for chunk in chunks:
                after = chunk.id
                yield chunk.text
            if finished and not chunks:
                return
            if not chunks:
                time.sleep(0.5)


class QuotaUsageSerializer(TenantQuotaSerializer):
    in_use = serializers.IntegerField(source="usage.in_use", read_only=True)
    borrowed = serializers.IntegerField(source="usage.borrowed", read_only=True)
    queued_runs = serializers.IntegerField(source="usage.queued_runs", read_only=True)
    queued_gpus = serializers.IntegerField(source="usage.queued_gpus", read_only=True)
    gpu_hours_used = serializers.DecimalField(source="usage.gpu_hours_used", max_digits=14, decimal_places=3,
                                              read_only=True)
    gpu_hours_remaining = serializers.DecimalField(source="usage.gpu_hours_remaining", max_digits=14,
                                                   decimal_places=3, read_only=True, allow_null=True)
    budget_alerts = serializers.ListField(source="usage.budget_alerts", child=serializers.IntegerField(),
                                          read_only=True)

    class Meta(TenantQuotaSerializer.Meta):
        fields = [*TenantQuotaSerializer.Meta.fields, "in_use", "borrowed", "queued_runs", "queued_gpus",
                  "gpu_hours_used", "gpu_hours_remaining", "budget_alerts"]


def _with_usage(quotas):
    quotas = list(quotas)
    usage = selectors.quota_usage(quotas)
    for quota in quotas:
        quota.usage = usage[quota.pk]
    return quotas


class QuotaList(TenantScopedAPIView, generics.ListAPIView):
    """The tenant's GPU quota per flavor (nominal devices, and how many more it may borrow),
    with what it holds now, what waits, and this month's GPU-hours against the budget."""

    model = TenantQuota
    serializer_class = QuotaUsageSerializer

    def get_queryset(self):
        return super().get_queryset().select_related("flavor")

    def list(self, request, *args, **kwargs):
        page = _with_usage(self.paginate_queryset(self.get_queryset()))
        return self.get_paginated_response(QuotaUsageSerializer(page, many=True).data)


class QuotaDetail(TenantScopedAPIView):
    """One flavor's quota with its usage; PUT sets it (platform admins only, audited)."""

    model = TenantQuota
    serializer_class = QuotaUsageSerializer
    http_method_names = ["get", "put", "head", "options"]

    def _quota(self, flavor):
        quota = self.get_queryset().select_related("flavor").filter(flavor__name=flavor).first()
        if quota is None:
            raise NotFound("This tenant has no quota for that flavor.")
        return _with_usage([quota])[0]

    def get(self, request, tenant, flavor):
        return Response(QuotaUsageSerializer(self._quota(flavor)).data)

    @extend_schema(request=TenantQuotaSerializer, responses={200: QuotaUsageSerializer, 202: ProposalSerializer})
    def put(self, request, tenant, flavor):
        """A cut applies at once; a raise answers 202 with a proposal a second platform admin confirms."""
        serializer = TenantQuotaSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        gpu_flavor = GpuFlavor.objects.filter(name=flavor).first()
        if gpu_flavor is None:
            raise NotFound("No such GPU flavor.")
        result = quotas.tenant_quota_set(actor=request.user, tenant=self.tenant, flavor=gpu_flavor,
                                         **serializer.validated_data)
        if isinstance(result, GovernedChangeProposal):
            return Response(ProposalSerializer(result).data, status=202)
        return Response(QuotaUsageSerializer(self._quota(flavor)).data)


class PriorityRangeSerializer(serializers.Serializer):
    minimum = serializers.IntegerField(source="run_priority_min")
    maximum = serializers.IntegerField(source="run_priority_max")


class RunPriorityRange(TenantScopedAPIView):
    """The run priorities the tenant's admins may give its workflows; platform admins set it."""

    serializer_class = PriorityRangeSerializer
    http_method_names = ["get", "put", "head", "options"]

    def get(self, request, tenant):
        return Response(PriorityRangeSerializer(self.tenant).data)

    def put(self, request, tenant):
        serializer = PriorityRangeSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        changed = services.tenant_run_priority_range_set(
            actor=request.user, tenant=self.tenant, minimum=serializer.validated_data["run_priority_min"],
            maximum=serializer.validated_data["run_priority_max"])
        return Response(PriorityRangeSerializer(changed).data)


class WorkflowPrioritySerializer(serializers.Serializer):
    priority = serializers.IntegerField(allow_null=True)


class WorkflowRunPriority(TenantScopedAPIView):
    """PUT gives the workflow's future runs a priority inside the tenant's range (tenant admins);
    null means the range's lowest."""

    serializer_class = WorkflowPrioritySerializer
    http_method_names = ["put", "options"]

    def put(self, request, tenant, workflow):
        serializer = WorkflowPrioritySerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        found = Workflow.objects.restrict(request.user, "view").filter(tenant=self.tenant, name=workflow).first()
        if found is None:
            raise NotFound("No such workflow.")
        changed = services.workflow_run_priority_set(actor=request.user, workflow=found,
                                                     priority=serializer.validated_data["priority"])
        return Response({"workflow": changed.name, "priority": changed.run_priority,
                         "effective": services.run_priority_for(changed, self.tenant)})


api_urlpatterns = [
    path("tenants/<slug:tenant>/run-priority/", RunPriorityRange.as_view(), name="api-run-priority-range"),
    path("tenants/<slug:tenant>/workflows/<str:workflow>/priority/", WorkflowRunPriority.as_view(),
         name="api-workflow-priority"),
    path("tenants/<slug:tenant>/quota/", QuotaList.as_view(), name="api-quota-list"),
    path("tenants/<slug:tenant>/quota/<str:flavor>/", QuotaDetail.as_view(), name="api-quota-detail"),
    path("tenants/<slug:tenant>/runs/", RunList.as_view(), name="api-run-list"),
    path("tenants/<slug:tenant>/runs/<uuid:run>/", RunDetail.as_view(), name="api-run-detail"),
    path("tenants/<slug:tenant>/runs/<uuid:run>/cancel/", RunCancel.as_view(), name="api-run-cancel"),
    path("tenants/<slug:tenant>/runs/<uuid:run>/logs/", RunLogs.as_view(), name="api-run-logs"),
    path("runners/", RunnerNodeList.as_view(), name="api-runner-list"),
    path("runners/<str:hostname>/", RunnerNodeDetail.as_view(), name="api-runner-detail"),
    path("pools/", PoolList.as_view(), name="api-pool-list"),
]
