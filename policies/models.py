"""Policy decisions: every decision the platform acted on, as it was made."""

import uuid

from django.db import models

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
