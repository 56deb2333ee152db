"""Tenant-scoped policy API: the tenant's policy data and its waivers (thin views)."""

from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers, status
from rest_framework.response import Response

from tenants.api import TenantScopedAPIView, committing
from tenants.errors import NotFound
from tenants import strict
from tenants.services import user_by_username

from . import admins, governance, services
from .models import GovernedChangeProposal, TenantPolicy, Waiver


class TenantPolicySerializer(strict.ModelSerializer):
    # Both null until the tenant's admins first write a revision (the platform's defaults apply).
    created_by = strict.CharField(source="created_by.username", read_only=True, default=None, allow_null=True)
    created_at = serializers.DateTimeField(read_only=True, allow_null=True)

    class Meta:
        model = TenantPolicy
        fields = ["revision", "min_approvals", "rollback_min_approvals", "base_model_allowlist", "metrics_thresholds",
                  "allowed_regions", "max_gpus", "rule_levels", "comment", "created_by", "created_at"]
        read_only_fields = ["revision", "created_by", "created_at"]


class WaiverSerializer(strict.ModelSerializer):
    requested_by = strict.CharField(source="requested_by.username", read_only=True)
    approved_by = strict.CharField(source="approved_by.username", read_only=True, default=None)
    state = serializers.SerializerMethodField()

    class Meta:
        model = Waiver
        fields = ["id", "rule", "reason", "ticket_url", "expires_at", "state", "requested_by", "requested_at",
                  "approved_by", "approved_at", "revoked_at"]
        read_only_fields = ["id", "state", "requested_by", "requested_at", "approved_by", "approved_at", "revoked_at"]

    def get_state(self, waiver) -> str:
        return waiver.state_at(self.context["now"])


class ProposalSerializer(strict.ModelSerializer):
    proposed_by = strict.CharField(source="proposed_by.username", read_only=True)
    confirmed_by = strict.CharField(source="confirmed_by.username", read_only=True, default=None)
    state = serializers.SerializerMethodField(help_text="proposed, applied, expired, or void: the setting changed "
                                                        "after it was proposed, or its proposer no longer stands")
    void_reason = serializers.SerializerMethodField(help_text="Why it is void (empty otherwise), judged now.")

    class Meta:
        model = GovernedChangeProposal
        fields = ["id", "setting", "diff", "diff_digest", "base_revision", "confirmers", "comment", "proposed_by",
                  "proposed_at", "expires_at", "state", "confirmed_by", "confirmed_at", "applied_revision",
                  "void_reason"]
        read_only_fields = fields

    def get_state(self, proposal) -> str:
        return self._judged(proposal)[0]

    def get_void_reason(self, proposal) -> str:
        return self._judged(proposal)[1]

    def _judged(self, proposal) -> tuple[str, str]:
        judged = self.root.__dict__.setdefault("_judged_states", {})
        if proposal.pk not in judged:
            judged[proposal.pk] = governance.judged(proposal, timezone.now())
        return judged[proposal.pk]


def updated(result, serializer_class) -> Response:
    """What a PUT of a governed setting answers: the new revision, or 202 with the proposal
    when the change loosens and waits for a second tenant admin."""
    if isinstance(result, GovernedChangeProposal):
        return Response(ProposalSerializer(result).data, status=status.HTTP_202_ACCEPTED)
    return Response(serializer_class(result).data)


PUT_RESPONSES = {200: TenantPolicySerializer, 202: ProposalSerializer}


class PolicyDataView(TenantScopedAPIView):
    """The tenant's policy data (thresholds, allow-lists, approvals, regions, rule levels).
    PUT by a tenant admin writes the next revision; fields left out keep their value, and a
    change that would loosen the platform floor is refused. A change that loosens the tenant's
    own data answers 202 with a proposal a second tenant admin confirms."""

    serializer_class = TenantPolicySerializer
    http_method_names = ["get", "put", "head", "options"]

    def get(self, request, tenant):
        return Response(TenantPolicySerializer(services.tenant_policy_of(self.tenant)).data)

    @extend_schema(responses=PUT_RESPONSES)
    def put(self, request, tenant):
        serializer = TenantPolicySerializer(data=request.data, partial=True)
        serializer.is_valid(raise_exception=True)
        changes = {k: v for k, v in request.data.items() if k in services.POLICY_DATA_FIELDS}
        result = services.tenant_policy_update(actor=request.user, tenant=self.tenant,
                                               comment=serializer.validated_data.get("comment", ""), **changes)
        return updated(result, TenantPolicySerializer)


class WaiverList(TenantScopedAPIView, generics.ListAPIView):
    """Waivers of one rule each; POST (tenant admin) asks for one, which applies once a second
    person approves it and until it expires or is revoked."""

    model = Waiver
    serializer_class = WaiverSerializer
    filterset_fields = ["rule"]

    def get_queryset(self):
        return super().get_queryset().select_related("requested_by", "approved_by")

    def get_serializer_context(self):
        return {**super().get_serializer_context(), "now": timezone.now()}

    def post(self, request, tenant):
        serializer = WaiverSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        waiver = services.waiver_request(actor=request.user, tenant=self.tenant, **serializer.validated_data)
        return Response(WaiverSerializer(waiver, context=self.get_serializer_context()).data,
                        status=status.HTTP_201_CREATED)


class _OneWaiver(WaiverList):
    def waiver(self) -> Waiver:
        with self.tenant_reads():
            waiver = self.get_queryset().filter(pk=self.kwargs["waiver"]).select_related("tenant").first()
        if waiver is None:
            raise NotFound("No such waiver.")
        return waiver

    def answer(self, waiver):
        return Response(WaiverSerializer(waiver, context=self.get_serializer_context()).data)


class WaiverApprove(_OneWaiver):
    """The second person approves with a fresh one-time password (step-up)."""

    http_method_names = ["post", "options"]

    @extend_schema(request={"application/json": {"type": "object", "properties": {"otp_token": {"type": "string"}}}},
                   responses={200: WaiverSerializer})
    def post(self, request, tenant, waiver):
        token = request.data.get("otp_token", "") if isinstance(request.data, dict) else ""
        return self.answer(services.waiver_approve(actor=request.user, waiver=self.waiver(), otp_token=str(token)))


class WaiverRevoke(_OneWaiver):
    http_method_names = ["post", "options"]

    @extend_schema(request=None, responses={200: WaiverSerializer})
    def post(self, request, tenant, waiver):
        return self.answer(services.waiver_revoke(actor=request.user, waiver=self.waiver()))


class _Proposals(TenantScopedAPIView):
    model = GovernedChangeProposal
    serializer_class = ProposalSerializer

    def get_queryset(self):
        return governance.proposals_of(self.request.user, self.tenant)

    def proposal(self) -> GovernedChangeProposal:
        with self.tenant_reads():  # confirm runs outside the request's transaction
            proposal = self.get_queryset().filter(pk=self.kwargs["proposal"]).select_related("tenant").first()
        if proposal is None:
            raise NotFound("No such proposal.")
        return proposal


class ProposalList(_Proposals, generics.ListAPIView):
    """Proposals to loosen a governed setting (policy data, trust configuration), newest first."""

    filterset_fields = ["setting", "state"]


class AdminProposalSerializer(serializers.Serializer):
    username = strict.CharField(max_length=150)
    comment = strict.CharField(max_length=500, required=False, allow_blank=True)


class AdminProposalCreate(_Proposals):
    """Propose making a person a tenant admin: 202 with the proposal, which applies once a
    second tenant admin (a second platform admin, while the tenant has fewer than two tenant
    admins) confirms it through the proposal's confirm endpoint."""

    http_method_names = ["post", "options"]

    @extend_schema(request=AdminProposalSerializer, responses={202: ProposalSerializer})
    def post(self, request, tenant):
        serializer = AdminProposalSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        proposal = admins.tenant_admin_propose(actor=request.user, tenant=self.tenant,
                                               user=user_by_username(serializer.validated_data["username"]),
                                               comment=serializer.validated_data.get("comment", ""))
        return Response(ProposalSerializer(proposal).data, status=status.HTTP_202_ACCEPTED)


class ProposalDetail(_Proposals):
    http_method_names = ["get", "head", "options"]

    def get(self, request, tenant, proposal):
        return Response(ProposalSerializer(self.proposal()).data)


class ProposalConfirm(_Proposals):
    """A second tenant admin confirms with a fresh one-time password and the diff digest they
    read; the change is written as the setting's next revision."""

    http_method_names = ["post", "options"]

    @extend_schema(request={"application/json": {"type": "object", "properties": {
        "otp_token": {"type": "string"}, "diff_digest": {"type": "string"}}}}, responses={200: ProposalSerializer})
    def post(self, request, tenant, proposal):
        body = request.data if isinstance(request.data, dict) else {}
        confirmed = governance.governed_change_confirm(
            actor=request.user, proposal=self.proposal(), otp_token=str(body.get("otp_token", "")),
            diff_digest=str(body.get("diff_digest", "")))
        return Response(ProposalSerializer(confirmed).data)


WAIVER = "tenants/<slug:tenant>/waivers/<int:waiver>/"
PROPOSAL = "tenants/<slug:tenant>/proposals/<int:proposal>/"

api_urlpatterns = [
    path("tenants/<slug:tenant>/policy-data/", PolicyDataView.as_view(), name="api-policy-data"),
    path("tenants/<slug:tenant>/waivers/", WaiverList.as_view(), name="api-waiver-list"),
    path(WAIVER + "approve/", committing(WaiverApprove), name="api-waiver-approve"),
    path(WAIVER + "revoke/", WaiverRevoke.as_view(), name="api-waiver-revoke"),
    path("tenants/<slug:tenant>/proposals/", ProposalList.as_view(), name="api-proposal-list"),
    path("tenants/<slug:tenant>/admin-proposals/", AdminProposalCreate.as_view(), name="api-admin-proposal-list"),
    path(PROPOSAL, ProposalDetail.as_view(), name="api-proposal-detail"),
    path(PROPOSAL + "confirm/", committing(ProposalConfirm), name="api-proposal-confirm"),
]
