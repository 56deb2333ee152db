"""Policy decisions: every decision the platform acted on, as it was made."""

import uuid

from django.conf import settings
from django.db import models
from django.utils import timezone

from tenants.models import Tenant
from tenants.querysets import TenantOwnedQuerySet


class PolicyDecision(models.Model):
    """One policy evaluation: its input (and digest), the engine and revision, the outcome.

    Rows are written once and never changed (an UPDATE trigger refuses it); they go with
    their tenant. ``tenant`` is empty for platform-scope evaluations (what-if by an operator).
    """

    decision_id = models.UUIDField(unique=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, null=True, blank=True, related_name="+")
    entrypoint = models.CharField(max_length=200)
    engine = models.CharField(max_length=20)
    engine_decision_id = models.CharField(max_length=100, blank=True, default="")
    policy_revision = models.CharField(max_length=80, blank=True, default="")
    input = models.JSONField()
    input_digest = models.CharField(max_length=71)  # sha256:<hex> over RFC 8785 canonical JSON
    allow = models.BooleanField()
    violations = models.JSONField(default=list)
    enforcement = models.JSONField(default=dict)
    error = models.TextField(blank=True, default="")
    duration_ms = models.FloatField()
    requested_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["tenant", "-created_at"])]

    def __str__(self):
        return f"{self.entrypoint} {'allow' if self.allow else 'deny'} ({self.decision_id})"


# The platform floor a tenant's policy data may tighten but never loosen.
PRODUCTION_APPROVALS_FLOOR = 2
ROLLBACK_APPROVALS_FLOOR = 1


class TenantPolicy(models.Model):
    """One revision of a tenant's policy data. Rows are never changed: an edit writes the next
    revision, so every decision can name the data it used. No row means the defaults."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    revision = models.PositiveIntegerField()
    min_approvals = models.PositiveSmallIntegerField(default=PRODUCTION_APPROVALS_FLOOR)
    rollback_min_approvals = models.PositiveSmallIntegerField(default=ROLLBACK_APPROVALS_FLOOR)
    base_model_allowlist = models.JSONField(default=list)  # globs, "/" delimited
    metrics_thresholds = models.JSONField(default=dict)  # metric name -> minimum
    allowed_regions = models.JSONField(default=list)  # empty: any region of the jurisdiction
    max_gpus = models.JSONField(default=dict)  # flavor -> most GPUs one version may ask for
    rule_levels = models.JSONField(default=dict)  # rule id -> level, only ever raised
    comment = models.CharField(max_length=500, blank=True, default="")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["tenant", "-revision"]
        constraints = [models.UniqueConstraint(fields=["tenant", "revision"], name="tenant_policy_revision_unique")]

    def __str__(self):
        return f"{self.tenant} policy r{self.revision}"


class Waiver(models.Model):
    """A tenant's exception to one rule, with a reason, a ticket, an expiry and two people:
    the one who asked and a different one who approved. It applies only while approved,
    not revoked and not expired."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    rule = models.CharField(max_length=100)
    reason = models.CharField(max_length=2000)
    ticket_url = models.URLField(max_length=500)
    expires_at = models.DateTimeField()
    requested_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    requested_at = models.DateTimeField(auto_now_add=True)
    approved_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    approved_at = models.DateTimeField(null=True, blank=True)
    revoked_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-requested_at", "-id"]
        indexes = [models.Index(fields=["tenant", "rule", "expires_at"])]

    def __str__(self):
        return f"waiver {self.pk} for {self.rule}"

    def state_at(self, moment) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= moment:
            return "expired"
        return "active" if self.approved_at is not None else "requested"


class GovernedChangeProposal(models.Model):
    """A change to a governed setting (the tenant's policy data, its trust configuration, who
    its tenant admins are) that would loosen it: it does not apply until a second person
    confirms it, with a fresh one-time password, against the same diff and the same base
    revision, before it expires."""

    class Setting(models.TextChoices):
        POLICY_DATA = "policy_data", "Policy data"
        TRUST = "trust", "Trust configuration"
        ADMINS = "admins", "Tenant admins"
        QUOTAS = "quotas", "GPU quotas"

    class Confirmers(models.TextChoices):
        """Who may confirm, decided when it is proposed: a second tenant admin, or (making a
        tenant admin while the tenant has fewer than two) a second platform admin."""
        TENANT_ADMINS = "tenant_admins", "A second tenant admin"
        PLATFORM_ADMINS = "platform_admins", "A second platform admin"

    class State(models.TextChoices):
        PROPOSED = "proposed", "Proposed"
        APPLIED = "applied", "Applied"
        VOID = "void", "Void"  # the setting changed after it was proposed

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    setting = models.CharField(max_length=32, choices=Setting.choices)
    changes = models.JSONField()  # the validated fields to write, as the proposer sent them
    diff = models.JSONField()  # setting, base revision, each changed field before/after, loosening sentences
    diff_digest = models.CharField(max_length=71)  # sha256:<hex> over the RFC 8785 JSON of ``diff``
    base_revision = models.PositiveIntegerField()
    confirmers = models.CharField(max_length=16, choices=Confirmers.choices, default=Confirmers.TENANT_ADMINS)
    comment = models.CharField(max_length=500, blank=True, default="")
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    proposed_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PROPOSED)
    confirmed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True,
                                     blank=True)
    confirmed_at = models.DateTimeField(null=True, blank=True)
    applied_revision = models.PositiveIntegerField(null=True, blank=True)
    void_reason = models.CharField(max_length=500, blank=True, default="")

    objects = TenantOwnedQuerySet.as_manager()

    class Meta:
        ordering = ["-proposed_at", "-id"]
        indexes = [models.Index(fields=["tenant", "setting", "state"])]

    def __str__(self):
        return f"{self.setting} proposal {self.pk} ({self.state})"

    def state_at(self, moment) -> str:
        """The stored state, or ``expired`` for an open proposal past its expiry."""
        if self.state == self.State.PROPOSED and self.expires_at <= moment:
            return "expired"
        return self.state


class BaselineRevision(models.Model):
    """A revision of the platform baseline (the sha256 over its Rego modules) and who accepted
    it. Whether a change to Rego loosens cannot be decided, so every revision the platform
    enforces needs two platform admins: one proposes it, another accepts it with a fresh
    one-time password. The revision a platform is installed with is accepted by the install."""

    revision = models.CharField(max_length=80, unique=True)
    proposed_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True,
                                    blank=True)  # none: the revision the platform was installed with
    proposed_at = models.DateTimeField(default=timezone.now)
    accepted_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True,
                                    blank=True)
    accepted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-proposed_at", "-id"]

    def __str__(self):
        return self.revision
