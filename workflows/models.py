"""Workflows, their immutable versions, stage pointers, and artifacts."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant, slug_validator
from tenants.querysets import TenantOwnedQuerySet


class Stage(models.TextChoices):
    DEVELOPMENT = "development", "Development"
    STAGING = "staging", "Staging"
    PRODUCTION = "production", "Production"


class ArtifactKind(models.TextChoices):
    MODEL = "model"
    DATASET = "dataset"
    METRICS = "metrics"
    CONTAINER = "container"
    SPEC = "spec"
    OTHER = "other"


class ArtifactLayout(models.TextChoices):
    FILE = "file"
    DIRECTORY = "directory"  # stored as a deterministic tar archive; signatures cover the files


class Artifact(models.Model):
    """A named, content-addressed object a tenant brings: a model directory, a dataset,
    metrics, an image reference, a spec. Its bytes live in the artifact store by digest."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="artifacts")
    name = models.CharField(max_length=64, validators=[slug_validator])
    kind = models.CharField(max_length=16, choices=ArtifactKind.choices)
    layout = models.CharField(max_length=16, choices=ArtifactLayout.choices, default=ArtifactLayout.FILE)
    digest = models.CharField(max_length=71)  # sha256:<64 hex>
    size_bytes = models.BigIntegerField()
    region = models.CharField(max_length=16)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)
    stored_at = models.DateTimeField(null=True, blank=True, help_text="When the server received and checked the bytes.")

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name", "-created_at"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name", "digest"], name="artifact_name_digest_unique")]

    def __str__(self):
        return f"{self.name}@{self.digest[:19]}"


class Workflow(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="workflows")
    name = models.CharField(max_length=64)
    description = models.CharField(max_length=2000, blank=True)
    # Set by tenant admins within the tenant's range; None: the lowest of that range.
    run_priority = models.IntegerField(null=True, blank=True)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="workflow_name_unique")]

    def __str__(self):
        return f"{self.tenant}/{self.name}"


class WorkflowVersion(models.Model):
    """One registered version. The database refuses any UPDATE of a stored row."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    spec = models.JSONField()
    spec_canonical = models.TextField()
    digest = models.CharField(max_length=71, help_text="sha256 over RFC 8785 JSON of the spec and its artifact digests.")
    artifact_digests = models.JSONField(default=list)
    uses_images = models.BooleanField(default=False)
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["workflow", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "number"], name="version_number_unique"),
            models.UniqueConstraint(fields=["workflow", "digest"], name="version_digest_unique"),
        ]

    def __str__(self):
        return f"{self.workflow} v{self.number}"


class VersionArtifact(models.Model):
    """Which artifacts a version references (written once, with the version)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.CASCADE, related_name="artifact_links")
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="version_links")

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["version", "artifact"], name="version_artifact_unique")]


class StagePointer(models.Model):
    """The current version of a workflow in one stage; moved only by promotions."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="stage_pointers")
    stage = models.CharField(max_length=16, choices=Stage.choices)
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="+")
    updated_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["workflow", "stage"]
        constraints = [models.UniqueConstraint(fields=["workflow", "stage"], name="one_version_per_stage")]


class TrustConfiguration(models.Model):
    """What a tenant accepts as a signature: public keys by key id, enterprise CA roots with the
    certificate identities (SANs) allowed under them, and Sigstore identities with issuers."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="trust_configuration")
    public_keys = models.JSONField(default=dict)  # key id -> PEM
    ca_roots = models.JSONField(default=list)  # PEM certificates
    allowed_identities = models.JSONField(default=list)  # certificate SANs
    sigstore_identities = models.JSONField(default=list)  # [identity, issuer] pairs
    revision = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()


class Signature(models.Model):
    """A Sigstore bundle attached to an artifact, with the time the platform received it
    (certificate bundles carry no trusted time, so every re-verification uses this one)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="signatures")
    bundle = models.TextField()
    bundle_digest = models.CharField(max_length=71)
    received_at = models.DateTimeField()
    uploaded_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-received_at"]


class Verification(models.Model):
    """One verification of one signature: when, by whom, how, and why (never changed)."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    artifact = models.ForeignKey(Artifact, on_delete=models.CASCADE, related_name="verifications")
    signature = models.ForeignKey(Signature, on_delete=models.CASCADE, related_name="verifications")
    verified = models.BooleanField()
    mode = models.CharField(max_length=16, blank=True)
    identity = models.CharField(max_length=500, blank=True)
    reason = models.TextField()
    trust_revision = models.PositiveIntegerField()
    performed_by = models.CharField(max_length=150)
    performed_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-performed_at", "-id"]


class Blob(models.Model):
    """One file of a model directory uploaded on its own, before the directory is assembled.
    Recorded per tenant: a tenant may assemble only bytes it uploaded itself, so knowing a
    digest never gives access to another tenant's content."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    digest = models.CharField(max_length=71)
    size_bytes = models.BigIntegerField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["tenant", "digest"], name="blob_per_tenant_unique")]


class PromotionState(models.TextChoices):
    REQUESTED = "requested"
    CHECKED = "checked"  # evaluated; soft-mandatory violations wait for an override or waiver
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    PROMOTED = "promoted"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    EXPIRED = "expired"


OPEN_PROMOTION_STATES = (PromotionState.REQUESTED, PromotionState.CHECKED, PromotionState.AWAITING_APPROVAL,
                         PromotionState.APPROVED)


class PromotionKind(models.TextChoices):
    PROMOTION = "promotion"
    ROLLBACK = "rollback"


class Promotion(models.Model):
    """A request to move a version into a stage, decided by policy and by people.

    ``binding_digest`` and ``policy_revision`` are what approvals bind to: the digest of the
    policy input without approvals and time, and the policy revision of the last check.
    When either changes, earlier approvals no longer count.
    """

    public_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="promotions")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="promotions")
    stage = models.CharField(max_length=16, choices=Stage.choices)
    kind = models.CharField(max_length=16, choices=PromotionKind.choices, default=PromotionKind.PROMOTION)
    state = models.CharField(max_length=24, choices=PromotionState.choices, default=PromotionState.REQUESTED)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_via_token = models.CharField(max_length=40, blank=True, default="")
    justification = models.CharField(max_length=2000, blank=True, default="")
    requested_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField()
    previous_version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="+",
                                         null=True, blank=True)
    metrics_artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    binding_digest = models.CharField(max_length=71, blank=True, default="")
    policy_revision = models.CharField(max_length=80, blank=True, default="")
    required_approvals = models.PositiveSmallIntegerField(default=0)
    decisions = models.JSONField(default=list)  # decision ids, in order
    violations = models.JSONField(default=list)  # of the latest decision
    closed_at = models.DateTimeField(null=True, blank=True)
    closed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+",
                                  null=True, blank=True)
    close_reason = models.CharField(max_length=2000, blank=True, default="")
    promoted_at = models.DateTimeField(null=True, blank=True)
    superseded_at = models.DateTimeField(null=True, blank=True)
    attestation = models.TextField(blank=True, default="")  # Sigstore bundle JSON
    attestation_digest = models.CharField(max_length=71, blank=True, default="")

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["tenant", "state", "-requested_at"])]
        constraints = [
            # At most one open request per version and stage: a second one is a conflict.
            models.UniqueConstraint(fields=["version", "stage"], condition=models.Q(state__in=OPEN_PROMOTION_STATES),
                                    name="one_open_promotion_per_version_stage"),
        ]

    def __str__(self):
        return f"{self.workflow} v{self.version.number} -> {self.stage} ({self.state})"

    @property
    def is_open(self) -> bool:
        return self.state in OPEN_PROMOTION_STATES

    @property
    def state_label(self) -> str:
        return self.state.replace("_", " ").capitalize()


class Approval(models.Model):
    """One person's approve or reject of a promotion, with the one-time password that backed it
    and what it was bound to. Never changed; it counts only while its binding is current."""

    class Verdict(models.TextChoices):
        APPROVE = "approve"
        REJECT = "reject"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    promotion = models.ForeignKey(Promotion, on_delete=models.CASCADE, related_name="approvals")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    verdict = models.CharField(max_length=8, choices=Verdict.choices)
    comment = models.CharField(max_length=2000, blank=True, default="")
    version_digest = models.CharField(max_length=71)
    binding_digest = models.CharField(max_length=71)
    policy_revision = models.CharField(max_length=80)
    otp_device = models.CharField(max_length=100)  # django-otp persistent id
    via = models.CharField(max_length=16)  # console or api
    token = models.CharField(max_length=40, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["created_at", "id"]
        constraints = [
            # One verdict per person per binding: a replayed approval is a conflict.
            models.UniqueConstraint(fields=["promotion", "user", "binding_digest", "policy_revision"],
                                    name="one_verdict_per_person_per_binding"),
        ]

    def is_current_for(self, promotion: Promotion) -> bool:
        return (self.version_digest == promotion.version.digest and self.binding_digest == promotion.binding_digest
                and self.policy_revision == promotion.policy_revision)


class PromotionOverride(models.Model):
    """A tenant admin's override of one soft-mandatory violation, with a justification, and a
    second person's confirmation. Shown on the promotion forever."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    promotion = models.ForeignKey(Promotion, on_delete=models.CASCADE, related_name="overrides")
    rule = models.CharField(max_length=100)
    justification = models.CharField(max_length=2000)
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(default=timezone.now)
    confirmed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+",
                                     null=True, blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["requested_at", "id"]
        constraints = [models.UniqueConstraint(fields=["promotion", "rule"], name="one_override_per_rule")]


class RunOutput(models.Model):
    """An artifact a run produced, with the provenance statement the platform signed for it
    (inputs, version digest, runner, devices). Runners write it; the run is named by its public
    id because runners sit above workflows. A production promotion judges metrics only by the
    metrics output of the version's latest successful staging run."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    artifact = models.ForeignKey(Artifact, on_delete=models.PROTECT, related_name="run_outputs")
    version = models.ForeignKey(WorkflowVersion, on_delete=models.PROTECT, related_name="run_outputs")
    stage = models.CharField(max_length=16, choices=Stage.choices)
    run_id = models.UUIDField()
    output_name = models.CharField(max_length=64)
    provenance = models.TextField()  # a Sigstore bundle (DSSE, in-toto statement) signed by the platform key
    created_at = models.DateTimeField(default=timezone.now)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["run_id", "output_name"], name="one_run_output_per_name")]
