from django.db import transaction
from django.http import HttpResponse
from django.utils.dateparse import parse_datetime
from drf_spectacular.utils import extend_schema
from rest_framework import generics, serializers
from rest_framework.pagination import CursorPagination
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import tree
from audit.checkpointing import checkpoint_public_keys
from audit.export import NothingToExport, as_zip, export_files
from audit.models import AuditCheckpoint, AuditEvent, AuditLeaf
from audit.witnessing import cosigned_note
from audit.log import Target, record
from tenants.access import actor_for, require
from tenants.api import TenantScopedMixin
from tenants.db import PLATFORM_ALIAS
from tenants.errors import Invalid, NotFound
from tenants import strict

from . import checks
from .evidence import promotion_evidence
from .filters import AuditEventFilter
from .selectors import events_visible_to


class AuditEventSerializer(strict.ModelSerializer):
    position = serializers.IntegerField(source="leaf.position", read_only=True, default=None)

    class Meta:
        model = AuditEvent
        fields = ["id", "uuid", "occurred_at", "actor_type", "actor_name", "token_id", "tenant", "action",
                  "outcome", "target_type", "target_id", "data", "event_hash", "position"]
        read_only_fields = fields


class AuditEventPagination(CursorPagination):
    """Keyset pages on the event id, newest first: as fast at a million events as at ten, with
    no count. Follow ``next`` and ``previous``."""

    ordering = "-id"
    page_size = 50
    page_size_query_param = "limit"
    max_page_size = 500


class TenantAuditEventList(TenantScopedMixin, generics.ListAPIView):
    """The tenant's audit trail, newest first, for its auditors and admins."""

    serializer_class = AuditEventSerializer
    pagination_class = AuditEventPagination
    filterset_class = AuditEventFilter
    read_action = "audit"

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return AuditEvent.objects.none()
        require(self.request.user, self.tenant, "audit")
        return events_visible_to(self.request.user, tenant=self.tenant).select_related("leaf")


class AuditEventList(generics.ListAPIView):
    """Every audit event the caller may read (platform admins: the platform-scope ones)."""

    serializer_class = AuditEventSerializer
    pagination_class = AuditEventPagination
    filterset_class = AuditEventFilter

    def get_queryset(self):
        return events_visible_to(self.request.user).select_related("leaf")


def _hexes(values: list[bytes]) -> list[str]:
    return [value.hex() for value in values]


def _checkpoint_json(checkpoint) -> dict:
    """The checkpoint with every witness cosignature kept for it appended to its note, as C2SP
    notes carry them (a verifier that knows only the platform key skips those lines)."""
    cosignatures = list(checkpoint.cosignatures.order_by("witness").values_list("witness", "cosigned_at"))
    return {"tree_size": checkpoint.tree_size, "root_hash": checkpoint.root_hash, "key_id": checkpoint.key_id,
            "created_at": checkpoint.created_at, "note": cosigned_note(checkpoint, using="default"),
            "witnessed_by": [{"witness": name, "cosigned_at": moment} for name, moment in cosignatures]}


def _size(request, name: str, default: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None and default is not None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise Invalid(f"{name} is a whole number.", field=name) from None
    if value < 0:
        raise Invalid(f"{name} is 0 or more.", field=name)
    return value


class LatestCheckpoint(APIView):
    """The latest signed checkpoint of the audit tree (a C2SP signed note)."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        checkpoint = AuditCheckpoint.objects.order_by("-tree_size").first()
        if checkpoint is None:
            raise NotFound("No checkpoint has been signed yet.")
        return Response(_checkpoint_json(checkpoint))


class KeptCheckpointsSerializer(serializers.Serializer):
    checkpoints = serializers.ListField(child=strict.CharField(max_length=4000), allow_empty=False,
                                       help_text="Signed checkpoint notes kept outside the platform.")


class LogCheck(APIView):
    """Platform admins: the whole log re-checked (events, leaves, tree nodes, sequencer state,
    checkpoints) and held against checkpoints kept outside the platform, as ``manage.py audit
    verify --checkpoint`` does. ``problem`` names the first position missing or different."""

    @extend_schema(request=KeptCheckpointsSerializer, responses={200: dict})
    def post(self, request):
        serializer = KeptCheckpointsSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        report = checks.log_check(actor=request.user, kept=serializer.validated_data["checkpoints"])
        problem = report.problems[0] if report.problems else None
        return Response({"intact": report.ok, "sequenced": report.leaves, "unsequenced": report.unsequenced,
                         "kept_checkpoints": len(serializer.validated_data["checkpoints"]),
                         "problem": None if problem is None else {
                             "position": problem.position, "event_id": problem.event_id, "reason": problem.reason,
                             "sentence": problem.sentence()}})


class InclusionProof(APIView):
    """``?position=P[&tree_size=N]``: the RFC 9162 inclusion proof of the event at sequence
    number P in the tree of size N (default: the latest checkpoint). Only for those who may read
    that event; other positions answer 404."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        position = _size(request, "position")
        latest = AuditCheckpoint.objects.order_by("-tree_size").first()
        size = _size(request, "tree_size", latest.tree_size if latest else 0)
        leaf = AuditLeaf.objects.filter(position=position).first()
        if leaf is None or not events_visible_to(request.user).filter(pk=leaf.event_id).exists():
            raise NotFound("No such sequenced event.")
        if position >= size:
            raise Invalid(f"Event {position} is not in a tree of size {size}.", field="tree_size")
        try:
            proof, root = tree.inclusion_proof(position, size, using="default"), tree.root(size, using="default")
        except LookupError:
            raise Invalid(f"The tree has not reached size {size}.", field="tree_size") from None
        return Response({"position": position, "tree_size": size, "leaf_hash": leaf.leaf_hash, "leaf": leaf.leaf,
                         "proof": _hexes(proof), "root_hash": root.hex()})


class ConsistencyProof(APIView):
    """``?from=M&to=N``: the RFC 9162 consistency proof between the trees of sizes M and N."""

    @extend_schema(responses={200: dict})
    def get(self, request):
        first, second = _size(request, "from"), _size(request, "to")
        if not 0 < first <= second:
            raise Invalid("from is at least 1 and at most to.", field="from")
        try:
            proof = tree.consistency_proof(first, second, using="default")
            roots = tree.root(first, using="default"), tree.root(second, using="default")
        except LookupError:
            raise Invalid(f"The tree has not reached size {second}.", field="to") from None
        return Response({"from": first, "to": second, "proof": _hexes(proof), "from_root": roots[0].hex(),
                         "to_root": roots[1].hex()})


class CheckpointPublicKey(APIView):
    """The public key checkpoints are signed with (PEM), its key id and 4-byte key hint, and in
    ``keys`` every platform key, retired ones included (older checkpoints stay signed by them).
    A regulator should keep them from a source other than the platform they are checking."""

    permission_classes = [AllowAny]

    @extend_schema(responses={200: dict})
    def get(self, request):
        return Response(checkpoint_public_keys())


class TenantAuditExport(TenantScopedMixin, APIView):
    """The tenant's verifiable audit export as a zip (auditors and admins): its events with
    inclusion proofs, the signed checkpoint and tenant head, consistency proofs. Verify it with
    ``python -m audit.verify_export``. ``?since=`` and ``?until=`` take ISO dates or times."""

    read_action = "audit"

    @extend_schema(responses={(200, "application/zip"): bytes})
    def get(self, request, tenant):
        require(request.user, self.tenant, "audit")
        bounds = {}
        for name in ("since", "until"):
            raw = request.query_params.get(name)
            if raw:
                moment = parse_datetime(raw) or parse_datetime(f"{raw}T00:00:00+00:00")
                if moment is None:
                    raise Invalid(f"{name} is an ISO date or time.", field=name)
                bounds[name] = moment
        try:
            files = export_files(tenant=self.tenant.slug, using=PLATFORM_ALIAS, **bounds)
        except NothingToExport as exc:
            raise NotFound(str(exc)) from None
        with transaction.atomic():
            record(action="audit.export", actor=actor_for(request.user), tenant=self.tenant.slug,
                   target=Target("tenant", self.tenant.slug), data={k: v.isoformat() for k, v in bounds.items()})
        response = HttpResponse(as_zip(files), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="audit-{self.tenant.slug}.zip"'
        return response


class PromotionEvidencePack(TenantScopedMixin, APIView):
    """One promotion's evidence pack as a zip (auditors and admins): the version, artifacts and
    their verifications, every policy decision, approvals with their MFA evidence, waivers and
    overrides, the attestation, and an inclusion proof for each audit event about them. Verify
    it with ``python -m compliance.verify_evidence``."""

    read_action = "audit"

    @extend_schema(responses={(200, "application/zip"): bytes})
    def get(self, request, tenant, promotion):
        try:
            found, files = promotion_evidence(actor=request.user, tenant=self.tenant, public_id=promotion)
        except NothingToExport as exc:
            raise NotFound(str(exc)) from None
        response = HttpResponse(as_zip(files), content_type="application/zip")
        response["Content-Disposition"] = f'attachment; filename="evidence-{found.public_id}.zip"'
        return response
