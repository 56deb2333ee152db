from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from tenants import strict
from tenants.access import memberships_of
from tenants.errors import Invalid

from .models import (
    Approval,
    Artifact,
    Promotion,
    PromotionKind,
    PromotionOverride,
    Signature,
    Stage,
    TrustConfiguration,
    Verification,
    Workflow,
    WorkflowVersion,
)
from .promotions import approval_void_reason
from .spec import DIGEST, DIGEST_PATTERN


@extend_schema_field({"type": "string", "pattern": DIGEST_PATTERN})
class DigestField(strict.CharField):
    """``sha256:`` and 64 lowercase hex digits, the whole value."""

    default_error_messages = {"invalid": "A digest is 'sha256:' followed by 64 lowercase hex digits."}

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not DIGEST.fullmatch(value):
            self.fail("invalid")
        return value

class WorkflowSerializer(strict.ModelSerializer):
    stages = serializers.SerializerMethodField()
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = ["name", "description", "created_at", "latest_version", "stages"]

    def get_stages(self, workflow) -> dict[str, int]:
        return {pointer.stage: pointer.version.number for pointer in workflow.stage_pointers.all()}

    def get_latest_version(self, workflow) -> int | None:
        return getattr(workflow, "latest_number", None)


class VersionSerializer(strict.ModelSerializer):
    workflow = strict.CharField(source="workflow.name", read_only=True)
    created_by = strict.CharField(source="created_by.username", read_only=True)
    artifacts = serializers.ListField(source="artifact_digests", child=strict.CharField(), read_only=True)

    class Meta:
        model = WorkflowVersion
        fields = ["workflow", "number", "digest", "spec", "artifacts", "uses_images", "created_by", "created_at"]
        read_only_fields = fields


class VersionRegisterSerializer(serializers.Serializer):
    spec = serializers.JSONField(help_text="The spec: an object, or YAML/JSON text.")
    artifacts = serializers.ListField(child=DigestField(), required=False,
                                      default=list, max_length=100)


class ArtifactSerializer(strict.ModelSerializer):
    created_by = strict.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = Artifact
        fields = ["name", "kind", "layout", "digest", "size_bytes", "region", "created_by", "created_at", "stored_at"]
        read_only_fields = fields


class VerificationSerializer(strict.ModelSerializer):
    signature = serializers.IntegerField(source="signature_id", read_only=True)

    class Meta:
        model = Verification
        fields = ["signature", "verified", "mode", "identity", "reason", "trust_revision", "performed_by",
                  "performed_at"]
        read_only_fields = fields


class BlobSerializer(serializers.Serializer):
    digest = strict.CharField(read_only=True)
    size_bytes = serializers.IntegerField(read_only=True)


class SignatureAttachedSerializer(serializers.Serializer):
    verification = VerificationSerializer(read_only=True)


class SignatureRefusedSerializer(SignatureAttachedSerializer):
    """A 422: the bundle is kept on record with its failed verification."""

    code = strict.CharField(read_only=True, help_text="signature_not_verified")
    detail = strict.CharField(read_only=True, help_text="Why it did not verify, in one sentence.")


class ReverificationSerializer(serializers.Serializer):
    verified = serializers.BooleanField(read_only=True, help_text="Whether any signature verified.")
    verifications = VerificationSerializer(many=True, read_only=True)


class ReverificationRefusedSerializer(ReverificationSerializer):
    """A 422: no signature verified (or there is none)."""

    code = strict.CharField(read_only=True, help_text="signature_not_verified")
    detail = strict.CharField(read_only=True, help_text="Why, in one sentence.")


class SignatureSerializer(strict.ModelSerializer):
    uploaded_by = strict.CharField(source="uploaded_by.username", read_only=True)
    latest_verification = serializers.SerializerMethodField()

    class Meta:
        model = Signature
        fields = ["id", "bundle_digest", "received_at", "uploaded_by", "latest_verification"]
        read_only_fields = fields

    def get_latest_verification(self, signature) -> dict | None:
        latest = max(signature.verifications.all(), key=lambda v: (v.performed_at, v.pk), default=None)
        return VerificationSerializer(latest).data if latest else None


class TrustConfigurationSerializer(strict.ModelSerializer):
    class Meta:
        model = TrustConfiguration
        fields = ["public_keys", "ca_roots", "allowed_identities", "sigstore_identities", "revision", "updated_at"]
        read_only_fields = ["revision", "updated_at"]
        extra_kwargs = {f: {"required": False} for f in ["public_keys", "ca_roots", "allowed_identities",
                                                          "sigstore_identities"]}


class AssembleSerializer(serializers.Serializer):
    files = serializers.DictField(child=strict.CharField(), allow_empty=False,
                                  help_text="Relative path -> sha256 digest of each file, uploaded first to /blobs/.")


class ApprovalSerializer(strict.ModelSerializer):
    user = strict.CharField(source="user.username", read_only=True)
    current = serializers.SerializerMethodField()
    void_reason = serializers.SerializerMethodField(
        help_text="Why the approval does not count (empty while it does): what it approved changed, or its "
                  "approver's membership was revoked or changed since. A void approval never counts again.")

    class Meta:
        model = Approval
        fields = ["user", "verdict", "comment", "via", "version_digest", "binding_digest", "policy_revision",
                  "otp_device", "created_at", "current", "void_reason"]
        read_only_fields = fields

    def get_current(self, approval) -> bool:
        if approval.verdict != Approval.Verdict.APPROVE:
            return approval.is_current_for(approval.promotion)
        return not self.get_void_reason(approval)

    def get_void_reason(self, approval) -> str:
        if approval.verdict != Approval.Verdict.APPROVE:
            return ""
        # One read of the tenant's memberships per answer, however many approvals it shows.
        members = self.root.__dict__.setdefault("_memberships", {})
        if approval.tenant_id not in members:
            members[approval.tenant_id] = memberships_of(approval.tenant_id)
        binding = self.context.get("fresh_bindings", {}).get(approval.promotion_id)
        return approval_void_reason(approval, approval.promotion, memberships=members[approval.tenant_id],
                                    binding=binding)


class OverrideSerializer(strict.ModelSerializer):
    requested_by = strict.CharField(source="requested_by.username", read_only=True)
    confirmed_by = strict.CharField(source="confirmed_by.username", read_only=True, default=None)

    class Meta:
        model = PromotionOverride
        fields = ["id", "rule", "justification", "requested_by", "requested_at", "confirmed_by", "confirmed_at"]
        read_only_fields = fields


class PromotionSerializer(strict.ModelSerializer):
    id = serializers.UUIDField(source="public_id", read_only=True)
    workflow = strict.CharField(source="workflow.name", read_only=True)
    version = serializers.IntegerField(source="version.number", read_only=True)
    version_digest = strict.CharField(source="version.digest", read_only=True)
    requested_by = strict.CharField(source="requested_by.username", read_only=True)
    previous_version = serializers.IntegerField(source="previous_version.number", read_only=True, default=None)
    metrics_artifact = strict.CharField(source="metrics_artifact.digest", read_only=True, default=None)
    approvals = ApprovalSerializer(many=True, read_only=True)
    overrides = OverrideSerializer(many=True, read_only=True)

    class Meta:
        model = Promotion
        fields = ["id", "workflow", "version", "version_digest", "stage", "kind", "state", "requested_by",
                  "requested_at", "expires_at", "justification", "previous_version", "metrics_artifact",
                  "required_approvals", "binding_digest", "policy_revision", "decisions", "violations", "approvals",
                  "overrides", "close_reason", "closed_at", "promoted_at", "superseded_at", "attestation_digest"]
        read_only_fields = fields


class PromotionRequestSerializer(serializers.Serializer):
    workflow = strict.CharField(max_length=64)
    version = serializers.IntegerField(min_value=1)
    stage = serializers.ChoiceField(choices=Stage.choices)
    kind = serializers.ChoiceField(choices=PromotionKind.choices, default=PromotionKind.PROMOTION)
    justification = strict.CharField(max_length=2000, required=False, allow_blank=True, default="")
    metrics_artifact = DigestField(required=False, allow_null=True, default=None)

    def validate(self, attrs):
        # Metrics come only from a signed metrics artifact: numbers typed into a request are refused.
        typed = {"metrics", "metrics_thresholds", "thresholds"} & set(self.initial_data)
        if typed:
            raise Invalid("Metrics are read from the version's signed metrics artifact, never from the request.",
                          field=sorted(typed)[0], code="metrics_not_accepted")
        return attrs


class StepUpSerializer(serializers.Serializer):
    otp_token = strict.CharField(max_length=12, allow_blank=True, default="",
                                      help_text="The current code of your authenticator (step-up).")
    comment = strict.CharField(max_length=2000, required=False, allow_blank=True, default="")
    binding_digest = strict.CharField(max_length=71, required=False, allow_blank=True, default="",
                                           help_text="The binding you reviewed; 409 if it has changed since.")


class OverrideRequestSerializer(serializers.Serializer):
    rule = strict.CharField(max_length=100)
    justification = strict.CharField(max_length=2000)
