from rest_framework import serializers

from .models import Artifact, Signature, StagePointer, TrustConfiguration, Verification, Workflow, WorkflowVersion


class WorkflowSerializer(serializers.ModelSerializer):
    stages = serializers.SerializerMethodField()
    latest_version = serializers.SerializerMethodField()

    class Meta:
        model = Workflow
        fields = ["name", "description", "created_at", "latest_version", "stages"]

    def get_stages(self, workflow) -> dict[str, int]:
        return {pointer.stage: pointer.version.number for pointer in workflow.stage_pointers.all()}

    def get_latest_version(self, workflow) -> int | None:
        return getattr(workflow, "latest_number", None)


class VersionSerializer(serializers.ModelSerializer):
    workflow = serializers.CharField(source="workflow.name", read_only=True)
    created_by = serializers.CharField(source="created_by.username", read_only=True)
    artifacts = serializers.ListField(source="artifact_digests", child=serializers.CharField(), read_only=True)

    class Meta:
        model = WorkflowVersion
        fields = ["workflow", "number", "digest", "spec", "artifacts", "uses_images", "created_by", "created_at"]
        read_only_fields = fields


class VersionRegisterSerializer(serializers.Serializer):
    spec = serializers.JSONField(help_text="The spec: an object, or YAML/JSON text.")
    artifacts = serializers.ListField(child=serializers.RegexField(r"^sha256:[0-9a-f]{64}$"), required=False,
                                      default=list, max_length=100)


class StageSerializer(serializers.ModelSerializer):
    version = serializers.IntegerField(source="version.number")

    class Meta:
        model = StagePointer
        fields = ["stage", "version", "updated_at"]


class ArtifactSerializer(serializers.ModelSerializer):
    created_by = serializers.CharField(source="created_by.username", read_only=True)

    class Meta:
        model = Artifact
        fields = ["name", "kind", "layout", "digest", "size_bytes", "region", "created_by", "created_at", "stored_at"]
        read_only_fields = fields


class VerificationSerializer(serializers.ModelSerializer):
    signature = serializers.IntegerField(source="signature_id", read_only=True)

    class Meta:
        model = Verification
        fields = ["signature", "verified", "mode", "identity", "reason", "trust_revision", "performed_by",
                  "performed_at"]
        read_only_fields = fields


class SignatureSerializer(serializers.ModelSerializer):
    uploaded_by = serializers.CharField(source="uploaded_by.username", read_only=True)
    latest_verification = serializers.SerializerMethodField()

    class Meta:
        model = Signature
        fields = ["id", "bundle_digest", "received_at", "uploaded_by", "latest_verification"]
        read_only_fields = fields

    def get_latest_verification(self, signature) -> dict | None:
        latest = max(signature.verifications.all(), key=lambda v: (v.performed_at, v.pk), default=None)
        return VerificationSerializer(latest).data if latest else None


class TrustConfigurationSerializer(serializers.ModelSerializer):
    class Meta:
        model = TrustConfiguration
        fields = ["public_keys", "ca_roots", "allowed_identities", "sigstore_identities", "revision", "updated_at"]
        read_only_fields = ["revision", "updated_at"]
        extra_kwargs = {f: {"required": False} for f in ["public_keys", "ca_roots", "allowed_identities",
                                                          "sigstore_identities"]}


class AssembleSerializer(serializers.Serializer):
    files = serializers.DictField(child=serializers.CharField(), allow_empty=False,
                                  help_text="Relative path -> sha256 digest of each file, uploaded first to /blobs/.")
